"""The command line's help answers without importing torch, lists every config key from Config's own
metadata, and unknown keys and options name the nearest valid one."""

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from mixshare import cli, config as cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints the help of the command line given as arguments, then whether torch (or numpy) got imported.
_PROBE = """
import contextlib, io, sys
from mixshare import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.main(sys.argv[1:])
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "numpy", "matplotlib", "mixshare.data", "mixshare_ops") if m in sys.modules)
print(repr(heavy))
print(out.getvalue())
"""


def _run(args, code=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    run = subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    return run, time.perf_counter() - started


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--help"], ["eval", "--help"]])
def test_help_does_not_import_torch(argv):
    run, seconds = _run(argv, _PROBE)
    assert run.returncode == 0, run.stderr
    heavy, _, text = run.stdout.partition("\n")
    assert heavy == "[]", f"mixshare {' '.join(argv)} imported {heavy}"
    assert "usage: mixshare" in text
    assert seconds < 30, seconds  # torch alone takes seconds to import; a generous bound for busy machines


@pytest.mark.parametrize("argv", [["-m", "mixshare", "--help"], ["-m", "mixshare", "train", "--help"]])
def test_python_m_help_imports_no_torch(argv):
    run, _ = _run(["-X", "importtime", *argv])
    assert run.returncode == 0, run.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "mixshare.cli" in imported
    assert not {"torch", "numpy", "mixshare.data", "mixshare_ops"} & imported
    assert "usage: mixshare" in run.stdout


def test_train_help_lists_every_config_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(cfg.Config):
        meaning = field.metadata.get("help")
        assert meaning, f"config key {field.name} has no meaning in its metadata"
        assert f"\n  {field.name} = " in text, field.name
        assert meaning.split()[0] in text
    assert "  calibration_split = 0.0\n" in text and "  epochs = 300\n" in text
    assert "[in [0, 1)]" in text  # ranges from config.RANGES


def test_key_meanings_name_every_valid_choice():
    """The keys with a fixed set of values (config.choices(), from the modules owning them) name each one."""
    for key, valid in cfg.choices().items():
        meaning = cfg.FIELDS[key].metadata["help"]
        for value in valid:
            assert value in meaning, (key, value)


def test_dataset_names_are_one_list():
    from mixshare import data

    assert data.TRAINING_DATASETS is cfg.TRAINING_DATASETS and data.DATASETS is cfg.DATASETS


@pytest.mark.parametrize("source", ["--set", "yaml"])
def test_unknown_config_key_suggests_the_nearest(source, tmp_path, capsys):
    if source == "--set":
        argv = ["train", "--out", str(tmp_path / "x"), "--set", "learning_rte=0.1"]
    else:
        path = tmp_path / "c.yaml"
        path.write_text("unmix_chanels: 0.5\n")
        argv = ["train", "--out", str(tmp_path / "x"), "--config", str(path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    if source == "--set":
        assert "unknown config key 'learning_rte' in --set; valid keys: " in err  # no key is close to it
    else:
        assert "unknown config key 'unmix_chanels'" in err and "did you mean 'unmix_channels'?" in err
    assert not (tmp_path / "x").exists()


def test_nearest_key():
    assert cfg.nearest_key("epoch") == "epochs"
    assert cfg.nearest_key("--batch-size") == "batch_size"
    assert cfg.nearest_key("calibration-splt") == "calibration_split"
    assert cfg.nearest_key("zzzz") is None
    with pytest.raises(cfg.ConfigError, match=r"unknown config key 'seeed' in here; did you mean 'seed'\? valid keys"):
        cfg.apply(cfg.Config(), {"seeed": 1}, "here")


# (argparse takes an unambiguous prefix of an option as the option, e.g. --epoch for --epochs.)
@pytest.mark.parametrize("argv, hint", [
    (["train", "--out", "x", "--epcohs", "3"], "--epcohs: did you mean --epochs?"),
    (["train", "--out", "x", "--lr", "0.1"], "--lr is a config key: use --set lr=VALUE"),
    (["train", "--out", "x", "--unmix-channels=0.5"],
     "--unmix-channels is a config key: use --set unmix_channels=VALUE"),
    (["compare", "--out", "x", "--sedes", "1"], "--sedes: did you mean --seeds?"),
    (["train", "--out", "x", "--loss-rot", "2"], "did you mean the config key 'loss_root' (--set loss_root=VALUE)?"),
    (["train", "--out", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_unknown_options_name_the_nearest(argv, hint, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert not (tmp_path / "x").exists()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments:" in err and hint in err, err


def test_set_value_for_new_key_is_range_checked():
    with pytest.raises(cfg.ConfigError, match=r"calibration_split must be in \[0, 1\)"):
        cfg.validate(dataclasses.replace(cfg.Config(), calibration_split=1.0))


def test_train_help_lists_the_registered_models(capsys, monkeypatch):
    """--model's help and train --help's model list come from the registry, torchvision-* and timm-*
    included, each saying how to install its package when it is missing."""
    from mixshare import registry

    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    train_parser = cli.make_parser()._subparsers._group_actions[0].choices["train"]
    model_help = next(a.help for a in train_parser._actions if "--model" in a.option_strings)
    assert model_help.startswith("a registered model: wrn-<depth>-<width>, preact-resnet18, vit-tiny, "
                                 "vit-<depth>-<dim>[-<heads>], torchvision-<arch>, timm-<name> ")
    assert "--model MODEL" in text and "torchvision-<arch>" in text
    listing = text.split("\nmodels (")[1].split("\n\n")[0].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in listing] == [f.pattern for f in registry.families()]
    timm_line = next(line for line in listing if line.strip().startswith("timm-<name>:"))
    assert "needs timm, not installed: pip install timm" in timm_line
    assert "input_stem" in timm_line and "64 px" in timm_line
