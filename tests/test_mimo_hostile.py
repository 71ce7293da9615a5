"""Hostile input to the surfaces above the operators: plans, ``draw_plan``, ``mimo_loss`` and
``MimoBackbone``. Each case is refused with the exception type given and a message naming the
argument, as tests/test_ops_hostile.py does for the operators; never mixed, weighted or built silently."""

import random

import pytest
import torch
import torch.nn as nn

import mixshare_ops
from mixshare import config as cfg
from mixshare import train
from mixshare.backbone import MimoBackbone
from mixshare.methods import MixPlan, UnmixPlan, draw_plan

R, M = 3, 2


def plan_args(**changes):
    """MixPlan's arguments for R = 3 rows of M = 2 inputs on an 8 x 8 grid, with ``changes``."""
    inside = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    args = dict(boxes=torch.tensor([[0, 0, 4, 4], [2, 1, 8, 8], [0, 0, 0, 0]], dtype=torch.int32),
                inside=inside, outside=1 - inside, scale=2.0, grid=(8, 8), loss_weights=torch.full((R, M), 1.0),
                unmix=UnmixPlan(0.25, 3, "mean"))
    args.update(changes)
    return args


PLAN_CASES = [  # (id, changes, exception, message)
    ("boxes-float", dict(boxes=torch.zeros(R, 4)), TypeError, r"MixPlan\.boxes must be an int32 tensor"),
    ("boxes-list", dict(boxes=[[0, 0, 1, 1]] * R), TypeError, r"MixPlan\.boxes must be an int32 tensor"),
    ("boxes-3-columns", dict(boxes=torch.zeros(R, 3, dtype=torch.int32)), ValueError, r"MixPlan\.boxes .*\[R, 4\]"),
    ("inside-rows", dict(inside=torch.ones(R + 1, M)), ValueError, r"MixPlan\.inside must have shape \[R, M\]"),
    ("inside-int", dict(inside=torch.ones(R, M, dtype=torch.int64)), TypeError, r"MixPlan\.inside must be a float"),
    ("outside-other-m", dict(outside=torch.ones(R, M + 1)), ValueError, r"MixPlan\.outside .*\[3, 2\]"),
    ("loss-weights-1d", dict(loss_weights=torch.ones(R)), ValueError, r"MixPlan\.loss_weights must have shape"),
    ("loss-weights-meta", dict(loss_weights=torch.ones(R, M, device="meta")), ValueError,
     r"MixPlan\.loss_weights must be on the same device as MixPlan\.boxes"),
    ("scale-nan", dict(scale=float("nan")), ValueError, r"MixPlan\.scale must be finite"),
    ("scale-str", dict(scale="2"), TypeError, r"MixPlan\.scale must be a float"),
    ("scale-bool", dict(scale=True), TypeError, r"MixPlan\.scale must be a float"),
    ("grid-zero", dict(grid=(0, 8)), ValueError, r"MixPlan\.grid\[0\] must be in \[1, "),
    ("grid-one-value", dict(grid=(8,)), ValueError, r"MixPlan\.grid must be a pair"),
    ("grid-float", dict(grid=(8, 8.0)), TypeError, r"MixPlan\.grid\[1\] must be an int"),
    ("unmix-dict", dict(unmix={"ratio": 0.0}), TypeError, r"MixPlan\.unmix must be an UnmixPlan"),
]


@pytest.mark.parametrize("changes, exc, message", [c[1:] for c in PLAN_CASES], ids=[c[0] for c in PLAN_CASES])
def test_a_malformed_plan_is_refused_on_construction(changes, exc, message):
    with pytest.raises(exc, match=message):
        MixPlan(**plan_args(**changes))


