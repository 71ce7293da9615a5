"""Mixers (mixshare.mixers): settings checked as the config's, each mode's plan against its rule, the
schedules, determinism, the paths through draw_plan / sample_plan, and the README's own loop."""

import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mixshare_ops
from mixshare import config as cfg
from mixshare import methods, mixers
from mixshare.backbone import MimoBackbone
from mixshare.mixers import CutMixMo, LinearMixMo, MimoSum, MixShare, MixViT, NoMixing
from mixshare.vit import MimoViT

FEATURES = 6


def backbone(m: int) -> MimoBackbone:
    """A tiny CNN of M subnetworks: 3x3 encoders (the grid is the image), FEATURES final channels."""
    return MimoBackbone(lambda: nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, FEATURES, 3, padding=1),
                        lambda: nn.Linear(FEATURES, 5), m, num_features=FEATURES)


CNN = {m: backbone(m) for m in (1, 2, 3)}
VIT = MimoViT(5, num_subnets=2, depth=2, dim=8, heads=2, patch=4, attribution_depth=1)
VIT_SINGLE = MimoViT(5, num_subnets=1, depth=2, dim=8, heads=2, patch=4, attribution_depth=1)


def images(m: int, rows: int = 5, size: int = 16) -> torch.Tensor:
    return torch.zeros(m, rows, 3, size, size)


def generators(seed: int):
    return torch.Generator().manual_seed(seed), random.Random(seed)


def plan_values(plan) -> tuple:
    unmix = None if plan.unmix is None else (plan.unmix.ratio, plan.unmix.channels, plan.unmix.normalize)
    return (plan.boxes.tolist(), plan.inside.tolist(), plan.outside.tolist(), plan.scale, plan.grid,
            plan.loss_weights.tolist(), unmix)


# ------------------------------------------------------------------------------------------- the rule


def hand_cut_probability(epoch, epochs, cut_prob, start):
    """MixMo's schedule: progress t = (epoch + 1) / epochs; cut_prob before start, then linear to 0 at t = 1."""
    t = (epoch + 1) / epochs
    return cut_prob if t < start or start >= 1 else cut_prob * max(0.0, (1 - t) / (1 - start))


def hand_fade(epoch, epochs, fade_epochs, fade_fraction):
    """MixShare's fadeout r: epoch / span, capped at 1 (0 without fadeout)."""
    span = fade_epochs if fade_epochs is not None else None if fade_fraction is None else fade_fraction * epochs
    if span is None:
        return 0.0
    return 1.0 if span <= 0 else min(1.0, epoch / span)


def expected_plan(s, m, rows, grid, epoch, epochs, gen, rng, num_features, scale):
    """A plan written from the MIMO / MixMo / MixShare rules for config values ``s``: (boxes, inside,
    outside, scale, grid, loss weights, unmix). Draws: Dirichlet ratios, host coin, host owner, centres."""
    no_box = torch.zeros(rows, 4, dtype=torch.int32)
    root = s["loss_root"]

    def reweighted(r):
        return m * r ** (1 / root) / (r ** (1 / root)).sum(1, keepdim=True)

    if s["mixing"] == "none":
        ones = torch.ones(rows, 1)
        return no_box, ones, ones, 1.0, grid, ones, None
    if s["mixing"] == "sum":
        w = torch.full((rows, m), 1 / m)
        return no_box, w, w, scale, grid, reweighted(w), None
    lam = torch._sample_dirichlet(torch.full((rows, m), float(s["alpha"])), generator=gen)
    if s["mixing"] == "linear" or not rng.random() < hand_cut_probability(epoch, epochs, s["cut_prob"],
                                                                           s["cut_decay_start"]):
        return no_box, lam, lam, scale, grid, reweighted(lam), None
    owner = rng.randrange(m)
    center = torch.rand(rows, 2, generator=gen)
    boxes, area = mixshare_ops.cutmix_boxes(lam[:, owner], center, *grid)
    inside = torch.zeros(rows, m)
    inside[:, owner] = 1
    outside = lam.clone()
    outside[:, owner] = 0
    outside = outside / outside.sum(1, keepdim=True)
    ratios = area[:, None] * inside + (1 - area[:, None]) * outside
    unmix = None
    if s["unmix"]:
        unmix = (hand_fade(epoch, epochs, s["fade_epochs"], s["fade_fraction"]),
                 round(s["unmix_channels"] * num_features), s["unmix_normalize"])
    return boxes, inside, outside, scale, grid, reweighted(ratios), unmix


