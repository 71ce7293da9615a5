"""Models, method presets, schedules, loss weights, configuration."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from mixshare import config as cfg
from mixshare import methods
from mixshare.methods import MixPlan, UnmixPlan
from mixshare.models import PreActBlock, WideBlock, build_model, preact_resnet18, wide_resnet


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


def _official_wrn_logits(state: dict, images: torch.Tensor, depth: int, width: int, m: int) -> torch.Tensor:
    """Test-time logits [M, B, K] of the official MixMo WRN (``wrn.py``), written from its rules,
    with this project's parameter names: every encoder sees the image and the M encodings are summed;
    a block is BN-ReLU-conv3x3(stride 1)-BN-ReLU-[pad (0, 1, 0, 1), conv3x3 stride 2, no padding |
    conv3x3 stride 1, padding 1] plus a 1x1 conv of the raw input where the shape changes."""
    def bn(x, name):
        return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False, eps=1e-5)

    x = sum(F.conv2d(images, state[f"encoders.{i}.weight"], padding=1) for i in range(m))
    channels, n = 16, (depth - 4) // 6
    for s_index, (out_channels, stride) in enumerate([(16 * width, 1), (32 * width, 2), (64 * width, 2)]):
        for k in range(n):
            p = f"stages.{s_index}.{k}"
            block_stride = stride if k == 0 else 1
            out = F.conv2d(F.relu(bn(x, f"{p}.bn1")), state[f"{p}.conv1.weight"], padding=1)
            out = F.relu(bn(out, f"{p}.bn2"))
            if block_stride != 1:
                out = F.conv2d(F.pad(out, (0, 1, 0, 1)), state[f"{p}.conv2.weight"], stride=2)
            else:
                out = F.conv2d(out, state[f"{p}.conv2.weight"], padding=1)
            if block_stride != 1 or channels != out_channels:
                x = out + F.conv2d(x, state[f"{p}.shortcut.weight"], stride=block_stride)
            else:
                x = out + x
            channels = out_channels
    pooled = F.relu(bn(x, "final_bn")).mean(dim=(2, 3))
    return torch.stack([F.linear(pooled, state[f"heads.{i}.weight"], state[f"heads.{i}.bias"]) for i in range(m)])


@pytest.mark.parametrize("depth, width", [(10, 1), (16, 2)])
def test_wide_resnet_gives_the_official_networks_logits(depth, width):
    torch.manual_seed(0)
    model = wide_resnet(depth, width, 10, 2).double().eval()
    with torch.no_grad():  # BatchNorm away from identity, so that every term shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    expected = _official_wrn_logits(model.state_dict(), images, depth, width, 2)
    torch.testing.assert_close(model.predict(images), expected, rtol=1e-10, atol=1e-10)


def test_wide_block_strides_its_second_conv_and_shortcuts_the_raw_input():
    block = WideBlock(16, 32, 2)
    assert block.conv1.stride == (1, 1) and block.conv1.padding == (1, 1)
    assert block.conv2.stride == (2, 2) and block.conv2.padding == (0, 0)
    assert block.shortcut.stride == (2, 2) and block.shortcut.kernel_size == (1, 1)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        # With the residual branch at zero, the block's output is its shortcut: a 1x1 conv of x itself.
        block.conv2.weight.zero_()
        torch.testing.assert_close(block(x), F.conv2d(x, block.shortcut.weight, stride=2))
    assert block(x).shape == (2, 32, 4, 4)
    same = WideBlock(16, 16, 1)
    assert same.shortcut is None and same.conv2.padding == (1, 1)


def test_preact_block_keeps_the_official_resnet_rule():
    block = PreActBlock(16, 32, 2)
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        block.conv2.weight.zero_()
        torch.testing.assert_close(block(x), F.conv2d(F.relu(block.bn1(x)), block.shortcut.weight, stride=2))


def _truncated_kaiming_check(weight: torch.Tensor):
    """The official torchutils init: std sqrt(2 / fan_in), truncated at 2 / 0.8796 of it."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in)
    bound = 2.0 * std / 0.87962566103423978
    w = weight.detach().double()
    assert w.abs().max() <= bound * (1 + 1e-6)
    # the sample std of n values lies within a few sqrt(1 / (2n)) of the true one
    assert abs(w.std().item() / std - 1) < 4 / math.sqrt(2 * w.numel()) + 1e-3, (tuple(weight.shape), w.std(), std)
    return w.abs().max().item() / bound


