"""The mixing plan users hold: one call draws it; box_mix, cutmix_unmix(_pool) and the loss take it."""

import pytest
import torch

import mixshare_ops
from mixshare import train
from mixshare.methods import MixPlan, UnmixPlan, draw_plan
from mixshare.models import build_model


def a_plan(unmix=True):
    boxes = torch.tensor([[0, 0, 4, 4], [2, 1, 8, 8], [0, 0, 0, 0]], dtype=torch.int32)
    inside = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    return MixPlan(boxes, inside, 1 - inside, 2.0, (8, 8), torch.rand(3, 2),
                   UnmixPlan(0.25, 3, "mean") if unmix else None)


def test_ops_read_every_argument_from_the_plan():
    plan = a_plan()
    x, features = torch.randn(2, 3, 4, 8, 8), torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(mixshare_ops.box_mix(x, plan=plan),
                               mixshare_ops.box_mix(x, plan.boxes, plan.inside, plan.outside, 2.0))
    explicit = dict(box_size=(8, 8), ratio=0.25, channels=3)
    torch.testing.assert_close(mixshare_ops.cutmix_unmix(features, plan=plan),
                               mixshare_ops.cutmix_unmix(features, plan.boxes, plan.inside, plan.outside, **explicit))
    torch.testing.assert_close(
        mixshare_ops.cutmix_unmix_pool(features, plan=plan),
        mixshare_ops.cutmix_unmix_pool(features, plan.boxes, plan.inside, plan.outside, normalize="mean", **explicit))


def test_a_plan_and_its_own_arguments_cannot_disagree():
    plan, x, features = a_plan(), torch.randn(2, 3, 4, 8, 8), torch.randn(3, 4, 4, 4)
    with pytest.raises(ValueError, match="box_mix: pass either plan or scale, not both"):
        mixshare_ops.box_mix(x, scale=2.0, plan=plan)
    with pytest.raises(ValueError, match="cutmix_unmix_pool: pass either plan or box_size, normalize"):
        mixshare_ops.cutmix_unmix_pool(features, box_size=(8, 8), normalize="masked", plan=plan)
    with pytest.raises(ValueError, match="the plan does not unmix"):
        mixshare_ops.cutmix_unmix(features, plan=a_plan(unmix=False))
    with pytest.raises(TypeError, match="plan must be a mixshare_ops.MixPlan, got dict"):
        mixshare_ops.box_mix(x, plan={"boxes": plan.boxes})


def test_draw_plan_follows_the_method():
    model = build_model("wrn-10-1", 10, 2)
    images = torch.randn(2, 6, 3, 16, 16)
    # mixshare-fadeout: fade over a third of training, r = min(1, epoch / (epochs / 3))
    plan = draw_plan("mixshare-fadeout", model, images, epoch=50, epochs=300, generator=torch.Generator())
    assert plan.grid == (16, 16) and plan.boxes.shape == (6, 4) and plan.scale == 2.0
    assert plan.unmix == UnmixPlan(0.5, model.num_features, "mean")
    masked = draw_plan("mixshare-fadeout", model, images, epoch=200, epochs=300, unmix_normalize="masked")
    assert masked.unmix.ratio == 1.0 and masked.unmix.normalize == "masked"
    assert draw_plan("cut-mixmo", model, images).unmix is None
    logits, labels = torch.randn(2, 6, 10), torch.randint(0, 10, (2, 6))
    assert train.mimo_loss(logits, labels, plan) == train.mimo_loss(logits, labels, plan.loss_weights)