UNMIX_CASES = [  # (id, arguments, exception, message)
    ("ratio-above-1", (1.5, 3, "mean"), ValueError, r"UnmixPlan\.ratio must be in \[0, 1\]"),
    ("ratio-nan", (float("nan"), 3, "mean"), ValueError, r"UnmixPlan\.ratio must be in \[0, 1\]"),
    ("ratio-str", ("0.5", 3, "mean"), TypeError, r"UnmixPlan\.ratio must be a float"),
    ("channels-negative", (0.0, -1, "mean"), ValueError, r"UnmixPlan\.channels must be >= 0"),
    ("channels-float", (0.0, 2.0, "mean"), TypeError, r"UnmixPlan\.channels must be an int"),
    ("normalize-unknown", (0.0, 3, "sum"), ValueError, r"UnmixPlan\.normalize must be one of mean, masked"),
]


@pytest.mark.parametrize("args, exc, message", [c[1:] for c in UNMIX_CASES], ids=[c[0] for c in UNMIX_CASES])
def test_a_malformed_unmix_plan_is_refused_on_construction(args, exc, message):
    with pytest.raises(exc, match=message):
        UnmixPlan(*args)


def _modify(name):
    def run(plan):
        getattr(plan, name).add_(1)  # in place, through the plan
    return run


def _features(batch=R, channels=4, size=4):
    return torch.randn(batch, channels, size, size)


USE_CASES = [  # (id, call on a fresh plan, message)
    ("box-mix-other-grid", lambda p: mixshare_ops.box_mix(torch.randn(M, R, 4, 16, 16), plan=p),
     r"box_mix: plan\.grid \(8, 8\) must be x's spatial size, got \(16, 16\)"),
    ("box-mix-other-batch", lambda p: mixshare_ops.box_mix(torch.randn(M, R + 1, 4, 8, 8), plan=p),
     r"box_mix: plan was drawn for a batch of R = 3 rows, x has 4"),
    ("box-mix-other-m", lambda p: mixshare_ops.box_mix(torch.randn(M + 1, R, 4, 8, 8), plan=p),
     r"box_mix: plan mixes M = 2 inputs, x stacks 3"),
    ("box-mix-other-device", lambda p: mixshare_ops.box_mix(torch.randn(M, R, 4, 8, 8, device="meta"), plan=p),
     r"box_mix: plan is on cpu, x on meta"),
    ("unmix-other-batch", lambda p: mixshare_ops.cutmix_unmix(_features(R + 1), plan=p),
     r"cutmix_unmix: plan was drawn for a batch of R = 3 rows, features has 4"),
    ("unmix-pool-other-batch", lambda p: mixshare_ops.cutmix_unmix_pool(_features(R - 1), plan=p),
     r"cutmix_unmix_pool: plan was drawn for a batch of R = 3 rows, features has 2"),
    ("unmix-pool-larger-than-grid", lambda p: mixshare_ops.cutmix_unmix_pool(_features(size=16), plan=p),
     r"cutmix_unmix_pool: plan\.grid \(8, 8\) \(the mixing grid\) must be at least features' spatial size"),
    ("unmix-pool-too-few-channels", lambda p: mixshare_ops.cutmix_unmix_pool(_features(channels=2), plan=p),
     r"plan\.unmix\.channels = 3 must be at most features' C = 2"),
    ("boxes-changed-after-use", lambda p: (mixshare_ops.box_mix(torch.randn(M, R, 4, 8, 8), plan=p),
                                           _modify("boxes")(p), mixshare_ops.cutmix_unmix_pool(_features(), plan=p)),
     r"plan\.boxes was modified in place after the plan was built"),
    ("inside-changed", lambda p: (_modify("inside")(p), mixshare_ops.box_mix(torch.randn(M, R, 4, 8, 8), plan=p)),
     r"plan\.inside was modified in place"),
    ("outside-changed", lambda p: (_modify("outside")(p), mixshare_ops.cutmix_unmix(_features(), plan=p)),
     r"plan\.outside was modified in place"),
    ("loss-weights-changed", lambda p: (_modify("loss_weights")(p),
                                        train.mimo_loss(torch.randn(M, R, 5), torch.zeros(M, R, dtype=torch.long), p)),
     r"plan\.loss_weights was modified in place"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in USE_CASES], ids=[c[0] for c in USE_CASES])