def assert_plan(plan, expected):
    boxes, inside, outside, scale, grid, weights, unmix = expected
    assert torch.equal(plan.boxes, boxes) and torch.equal(plan.inside, inside) and torch.equal(plan.outside, outside)
    assert (plan.scale, plan.grid) == (scale, grid)
    torch.testing.assert_close(plan.loss_weights, weights, rtol=1e-5, atol=1e-6)
    got = None if plan.unmix is None else (plan.unmix.ratio, plan.unmix.channels, plan.unmix.normalize)
    assert got == (None if unmix is None else (pytest.approx(unmix[0], abs=1e-12), *unmix[1:]))


def method_model(method):
    m = cfg.preset(method)["num_subnets"]
    return (VIT if m > 1 else VIT_SINGLE) if method in cfg.VIT_PRESETS else CNN[m]


@pytest.mark.parametrize("method", list(cfg.ALL_PRESETS))
def test_every_preset_draws_the_rule(method):
    """Each preset's mixer, over several epochs (the schedules' corners included), gives the plan written
    from the rule with the same generators, draw for draw."""
    epochs = 12
    model = method_model(method)
    s = {**cfg.Config().to_dict(), **cfg.preset(method)}
    m = model.num_subnets
    grid = model.mixing_grid((16, 16))
    scale = float(m) if model.mixing_scale is None else model.mixing_scale
    mixer = mixers.create_mixer(method, model, epochs=epochs, generator=torch.Generator().manual_seed(7),
                                host_rng=random.Random(7))
    gen, rng = generators(7)
    kinds = set()
    for epoch in (0, 2.5, 5, 10, 10.5, 11):
        for _ in range(4):
            plan = mixer(images(m), epoch)
            assert_plan(plan, expected_plan(s, m, 5, grid, epoch, epochs, gen, rng, model.num_features, scale))
            kinds.add("cut" if plan.boxes.any() else "flat")
    assert torch.equal(mixer.generator.get_state(), gen.get_state())  # no draw more or less
    assert mixer.host_rng.getstate() == rng.getstate()
    if method == "cut-mixmo":
        assert kinds == {"cut", "flat"}


@pytest.mark.parametrize("method", list(cfg.ALL_PRESETS))
def test_draw_plan_and_sample_plan_are_the_mixer(method):
    model = method_model(method)
    m = model.num_subnets
    config = cfg.apply(cfg.Config(), {**cfg.preset(method), "epochs": 12, "model": "vit-tiny" if model is VIT
                                      or model is VIT_SINGLE else "wrn-16-2"}, "")
    mixer = mixers.from_config(config, model, generator=torch.Generator().manual_seed(3), host_rng=random.Random(3))
    draw_gen, draw_rng = generators(3)
    sample_gen, sample_rng = generators(3)
    grid = model.mixing_grid((16, 16))
    for epoch in (0, 6, 10.5):
        plan = plan_values(mixer(images(m), epoch))
        assert plan == plan_values(methods.draw_plan(method, model, images(m), epoch=epoch, epochs=12,
                                                     generator=draw_gen, host_rng=draw_rng))
        assert plan == plan_values(methods.sample_plan(config, 5, grid, epoch, sample_gen, sample_rng,
                                                       model.num_features, scale=model.mixing_scale))


