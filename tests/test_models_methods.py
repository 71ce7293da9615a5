"""Models, method presets, schedules, loss weights, configuration."""

import random

import pytest
import torch

from mixshare import config as cfg
from mixshare import methods
from mixshare.models import MixPlan, build_model, wide_resnet


@pytest.mark.parametrize("name,params", [("wrn-16-2", 0.69e6), ("wrn-28-2", 1.46e6), ("wrn-28-10", 36.5e6)])
def test_wide_resnet_shapes_and_size(name, params):
    model = build_model(name, 100, num_subnets=2)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) / params < 0.05, count
    if name != "wrn-28-10":
        logits = model(torch.randn(2, 3, 3, 32, 32))
        assert logits.shape == (2, 3, 100)
        assert [f.shape[1:] for f in model.stage_features(torch.randn(2, 1, 3, 32, 32))] == [
            (16 * int(name[-1]), 32, 32), (32 * int(name[-1]), 16, 16), (64 * int(name[-1]), 8, 8)]


def test_preact_resnet18_and_single_network():
    model = build_model("preact-resnet18", 200, num_subnets=1)
    assert model.predict(torch.randn(2, 3, 64, 64)).shape == (1, 2, 200)
    with pytest.raises(ValueError, match="wrn-<depth>-<width>"):
        build_model("resnet50", 10, 2)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wrn-27-2", 10, 2)


def test_encoder_initialisations():
    torch.manual_seed(0)
    identical = wide_resnet(10, 1, 10, 3, "identical")
    assert all(torch.equal(e.weight, identical.encoders[0].weight) for e in identical.encoders)
    colinear = wide_resnet(10, 1, 10, 2, "colinear")
    w0, w1 = colinear.encoders[0].weight.flatten(), colinear.encoders[1].weight.flatten()
    factor = (w1 / w0).mean()
    assert 0.5 <= factor <= 2.0 and torch.allclose(w1, factor * w0, rtol=1e-5)
    independent = wide_resnet(10, 1, 10, 2, "independent")
    assert not torch.equal(independent.encoders[0].weight, independent.encoders[1].weight)


def test_forward_with_plan_mixes_and_unmixes():
    torch.manual_seed(0)
    model = wide_resnet(10, 1, 10, 2, "identical").eval()
    images = torch.randn(2, 4, 3, 16, 16)
    boxes = torch.tensor([[0, 0, 8, 8]] * 4, dtype=torch.int32)
    eye = torch.eye(2)
    plan = MixPlan(boxes, eye[0].expand(4, 2), eye[1].expand(4, 2), 2.0, unmix=True, unmix_ratio=0.0)
    logits = model(images, plan)
    assert logits.shape == (2, 4, 10)
    # ratio 1 switches unmixing off: both heads see the plain pooled features.
    plan.unmix_ratio = 1.0
    plain = model(images, MixPlan(boxes, eye[0].expand(4, 2), eye[1].expand(4, 2), 2.0))
    torch.testing.assert_close(model(images, plan), plain)


def test_presets_cover_the_paper_methods():
    assert set(methods.PRESETS) == {
        "single", "mimo", "linear-mixmo", "cut-mixmo", "unmix", "unmix-align", "mixshare-partial", "mixshare-fadeout"}
    for name in methods.PRESETS:
        cfg.validate(cfg.apply(cfg.Config(), methods.preset(name), name))
    fade = cfg.apply(cfg.Config(epochs=300), methods.preset("mixshare-fadeout"), "")
    assert fade.encoder_init == "identical" and fade.unmix and fade.input_repetition == 0.1 and fade.loss_root == 1
    assert fade.fade_span() == pytest.approx(100)
    cut = cfg.apply(cfg.Config(), methods.preset("cut-mixmo"), "")
    assert cut.cut_prob == 0.5 and cut.loss_root == 3 and not cut.unmix
    with pytest.raises(ValueError, match="valid methods: single, mimo"):
        methods.preset("mixup")


