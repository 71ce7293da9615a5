"""Expected failures of the CLI end in one line and exit 2, leave no empty output folder, and stale
temporaries of killed writes are cleared; every config value is checked against its range at load."""

import dataclasses
import os

import pytest
import torch

from mixshare import cli, config as cfg, files
from tests.test_runs_hostile import without_epoch_lines
from tests.test_train import TINY_ARGS


def _fails_cleanly(argv, capsys, *needles):
    assert cli.main(argv) == 2
    err = without_epoch_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# key, bad value, the range the message names
BAD_VALUES = [
    ("eval_batch_size", 0, ">= 1"),
    ("batch_size", -4, ">= 1"),
    ("epochs", 0, ">= 1"),
    ("lr", float("nan"), "> 0"),
    ("lr", float("inf"), "> 0"),
    ("momentum", 1.0, "in [0, 1)"),
    ("l2", -1e-4, ">= 0"),
    ("lr_decay", 0.0, "in (0, 1]"),
    ("lr_decay", 1e300, "in (0, 1]"),  # a factor past 1 grows the lr (1e300 overflowed the scheduler)
    ("synthetic_size", 2, ">= 4"),  # the CNNs' stride-2 stages cannot run below 4 pixels
    ("alpha", 0.0, "> 0"),
    ("cut_prob", 1.5, "in [0, 1]"),
    ("fade_fraction", 2.0, "in [0, 1]"),
    ("fade_epochs", -1.0, ">= 0"),
    ("warmup_epochs", float("nan"), ">= 0"),
    ("seed", -1, "in [0, "),
    ("synthetic_classes", 1, ">= 2"),
    ("drop_path", 1.0, "in [0, 1)"),
]


@pytest.mark.parametrize("key, value, expected", BAD_VALUES, ids=lambda v: str(v))
def test_config_values_out_of_range_are_refused_with_the_range(key, value, expected):
    config = cfg.Config()
    cfg.validate(config)
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate(dataclasses.replace(config, **{key: value}))
    assert str(error.value).startswith(f"{key} must be ") and expected in str(error.value), str(error.value)


def test_every_numeric_field_has_a_range():
    numeric = {f.name for f in dataclasses.fields(cfg.Config)
               if f.type in ("int", "float", "Optional[float]", "Optional[int]")}
    assert numeric <= set(cfg.RANGES), numeric - set(cfg.RANGES)


def test_set_eval_batch_size_zero_fails_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    _fails_cleanly(["train", "--out", str(out), *TINY_ARGS, "eval_batch_size=0"], capsys, "eval_batch_size must be >= 1")
    assert not out.exists()


def test_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    _fails_cleanly(["train", "--out", str(out), *TINY_ARGS], capsys, "is an existing file")
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("content, needle", [
    (b"", "not a readable checkpoint"),
    (b"PK\x03\x04 truncated", "not a readable checkpoint"),
    (None, "not a mixshare checkpoint"),  # a torch file holding something else
], ids=["empty", "truncated", "foreign"])
def test_bad_checkpoints_fail_in_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    for command in (["eval", str(path)], ["analyze", str(path), "--out", str(tmp_path / "a")]):
        _fails_cleanly(command, capsys, str(path), needle)
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", "--method", "cut-mixmo", "--out", str(out), *TINY_ARGS]) == 0
    return out


def test_checkpoint_of_another_model_fails_in_one_line(trained, tmp_path, capsys):
    state = files.load_checkpoint(str(trained / files.CHECKPOINT))
    state["config"]["num_subnets"] = 3  # weights of M = 2 under a config that says M = 3
    path = tmp_path / "other.pt"
    files.save_checkpoint(str(path), state)
    _fails_cleanly(["eval", str(path)], capsys, "holds weights of another model")


def test_resume_from_another_model_fails_in_one_line(trained, tmp_path, capsys):
    out = tmp_path / "resumed"
    out.mkdir()
    (out / files.CHECKPOINT).write_bytes((trained / files.CHECKPOINT).read_bytes())
    _fails_cleanly(["train", "--method", "cut-mixmo", "--out", str(out), "--resume", *TINY_ARGS,
                    "model=wrn-10-2"], capsys, "trained with another config", "model: 'wrn-10-1' there, 'wrn-10-2' now")
    assert sorted(os.listdir(out)) == [files.CHECKPOINT]  # the folder existed: kept, checkpoint untouched


def test_stale_temporaries_are_removed_at_start(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = out / f".checkpoint.pt.{dead}.mixshare-tmp"
    stale.write_bytes(b"half a checkpoint")
    live = out / f".metrics.json.{os.getpid()}.mixshare-tmp"  # a write of a live process is left alone
    live.write_bytes(b"{")
    users = [out / f"notes.tmp{dead}", out / f"data.{dead}.tmp", out / f"x.{dead}.mixshare-tmp"]  # not ours
    for path in users:
        path.write_text("a user's file")
    assert files.remove_stale_temporaries(str(out)) == [stale.name]
    assert not stale.exists() and live.exists() and all(path.exists() for path in users)


def test_atomic_write_leaves_no_temporary_on_failure(tmp_path):
    target = tmp_path / "missing" / "x.json"
    with pytest.raises(OSError):
        files.atomic_write_text(str(target), "{}")
    assert not list(tmp_path.rglob("*mixshare-tmp*"))


def test_failed_run_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with files.output_folder(str(out)):
            raise RuntimeError("failed before writing")
    assert not out.exists()
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError):
        with files.output_folder(str(kept)):
            (kept / "history.csv").write_text("epoch\n")
            raise RuntimeError("failed after writing")
    assert (kept / "history.csv").exists()
