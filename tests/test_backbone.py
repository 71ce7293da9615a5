"""MimoBackbone: MIMO / MixMo / MixShare around a user's CNN, through training, evaluation and analysis."""

import json
import random
import sys
import types

import pytest
import torch
import torch.nn as nn

from mixshare import analysis, methods, train
from mixshare import config as cfg
from mixshare.backbone import MimoBackbone
from mixshare.evaluate import evaluate_model
from mixshare.mixers import create_mixer
from mixshare.protocol import MimoModel
from tests.resnets import BasicBlock, TimmResNet, TorchvisionResNet


class TinyResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1..., avgpool, fc), small widths."""

    def __init__(self, num_classes=5, weights=None):
        super().__init__()
        assert weights is None
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def seeded(seed):
    def make():
        torch.manual_seed(seed)
        return TinyResNet()
    return make


def test_one_subnetwork_is_the_network_itself():
    """M = 1: encoder, shared core, mean pooling and head compute exactly what the CNN computes."""
    cnn = seeded(0)().eval()
    model = MimoBackbone.from_cnn(seeded(0), num_subnets=1).eval()
    images = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model(images[None])[0], cnn(images), rtol=0, atol=0)
    torch.testing.assert_close(model.predict(images)[0], cnn(images), rtol=0, atol=0)


def test_parts_shapes_and_protocol():
    torch.manual_seed(0)
    model = MimoBackbone.from_cnn(TinyResNet, num_subnets=3)
    assert isinstance(model, MimoModel)
    assert model.num_subnets == 3 and model.num_features == 16 and model.in_channels == 3
    assert model.mixing_grid((16, 16)) == (8, 8)  # conv1 has stride 2: the boxes live on its output
    assert model.mixing_grid((32, 24)) == (16, 12)
    assert [type(e).__name__ for e in model.encoders] == ["Conv2d"] * 3
    assert list(model.body._modules) == ["bn1", "relu", "maxpool", "layer1", "layer2"]
    assert model.predict(torch.randn(2, 3, 16, 16)).shape == (3, 2, 5)
    # independent draws: each subnetwork's encoder and head are its own model's
    assert not torch.equal(model.encoders[0].weight, model.encoders[1].weight)
    assert not torch.equal(model.heads[0].weight, model.heads[2].weight)
    # the analysis' stages: the core modules holding convolutions
    assert [f.shape[1] for f in model.stage_features(torch.randn(3, 2, 3, 16, 16))] == [8, 16]


def test_aligned_encoders_and_three_part_construction():
    aligned = MimoBackbone.from_cnn(TinyResNet, encoder_init="identical")
    assert torch.equal(aligned.encoders[0].weight, aligned.encoders[1].weight)
    parts = MimoBackbone(lambda: nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU()),
                         lambda: nn.Linear(6, 7), 2, num_features=6)
    assert parts(torch.randn(2, 3, 3, 9, 9)).shape == (2, 3, 7) and parts.mixing_grid((9, 9)) == (9, 9)
    shared = nn.Conv2d(3, 4, 1)
    copies = MimoBackbone(shared, nn.Identity(), nn.Linear(4, 2), 2, num_features=4)
    assert copies.encoders[0] is shared and torch.equal(copies.encoders[1].weight, shared.weight)


@pytest.mark.parametrize("make, parts", [
    (TorchvisionResNet, {"encoder": "conv1", "pool": "avgpool", "head": "fc"}),
    (TimmResNet, {"encoder": "conv1", "pool": "global_pool", "head": "fc"}),
])
def test_from_cnn_finds_the_parts_of_torchvision_and_timm_resnets(make, parts):
    """Left unnamed, the encoder (first child holding a conv), the pool (before the head) and the head (the
    last child, a Linear) are found, kept in cnn_parts and shown in the repr; M = 1 is the CNN itself."""
    torch.manual_seed(0)
    cnn = make(num_classes=5).eval()
    torch.manual_seed(0)
    model = MimoBackbone.from_cnn(lambda: make(num_classes=5), num_subnets=1).eval()
    assert model.cnn_parts == parts
    assert "cnn_parts: " + ", ".join(f"{k}={v}" for k, v in parts.items()) in repr(model)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model.predict(images)[0], cnn(images), rtol=0, atol=0)
    named = MimoBackbone.from_cnn(lambda: make(num_classes=5), **parts)  # explicit names still work
    assert named.cnn_parts == parts and named.num_features == 64


class _Headless(nn.Module):
    def __init__(self, last):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.last = last


@pytest.mark.parametrize("make, error, message", [
    (lambda: _Headless(nn.Flatten()), TypeError, "no head found: the last child 'last' is a Flatten"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)), ValueError,
     "no global pooling found right before the head '2': '1' is a ReLU; name it with pool="),
    (lambda: nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)), ValueError,
     "no encoder found: no child holds an nn.Conv2d"),
])
def test_from_cnn_says_which_part_it_cannot_find(make, error, message):
    with pytest.raises(error, match=message):
        MimoBackbone.from_cnn(make)


@pytest.mark.parametrize("kwargs, message", [
    (dict(encoder="stem"), r"encoder='stem' is not a child of the model; its children: conv1, bn1"),
    (dict(pool="fc", head="avgpool"), "encoder < pool < head"),
    (dict(head="layer2", pool="layer1"), "the head 'layer2' must be the last child"),
])
def test_from_cnn_refuses_a_wrong_split(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MimoBackbone.from_cnn(seeded(0), **kwargs)


def test_three_part_arguments_are_checked():
    with pytest.raises(ValueError, match="num_subnets must be an int >= 1"):
        MimoBackbone(nn.Conv2d(3, 4, 1), nn.Identity(), nn.Linear(4, 2), 0, num_features=4)
    with pytest.raises(ValueError, match="encoder_init must be one of"):
        MimoBackbone(nn.Conv2d(3, 4, 1), nn.Identity(), nn.Linear(4, 2), 2, num_features=4, encoder_init="same")
    with pytest.raises(TypeError, match=r"encoder\(\) must return an nn.Module"):
        MimoBackbone(lambda: 3, nn.Identity(), nn.Linear(4, 2), 2, num_features=4)
    with pytest.raises(ValueError, match="in_channels is needed"):
        MimoBackbone(nn.Identity(), nn.Identity(), nn.Linear(4, 2), 2, num_features=4)


@pytest.mark.parametrize("method", sorted(cfg.PRESETS))
def test_every_method_trains_on_the_backbone(method):
    """A few steps of each CNN method through the project's own plan and step: finite loss, weights move."""
    config = cfg.apply(cfg.Config(epochs=4), cfg.preset(method), method)
    torch.manual_seed(0)
    model = MimoBackbone.from_cnn(TinyResNet, config.num_subnets, encoder_init=config.encoder_init)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    generator, host_rng = torch.Generator().manual_seed(0), random.Random(0)
    grid = model.mixing_grid((16, 16))
    for step in range(3):
        images = torch.randn(config.num_subnets, 6, 3, 16, 16)
        labels = torch.randint(0, 5, (config.num_subnets, 6))
        plan = methods.sample_plan(config, 6, grid, step, generator, host_rng, model.num_features,
                                   scale=model.mixing_scale)
        if config.unmix:  # MixShare unmixes the core's final map with boxes on the encoders' grid
            assert plan.unmix is not None and int(plan.boxes[:, 2:].max()) <= grid[0]
        loss, logits = train.training_step(model, images, labels, plan, optimizer)
        assert torch.isfinite(loss) and logits.shape == (config.num_subnets, 6, 5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_evaluation_and_share_rates_work_on_the_backbone():
    config = cfg.apply(cfg.Config(), cfg.preset("mixshare-fadeout"), "")
    torch.manual_seed(0)
    model = MimoBackbone.from_cnn(TinyResNet, encoder_init="identical")
    images, labels = torch.randn(20, 3, 16, 16), torch.randint(0, 5, (20,))
    report = evaluate_model(model, images, labels, config)
    assert 0 <= report["ensemble_accuracy"] <= 100 and len(report["subnetwork_accuracy"]) == 2
    rates = analysis.share_rates(model)
    assert rates["encoder_share_rate"] == pytest.approx(100.0)  # identical encoders share every kernel (%)
    assert 0 < rates["classifier_share_rate"] <= 100
    variances = analysis.conditional_variance(model, images[:8])
    assert [v.shape[1] for v in variances] == [8, 16]


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in ``torchvision`` whose ``models.resnet18`` is the torchvision-layout TinyResNet."""
    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(resnet18=lambda weights=None, num_classes=1000: TinyResNet(num_classes,
                                                                                                      weights))
    monkeypatch.setitem(sys.modules, "torchvision", module)


def test_cli_trains_a_torchvision_model(fake_torchvision, tmp_path, capsys):
    from mixshare import cli

    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "synthetic", "--model", "torchvision-resnet18", "--epochs", "1",
                     "--batch-size", "8", "--device", "cpu", "--no-progress", "--out", str(out), "--set",
                     "synthetic_train=32", "synthetic_test=16", "synthetic_classes=5", "synthetic_size=16",
                     "plots=false", "eval_batch_size=16"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "torchvision-resnet18" and "encoder_share_rate" in metrics


def test_unknown_torchvision_model_is_refused(fake_torchvision):
    from mixshare.models import build_model

    with pytest.raises(ValueError, match="torchvision.models has no model 'resnet9000'"):
        build_model("torchvision-resnet9000", 10, 2)


def test_the_grid_probe_leaves_buffers_and_modes_alone():
    """The probe runs the encoder and the core (BatchNorm in both) without touching running statistics,
    in train mode or eval mode, and checks num_features against the core's output."""
    encoder = lambda: nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4))  # noqa: E731
    core = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
    model = MimoBackbone(encoder, core, lambda: nn.Linear(6, 5), 2, num_features=6)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)  # not the zeros / ones a probe of zeros could leave looking unchanged
    model.encoders[1].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert model.mixing_grid((12, 12)) == (6, 6) and model.mixing_grid((10, 8)) == (5, 4)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    # the same forward in train mode does move them: the probe would have
    model(torch.randn(2, 2, 3, 12, 12))
    assert not torch.equal(model.body[1].running_mean, before["body.1.running_mean"])


def test_the_readme_loop_draws_new_boxes_every_batch():
    """The README's own-backbone loop (a preset's mixer without generators, training_step): each batch is
    mixed by its own boxes."""
    torch.manual_seed(0)
    model = MimoBackbone.from_cnn(TinyResNet, num_subnets=2, encoder_init="identical")
    mixer = create_mixer("mixshare-fadeout", model, epochs=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    boxes = []
    for epoch in range(2):
        for _ in range(3):
            images, labels = torch.randn(2, 4, 3, 16, 16), torch.randint(0, 5, (2, 4))
            plan = mixer(images, epoch)
            loss, _ = train.training_step(model, images, labels, plan, optimizer)
            assert torch.isfinite(loss)
            boxes.append(tuple(plan.boxes.flatten().tolist()))
    assert len(set(boxes)) == len(boxes)