def test_initialisation_is_the_official_truncated_kaiming_fan_in():
    torch.manual_seed(0)
    model = wide_resnet(16, 4, 100, 2)
    reach = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            reach.append(_truncated_kaiming_check(module.weight))
            if module.bias is not None:
                assert (module.bias == 0).all()
    assert max(reach) > 0.95  # truncated near the bound, not a narrower distribution
    # fan_in, not fan_out: a 64 -> 128 3x3 conv has std sqrt(2 / 576), not sqrt(2 / 1152)
    conv = model.stages[2][0].conv1
    assert conv.weight.shape == (256, 128, 3, 3)
    assert abs(conv.weight.std().item() - math.sqrt(2 / (128 * 9))) < 0.02 * math.sqrt(2 / (128 * 9))
    # heads too: std sqrt(2 / 256), far from PyTorch's default uniform (std 1 / sqrt(3 * 256))
    head = model.heads[0].weight
    assert abs(head.std().item() - math.sqrt(2 / 256)) < 0.05 * math.sqrt(2 / 256)
    # the official PreActResNet starts its heads from N(0, 0.01)
    preact = preact_resnet18(200, 2)
    assert abs(preact.heads[0].weight.std().item() - 0.01) < 0.0005


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
    weights = torch.ones(4, 2)
    plan = MixPlan(boxes, eye[0].expand(4, 2), eye[1].expand(4, 2), 2.0, (16, 16), weights, UnmixPlan(0.0, 64, "mean"))
    logits = model(images, plan)
    assert logits.shape == (2, 4, 10)
    # ratio 1 switches unmixing off: both heads see the plain pooled features.
    faded = MixPlan(boxes, eye[0].expand(4, 2), eye[1].expand(4, 2), 2.0, (16, 16), weights, UnmixPlan(1.0, 64, "mean"))
    plain = model(images, MixPlan(boxes, eye[0].expand(4, 2), eye[1].expand(4, 2), 2.0, (16, 16), weights))
    torch.testing.assert_close(model(images, faded), plain)


def test_presets_cover_the_paper_methods():
    assert set(cfg.PRESETS) == {
        "single", "mimo", "linear-mixmo", "cut-mixmo", "unmix", "unmix-align", "mixshare-partial", "mixshare-fadeout",
        "multihead"}
    for name in cfg.PRESETS:
        cfg.validate(cfg.apply(cfg.Config(), cfg.preset(name), name))
    fade = cfg.apply(cfg.Config(epochs=300), cfg.preset("mixshare-fadeout"), "")
    assert fade.encoder_init == "identical" and fade.unmix and fade.input_repetition == 0.1 and fade.loss_root == 1
    assert methods.fade_span(fade) == pytest.approx(100)
    cut = cfg.apply(cfg.Config(), cfg.preset("cut-mixmo"), "")
    assert cut.cut_prob == 0.5 and cut.loss_root == 3 and not cut.unmix
    with pytest.raises(ValueError, match="valid methods: single, mimo"):
        cfg.preset("mixup")


def _official_cut_probability(epoch_from_1: int, epochs: int, prob: float = 0.5) -> float:
    """The official MixMo rule: ratio = epoch / epochs with epochs counted from 1; decay from 11/12."""
    ratio = epoch_from_1 / epochs
    return prob if ratio < 11 / 12 else prob * max(0.0, (1 - ratio) / (1 - 11 / 12))


