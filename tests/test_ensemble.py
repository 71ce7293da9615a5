"""The Deep Ensemble of independently trained runs: its metrics against a hand-made average of the runs'
predictions, its cost columns, the refusal of runs of other data, and the ``mixshare ensemble`` command."""

import itertools
import json
import types

import pytest
import torch

from mixshare import cli, cost, ensemble, files, metrics, train
from mixshare.evaluate import collect_logits
from tests.test_cli_help import _PROBE, _run
from tests.test_train import tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two single-network runs of one epoch on the same synthetic data (same seed: the synthetic images
    are drawn from it), made different by their widths (so their weights and predictions differ)."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for name, model in (("a", "wrn-10-1"), ("b", "wrn-10-2")):
        train.train(tiny_config("single", epochs=1, model=model), str(root / name))
        paths.append(str(root / name))
    return paths


def _logits_and_labels(run_dir):
    model, config, _, _ = cli._model_from_checkpoint(f"{run_dir}/checkpoint.pt", "cpu")
    from mixshare.data import load_data

    dataset = load_data(config)
    return model, collect_logits(model, dataset.test_images), dataset.test_labels


@pytest.mark.parametrize("rule", ["probs", "logits"])
def test_ensemble_nll_is_that_of_the_hand_made_average(runs, rule):
    report = ensemble.evaluate_ensemble(runs, device="cpu", ensemble=rule, timing_repeats=0)
    (_, a, labels), (_, b, _) = _logits_and_labels(runs[0]), _logits_and_labels(runs[1])
    assert a.shape[0] == b.shape[0] == 1  # single networks: [1, N, K]
    if rule == "probs":
        probs = (torch.softmax(a[0].double(), -1) + torch.softmax(b[0].double(), -1)) / 2
    else:
        probs = torch.softmax((a[0].double() + b[0].double()) / 2, -1)
    assert report["nll"] == pytest.approx(metrics.nll(probs, labels), rel=1e-9, abs=1e-12)
    assert report["ensemble_accuracy"] == pytest.approx(metrics.accuracy(probs, labels))
    assert report["ece"] == pytest.approx(metrics.ece(probs, labels), abs=1e-9)
    # The members are the runs: the runs' own metrics.json figures come back per member.
    own = [json.loads(open(f"{r}/metrics.json").read()) for r in runs]
    assert report["subnetwork_accuracy"] == pytest.approx([o["ensemble_accuracy"] for o in own])
    assert report["subnetwork_nll"] == pytest.approx([o["nll"] for o in own], rel=1e-6)
    disagree = 100.0 * (a[0].argmax(-1) != b[0].argmax(-1)).double().mean().item()
    assert disagree > 0  # the two runs differ, so the check above tells the two rules apart
    assert report["disagreement"] == pytest.approx(disagree)
    assert report["ensemble"] == rule and report["dataset"] == "synthetic" and len(report["runs"]) == 2


