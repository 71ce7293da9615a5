"""Hostile input to the training toolkit's surfaces — config files, command-line arguments, run folders
and checkpoints — each refused in one line (exit status 2) naming what is wrong, and the legitimate
paths beside them (resume with more epochs, compare's reuse) still working."""

import json
import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mixshare import cli, files, train
from mixshare import config as cfg
from mixshare.data import hold_out, synthetic_dataset
from mixshare.loader import MimoLoader

TINY = dict(
    dataset="synthetic", synthetic_train=24, synthetic_test=8, synthetic_classes=4, synthetic_size=8,
    model="wrn-10-1", batch_size=12, epochs=1, progress=False, plots=False, eval_batch_size=24,
)
TINY_ARGS = ["--set"] + [f"{k}={v}" for k, v in TINY.items()]
RUN = ["train", "--method", "cut-mixmo", *TINY_ARGS]


def without_epoch_lines(err: str) -> str:
    """stderr without the line a run prints after each epoch (``epoch k/n: ...``)."""
    return "\n".join(line for line in err.strip().splitlines() if not re.match(r"epoch \d+/\d+: ", line))


def fails_cleanly(argv, capsys, *needles, absent=()):
    """``mixshare argv`` exits with status 2 and one line on stderr holding every needle."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    assert code == 2
    err = without_epoch_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    for needle in absent:
        assert needle not in err, (needle, err)
    return err


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


# ------------------------------------------------------------------ config files


CONFIG_FILE_CASES = [
    # YAML text, what the one line says
    ("unmix: [false]", "unmix must be true or false, got [False] (list)"),
    ("unmix: 0", "unmix must be true or false, got 0 (int)"),
    ("nesterov: 'maybe'", "nesterov must be true or false, got 'maybe'"),
    ("epochs: true", "epochs must be an integer, got True (bool)"),
    ("epochs: 2.5", "epochs must be an integer, got 2.5"),
    ("epochs: .nan", "epochs must be an integer, got nan"),
    ("batch_size: 1e400", "batch_size must be an integer"),
    ("lr: [0.1]", "lr must be a number, got [0.1] (list)"),
    ("lr: {value: 0.1}", "lr must be a number"),
    ("lr: false", "lr must be a number, got False (bool)"),
    ("lr: .inf", "lr must be > 0, got inf"),
    ("lr_milestones: 0.5", "lr_milestones must be a list of numbers, got 0.5"),
    ("lr_milestones: [0.5, true]", "lr_milestones must be a list of numbers"),
    ("lr_decay: 10", "lr_decay must be in (0, 1], got 10.0"),
    ("model: 28", "model must be a string, got 28 (int)"),
    ("seed: -1", "seed must be in [0, "),
    ("momentum: 0", "Nesterov momentum needs momentum > 0"),
    ("epoch: 3", "unknown config key 'epoch'"),
    ("device: cdua", "device 'cdua' is not a device name; did you mean 'cuda'?"),
    ("device: gpu", "did you mean 'cuda'?"),
    ("synthetic_size: 2", "synthetic_size must be >= 4, got 2"),
    ("synthetic_train: 3", "synthetic_train 3 leaves classes without a training image"),
    ("[1, 2]", "expected a mapping of config keys, got list"),
    ("1: 2", "config keys are names, got 1 (int)"),
    ("epochs: [1", "is not valid YAML (line 4, column 1)"),
]


@pytest.mark.parametrize("text, needle", CONFIG_FILE_CASES, ids=[c[0] for c in CONFIG_FILE_CASES])
def test_config_file_hostile(text, needle, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(f"dataset: synthetic\nsynthetic_classes: 4\n{text}\n" if not text.startswith(("[", "1:")) else text)
    out = tmp_path / "run"
    fails_cleanly(["train", "--config", str(path), "--out", str(out)], capsys, needle)
    assert not out.exists()


def test_config_file_that_is_not_text(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81 binary")
    fails_cleanly(["train", "--config", str(path), "--out", str(tmp_path / "run")], capsys, "is not a text file")


def test_config_type_errors_name_their_source(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"^epochs must be an integer, got True \(bool\) in my\.yaml$"):
        cfg.apply(cfg.Config(), {"epochs": True}, "my.yaml")


@pytest.mark.parametrize("values, expected", [
    ({"unmix": False, "nesterov": "no", "bf16": "True"}, {"unmix": False, "nesterov": False, "bf16": True}),
    ({"lr": "1e-3", "epochs": 3.0, "seed": "7"}, {"lr": 0.001, "epochs": 3, "seed": 7}),  # YAML 1.1 reads 1e-3 as text
    ({"lr_milestones": [0.5, 1], "fade_epochs": "null"}, {"lr_milestones": (0.5, 1.0), "fade_epochs": None}),
])
def test_config_values_of_the_right_kind_are_read(values, expected):
    config = cfg.apply(cfg.Config(), values, "test")
    assert {k: getattr(config, k) for k in expected} == expected
    assert all(type(getattr(config, k)) is type(v) for k, v in expected.items())


# ------------------------------------------------------------------ command-line arguments


CLI_CASES = [
    # argv after the command's own prefix, what the one line says
    (["train", "--set", "unmix=[false]"], "unmix must be true or false, got [False] (list) in --set"),
    (["train", "--set", "epochs=true"], "epochs must be an integer, got True (bool) in --set"),
    (["train", "--set", "lr={"], "--set lr: cannot read the value '{'"),
    (["train", "--device", "cdua"], "device 'cdua' is not a device name; did you mean 'cuda'?"),
    (["train", "--device", "cuda1"], "did you mean 'cuda:1'?"),
    (["train", "--seed", "-1"], "seed must be in [0, 9223372036854775807], got -1"),
    (["train", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["train", "--allow-change", "epochs"], "allow_change (epochs) applies to a resumed run: pass --resume"),
    (["train", "--set", "batch_size=100000"], "batch_size 100000 asks for 50000 distinct images per step"),
    (["train", "--set", "synthetic_train=5", "calibration_split=0.6"],
     "calibration_split 0.6 withholds every training image of class(es) 1, 2, 3"),
    (["compare", "--methods", "single", "--seeds", "0", "1", "0"], "--seeds names 0 more than once"),
    (["compare", "--methods", "single", "mimo", "single", "--seeds", "0"], "--methods names single more than once"),
]


@pytest.mark.parametrize("argv, needle", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_argument_hostile(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    command = argv[0]
    method = ["--method", "cut-mixmo"] if command == "train" else []
    fails_cleanly([command, *method, *TINY_ARGS, *argv[1:], "--out", str(out)], capsys, needle)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_cuda_device_without_cuda(tmp_path, capsys):
    fails_cleanly([*RUN, "--device", "cuda:1", "--out", str(tmp_path / "run")], capsys,
                  "device 'cuda:1': no CUDA device is usable here")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("count", ["-5", "0", "many"])
def test_analyze_num_images_must_be_positive(count, finished, tmp_path, capsys):
    fails_cleanly(["analyze", str(finished / files.CHECKPOINT), "--out", str(tmp_path / "a"), "--num-images", count],
                  capsys, "--num-images: expected a positive integer")
    assert not (tmp_path / "a").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("content", ["pickle", "text", "torch-list"])
def test_eval_of_a_file_that_is_not_a_checkpoint(content, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if content == "pickle":
        torch.save({"model": _Evil()}, path, pickle_module=pickle)
    elif content == "text":
        path.write_text("epochs: 3\n")
    else:
        torch.save([torch.zeros(2)], path)
    needle = "is not a mixshare checkpoint" if content == "torch-list" else "is not a readable checkpoint"
    fails_cleanly(["eval", str(path)], capsys, str(path), needle, absent=("weights_only=False", "trust"))


def test_an_unexpected_error_is_one_line_naming_its_class(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("deep inside\nsecond line of it")

    monkeypatch.setattr(train, "train", broken)
    fails_cleanly([*RUN, "--out", str(tmp_path / "run")], capsys,
                  "error: RuntimeError: deep inside second line of it (MIXSHARE_TRACEBACK=1 shows where)")


def test_nan_test_metrics_are_a_failed_run(tmp_path, capsys, monkeypatch):
    real = train.evaluate_model

    def nan_nll(*args, **kwargs):
        return dict(real(*args, **kwargs), nll=float("nan"))

    monkeypatch.setattr(train, "evaluate_model", nan_nll)
    out = tmp_path / "run"
    fails_cleanly([*RUN, "--out", str(out)], capsys, "the test NLL became nan in epoch 1", "no checkpoint was written")
    assert not (out / files.METRICS).exists()


def test_ctrl_c_says_what_is_kept_and_the_resume_command_works(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = train.training_step
    calls = {"n": 0}

    def interrupted_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # 4 steps per epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "training_step", interrupted_in_epoch_2)
    argv = [*RUN, "epochs=3", "--out", str(out)]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert re.match(r"epoch 1/3: train loss \d", err), err  # the line each epoch prints
    err = without_epoch_lines(err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"mixshare train: interrupted; the checkpoint of epoch 1 is kept at {out / files.CHECKPOINT}; "
                          "continue with: mixshare train "), err
    assert not (out / files.LOCK).exists()
    monkeypatch.setattr(train, "training_step", real)
    again = shlex.split(err.split("continue with: mixshare ", 1)[1])
    assert again[-1] == "--resume"
    assert cli.main(again) == 0
    assert files.load_checkpoint(str(out / files.CHECKPOINT))["epoch"] == 3


def test_sigint_ends_a_run_within_two_seconds(tmp_path):
    """A real SIGINT mid-run: the run stops and says so at once; the process (with the interpreter's
    own teardown, about a second on a loaded 2-core machine) exits soon after."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mixshare", *RUN, "epochs=1000", "--device", "cpu", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.monotonic() + 120
        while not (out / files.CHECKPOINT).exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stderr.readline()
        said = time.monotonic() - sent
        rest = child.stderr.read()
        child.wait(timeout=30)
        ended = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and not rest, line + rest
    assert said < 2.0 and ended < 5.0, (said, ended)
    assert "is kept at" in line and line.rstrip().endswith("--resume"), line
    assert not (out / files.LOCK).exists()