def test_presets_pick_their_class():
    expected = {"single": NoMixing, "mimo": MimoSum, "multihead": MimoSum, "linear-mixmo": LinearMixMo,
                "cut-mixmo": CutMixMo, "unmix": MixShare, "unmix-align": MixShare, "mixshare-partial": MixShare,
                "mixshare-fadeout": MixShare, "single-vit": NoMixing, "mixvit": MixViT}
    assert set(expected) == set(cfg.ALL_PRESETS)
    for method, cls in expected.items():
        assert type(mixers.create_mixer(method, method_model(method), epochs=10)) is cls, method
    assert mixers.MIXINGS == ("none", "sum", "linear", "cut") == cfg.choices()["mixing"]


def test_class_defaults_are_the_presets():
    """Settings left unset are those of the class's preset (then the config's defaults)."""
    cut = CutMixMo(CNN[2], epochs=12)
    assert (cut.cut_prob, cut.cut_decay_start, cut.loss_root, cut.alpha) == (0.5, 11 / 12, 3.0, 2.0)
    share = MixShare(CNN[2], epochs=12)
    assert (share.cut_prob, share.unmix_channels, share.unmix_normalize, share.fade_epochs, share.fade_fraction,
            share.loss_root) == (1.0, 1.0, "mean", None, None, 1.0)
    vit = MixViT(VIT, epochs=12)
    assert (vit.cut_prob, vit.cut_decay_start, vit.loss_root) == (1.0, 1.0, 1.0)
    assert (LinearMixMo(CNN[2]).loss_root, MimoSum(CNN[2]).loss_root) == (3.0, 1.0)
    assert "cut_prob=0.5" in repr(cut) and repr(cut).startswith("CutMixMo(num_subnets=2, epochs=12")


# ------------------------------------------------------------------------------------------- each mode


def test_mimo_sum_weights_one_over_m_without_box():
    plan = MimoSum(CNN[3])(images(3), 0)
    assert torch.equal(plan.boxes, torch.zeros(5, 4, dtype=torch.int32))
    assert torch.equal(plan.inside, torch.full((5, 3), 1 / 3)) and torch.equal(plan.outside, plan.inside)
    assert plan.scale == 3.0 and plan.unmix is None
    torch.testing.assert_close(plan.loss_weights, torch.ones(5, 3))


def test_linear_weights_are_the_dirichlet_ratios():
    gen, _ = generators(1)
    plan = LinearMixMo(CNN[2], alpha=0.5, loss_root=2.0, generator=torch.Generator().manual_seed(1))(images(2), 0)
    lam = torch._sample_dirichlet(torch.full((5, 2), 0.5), generator=gen)
    assert torch.equal(plan.boxes, torch.zeros(5, 4, dtype=torch.int32))
    assert torch.equal(plan.inside, lam) and torch.equal(plan.outside, lam)
    root2 = lam.sqrt()
    torch.testing.assert_close(plan.loss_weights, 2 * root2 / root2.sum(1, keepdim=True))


@pytest.mark.parametrize("m", [2, 3])
def test_cut_box_owner_and_outside_weights(m):
    """Every batch cuts (cut_prob 1): the box is the CutMix rule's for the owner's ratio, the owner's
    one-hot inside, the others' renormalised ratios outside (the other input alone for M = 2)."""
    mixer = CutMixMo(CNN[m], epochs=10, cut_prob=1.0, loss_root=1.0, generator=torch.Generator().manual_seed(2),
                     host_rng=random.Random(2))
    gen, rng = generators(2)
    for _ in range(3):
        plan = mixer(images(m, rows=6), 0)
        lam = torch._sample_dirichlet(torch.full((6, m), 2.0), generator=gen)
        assert rng.random() < 1.0
        owner = rng.randrange(m)
        boxes, area = mixshare_ops.cutmix_boxes(lam[:, owner], torch.rand(6, 2, generator=gen), 16, 16)
        assert torch.equal(plan.boxes, boxes)
        sides = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        torch.testing.assert_close(area, sides.float() / 256)
        assert torch.equal(plan.inside, torch.eye(m)[owner].expand(6, m))
        for row in range(6):
            if m == 2:
                expected = [float(owner), 1.0 - owner]  # the other input alone
            else:
                rest = sum(float(lam[row, j]) for j in range(m) if j != owner)
                expected = [0.0 if j == owner else float(lam[row, j]) / rest for j in range(m)]
            assert plan.outside[row].tolist() == pytest.approx(expected, abs=1e-6)
        ratios = area[:, None] * plan.inside + (1 - area[:, None]) * plan.outside
        torch.testing.assert_close(plan.loss_weights, m * ratios)  # root 1: M times the realised ratios


