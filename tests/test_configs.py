"""configs/: each file names the table row and source it reproduces and uses that source's settings."""

import pathlib

import pytest

from mixshare import config as cfg
from mixshare import data, optim

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.yaml"))
CIFAR_TRAIN = 50_000


def _load(path):
    updates = cfg.load_yaml(str(path))
    config = cfg.apply(cfg.Config(), cfg.preset(updates["method"]), "preset")
    config = cfg.apply(config, updates, str(path))
    cfg.validate(config)
    return config


def _decays_after(epochs_from_1):
    """lr factor of each epoch (counted from 1) when the lr is multiplied by 0.1 after each listed epoch."""
    return lambda epoch: 0.1 ** sum(epoch > e for e in epochs_from_1)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_cites_its_source(path):
    _load(path)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert header and header[0].startswith("# Reproduces:"), "the first line names the table row it reproduces"


# (file stem) -> batch repetition, the epochs after which the lr decays, warmup steps, source of the settings
OFFICIAL = {
    **{f"cifar100-wrn28-{w}-{m}": (2, (75, 150, 225), None, "MixShare appendix A")
       for w in (2, 5) for m in ("cut-mixmo", "unmix", "unmix-align", "mixshare-partial", "mixshare-fadeout")},
    # The official MixMo repository's bar4 configs of its WRN-28-10 rows: 3,128 warmup steps, decays at 101/201/226.
    "cifar100-wrn28-10-cut-mixmo": (4, (101, 201, 226), 3128, "official MixMo"),
    "cifar100-wrn28-10-mimo": (4, (101, 201, 226), 3128, "official MixMo"),
}


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_cnn_configs_follow_their_source(stem):
    b, decays, warmup_steps, source = OFFICIAL[stem]
    path = next(p for p in CONFIGS if p.stem == stem)
    assert source in path.read_text()
    config = _load(path)
    assert (config.epochs, config.batch_size, config.batch_repetition, config.l2) == (300, 64, b, 3e-4)
    assert config.lr_value() == pytest.approx(0.1 / b * 64 / 128)
    steps = data.steps_per_epoch(CIFAR_TRAIN, config.batch_size, config.batch_repetition)
    assert steps == CIFAR_TRAIN // (64 // b)
    factor = _decays_after(decays)
    warmup = warmup_steps or steps  # linear per step, lr * k / warmup at the k-th step (counted from 1)
    for epoch in range(2, config.epochs + 1):  # counted from 1
        first, last = max((epoch - 1) * steps, warmup), epoch * steps - 1
        assert optim.lr_factor(config, first, steps) == pytest.approx(factor(epoch), rel=1e-9), epoch
        assert optim.lr_factor(config, last, steps) == pytest.approx(factor(epoch), rel=1e-9), epoch
    for k in (1, warmup // 2, warmup - 1, warmup):
        assert optim.lr_factor(config, k - 1, steps) == pytest.approx(min(1.0, k / warmup), rel=1e-9)