# ------------------------------------------------------------------ run folders and checkpoints


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch cut-mixmo run with its plots."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main([*RUN, "plots=true", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


RUN_FOLDER_CASES = [
    # extra arguments, change to the copied folder, what the one line says
    ([], None, "holds a finished run (checkpoint.pt, metrics.json, history.csv); pass --overwrite to replace it, "
               "--resume to continue it"),
    ([], "unfinished", "holds an unfinished run (checkpoint.pt, history.csv)"),
    (["--resume", "--seed", "1"], None, "(seed: 0 there, 1 now); seed defines another experiment"),
    (["--resume", "--method", "unmix"], None, "method: 'cut-mixmo' there, 'unmix' now"),
    (["--resume", "--set", "synthetic_classes=3"], None, "synthetic_classes: 4 there, 3 now"),
    (["--resume", "--set", "epochs=2"], None, "epochs: 1 there, 2 now); to continue with the new values, pass "
                                          "--allow-change epochs"),
    (["--resume", "--set", "lr=0.05", "alpha=1.0"], None, "pass --allow-change alpha lr"),
    (["--resume", "--seed", "1", "--allow-change", "seed"], None, "--allow-change seed: seed defines the run"),
    (["--resume", "--allow-change", "epchs"], None, "--allow-change: unknown config key 'epchs'; did you mean 'epochs'?"),
    (["--resume"], "foreign checkpoint", "is not a mixshare checkpoint"),
    (["--resume"], "truncated checkpoint", "is not a readable checkpoint"),
    (["--resume"], "locked", "is in use by pid "),
    (["--overwrite"], "locked", "(lock file .mixshare.lock); wait for it to end or choose another --out"),
]


