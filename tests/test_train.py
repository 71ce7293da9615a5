"""End to end on CPU: every method trains and learns, resume equality, NaN stop, 2-process gloo, CLI."""

import csv
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from mixshare import cli, files, train
from mixshare import config as cfg
from mixshare.config import Config, apply

TINY = dict(
    dataset="synthetic", synthetic_train=48, synthetic_test=24, synthetic_classes=4, synthetic_size=12,
    model="wrn-10-1", batch_size=24, epochs=2, progress=False, plots=False, eval_batch_size=24,
)
TINY_ARGS = ["--set"] + [f"{k}={v}" for k, v in TINY.items()]


def tiny_config(method, **overrides):
    config = apply(Config(), cfg.preset(method), method)
    return apply(config, dict(TINY, **overrides), "test")


def _share_rate(weights: list, dims: tuple) -> float:
    """MixShare's share rate (%) of per-subnetwork weights: profiles h_i = sum of |w_i| over ``dims``,
    100 * sum_f min_i h_i(f) / sum_f max_i h_i(f)."""
    profiles = torch.stack([w.detach().double().abs().sum(dims) for w in weights])
    return 100.0 * float(profiles.amin(0).sum() / profiles.amax(0).sum())


def saved_run(config, out_dir):
    """(dataset, model in eval mode with the weights of ``out_dir``'s checkpoint) of a finished run."""
    from mixshare import data
    from mixshare.models import model_from_config

    dataset = data.load_data(config)
    model = model_from_config(config, dataset.num_classes)
    model.load_state_dict(train.load_checkpoint(str(out_dir / "checkpoint.pt"))["model"])
    return dataset, model.eval()


def member_logits(model, images) -> torch.Tensor:
    """float64 [M, N, K]: every member fed the same ``images [N, C, H, W]``."""
    with torch.no_grad():
        return model(images.unsqueeze(0).expand(model.num_subnets, *images.shape)).double()


def check_report_values(config, out_dir, report):
    """The report's test metrics and share rates recomputed here from the saved weights and the test set:
    accuracies from the argmax of the logits, the NLL as cross-entropy of the mean logits (the ``logits``
    ensemble), the share rates from the encoders' and heads' weights."""
    dataset, model = saved_run(config, out_dir)
    logits = member_logits(model, dataset.test_images)
    labels = dataset.test_labels
    assert config.ensemble == "logits"
    mean = logits.mean(0)
    assert report["ensemble_accuracy"] == pytest.approx(100.0 * (mean.argmax(1) == labels).double().mean().item())
    assert report["subnetwork_accuracy"] == pytest.approx(
        [100.0 * (member.argmax(1) == labels).double().mean().item() for member in logits])
    assert report["nll"] == pytest.approx(torch.nn.functional.cross_entropy(mean, labels).item(), rel=1e-5)
    if hasattr(model, "encoders"):  # the ViTs share one patch embedding: no input-block rate
        assert report["encoder_share_rate"] == pytest.approx(_share_rate([e.weight for e in model.encoders],
                                                                         (1, 2, 3)))
    assert report["classifier_share_rate"] == pytest.approx(_share_rate([h.weight for h in model.heads], (0,)))


@pytest.mark.parametrize("method", list(cfg.PRESETS))
def test_every_method_trains_end_to_end(method, tmp_path):
    config = tiny_config(method, plots=method == "mixshare-fadeout")
    report = train.train(config, str(tmp_path))
    for key in ("ensemble_accuracy", "subnetwork_accuracy", "nll", "ece", "brier", "disagreement",
                "encoder_share_rate", "classifier_share_rate"):
        assert key in report
    assert len(report["subnetwork_accuracy"]) == (1 if method == "single" else 2)
    check_report_values(config, tmp_path, report)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["ensemble_accuracy"] == report["ensemble_accuracy"]
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 3
    state = train.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["epoch"] == 2
    if method == "mixshare-fadeout":
        for name in ("training_curves", "encoder_profiles", "classifier_profiles", "conditional_variance"):
            assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multihead_trains_one_epoch_and_reports_share_rates(tmp_path):
    """MIMO's naive multihead baseline: one input for every member, encodings summed, M heads."""
    config = tiny_config("multihead", epochs=1)
    assert (config.input_repetition, config.mixing, config.batch_repetition) == (1.0, "sum", 1)
    report = train.train(config, str(tmp_path))
    assert len(report["subnetwork_accuracy"]) == 2
    for key in ("encoder_share_rate", "classifier_share_rate"):
        assert isinstance(report[key], float), (key, report[key])
    check_report_values(config, tmp_path, report)
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 2


def test_cli_offers_and_compares_multihead(tmp_path, capsys):
    methods = next(a for a in cli.make_parser()._subparsers._group_actions[0].choices["train"]._actions
                   if "--method" in a.option_strings).choices
    assert "multihead" in methods
    assert cli.main(["compare", "--methods", "multihead", "--seeds", "0", "--out", str(tmp_path / "cmp"),
                     *TINY_ARGS, "epochs=1", "plots=false"]) == 0
    assert "| multihead |" in capsys.readouterr().out
    run = tmp_path / "cmp" / "multihead" / "seed0"
    config = apply(Config(), train.load_checkpoint(str(run / "checkpoint.pt"))["config"], "test")
    check_report_values(config, run, json.loads((run / "metrics.json").read_text()))


# Four separable classes and an lr that learns them in six epochs (chance: 25%).
LEARN = dict(epochs=6, synthetic_train=96, synthetic_test=48, batch_size=16, lr=0.1)


