"""The mixing plan users hold: one call draws it; box_mix, cutmix_unmix(_pool) and the loss take it."""

import random

import pytest
import torch

import mixshare_ops
from mixshare import methods, train
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


def test_consecutive_draws_continue_one_stream():
    """draw_plan without generators, as the README's own-backbone loop calls it: every call draws new
    boxes and ratios (no generator restarting from a fixed seed), and the global seeds reproduce them."""
    model, images = build_model("wrn-10-1", 10, 2), torch.randn(2, 6, 3, 16, 16)

    def draws(method):
        return [draw_plan(method, model, images, epoch=e / 4, epochs=10) for e in range(20)]

    torch.manual_seed(0)
    random.seed(0)
    fadeout = draws("mixshare-fadeout")
    assert len({tuple(p.boxes.flatten().tolist()) for p in fadeout}) == 20
    cut = draws("cut-mixmo")  # CutMix on about half of the batches, linear mixing otherwise
    assert len({tuple(p.loss_weights.flatten().tolist()) for p in cut}) == 20
    assert 0 < sum(bool(p.boxes.any()) for p in cut) < 20
    torch.manual_seed(0)
    random.seed(0)
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(draws("mixshare-fadeout"), fadeout))
    # explicit generators: their streams, reproducible without the global seeds
    gen = [draw_plan("mixshare-fadeout", model, images, generator=torch.Generator().manual_seed(5),
                     host_rng=random.Random(5)).boxes for _ in range(2)]
    assert torch.equal(gen[0], gen[1])


def test_loss_weights_do_not_underflow_for_a_small_root():
    """M = 3, root 0.01: r_i^100 underflows float32 for every ratio; the weights are the rule's."""
    ratios = torch.tensor([[0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    r64 = ratios.double()
    expected = 3 * r64**100 / (r64**100).sum(1, keepdim=True)  # the rule, in float64 (no underflow there)
    weights = methods.loss_weights(ratios, 0.01)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(weights.sum(1), torch.full((2,), 3.0))
    with pytest.raises(ValueError, match=r"root must be a finite float > 0, got 0"):
        methods.loss_weights(ratios, 0)


def test_mimo_loss_is_the_weighted_cross_entropy():
    logits, labels, weights = torch.randn(3, 4, 6, dtype=torch.float64), torch.randint(0, 6, (3, 4)), torch.rand(4, 3)
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    ce = -log_probs.gather(-1, labels[..., None])[..., 0]  # [M, R]
    expected = sum((ce[i] * weights[:, i]).mean() for i in range(3))
    torch.testing.assert_close(train.mimo_loss(logits, labels, weights), expected.float())
    assert train.mimo_loss(logits, labels.int(), weights) == train.mimo_loss(logits, labels, weights)


def test_a_plan_fits_the_batch_it_was_drawn_for():
    """The checks accept what they should: the plan's grid, batch, M and device, any feature size up to the grid."""
    plan = a_plan()
    assert plan.num_subnets == 2 and plan.rows == 3 and plan.grid == (8, 8)
    assert mixshare_ops.box_mix(torch.randn(2, 3, 4, 8, 8), plan=plan).shape == (3, 4, 8, 8)
    for size in (1, 3, 8):
        assert mixshare_ops.cutmix_unmix_pool(torch.randn(3, 5, size, size), plan=plan).shape == (2, 3, 5)
    as_list = MixPlan(plan.boxes, plan.inside, plan.outside, 2, [8, 8], plan.loss_weights)
    assert as_list.grid == (8, 8) and isinstance(as_list.grid, tuple)