@pytest.mark.parametrize("extra, change, needle", RUN_FOLDER_CASES,
                         ids=[" ".join(c[0]) + (f" [{c[1]}]" if c[1] else "") for c in RUN_FOLDER_CASES])
def test_run_folder_hostile(extra, change, needle, run_copy, capsys):
    checkpoint = run_copy / files.CHECKPOINT
    if change == "unfinished":
        (run_copy / files.METRICS).unlink()
    elif change == "foreign checkpoint":
        torch.save({"weights": torch.zeros(2)}, checkpoint)
    elif change == "truncated checkpoint":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = snapshot(run_copy)
    with files.folder_lock(str(run_copy)) if change == "locked" else _nothing():
        fails_cleanly([*RUN, "--out", str(run_copy), *extra], capsys, needle)
    assert snapshot(run_copy) == before  # nothing written, nothing removed


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_resume_with_more_epochs_and_then_fewer(run_copy, capsys):
    first = files.load_checkpoint(str(run_copy / files.CHECKPOINT))
    assert cli.main([*RUN, "epochs=2", "eval_batch_size=5", "--out", str(run_copy), "--resume",
                     "--allow-change", "epochs"]) == 0  # eval_batch_size, a runtime key, changes freely
    state = files.load_checkpoint(str(run_copy / files.CHECKPOINT))
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2 and len(state["history"]) == 2
    assert state["history"][0] == first["history"][0]
    assert json.loads((run_copy / files.RUN_CONFIG).read_text())["epochs"] == 2
    capsys.readouterr()
    fails_cleanly([*RUN, "--out", str(run_copy), "--resume", "--allow-change", "epochs"], capsys,
                  "is at epoch 2, past epochs = 1")


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*RUN, "--out", str(out), "--resume"]) == 0
    assert f"mixshare: no checkpoint in {out} to resume: starting a new run" in capsys.readouterr().err
    assert files.load_checkpoint(str(out / files.CHECKPOINT))["epoch"] == 1


