"""The cost of a prediction: parameter counts and FLOPs against hand counts, the timing's contract
(positive finite medians, the repeats asked for); speed itself is never asserted."""

import math
import types

import pytest
import torch
import torch.nn as nn

from mixshare import cost
from mixshare.ensemble import DeepEnsemble
from mixshare.protocol import MimoModel

C_IN, C_OUT, KERNEL, SIZE, K = 3, 5, 3, 6, 4


class TinyMimo(MimoModel):
    """M input convs (3 -> 5, 3x3, padding 1, bias), their outputs summed, global mean pool, one
    linear layer 5 -> M * K (bias): logits [M, B, K]."""

    def __init__(self, num_subnets: int = 1):
        super().__init__()
        self.num_subnets, self.num_features = num_subnets, C_OUT
        self.convs = nn.ModuleList(nn.Conv2d(C_IN, C_OUT, KERNEL, padding=1) for _ in range(num_subnets))
        self.head = nn.Linear(C_OUT, num_subnets * K)

    def forward(self, images, plan=None):
        encoded = sum(conv(x) for conv, x in zip(self.convs, images))  # [B, C_OUT, H, W]
        out = self.head(encoded.mean((2, 3)))  # [B, M * K]
        return out.view(out.shape[0], self.num_subnets, K).transpose(0, 1)


def hand_parameters(m: int) -> int:
    return m * (C_OUT * C_IN * KERNEL * KERNEL + C_OUT) + (C_OUT * m * K + m * K)


def hand_flops_per_example(m: int) -> int:
    """2 x the multiply-adds of the convs and the linear layer (FlopCounterMode counts no bias add,
    no sum, no pooling)."""
    conv_macs = m * SIZE * SIZE * C_OUT * C_IN * KERNEL * KERNEL
    linear_macs = C_OUT * m * K
    return 2 * (conv_macs + linear_macs)


@pytest.mark.parametrize("m", [1, 3])
def test_parameters_match_a_hand_count(m):
    assert cost.count_parameters(TinyMimo(m)) == hand_parameters(m)


@pytest.mark.parametrize("m", [1, 3])
def test_flops_match_two_per_multiply_add(m):
    images = torch.randn(7, C_IN, SIZE, SIZE)
    assert cost.flops_per_example(TinyMimo(m), images) == hand_flops_per_example(m)


def test_deep_ensemble_costs_m_times_the_single():
    torch.manual_seed(0)
    single, images = TinyMimo(1), torch.randn(4, C_IN, SIZE, SIZE)
    ensemble = DeepEnsemble([TinyMimo(1) for _ in range(3)])
    assert cost.flops_per_example(ensemble, images) == 3 * cost.flops_per_example(single, images)
    assert cost.count_parameters(ensemble) == 3 * cost.count_parameters(single)
    assert cost.forward_passes(ensemble) == 3 and cost.forward_passes(single) == 1
    assert ensemble.predict(images).shape == (3, 4, K)


def test_flops_leave_the_training_flag_and_autograd_as_they_were():
    model = TinyMimo(2).train()
    cost.flops_per_example(model, torch.randn(2, C_IN, SIZE, SIZE))
    assert model.training and torch.is_grad_enabled()