def test_ensemble_cost_columns_sum_the_runs(runs, monkeypatch):
    ticks = itertools.count()  # a clock that moves 1 s a reading: every timed call of the ensemble takes 1 s
    monkeypatch.setattr(cost, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    report = ensemble.evaluate_ensemble(runs, device="cpu", timing_repeats=1, timing_batch=8)
    models = [_logits_and_labels(r)[0] for r in runs]
    images = torch.randn(8, 3, 12, 12)
    assert report["parameters"] == sum(cost.count_parameters(m) for m in models)
    assert report["flops_per_example"] == pytest.approx(sum(cost.flops_per_example(m, images) for m in models))
    assert report["flops_per_example"] > 0
    assert report["forward_passes"] == 2 and report["timing_batch_size"] == 8
    assert report["ms_per_example"] == pytest.approx(1000.0 / 8)  # one call for both runs, over 8 images
    assert ensemble.evaluate_ensemble(runs, device="cpu", timing_repeats=0)["ms_per_example"] is None


@pytest.mark.parametrize("rule", ["probs", "logits"])
def test_run_logits_give_the_runs_own_ensemble(rule):
    logits = torch.randn(3, 10, 5, generator=torch.Generator().manual_seed(0)) * 4
    made = torch.softmax(ensemble.run_logits(logits, rule), -1)
    assert torch.allclose(made, metrics.ensemble_probs(logits, rule), atol=1e-12)


def _altered_copy(run_dir, out_dir, config=None, **state_values):
    """A copy of ``run_dir``'s checkpoint in ``out_dir`` with config keys and state keys replaced."""
    state = files.load_checkpoint(f"{run_dir}/checkpoint.pt")
    state["config"] = dict(state["config"], **(config or {}))
    state.update(state_values)
    out_dir.mkdir()
    files.save_checkpoint(str(out_dir / "checkpoint.pt"), state)
    return str(out_dir)


@pytest.mark.parametrize("config, state, match", [
    ({"dataset": "digits"}, {}, "a run on digits"),
    ({}, {"num_classes": 3}, "has 3 classes"),
    ({"seed": 7}, {}, "seed 7 vs 0"),
])
def test_runs_of_other_data_are_refused_with_the_run_named(runs, tmp_path, config, state, match):
    other = _altered_copy(runs[1], tmp_path / "other", config, **state)
    with pytest.raises(ValueError, match=match) as caught:
        ensemble.evaluate_ensemble([runs[0], other], device="cpu", timing_repeats=0)
    assert other in str(caught.value)


def test_one_run_or_the_same_run_twice_is_refused(runs):
    with pytest.raises(ValueError, match="at least 2 runs"):
        ensemble.evaluate_ensemble(runs[:1])
    with pytest.raises(ValueError, match="same run"):
        ensemble.evaluate_ensemble([runs[0], f"{runs[0]}/checkpoint.pt"])
    with pytest.raises(ValueError, match="ensemble must be"):
        ensemble.evaluate_ensemble(runs, ensemble="median")


def test_cli_prints_and_writes_ensemble_json(runs, tmp_path, capsys):
    out = tmp_path / "deep"
    rc = cli.main(["ensemble", runs[0], f"{runs[1]}/checkpoint.pt", "--out", str(out), "--device", "cpu",
                   "--repeats", "1"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "ensemble.json").read_text())
    assert printed == written
    direct = ensemble.evaluate_ensemble(runs, device="cpu", timing_repeats=0)
    assert written["nll"] == pytest.approx(direct["nll"], rel=1e-12)
    assert written["forward_passes"] == 2 and written["ensemble"] == "probs"


def test_cli_missing_path_is_one_line_and_exit_2(runs, tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    rc = cli.main(["ensemble", runs[0], missing, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("mixshare ensemble: error:") and missing in err
    assert not (tmp_path / "out").exists()


def test_ensemble_help_imports_no_torch():
    run, _ = _run(["ensemble", "--help"], _PROBE)
    assert run.returncode == 0, run.stderr
    heavy, _, text = run.stdout.partition("\n")
    assert heavy == "[]", heavy
    assert "RUN_DIR_OR_CHECKPOINT" in text and "--out" in text


def test_compare_adds_the_deep_ensemble_of_its_single_runs(tmp_path, capsys):
    """compare's reference row: the single runs of M seeds ensembled (M of the other methods), its
    ensemble.json written, its metrics those of evaluate_ensemble on the same runs and rule."""
    from tests.test_train import TINY_ARGS

    out = tmp_path / "cmp"
    assert cli.main(["compare", "--methods", "single", "mimo", "--seeds", "0", "1", "--out", str(tmp_path / "syn"),
                     *TINY_ARGS, "epochs=1"]) == 0
    assert "no deep-ensemble row: the synthetic test set differs" in capsys.readouterr().out
    assert cli.main(["compare", "--methods", "single", "mimo", "--seeds", "0", "1", "--out", str(out),
                     "--dataset", "digits", "--model", "wrn-10-1", "--epochs", "1", "--no-progress",
                     "--set", "plots=false", "batch_size=128"]) == 0
    table = capsys.readouterr().out
    (row,) = [line for line in table.splitlines() if line.startswith("| deep-ensemble (2 singles) |")]
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    assert cells[3:5] == ["n/a", "n/a"] and cells[-2:] == ["2", "1"], cells  # no share rates; 2 passes, 1 ensemble
    saved = json.loads((out / "deep-ensemble" / "seeds0-1" / "ensemble.json").read_text())
    direct = ensemble.evaluate_ensemble([str(out / "single" / "seed0"), str(out / "single" / "seed1")],
                                        ensemble="logits", timing_repeats=1)
    assert saved["forward_passes"] == 2 and saved["nll"] == pytest.approx(direct["nll"], rel=1e-12)
    assert f"| {saved['nll']:.3f} |" in row
    assert "deep-ensemble (2 singles)" in json.loads((out / "compare.json").read_text())