def test_overwrite_replaces_the_run_files_and_nothing_else(run_copy, capsys):
    written = {name for name in os.listdir(run_copy)}
    assert {n for n in written if n.endswith(".png")} <= set(files.PLOTS)  # every plot a run writes is listed
    assert {files.CHECKPOINT, files.METRICS, files.HISTORY, files.RUN_CONFIG} <= written
    dead = 2**22 + 4321
    ours = run_copy / f".checkpoint.pt.{dead}.mixshare-tmp"
    users = {"notes.txt": "mine", f"results.tmp{dead}": "mine too", "extra.png": "a figure of mine"}
    ours.write_bytes(b"half a checkpoint")
    for name, text in users.items():
        (run_copy / name).write_text(text)
    assert cli.main([*RUN, "--out", str(run_copy), "--overwrite", "--seed", "3"]) == 0
    assert not ours.exists()
    for name, text in users.items():
        assert (run_copy / name).read_text() == text
    assert not any(name.endswith(".png") and name in files.PLOTS for name in os.listdir(run_copy))  # plots=false now
    assert json.loads((run_copy / files.METRICS).read_text())["seed"] == 3
    assert not (run_copy / files.LOCK).exists()


def test_a_stale_lock_is_taken_over_and_a_live_one_names_its_owner(tmp_path):
    folder = str(tmp_path)
    lock = tmp_path / files.LOCK
    holder = textwrap.dedent(f"""
        import fcntl, json, os, sys, time
        fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"pid": os.getpid(), "host": "elsewhere", "started": "then", "command": "x"}}).encode())
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(files.FolderInUse, match=f"in use by pid {child.pid} on elsewhere since then"):
            with files.folder_lock(folder):
                pass
    finally:
        child.kill()
        child.wait()
    assert lock.exists()  # the killed owner's file is left behind, its flock released
    with files.folder_lock(folder) as record:
        assert json.loads(lock.read_text()) == record
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert not lock.exists()


def test_compare_reuses_only_a_run_of_the_same_config(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "single", "--seeds", "0", "--out", str(out), *TINY_ARGS]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    run = out / "single" / "seed0"
    before = snapshot(run)

    def no_training(*args, **kwargs):
        raise AssertionError("compare retrained a finished run of the same config")

    with monkeypatch.context() as patch:
        patch.setattr(train, "train", no_training)
        assert cli.main([*argv, "eval_batch_size=7", "--no-progress"]) == 0  # runtime keys differ: still reused
    again = capsys.readouterr().out
    assert "== run 1/1: single, seed 0" in table and "== run" not in again  # trained once, then read back
    assert [line for line in again.splitlines() if line.startswith("| single |")] == \
        [line for line in table.splitlines() if line.startswith("| single |")]
    assert snapshot(run) == before
    fails_cleanly([*argv, "epochs=2"], capsys, f"{run} holds a run of another config (epochs: 1 there, 2 now); "
                                               "pass --rerun to retrain it")
    assert snapshot(run) == before
    assert cli.main([*argv, "epochs=2", "--rerun"]) == 0
    assert json.loads((run / files.METRICS).read_text())["epochs"] == 2


# ------------------------------------------------------------------ data and loader


def test_loader_refuses_a_batch_beyond_the_data_or_the_ranks():
    dataset = synthetic_dataset(8, 2, 2, size=4)
    with pytest.raises(ValueError, match=r"batch_size 40 asks for 20 distinct images per step \(batch_repetition 2\), "
                                         r"more than the 8 training images; at most 16"):
        MimoLoader(dataset, 40, 2, batch_repetition=2)
    with pytest.raises(ValueError, match="batch_size 1 gives 1 rows per step, fewer than the 2 DDP ranks"):
        MimoLoader(dataset, 1, 2, world_size=2, rank=1)
    assert len(MimoLoader(dataset, 16, 2, batch_repetition=2)) == 1  # the whole training split in one step


def test_calibration_split_must_leave_every_class_a_training_image():
    dataset = synthetic_dataset(5, 2, 4, size=4)  # class 0 twice, classes 1 to 3 once
    with pytest.raises(ValueError, match=r"withholds every training image of class\(es\) 1, 2, 3"):
        hold_out(dataset, 0.6)
    assert hold_out(dataset, 0.5).calibration_images.shape[0] == 1


def test_ctrl_c_while_the_run_is_set_up(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.data, "load_data", interrupted)
    out = tmp_path / "run"
    assert cli.main([*RUN, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixshare train: interrupted before training started; nothing was written;"), err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("written, needle", [
    ({files.RUN_CONFIG: "{broken", files.METRICS: "{}"}, "config.json is not readable JSON; pass --rerun"),
    ({files.RUN_CONFIG: "[1, 2]", files.METRICS: "{}"}, "config.json is not a JSON mapping of config keys"),
    ({files.RUN_CONFIG: '{"epochs": true}', files.METRICS: "{}"}, "epochs must be an integer, got True (bool)"),
    ({files.METRICS: "{}"}, "holds run files but neither config.json nor checkpoint.pt: its config is unknown"),
    ({files.CHECKPOINT: "not a checkpoint"}, "checkpoint.pt is not a readable checkpoint"),
], ids=["broken json", "not a mapping", "wrong type", "no config", "bad checkpoint"])
def test_compare_refuses_a_run_folder_it_cannot_read(written, needle, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("compare trained over a run it could not read")

    monkeypatch.setattr(train, "train", no_training)
    for name, text in written.items():
        (tmp_path / name).write_text(text)
    config = cfg.apply(cfg.apply(cfg.Config(), cfg.preset("single"), "single"), TINY, "test")
    with pytest.raises(ValueError) as error:
        cli.compare_run(config, str(tmp_path))
    assert needle in str(error.value)