def test_a_plan_that_does_not_fit_its_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(MixPlan(**plan_args()))


def test_a_tensor_changed_through_another_reference_is_caught():
    """The plan's tensors are the caller's: a change through the caller's own reference is caught too."""
    args = plan_args()
    plan = MixPlan(**args)
    args["boxes"][0, 2] = 8
    with pytest.raises(ValueError, match=r"plan\.boxes was modified in place"):
        mixshare_ops.box_mix(torch.randn(M, R, 4, 8, 8), plan=plan)


# ------------------------------------------------------------------------------------------- draw_plan


def tiny_backbone(m=M):
    return MimoBackbone(lambda: nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1),
                        lambda: nn.Linear(6, 5), m, num_features=6)


MODEL = tiny_backbone()
IMAGES = torch.randn(M, 4, 3, 8, 8)

DRAW_CASES = [  # (id, keyword arguments of draw_plan, exception, message)
    ("alpha-negative", dict(alpha=-1.0), cfg.ConfigError, r"draw_plan\('cut-mixmo'\): alpha must be > 0, got -1"),
    ("epochs-zero", dict(epochs=0), cfg.ConfigError, r"epochs must be >= 1, got 0"),
    ("epochs-float", dict(epochs=2.5), cfg.ConfigError, r"epochs must be an integer, got 2\.5 \(float\)"),
    ("loss-root-zero", dict(loss_root=0.0), cfg.ConfigError, r"loss_root must be > 0"),
    ("cut-prob-above-1", dict(cut_prob=2.0), cfg.ConfigError, r"cut_prob must be in \[0, 1\]"),
    ("unmix-channels-above-1", dict(unmix_channels=1.5), cfg.ConfigError, r"unmix_channels must be in \[0, 1\]"),
    ("unmix-without-cut", dict(unmix=True), cfg.ConfigError, r"unmixing needs CutMix on every batch"),
    ("misspelt-key", dict(alpah=2.0), cfg.ConfigError, r"unknown config key 'alpah'.*did you mean 'alpha'"),
    ("unknown-method", dict(method="cutmix"), ValueError, r"unknown method 'cutmix'"),
    ("vit-method", dict(method="mixvit"), cfg.ConfigError, r"method 'mixvit' needs a ViT model"),
    ("single-on-m2", dict(method="single"), cfg.ConfigError, r"mixing: none needs num_subnets = 1"),
    ("num-subnets", dict(num_subnets=3), ValueError, r"num_subnets is the model's \(M = 2\)"),
    ("epoch-negative", dict(epoch=-1), ValueError, r"epoch must be a number in \[0, epochs\) = \[0, 300\)"),
    ("epoch-past-the-end", dict(epoch=10, epochs=10), ValueError, r"epoch must be a number in \[0, epochs\)"),
    ("epoch-nan", dict(epoch=float("nan")), ValueError, r"epoch must be a number in \[0, epochs\)"),
    ("images-4d", dict(images=IMAGES[0]), ValueError, r"images must be a \[M=2, R, C, H, W\] tensor"),
    ("images-other-m", dict(images=torch.randn(3, 4, 3, 8, 8)), ValueError, r"images must be a \[M=2, R,"),
    ("generator-int", dict(generator=0), TypeError, r"generator must be a torch\.Generator"),
    ("generator-other-device", dict(images=IMAGES.to("meta"), generator=torch.Generator()), ValueError,
     r"generator is on cpu, images on meta"),
    ("host-rng-int", dict(host_rng=3), TypeError, r"host_rng must be a random\.Random"),
    ("model-not-mimo", dict(model=nn.Linear(3, 3)), TypeError, r"model must be a mixshare\.protocol\.MimoModel"),
]