def _learning(method, out) -> tuple[float, list[float]]:
    """(test ensemble accuracy, training loss per epoch) of a LEARN run of ``method``."""
    report = train.train(tiny_config(method, **LEARN), str(out))
    with open(out / "history.csv") as fh:
        losses = [float(row["train_loss"]) for row in csv.DictReader(fh)]
    return report["ensemble_accuracy"], losses


@pytest.mark.parametrize("method", ["single", "cut-mixmo", "mixshare-fadeout"])
def test_training_learns(method, tmp_path):
    """Well above chance on held-out images, the training loss down by a fifth or more."""
    accuracy, losses = _learning(method, tmp_path)
    assert accuracy >= 75.0 and losses[-1] < 0.8 * losses[0], (accuracy, losses)


def test_learning_check_fails_when_the_optimizer_does_not_step(tmp_path, monkeypatch):
    """The check above is not passed by a run that trains nothing."""
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, closure=None: None)
    accuracy, losses = _learning("mixshare-fadeout", tmp_path)
    assert not (accuracy >= 75.0 and losses[-1] < 0.8 * losses[0]), (accuracy, losses)


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    config = tiny_config("mixshare-fadeout", epochs=3)
    train.train(config, str(tmp_path / "full"))
    train.train(config, str(tmp_path / "resumed"), stop_after_epoch=1)
    assert train.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))["epoch"] == 1
    train.train(config, str(tmp_path / "resumed"), resume=True)
    full = train.load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))
    resumed = train.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert full["epoch"] == resumed["epoch"] == 3
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = train.mimo_loss
    calls = {"n": 0}

    def loss_going_nan(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if calls["n"] > 4 else loss  # 4 steps per epoch

    monkeypatch.setattr(train, "mimo_loss", loss_going_nan)
    with pytest.raises(train.TrainingDiverged, match="became nan in epoch 2.*last good checkpoint"):
        train.train(tiny_config("cut-mixmo", epochs=3), str(tmp_path))
    state = train.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoints_refuse_arbitrary_objects(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_module=pickle)
    with pytest.raises(files.CheckpointError, match="not a readable checkpoint.*UnpicklingError"):
        files.load_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "--master_addr=127.0.0.1", "-m", "mixshare", "train", "--method", "cut-mixmo", "--out", str(tmp_path),
        "--device", "cpu", "--no-progress", *TINY_ARGS,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert len(report["subnetwork_accuracy"]) == 2
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 3


def test_cli_train_eval_analyze_compare(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--method", "unmix-align", "--out", str(out), *TINY_ARGS]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(out / "checkpoint.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert "ensemble_accuracy" in evaluated
    history = json.loads((out / "metrics.json").read_text())
    assert (evaluated["best_test_epoch"], evaluated["best_test_accuracy"]) == (
        history["best_test_epoch"], history["best_test_accuracy"])
    assert cli.main(["analyze", str(out / "checkpoint.pt"), "--out", str(tmp_path / "analysis"), "--num-images", "8"]) == 0
    assert (tmp_path / "analysis" / "analysis.json").exists()
    assert (tmp_path / "analysis" / "classifier_profiles.png").exists()
    capsys.readouterr()
    assert cli.main(["compare", "--methods", "single", "unmix", "--seeds", "0", "1", "--out", str(tmp_path / "cmp"),
                     *TINY_ARGS, "epochs=1"]) == 0
    table = capsys.readouterr().out
    assert "| method | ensemble acc. (%) | individual acc. (%) | classifier share rate (%)" in table
    assert "| single |" in table and "| unmix |" in table and " ± " in table
    assert (tmp_path / "cmp" / "compare.md").exists()
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    announced = [line for line in table.splitlines() if line.startswith("== run ")]
    assert [line.split(":")[0] for line in announced] == [f"== run {i}/4" for i in range(1, 5)]
    assert "so far" in announced[0] and "left" in announced[1]  # the time left, from the runs done
    # a finished run written before rates were all in percent is not reused
    metrics_path = tmp_path / "cmp" / "unmix" / "seed1" / "metrics.json"
    old = json.loads(metrics_path.read_text())
    del old["metrics_format"]
    metrics_path.write_text(json.dumps(old))
    assert cli.main(["compare", "--methods", "single", "unmix", "--seeds", "0", "1", "--out", str(tmp_path / "cmp"),
                     *TINY_ARGS, "epochs=1"]) == 2
    assert "was written by an older mixshare" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--method", "mixup", "--out", "x"], r"invalid choice: 'mixup' \(choose from '?single'?, '?mimo"),
        (["train", "--dataset", "mnist", "--out", "x"], r"invalid choice: 'mnist' \(choose from '?digits'?, '?cifar10"),
        (["train", "--out", "x", "--set", "epoch=3"], "unknown config key 'epoch'"),
        (["train", "--out", "x", "--model", "resnet50"], "unknown model 'resnet50'"),
        (["train", "--out", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["train", "--out", "x", "--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar-10-batches-py"),
    ],
)
def test_cli_errors_list_valid_choices(argv, message, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    try:
        code = cli.main(argv + ["--no-progress"])
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_epoch_line_and_durations():
    """The line each epoch prints: loss, test accuracy (%) and NLL, seconds, and the time left at the
    mean epoch time of this process."""
    rows = [{"epoch": e, "train_loss": 0.5, "test_accuracy": 91.2, "test_nll": 0.314, "seconds": s}
            for e, s in ((2, 10.0), (3, 6.0))]
    assert train.epoch_line(rows[1], 15, rows) == ("epoch 3/15: train loss 0.5000, test accuracy 91.20%, "
                                                   "test NLL 0.3140, 6 s, about 1 min 36 s left")
    assert train.epoch_line(rows[1], 3, rows).endswith("test NLL 0.3140, 6 s")  # the last epoch: nothing left
    assert [train.duration(s) for s in (0.4, 42, 185, 3725)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]
