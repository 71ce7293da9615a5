"""The model registry: names, capabilities and builders in one table; the small-input stem of
torchvision's and timm's ResNets (stand-ins of their layout: CI installs neither); no import cycle."""

import ast
import csv
import sys
from pathlib import Path

import pytest
import torch

from mixshare import config as cfg
from mixshare import registry, train
from mixshare.backbone import MimoBackbone
from mixshare.models import MimoResNet, build_model, config_image_size, model_from_config
from mixshare.vit import MimoViT
from tests.resnets import TimmResNet, TorchvisionResNet, fake_timm, fake_torchvision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def torchvision_and_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision())
    monkeypatch.setitem(sys.modules, "timm", fake_timm())


@pytest.fixture
def no_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError


def test_list_models_lists_each_family():
    names = registry.list_models()
    assert names == sorted(names)
    for expected in ("wrn-28-2", "wrn-16-2", "preact-resnet18", "vit-tiny", "vit-6-128", "torchvision-resnet18",
                     "torchvision-resnet50", "timm-resnet18"):
        assert expected in names
    assert registry.list_models("torchvision-*") == [f"torchvision-resnet{d}" for d in (101, 152, 18, 34, 50)]
    assert registry.list_models(kind="vit") == ["vit-6-128", "vit-tiny"]
    assert all(registry.find_family(n).kind == "cnn" for n in registry.list_models(kind="cnn"))
    # every listed name belongs to the family that lists it
    for family in registry.families():
        assert all(registry.find_family(n) is family for n in family.examples)


def test_families_and_capabilities():
    patterns = [f.pattern for f in registry.families()]
    assert patterns == ["wrn-<depth>-<width>", "preact-resnet18", "vit-tiny", "vit-<depth>-<dim>[-<heads>]",
                        "torchvision-<arch>", "timm-<name>"]
    wrn, vit, tv = (registry.find_family(n) for n in ("wrn-28-2", "vit-3-32", "torchvision-resnet18"))
    assert (wrn.kind, wrn.unmix, wrn.source_attention, wrn.options) == ("cnn", True, False, ("encoder_init",))
    assert (vit.kind, vit.unmix, vit.source_attention) == ("vit", False, True)
    assert "input_stem" in tv.options and tv.requires == "torchvision"
    assert registry.patterns("vit") == "vit-tiny, vit-<depth>-<dim>[-<heads>]"


def test_missing_packages_are_seen_and_said(no_timm, monkeypatch):
    timm = registry.find_family("timm-resnet18")
    assert not timm.available and registry.list_models("timm-*", available=True) == []
    assert "needs timm, not installed: pip install timm" in timm.describe()
    with pytest.raises(ValueError, match="model timm-resnet18 needs timm, not installed: pip install timm"):
        registry.create_model("timm-resnet18", 10, 2, input_stem="small")
    monkeypatch.setitem(sys.modules, "timm", fake_timm())
    assert timm.available and "not installed" not in timm.describe()


def test_create_model_builds_each_family(torchvision_and_timm):
    wrn = registry.create_model("wrn-10-1", 10, 2, encoder_init="identical")
    assert isinstance(wrn, MimoResNet) and len(wrn.stages) == 3 and wrn.num_features == 64  # 64 * width 1
    assert torch.equal(wrn.encoders[0].weight, wrn.encoders[1].weight)
    preact = registry.create_model("preact-resnet18", 7, 1)
    assert isinstance(preact, MimoResNet) and preact.num_features == 512 and preact.heads[0].out_features == 7
    tiny = registry.create_model("vit-tiny", 10, 2)
    assert isinstance(tiny, MimoViT) and (tiny.depth, tiny.num_features, tiny.blocks[0].attn.heads) == (12, 192, 3)
    vit = registry.create_model("vit-3-128", 10, 2, attribution_depth=1)
    assert (vit.depth, vit.num_features, vit.blocks[0].attn.heads, vit.attribution_depth) == (3, 128, 2, 1)
    assert registry.create_model("vit-3-32-4", 10, 2).blocks[0].attn.heads == 4
    for name in ("torchvision-resnet18", "timm-resnet18"):
        model = registry.create_model(name, 10, 3, input_stem="imagenet")
        assert isinstance(model, MimoBackbone) and model.num_subnets == 3 and model.num_features == 64
        assert model.predict(torch.randn(2, 3, 32, 32)).shape == (3, 2, 10)