def test_cut_weights_rule():
    lam = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    inside, outside = mixers.cut_weights(lam, owner=1)
    assert torch.equal(inside, torch.tensor([[0.0, 1.0, 0.0]] * 2))
    torch.testing.assert_close(outside, torch.tensor([[0.4, 0.0, 0.6], [2 / 3, 0.0, 1 / 3]]))
    assert mixers.cut_weights(torch.tensor([[0.3, 0.7]]))[1].tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("epochs, expected", [
    (12, [0.5] * 11 + [0.0]),                   # progress 11/12 in epoch 10 (0-based): still 0.5
    (24, [0.5] * 22 + [0.25, 0.0]),             # progress 23/24: half of the decay left
])
def test_cut_probability_schedule(epochs, expected):
    mixer = CutMixMo(CNN[2], epochs=epochs)  # cut-mixmo: 0.5, decaying from 11/12
    assert [mixer.cut_probability(e) for e in range(epochs)] == pytest.approx(expected, abs=1e-12)
    assert mixer.cut_probability(10.5) == pytest.approx(0.5 if epochs == 24 else 0.25)
    assert CutMixMo(CNN[2], epochs=4, cut_prob=0.8, cut_decay_start=0.5).cut_probability(2) == pytest.approx(0.4)
    assert MixViT(VIT, epochs=4).cut_probability(3) == 1.0  # no decay (start 1)