class Counting(nn.Module):
    """Wraps a model, counting its predict calls and the mode and autograd state they ran in."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_subnets, self.calls = model, model.num_subnets, []

    def predict(self, images):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.model.predict(images)


class Clocked(Counting):
    """A Counting model whose predict call k takes ``seconds[k]`` on a fake clock (``clock.perf_counter``)."""

    def __init__(self, model, seconds):
        super().__init__(model)
        self.seconds, self.now = list(seconds), 0.0
        self.clock = types.SimpleNamespace(perf_counter=lambda: self.now)

    def predict(self, images):
        self.now += self.seconds[len(self.calls)]
        return super().predict(images)


def test_prediction_cost_times_the_repeats_asked_in_eval_mode_without_grad(monkeypatch):
    # 2 warm-up calls (not timed), 4 timed calls, then the FLOP count's call
    model = Clocked(TinyMimo(2), [9.0, 9.0, 0.010, 0.030, 0.020, 0.050, 9.0]).train()
    monkeypatch.setattr(cost, "time", model.clock)
    images = torch.randn(5, C_IN, SIZE, SIZE)
    report = cost.prediction_cost(model, images, repeats=4, warmup=2)
    flop_calls = 1
    assert len(model.calls) == 2 + 4 + flop_calls
    assert all(call == (False, False) for call in model.calls)
    assert model.training
    assert report["repeats"] == 4 and report["warmup"] == 2 and report["batch_size"] == 5
    # the median of the timed calls (25 ms) per batch, over its 5 images
    assert report["ms_per_batch"] == pytest.approx(25.0) and report["ms_per_example"] == pytest.approx(5.0)
    assert report["parameters"] == hand_parameters(2)
    assert report["flops_per_example"] == hand_flops_per_example(2)


def test_compare_costs_measures_the_three_side_by_side():
    single, mimo = Counting(TinyMimo(1)), Counting(TinyMimo(3))
    images = torch.randn(3, C_IN, SIZE, SIZE)
    report = cost.compare_costs(single, mimo, images, repeats=5, warmup=1)
    assert set(report) == {"single", "mimo", "deep_ensemble"}
    # The ensemble is 3 copies of the single wrapper: their calls land on the copies, not on single.
    assert len(single.calls) == 1 + 5 + 1 and len(mimo.calls) == 1 + 5 + 1
    for name, passes, flops in (("single", 1, hand_flops_per_example(1)), ("mimo", 1, hand_flops_per_example(3)),
                                ("deep_ensemble", 3, 3 * hand_flops_per_example(1))):
        r = report[name]
        assert r["forward_passes"] == passes and r["flops_per_example"] == flops, name
        assert r["repeats"] == 5 and math.isfinite(r["ms_per_example"]) and r["ms_per_example"] > 0, name
    assert report["deep_ensemble"]["parameters"] == 3 * hand_parameters(1)
    assert report["mimo"]["parameters"] == hand_parameters(3)


def test_compare_costs_ensemble_size_defaults_to_m_and_can_be_given():
    single, mimo = TinyMimo(1), TinyMimo(2)
    images = torch.randn(2, C_IN, SIZE, SIZE)
    assert cost.compare_costs(single, mimo, images, repeats=1, warmup=0)["deep_ensemble"]["forward_passes"] == 2
    report = cost.compare_costs(single, mimo, images, ensemble_size=4, repeats=1, warmup=0)
    assert report["deep_ensemble"]["forward_passes"] == 4


@pytest.mark.parametrize("call, match", [
    (lambda m, x: cost.prediction_cost(m, x, repeats=0), "repeats"),
    (lambda m, x: cost.prediction_cost(m, x, repeats=True), "repeats"),
    (lambda m, x: cost.prediction_cost(m, x, warmup=-1), "warmup"),
    (lambda m, x: cost.prediction_cost(m, x[0]), "images"),
    (lambda m, x: cost.prediction_cost(m, x[:0]), "images"),
    (lambda m, x: cost.flops_per_example(m, x.long()), "images"),
    (lambda m, x: cost.flops_per_example(nn.Linear(2, 2), x), "model"),
    (lambda m, x: cost.compare_costs(m, m, x), "single"),
    (lambda m, x: cost.compare_costs(TinyMimo(1), "mimo", x), "mimo"),
    (lambda m, x: cost.compare_costs(TinyMimo(1), m, x, ensemble_size=0), "ensemble_size"),
    (lambda m, x: cost.count_parameters(None), "model"),
])
def test_bad_arguments_are_refused_by_name(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(TinyMimo(2), torch.randn(2, C_IN, SIZE, SIZE))