@pytest.mark.parametrize("name, nearest", [
    ("wrn-28", "wrn-28-2"), ("resnet50", "torchvision-resnet50"), ("vit-tinny", "vit-tiny"),
    ("preact-resnet19", "preact-resnet18"), ("timm_resnet18", "timm-resnet18"),
])
def test_unknown_names_name_the_nearest(name, nearest):
    with pytest.raises(ValueError, match=rf"unknown model '{name}'; did you mean '{nearest}'\? the registered "
                                         rf"models: wrn-<depth>-<width>, preact-resnet18, vit-tiny"):
        registry.create_model(name, 10, 2)


def test_bad_arguments_are_refused(torchvision_and_timm):
    with pytest.raises(ValueError, match="unknown model 'zzz'; the registered models"):
        registry.create_model("zzz", 10, 2)
    with pytest.raises(TypeError, match=r"model 'wrn-10-1' \(wrn-<depth>-<width>\) takes no option 'input_stem'; "
                                        r"its options: encoder_init"):
        registry.create_model("wrn-10-1", 10, 2, input_stem="small")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        registry.create_model("wrn-27-2", 10, 2)
    with pytest.raises(ValueError, match="num_subnets must be an int >= 1, got 0"):
        registry.create_model("vit-3-32", 10, 0)
    with pytest.raises(ValueError, match="num_subnets must be an int >= 1, got 2.0"):
        registry.create_model("wrn-10-1", 10, 2.0)
    with pytest.raises(ValueError, match="encoder_init must be one of independent, identical, colinear"):
        registry.create_model("wrn-10-1", 10, 2, encoder_init="same")
    with pytest.raises(ValueError, match="timm has no model 'resnet9000'"):
        registry.create_model("timm-resnet9000", 10, 2, input_stem="small")
    with pytest.raises(ValueError, match="input_stem must be one of auto, small, imagenet, got 'cifar'"):
        registry.create_model("torchvision-resnet18", 10, 2, input_stem="cifar")
    with pytest.raises(ValueError, match=r"input_stem='auto' chooses the stem by the image size: pass image_size"):
        registry.create_model("torchvision-resnet18", 10, 2)
    with pytest.raises(ValueError, match="encoder_init applies to the CNNs' M encoders; model 'vit-3-32' has none"):
        build_model("vit-3-32", 10, 2, "identical")


def test_register_model_refuses_a_second_family_of_the_same_pattern():
    family = registry.families()[0]
    with pytest.raises(ValueError, match="registered already"):
        registry.register_model(family)
    with pytest.raises(ValueError, match="options must be among"):
        registry.register_model(registry.ModelFamily("x-<n>", r"x-\d+", "x", "m:f", "cnn", ("width",)))


def _final_map(model: MimoBackbone, size: int) -> tuple:
    with torch.no_grad():
        return tuple(model.body(model.encoders[0](torch.zeros(2, 3, size, size))).shape)


@pytest.mark.parametrize("name", ["torchvision-resnet18", "timm-resnet18"])
def test_the_small_input_stem_keeps_a_final_map_on_small_images(name, torchvision_and_timm):
    """The ImageNet stem divides the side by 4 and the stages by 8 more: 32 x 32 images end 1 x 1. The small
    stem (3x3 stride-1 conv1, no max-pool) leaves 32 / 8 = 4 x 4; auto picks it up to 64 px."""
    imagenet = registry.create_model(name, 10, 2, input_stem="imagenet")
    assert _final_map(imagenet, 32) == (2, 64, 1, 1) and imagenet.mixing_grid((32, 32)) == (16, 16)
    assert imagenet.input_stem == "imagenet" and imagenet.encoders[0].kernel_size == (7, 7)
    small = registry.create_model(name, 10, 2, input_stem="small")
    assert _final_map(small, 32) == (2, 64, 4, 4) and small.mixing_grid((32, 32)) == (32, 32)
    conv = small.encoders[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in small.modules())
    assert "input_stem: small (3x3 stride-1 conv1, no max-pool)" in repr(small)
    assert not torch.equal(small.encoders[0].weight, small.encoders[1].weight)  # each encoder its own draw
    for size, stem in ((32, "small"), (64, "small"), (65, "imagenet"), (224, "imagenet")):
        assert registry.create_model(name, 10, 1, image_size=(size, size)).input_stem == stem, size
    assert registry.resolve_input_stem("auto", (32, 96)) == "imagenet"  # the larger side decides