@pytest.mark.parametrize("kwargs, exc, message", [c[1:] for c in DRAW_CASES], ids=[c[0] for c in DRAW_CASES])
def test_draw_plan_refuses_bad_settings(kwargs, exc, message):
    kwargs = dict(kwargs)
    method, model, images = kwargs.pop("method", "cut-mixmo"), kwargs.pop("model", MODEL), kwargs.pop("images", IMAGES)
    with pytest.raises(exc, match=message) as error:
        draw_plan(method, model, images, **kwargs)
    assert str(error.value).count("draw_plan(") <= 1, str(error.value)  # the source named once


# ------------------------------------------------------------------------------------------- mimo_loss

K = 5


def loss_args(**changes):
    args = dict(logits=torch.randn(M, R, K), labels=torch.randint(0, K, (M, R)), weights=torch.ones(R, M))
    args.update(changes)
    return args


LOSS_CASES = [  # (id, changes, exception, message)
    ("logits-2d", dict(logits=torch.randn(M * R, K)), ValueError, r"logits must be a floating \[M, R, K\] tensor"),
    ("logits-int", dict(logits=torch.ones(M, R, K, dtype=torch.int64)), ValueError, r"logits must be a floating"),
    ("labels-float", dict(labels=torch.zeros(M, R)), TypeError, r"labels must be an integer tensor"),
    ("labels-bool", dict(labels=torch.zeros(M, R, dtype=torch.bool)), TypeError, r"labels must be an integer"),
    ("labels-transposed", dict(labels=torch.zeros(R, M, dtype=torch.long)), ValueError,
     r"labels must have shape \[M, R\] = \[2, 3\]"),
    ("labels-ignore-index", dict(labels=torch.tensor([[0, -100, 1], [2, 3, 4]])), ValueError,
     r"labels must be class indices in \[0, K\) = \[0, 5\), got values in \[-100, 4\].*no ignore index"),
    ("labels-k", dict(labels=torch.tensor([[0, 5, 1], [2, 3, 4]])), ValueError,
     r"labels must be class indices in \[0, K\) = \[0, 5\), got values in \[0, 5\]"),
    ("labels-meta", dict(labels=torch.zeros(M, R, dtype=torch.long, device="meta")), ValueError,
     r"labels must be on the device of logits"),
    ("weights-1d", dict(weights=torch.ones(R)), ValueError, r"weights must be a floating \[R, M\] = \[3, 2\]"),
    ("weights-broadcast-row", dict(weights=torch.ones(1, M)), ValueError, r"weights must be a floating \[R, M\]"),
    ("weights-transposed", dict(weights=torch.ones(M, R)), ValueError, r"weights must be a floating \[R, M\]"),
    ("weights-list", dict(weights=[[1.0, 1.0]] * R), ValueError, r"weights must be a floating \[R, M\].*got list"),
    ("weights-meta", dict(weights=torch.ones(R, M, device="meta")), ValueError,
     r"weights must be on the device of logits"),
]


@pytest.mark.parametrize("changes, exc, message", [c[1:] for c in LOSS_CASES], ids=[c[0] for c in LOSS_CASES])
def test_mimo_loss_refuses_bad_input(changes, exc, message):
    with pytest.raises(exc, match=message):
        train.mimo_loss(**loss_args(**changes))


# ------------------------------------------------------------------------------------------- MimoBackbone