@pytest.mark.parametrize("epochs", [12, 300])
def test_cut_probability_schedule(epochs):
    config = cfg.apply(cfg.Config(epochs=epochs), cfg.preset("cut-mixmo"), "")
    got = [methods.cut_probability(config, e) for e in range(epochs)]  # 0-based epochs of the loop
    expected = [_official_cut_probability(e + 1, epochs) for e in range(epochs)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[-1] == 0.0 and got[-2] > 0  # no CutMix in the last epoch
    first_decayed = next(e for e in range(epochs) if got[e] < 0.5)
    assert (first_decayed + 1) / epochs > 11 / 12  # the epoch at ratio 11/12 still cuts with p = 0.5


def test_unmix_ratio():
    config = cfg.apply(cfg.Config(epochs=300), cfg.preset("mixshare-fadeout"), "")
    assert [methods.unmix_ratio(config, e) for e in (0, 50, 100, 250)] == [0.0, 0.5, 1.0, 1.0]
    assert methods.unmix_ratio(cfg.apply(cfg.Config(), cfg.preset("unmix"), ""), 200) == 0.0


def test_loss_weights():
    ratios = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    torch.testing.assert_close(methods.loss_weights(ratios, 1.0), 2 * ratios)
    expected = 2 * ratios ** (1 / 3) / (ratios ** (1 / 3)).sum(1, keepdim=True)
    torch.testing.assert_close(methods.loss_weights(ratios, 3.0), expected)
    assert methods.loss_weights(ratios, 3.0)[0, 0] < 1.6  # less lopsided than the ratios


@pytest.mark.parametrize("name", ["mimo", "linear-mixmo", "cut-mixmo", "mixshare-partial", "mixshare-fadeout"])
def test_sample_plan(name):
    config = cfg.apply(cfg.Config(epochs=12), cfg.preset(name), "")
    gen = torch.Generator().manual_seed(0)
    plan = methods.sample_plan(config, 6, (32, 32), 2, gen, random.Random(0), 64)
    weights = plan.loss_weights
    assert weights.shape == (6, 2) and torch.allclose(weights.sum(1), torch.full((6,), 2.0), atol=1e-5) \
        or config.loss_root != 1
    assert plan.inside.shape == (6, 2) and plan.scale == 2.0
    if name in ("mixshare-partial", "mixshare-fadeout"):
        assert plan.unmix is not None and plan.boxes.shape == (6, 4)
        assert plan.unmix.channels == (16 if name == "mixshare-partial" else 64)
        assert plan.unmix.ratio == (0.0 if name == "mixshare-partial" else pytest.approx(0.5))
        # Each sample's box belongs to exactly one input.
        assert torch.equal(plan.inside.sum(1), torch.ones(6))
    if name == "mimo":
        assert torch.equal(plan.inside, torch.full((6, 2), 0.5))


def test_sample_plan_m3_follows_mixmo_rule():
    config = cfg.apply(cfg.Config(), dict(cfg.preset("unmix"), num_subnets=3), "")
    plan = methods.sample_plan(config, 5, (8, 8), 0, torch.Generator().manual_seed(1), random.Random(1), 32)
    weights = plan.loss_weights
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
    with pytest.raises(cfg.ConfigError, match="epochs must be an integer, got .many."):
        cfg.apply(config, {"epochs": "many"}, "--set")
    with pytest.raises(cfg.ConfigError, match="mixing must be one of"):
        cfg.validate(cfg.apply(config, {"mixing": "mixup"}, ""))
    with pytest.raises(cfg.ConfigError, match="unmixing needs CutMix"):
        cfg.validate(cfg.apply(config, {"unmix": True, "mixing": "cut", "cut_prob": 0.5}, ""))


def _merged(preset_name="cut-mixmo", file_values=None, flags=None, set_values=None) -> cfg.Config:
    return cfg.merge(cfg.preset(preset_name), file_values or {}, flags or {}, set_values or {})


def test_merge_order_defaults_preset_dataset_file_flags_set():
    # each later layer wins over every earlier one
    config = _merged("cut-mixmo", {"epochs": 5, "lr": 0.3, "model": "wrn-16-2"}, {"epochs": 6, "seed": None},
                     {"lr": 0.4})
    assert (config.loss_root, config.model, config.epochs, config.seed, config.lr) == (3.0, "wrn-16-2", 6, 0, 0.4)
    assert _merged("cut-mixmo", {"cut_prob": 0.25}).cut_prob == 0.25  # the file overrides the preset
    with pytest.raises(cfg.ConfigError, match="cut_prob must be in"):
        _merged(set_values={"cut_prob": 2})


@pytest.mark.parametrize("name", sorted(cfg.PRESETS))
def test_digits_defaults_replace_the_cifar_schedule_for_sgd_only(name):
    digits = _merged(name)
    assert digits.dataset == "digits"
    assert (digits.lr_value(), digits.lr_milestones, digits.warmup_epochs) == (0.1, (0.5, 0.75), 0.5)
    # the paper recipe everywhere else: lr 0.1 / b * batch / 128, decays at 25/50/75%, one epoch of warmup
    cifar = _merged(name, flags={"dataset": "cifar100"})
    b = cifar.batch_repetition
    assert (cifar.lr_value(), cifar.lr_milestones, cifar.warmup_epochs) == (0.1 / b * 64 / 128, (0.25, 0.5, 0.75), 1.0)
    # the file, the flags and --set still override them
    assert _merged(name, {"lr": 0.02}).lr == 0.02
    assert _merged(name, set_values={"warmup_epochs": 2, "lr_milestones": "[0.3]"}).warmup_epochs == 2.0
    assert _merged(name, {"dataset": "cifar10"}, {"dataset": "digits"}).lr == 0.1  # the final dataset decides


@pytest.mark.parametrize("model", ["torchvision-resnet18", "timm-resnet18"])
def test_imagenet_resnets_keep_the_recipe_lr_on_digits(model):
    """At lr 0.1 an ImageNet ResNet stays at chance on the digits (see config.dataset_defaults): it keeps
    the recipe's 0.1 / b * batch / 128; the schedule is the digits' as for every CNN."""
    for flags, batch_repetition, expected in (({}, 2, 0.1 / 2 * 64 / 128), ({"batch_size": 32}, 1, 0.1 * 32 / 128)):
        config = _merged("cut-mixmo", {"model": model, "batch_repetition": batch_repetition}, flags)
        assert config.lr_value() == pytest.approx(expected)
        assert (config.lr_milestones, config.warmup_epochs) == ((0.5, 0.75), 0.5)
    assert _merged("cut-mixmo", {"model": model}, set_values={"lr": 0.1}).lr == 0.1
    assert _merged("cut-mixmo", {"model": "wrn-16-2"}).lr == 0.1


def test_digits_defaults_leave_the_vit_recipe_alone():
    config = cfg.merge(cfg.preset("mixvit"), {}, {"model": "vit-3-32"}, {})
    assert (config.dataset, config.optimizer, config.lr_value(), config.warmup_epochs) == ("digits", "adamw", 1e-3, 5.0)