def test_fade_ratio_and_unmix_channels():
    fade = MixShare(CNN[2], epochs=300, fade_fraction=1 / 3)  # span 100 epochs
    assert [fade.fade_ratio(e) for e in (0, 50, 100, 250)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert MixShare(CNN[2], epochs=300, fade_epochs=10).fade_ratio(2.5) == 0.25  # fade_epochs wins
    assert MixShare(CNN[2], epochs=300, fade_epochs=10, fade_fraction=0.5).fade_ratio(2.5) == 0.25
    assert MixShare(CNN[2], epochs=300, fade_epochs=0).fade_ratio(0) == 1.0
    assert MixShare(CNN[2], epochs=300).fade_ratio(299) == 0.0  # full unmixing
    plan = MixShare(CNN[2], epochs=300, fade_fraction=1 / 3, unmix_channels=0.5, unmix_normalize="masked")(
        images(2), 50)
    assert (plan.unmix.ratio, plan.unmix.channels, plan.unmix.normalize) == (pytest.approx(0.5), 3, "masked")
    assert CutMixMo(CNN[2], epochs=3, cut_prob=1.0)(images(2), 0).unmix is None


def test_mixvit_mixes_tokens_on_the_patch_grid():
    plan = MixViT(VIT, epochs=5, generator=torch.Generator().manual_seed(0))(images(2, size=16), 0)
    assert plan.grid == (4, 4) and plan.scale == 1.0 and plan.unmix is None
    assert int(plan.boxes[:, 2].max()) <= 4 and int(plan.boxes[:, 3].max()) <= 4
    assert torch.equal(plan.inside.sum(1), torch.ones(5))  # a binary box on every batch


def test_no_mixing():
    plan = NoMixing(CNN[1])(images(1), 0)
    assert plan.inside.shape == (5, 1) and plan.scale == 1.0 and torch.equal(plan.loss_weights, torch.ones(5, 1))


# ------------------------------------------------------------------------------------------- determinism


def test_generators_reproduce_and_continue():
    def run(seed):
        mixer = MixShare(CNN[2], epochs=10, generator=torch.Generator().manual_seed(seed), host_rng=random.Random(seed))
        return [plan_values(mixer(images(2), 0)) for _ in range(3)]

    first = run(4)
    assert first == run(4)
    assert first != run(5)
    assert len({str(p) for p in first}) == 3  # each call continues the streams
    torch.manual_seed(9)
    random.seed(9)
    default = [plan_values(MixShare(CNN[2], epochs=10)(images(2), 0)) for _ in range(2)]
    torch.manual_seed(9)
    random.seed(9)
    mixer = MixShare(CNN[2], epochs=10)
    assert default == [plan_values(mixer(images(2), 0)) for _ in range(2)]


# ------------------------------------------------------------------------------------------- refusals


def config_message(key, value):
    """The message the config gives for ``key: value``."""
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate(cfg.apply(cfg.Config(), {key: value}, "test"))
    return str(error.value)


@pytest.mark.parametrize("cls, key, value, expected", [
    (CutMixMo, "cut_prob", 1.5, r"cut_prob must be in [0, 1], got 1.5"),
    (CutMixMo, "cut_decay_start", -0.1, r"cut_decay_start must be in [0, 1], got -0.1"),
    (CutMixMo, "alpha", 0.0, r"alpha must be > 0, got 0.0"),
    (LinearMixMo, "alpha", float("inf"), r"alpha must be > 0, got inf"),
    (MimoSum, "loss_root", -1.0, r"loss_root must be > 0, got -1.0"),
    (MixShare, "unmix_channels", 1.5, r"unmix_channels must be in [0, 1], got 1.5"),
    (MixShare, "fade_fraction", 2.0, r"fade_fraction must be in [0, 1], got 2.0"),
    (MixShare, "fade_epochs", -1.0, r"fade_epochs must be >= 0, got -1.0"),
    (MixShare, "unmix_normalize", "sum", r"unmix_normalize must be one of mean, masked, got 'sum'"),
    (CutMixMo, "epochs", 0, r"epochs must be >= 1, got 0"),
])
def test_settings_are_checked_as_the_config_checks_them(cls, key, value, expected):
    with pytest.raises(cfg.ConfigError) as error:
        cls(CNN[2], **{"epochs": 10, key: value})
    assert str(error.value) == expected == config_message(key, value)


@pytest.mark.parametrize("build, exc, message", [
    (lambda: CutMixMo(CNN[2], epochs=2.5), cfg.ConfigError, r"epochs must be an integer, got 2\.5 \(float\)"),
    (lambda: CutMixMo(CNN[2], epochs=10, alpha="much"), cfg.ConfigError, r"alpha must be a number, got 'much'"),
    (lambda: CutMixMo(CNN[2], epochs=None), TypeError, r"CutMixMo needs epochs"),
    (lambda: NoMixing(CNN[2]), cfg.ConfigError, r"^mixing: none needs num_subnets = 1$"),
    (lambda: MimoSum(CNN[1]), cfg.ConfigError, r"^a single network \(num_subnets = 1\) needs mixing: none$"),
    (lambda: MixShare(CNN[2], epochs=10, cut_prob=0.5), cfg.ConfigError,
     r"^unmixing needs CutMix on every batch \(mixing: cut, cut_prob: 1\)$"),
    (lambda: MixShare(VIT, epochs=10), ValueError, r"MixShare unmixes a CNN's final map.*use MixViT"),
    (lambda: MixViT(CNN[2], epochs=10), TypeError, r"MixViT mixes a MimoViT's tokens, got MimoBackbone"),
    (lambda: MimoSum(nn.Linear(2, 2)), TypeError, r"model must be a mixshare\.protocol\.MimoModel"),
    (lambda: MimoSum(), TypeError, r"MimoSum needs the model \(or, to call draw\(\) alone, num_subnets\)"),
    (lambda: MimoSum(CNN[2], num_subnets=3), ValueError, r"num_subnets is the model's \(M = 2\), got 3"),
    (lambda: MimoSum(CNN[2], generator=0), TypeError, r"generator must be a torch\.Generator, got int"),
    (lambda: MimoSum(CNN[2], host_rng=3), TypeError, r"host_rng must be a random\.Random, got int"),
    (lambda: MimoSum(num_subnets=2)(images(2), 0), TypeError, r"built without a model"),
    (lambda: MimoSum(CNN[2])(images(3), 0), ValueError, r"images must be a \[M=2, R, C, H, W\] tensor.*\(3, 5,"),
    (lambda: MimoSum(CNN[2])(images(2)[0], 0), ValueError, r"images must be a \[M=2, R, C, H, W\] tensor"),
    (lambda: MimoSum(CNN[2])(images(2), -1), ValueError, r"epoch must be a number >= 0 \(0-based\), got -1"),
    (lambda: CutMixMo(CNN[2], epochs=4)(images(2), 4), ValueError, r"epoch must be a number in \[0, epochs\) = "
                                                                  r"\[0, 4\) \(0-based\), got 4"),
    (lambda: CutMixMo(CNN[2], epochs=4)(images(2), True), ValueError, r"epoch must be a number in \[0, epochs\)"),
    (lambda: MimoSum(CNN[2], generator=torch.Generator())(images(2).to("meta"), 0), ValueError,
     r"generator is on cpu, images on meta"),
    (lambda: MimoSum(num_subnets=2).draw(4, (8, 8), 0, num_features=6), ValueError,
     r"a plan needs a generator or, to draw from torch's default generator, a device"),
    (lambda: mixers.create_mixer("cut-mixmo", CNN[2], epochs=10, alpah=1.0), cfg.ConfigError,
     r"create_mixer\('cut-mixmo'\): unknown config key 'alpah'.*did you mean 'alpha'"),
    (lambda: mixers.create_mixer("mixvit", CNN[2], epochs=10), cfg.ConfigError,
     r"create_mixer\('mixvit'\): method 'mixvit' needs a ViT model"),
])
def test_refusals(build, exc, message):
    with pytest.raises(exc, match=message):
        build()


def test_config_mixing_checks_come_from_the_mixers():
    """config.validate's mixing refusals are the mixers' (their order kept: M before unmixing)."""
    def refusal(**values):
        with pytest.raises(cfg.ConfigError) as error:
            cfg.validate(cfg.apply(cfg.Config(), values, "test"))
        return str(error.value)

    assert refusal(mixing="none") == "mixing: none needs num_subnets = 1"
    assert refusal(mixing="none", unmix=True) == "mixing: none needs num_subnets = 1"
    assert refusal(mixing="linear", unmix=True) == mixers.UNMIX_NEEDS_CUT
    assert refusal(unmix=True, cut_prob=0.5) == mixers.UNMIX_NEEDS_CUT
    assert refusal(num_subnets=1) == "a single network (num_subnets = 1) needs mixing: none"
    assert refusal(mixing="mixup").startswith("mixing must be one of none, sum, linear, cut")


# ------------------------------------------------------------------------------------------- the README's loop


def readme_block(title: str) -> str:
    """The first python block after the README heading ``title``."""
    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    section = text.split(f"\n### {title}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_training_loop_runs_and_trains():
    """The README's own training loop with a mixer, run as written on tiny data: every batch gets a
    new plan of its epoch, and the weights change."""
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 4, 3, 8, 8, generator=generator), torch.randint(0, 10, (2, 4), generator=generator))]
    torch.manual_seed(0)
    random.seed(0)
    namespace = {"loader": batches, "epochs": 2}
    code = readme_block("Your own training loop")
    exec(compile(code, "README.md", "exec"), namespace)
    model, mixer, plan = namespace["model"], namespace["mixer"], namespace["plan"]
    assert isinstance(mixer, MixShare) and mixer.fade_fraction == pytest.approx(1 / 3) and mixer.model is model
    assert plan.unmix is not None and plan.unmix.ratio == pytest.approx(1.0)  # epoch 1 of 2: past the fade span
    assert namespace["loss"].isfinite()
    torch.manual_seed(0)  # the model again, as the loop found it: the same seed, nothing drawn before it
    initial = {}
    exec(compile(code.split("\nmixer =")[0], "README.md", "exec"), initial)
    start = dict(initial["model"].named_parameters())
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, start[name])]
    assert len(moved) == len(start), sorted(set(start) - set(moved))