class Net(nn.Module):
    """conv1 -> bn -> relu -> avgpool -> fc: a CNN of the layout from_cnn splits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)


def _same_instance():
    net = Net()
    return MimoBackbone.from_cnn(lambda: net)


def _tied_heads():
    h0, h1 = nn.Linear(6, 5), nn.Linear(6, 5)
    h1.weight = h0.weight
    return MimoBackbone(lambda: nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1), [h0, h1], num_features=6)


def _encoders_on_one_storage():
    e0, e1 = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
    e1.weight = nn.Parameter(e0.weight.data)  # another Parameter object, the same memory
    return MimoBackbone([e0, e1], nn.Conv2d(4, 6, 1), lambda: nn.Linear(6, 5), num_features=6)


def _encoder_inside_the_core():
    encoder = nn.Conv2d(3, 4, 1)
    return MimoBackbone([encoder, nn.Conv2d(3, 4, 1)], nn.Sequential(nn.Conv2d(4, 3, 1), encoder),
                        lambda: nn.Linear(4, 5), num_features=4)


def _wrong_num_features():
    model = MimoBackbone(lambda: nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1), lambda: nn.Linear(5, 5), num_features=5)
    return draw_plan("mixshare-fadeout", model, IMAGES)


BACKBONE_CASES = [  # (id, build, exception, message)
    ("factory-returns-one-instance", _same_instance, ValueError,
     r"make_model\(\) returned the same module object on calls 1 and 2.*build a new model on each call"),
    ("model-instead-of-factory", lambda: MimoBackbone.from_cnn(Net()), TypeError,
     r"make_model must be a function building a new CNN on each call, got Net"),
    ("factory-returns-no-module", lambda: MimoBackbone.from_cnn(lambda: "resnet"), TypeError,
     r"make_model\(\) must return an nn\.Module, got str"),
    ("heads-the-same-object", lambda: (lambda h: MimoBackbone(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1), [h, h],
                                                              num_features=6))(nn.Linear(6, 5)),
     ValueError, r"head 1 and head 0 are the same module object"),
    ("encoder-factory-returns-one-instance", lambda: (lambda e: MimoBackbone(lambda: e, nn.Conv2d(4, 6, 1),
                                                                             nn.Linear(6, 5), num_features=6))(
        nn.Conv2d(3, 4, 1)), ValueError, r"encoder 1 and encoder 0 are the same module object"),
    ("heads-tie-a-parameter", _tied_heads, ValueError, r"head 1 shares its tensor 'weight' with head 0"),
    ("encoders-share-memory", _encoders_on_one_storage, ValueError,
     r"encoder 1 shares its tensor 'weight' with encoder 0"),
    ("encoder-inside-the-core", _encoder_inside_the_core, ValueError,
     r"the core shares its tensor '1\.weight' with encoder 0"),
    ("num-features-zero", lambda: MimoBackbone(nn.Conv2d(3, 4, 1), nn.Identity(), nn.Linear(4, 2),
                                               num_features=0), ValueError, r"num_features must be an int >= 1"),
    ("num-features-float", lambda: MimoBackbone(nn.Conv2d(3, 4, 1), nn.Identity(), nn.Linear(4, 2),
                                                num_features=4.0), ValueError, r"num_features must be an int >= 1"),
    ("num-features-not-the-core", _wrong_num_features, ValueError,
     r"num_features = 5, but the core's final map on \(8, 8\) images has shape \(2, 6, 8, 8\)"),
]


@pytest.mark.parametrize("build, exc, message", [c[1:] for c in BACKBONE_CASES], ids=[c[0] for c in BACKBONE_CASES])
def test_backbone_refuses_what_is_not_mimo(build, exc, message):
    with pytest.raises(exc, match=message):
        build()


def test_refused_draws_leave_the_streams_alone():
    """A refused draw_plan consumes nothing from the default streams (the checks run first)."""
    torch.manual_seed(3)
    random.seed(3)
    expected = draw_plan("mixshare-fadeout", MODEL, IMAGES).boxes
    torch.manual_seed(3)
    random.seed(3)
    with pytest.raises(cfg.ConfigError):
        draw_plan("mixshare-fadeout", MODEL, IMAGES, alpha=0.0)
    assert torch.equal(draw_plan("mixshare-fadeout", MODEL, IMAGES).boxes, expected)