def test_cut_probability_schedule():
    config = cfg.apply(cfg.Config(), methods.preset("cut-mixmo"), "")
    assert methods.cut_probability(config, 0.0) == 0.5
    assert methods.cut_probability(config, 10 / 12) == 0.5
    assert methods.cut_probability(config, 11.5 / 12) == pytest.approx(0.25)
    assert methods.cut_probability(config, 1.0) == 0.0


def test_fade_ratio():
    config = cfg.apply(cfg.Config(epochs=300), methods.preset("mixshare-fadeout"), "")
    assert [methods.fade_ratio(config, e) for e in (0, 50, 100, 250)] == [0.0, 0.5, 1.0, 1.0]
    assert methods.fade_ratio(cfg.apply(cfg.Config(), methods.preset("unmix"), ""), 200) == 0.0


def test_loss_weights():
    ratios = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    torch.testing.assert_close(methods.loss_weights(ratios, 1.0), 2 * ratios)
    expected = 2 * ratios ** (1 / 3) / (ratios ** (1 / 3)).sum(1, keepdim=True)
    torch.testing.assert_close(methods.loss_weights(ratios, 3.0), expected)
    assert methods.loss_weights(ratios, 3.0)[0, 0] < 1.6  # less lopsided than the ratios


@pytest.mark.parametrize("name", ["mimo", "linear-mixmo", "cut-mixmo", "mixshare-partial", "mixshare-fadeout"])
def test_sample_plan(name):
    config = cfg.apply(cfg.Config(epochs=12), methods.preset(name), "")
    gen = torch.Generator().manual_seed(0)
    plan, weights = methods.sample_plan(config, 6, (32, 32), 2, 2 / 12, gen, random.Random(0), 64)
    assert weights.shape == (6, 2) and torch.allclose(weights.sum(1), torch.full((6,), 2.0), atol=1e-5) \
        or config.loss_root != 1
    assert plan.inside.shape == (6, 2) and plan.scale == 2.0
    if name in ("mixshare-partial", "mixshare-fadeout"):
        assert plan.unmix and plan.boxes.shape == (6, 4)
        assert plan.unmix_channels == (16 if name == "mixshare-partial" else 64)
        assert plan.unmix_ratio == (0.0 if name == "mixshare-partial" else pytest.approx(0.5))
        # Each sample's box belongs to exactly one input.
        assert torch.equal(plan.inside.sum(1), torch.ones(6))
    if name == "mimo":
        assert torch.equal(plan.inside, torch.full((6, 2), 0.5))


def test_sample_plan_m3_follows_mixmo_rule():
    config = cfg.apply(cfg.Config(), dict(methods.preset("unmix"), num_subnets=3), "")
    plan, weights = methods.sample_plan(config, 5, (8, 8), 0, 0.0, torch.Generator().manual_seed(1),
                                        random.Random(1), 32)
    owner = int(plan.inside[0].argmax())
    assert torch.all(plan.outside[:, owner] == 0)
    torch.testing.assert_close(plan.outside.sum(1), torch.ones(5))
    assert weights.shape == (5, 3)


def test_config_layers_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: wrn-16-2\nlr_milestones: [0.5]\nunmix_channels: 0.5\n")
    config = cfg.apply(cfg.Config(), cfg.load_yaml(str(path)), str(path))
    config = cfg.apply(config, cfg.parse_set(["epochs=7", "nesterov=false", "lr=null"]), "--set")
    assert (config.model, config.lr_milestones, config.epochs, config.nesterov) == ("wrn-16-2", (0.5,), 7, False)
    assert config.lr_value() == pytest.approx(0.1 / 2 * 64 / 128)
    with pytest.raises(cfg.ConfigError, match="unknown config key 'epoch'.*valid keys:.*epochs"):
        cfg.apply(config, {"epoch": 3}, "--set")
    with pytest.raises(cfg.ConfigError, match="epochs: cannot read"):
        cfg.apply(config, {"epochs": "many"}, "--set")
    with pytest.raises(cfg.ConfigError, match="mixing must be one of"):
        cfg.validate(cfg.apply(config, {"mixing": "mixup"}, ""))
    with pytest.raises(cfg.ConfigError, match="unmixing needs CutMix"):
        cfg.validate(cfg.apply(config, {"unmix": True, "mixing": "cut", "cut_prob": 0.5}, ""))
