"""configs/: each file names the table row and source it reproduces and uses that source's settings."""

import math
import pathlib

import pytest
import torch

from mixshare import config as cfg
from mixshare import loader, optim

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.yaml"))
CIFAR_TRAIN = 50_000


def _load(path):
    updates = cfg.load_yaml(str(path))
    config = cfg.apply(cfg.Config(), cfg.preset(updates["method"]), "preset")
    config = cfg.apply(config, updates, str(path))
    cfg.validate(config)
    return config


def official_lrs(lr, milestones, warmup_period, epochs, steps_per_epoch, gamma=0.1):
    """The lr of every step, [epoch][step], as the official MixMo code's schedulers set it (the rule
    written out here, independently of mixshare.optim).

    Milestones (``MultiGammaStepLR``): at epoch 1 ``ModelWrapper._init_scheduler`` builds it with
    ``last_epoch = epoch - 2 = -1``, its constructor steps it once (0) and ``_init_scheduler`` once more
    (1); the learner steps it after every epoch; a step that reaches ``last_epoch == m`` multiplies the
    lr by gamma. Warmup (``GradualWarmupScheduler``, built next with ``total_steps = warmup_period``):
    its constructor steps once (lr * 1 / T), the learner steps it after every batch: lr * k / T while
    k <= T, then it leaves the lr alone.
    """
    current, last_epoch, warm = lr, -1, 0

    def step_milestones():
        nonlocal current, last_epoch
        last_epoch += 1
        if last_epoch in milestones:
            current *= gamma

    def step_warmup():
        nonlocal current, warm
        warm += 1
        if warm <= warmup_period:
            current = lr * warm / warmup_period

    step_milestones()
    step_milestones()
    if warmup_period > 0:
        step_warmup()
    out = []
    for _ in range(epochs):
        out.append([])
        for _ in range(steps_per_epoch):
            out[-1].append(current)
            if warmup_period > 0:
                step_warmup()
        step_milestones()
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_cites_its_source(path):
    _load(path)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert header and header[0].startswith("# Reproduces:"), "the first line names the table row it reproduces"


# The official configs' warmup_period: 782 * b steps, 782 = ceil(50,000 / 64) batches of 64 CIFAR images.
OFFICIAL_WARMUP_PER_B = math.ceil(CIFAR_TRAIN / 64)

# (file stem) -> batch repetition, the milestones as the official scheduler's (epochs counted from 1), source
OFFICIAL = {
    **{f"cifar100-wrn28-{w}-{m}": (2, (75, 150, 225), "MixShare appendix A")
       for w in (2, 5) for m in ("cut-mixmo", "unmix", "unmix-align", "mixshare-partial", "mixshare-fadeout")},
    # The official MixMo repository's bar4 configs of its WRN-28-10 rows: milestones 101, 201, 226.
    "cifar100-wrn28-10-cut-mixmo": (4, (101, 201, 226), "official MixMo"),
    "cifar100-wrn28-10-mimo": (4, (101, 201, 226), "official MixMo"),
}


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_cnn_configs_follow_their_source(stem):
    """Every step's lr of the first two epochs (the warmup, 782 * b steps, crosses into the second)
    and the first and last step's of every epoch are the official schedulers'."""
    b, milestones, source = OFFICIAL[stem]
    path = next(p for p in CONFIGS if p.stem == stem)
    assert source in path.read_text()
    config = _load(path)
    assert (config.epochs, config.batch_size, config.batch_repetition, config.l2) == (300, 64, b, 3e-4)
    assert config.lr_value() == pytest.approx(0.1 / b * 64 / 128)
    steps = loader.steps_per_epoch(CIFAR_TRAIN, config.batch_size, config.batch_repetition)
    assert steps == CIFAR_TRAIN // (64 // b)
    warmup = OFFICIAL_WARMUP_PER_B * b
    assert optim.warmup_steps(config, CIFAR_TRAIN) == warmup  # 1,564 at b = 2, 3,128 at b = 4
    expected = official_lrs(config.lr_value(), milestones, warmup, config.epochs, steps)
    checked = [(e, s) for e in (0, 1) for s in range(steps)]
    checked += [(e, s) for e in range(2, config.epochs) for s in (0, steps - 1)]
    for e, s in checked:
        ours = config.lr_value() * optim.lr_factor(config, e * steps + s, steps, CIFAR_TRAIN)
        assert ours == pytest.approx(expected[e][s], rel=1e-9), (e + 1, s)
    # the rule in words: milestone m lowers the lr from epoch m (counted from 1) on
    for m in milestones:
        assert expected[m - 2][-1] == pytest.approx(10 * expected[m - 1][0], rel=1e-9)


def test_the_demo_schedule_by_epoch():
    """make demo's settings (digits, 15 epochs, batch 32, b = 1): the scheduler as the run steps it.

    Warmup 0.5 epoch = floor(0.5 * ceil(1,347 / 32)) = 21 steps of 42 per epoch; the milestones 0.5
    and 0.75 of 15 epochs fall at 7.5 and 11.25, so the lr is x0.1 from epoch 8 and x0.01 from epoch
    12 (counted from 1: the first epoch at or after each milestone, for whole epochs).
    """
    config = cfg.merge(cfg.preset("cut-mixmo"), {}, {"dataset": "digits", "model": "wrn-10-1", "epochs": 15},
                       {"batch_repetition": 1, "batch_size": 32})
    images, steps, warmup = 1347, 1347 // 32, 21
    param = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([param], lr=config.lr_value())
    scheduler = optim.make_scheduler(optimizer, config, steps, images)
    for epoch in range(1, 16):
        for s in range(steps):
            k = (epoch - 1) * steps + s + 1
            expected = 0.1 * min(1.0, k / warmup) * (1.0 if epoch < 8 else 0.1 if epoch < 12 else 0.01)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), (epoch, s)
            optimizer.step()
            scheduler.step()