def test_model_from_config_reads_the_stem_and_the_image_size(torchvision_and_timm):
    config = cfg.apply(cfg.Config(), {"model": "torchvision-resnet18", "dataset": "synthetic",
                                      "synthetic_size": 96}, "test")
    assert model_from_config(config, 10).input_stem == "imagenet"
    assert model_from_config(config, 10, image_size=(32, 32)).input_stem == "small"
    small = cfg.apply(config, {"input_stem": "small"}, "test")
    assert model_from_config(small, 10).input_stem == "small"
    assert model_from_config(cfg.apply(config, {"dataset": "digits"}, "test"), 10).input_stem == "small"


@pytest.mark.parametrize("values", [dict(dataset="digits"), dict(dataset="synthetic", synthetic_size=20,
                                                                    synthetic_train=8, synthetic_test=4)])
def test_config_image_size_is_the_datasets(values):
    from mixshare.data import load_data

    config = cfg.apply(cfg.Config(), values, "test")
    assert config_image_size(config) == load_data(config).image_shape[1:]


def test_config_checks_the_model_and_its_options():
    def validate(**values):
        cfg.validate(cfg.apply(cfg.Config(), values, "test"))

    validate(model="torchvision-resnet18", input_stem="imagenet")
    with pytest.raises(cfg.ConfigError, match="unknown model 'resnet34'; did you mean 'torchvision-resnet34'"):
        validate(model="resnet34")
    with pytest.raises(cfg.ConfigError, match="input_stem applies to torchvision-<arch>, timm-<name>; model "
                                              "'wrn-28-2'"):
        validate(input_stem="small")
    with pytest.raises(cfg.ConfigError, match="input_stem must be one of auto, small, imagenet"):
        validate(model="torchvision-resnet18", input_stem="tiny")
    assert "input_stem" in cfg.IDENTITY_KEYS  # another stem is another network


def test_the_model_modules_import_in_no_cycle():
    """An AST scan of every import in mixshare/ (lazy ones inside functions included): no cycle runs
    through the registry, the model modules or the config."""
    modules = {p.stem for p in (ROOT / "mixshare").glob("*.py")}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((ROOT / "mixshare" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "mixshare":
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mixshare."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mixshare."))
        graph[name] = deps & modules

    def reaches(start, goal, seen):
        for dep in graph[start]:
            if dep == goal or (dep not in seen and reaches(dep, goal, seen | {dep})):
                return True
        return False

    watched = ("registry", "models", "backbone", "vit", "config")
    assert [m for m in watched if reaches(m, m, {m})] == []
    assert reaches("backbone", "models", set()) and not reaches("models", "backbone", set())


def test_a_torchvision_layout_resnet_with_the_small_stem_learns(torchvision_and_timm, tmp_path):
    """Four separable classes of 16 x 16 images (chance: 25%): the registry's torchvision-resnet18 with the
    small-input stem (auto: a 2 x 2 final map where the ImageNet stem leaves 1 x 1) trained with Cut-MixMo
    through mixshare.train ends well above chance, its loss down by a fifth or more."""
    config = cfg.apply(cfg.Config(), cfg.preset("cut-mixmo"), "cut-mixmo")
    config = cfg.apply(config, dict(dataset="synthetic", synthetic_train=96, synthetic_test=48, synthetic_classes=4,
                                    synthetic_size=16, model="torchvision-resnet18", batch_size=16, epochs=6,
                                    lr=0.1, progress=False, plots=False, eval_batch_size=48), "test")
    report = train.train(config, str(tmp_path))
    with open(tmp_path / "history.csv") as fh:
        losses = [float(row["train_loss"]) for row in csv.DictReader(fh)]
    assert report["ensemble_accuracy"] >= 75.0 and losses[-1] < 0.8 * losses[0], (report["ensemble_accuracy"], losses)
    state = train.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["model"]["encoders.0.weight"].shape[-2:] == (3, 3)  # the small stem was built


def test_the_stand_ins_keep_the_libraries_layout():
    """The names and order the auto-detection relies on (torchvision's and timm's ResNet sources)."""
    assert [n for n, _ in TorchvisionResNet().named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    timm_like = TimmResNet(5)
    assert [n for n, _ in timm_like.named_children()] == [
        "conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4", "global_pool", "fc"]
    assert timm_like.get_classifier() is timm_like.fc
