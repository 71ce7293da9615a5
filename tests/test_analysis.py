"""mixshare.analysis on stand-in models with hand-set weights, and mixshare.plots."""

import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mixshare import analysis, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StandIn(nn.Module):
    """The model interface analysis.py codes against: M encoders 3 -> 16, M heads C -> K, stage_features.

    Stages: relu(sum of encodings) [B, 16, H, W], then a 2x2 average pool of it
    times the product of the first two encodings [B, 16, H/2, W/2] (so the
    variance w.r.t. one input depends on the others' fixed image), then a
    dropout of the pooled second stage [B, 16] (random in training mode only).
    """

    def __init__(self, num_subnets=2, features=8, classes=5, dtype=torch.float32):
        super().__init__()
        self.num_subnets = num_subnets
        self.encoders = nn.ModuleList(nn.Conv2d(3, 16, 3, padding=1, bias=False) for _ in range(num_subnets))
        self.heads = nn.ModuleList(nn.Linear(features, classes) for _ in range(num_subnets))
        self.dropout = nn.Dropout(0.5)
        self.to(dtype)
        self.calls = []

    def stage_features(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(x.shape)))
        encoded = [enc(img) for enc, img in zip(self.encoders, x)]
        first = F.relu(sum(encoded))
        second = F.avg_pool2d(first * (encoded[0] * encoded[-1]).tanh(), 2)
        third = self.dropout(second.mean(dim=(2, 3)))
        return [first, second, third]


class FirstInputOnly(StandIn):
    """Stage features depend on encoder 0's input only."""

    def stage_features(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(x.shape)))
        first = self.encoders[0](x[0])
        return [first, F.avg_pool2d(first, 2)]


class Offset(StandIn):
    """Features with a large constant offset: a naive sum-of-squares variance loses them to cancellation."""

    def stage_features(self, x):
        encoded = sum(enc(img) for enc, img in zip(self.encoders, x))
        return [encoded + 1e8]


def set_encoder_profiles(model, profiles):
    """Give each encoder kernel channel c a constant weight so that its L1 norm is profiles[i][c]."""
    with torch.no_grad():
        for enc, row in zip(model.encoders, profiles):
            enc.weight.copy_(torch.tensor(row, dtype=enc.weight.dtype).view(-1, 1, 1, 1).expand_as(enc.weight) / 27)


def set_head_profiles(model, profiles, classes=5):
    with torch.no_grad():
        for head, row in zip(model.heads, profiles):
            head.weight.copy_(torch.tensor(row, dtype=head.weight.dtype).expand_as(head.weight) / classes)


def reference_variance(model, images, fixed_index, i):
    """The definition, in one full batch: encoder i sees the N images, the others images[fixed_index]."""
    model.eval()
    with torch.no_grad():
        n = images.shape[0]
        inputs = images[fixed_index].expand(model.num_subnets, n, *images.shape[1:]).clone()
        inputs[i] = images
        feats = model.stage_features(inputs)
    return [f.double().var(dim=0).reshape(f.shape[1], -1).mean(1) for f in feats]


# --------------------------------------------------------------------------- profiles and share rates


def test_profile_shapes_and_values():
    torch.manual_seed(0)
    model = StandIn(num_subnets=3, features=8)
    enc = analysis.encoder_profiles(model)
    cls = analysis.classifier_profiles(model)
    assert enc.shape == (3, 16) and cls.shape == (3, 8)
    assert torch.allclose(enc[1], model.encoders[1].weight.abs().sum(dim=(1, 2, 3)))
    assert torch.allclose(cls[2], model.heads[2].weight.abs().sum(0))
    assert not enc.requires_grad and not cls.requires_grad

    set_encoder_profiles(model, [[float(c) for c in range(16)]] * 3)
    assert analysis.encoder_profiles(model)[0].tolist() == pytest.approx(list(range(16)), abs=1e-5)


def test_disjoint_features_share_nothing():
    model = StandIn(num_subnets=2, features=8)
    set_encoder_profiles(model, [[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [2.0] * 8])
    set_head_profiles(model, [[3.0, 1.0, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert analysis.encoder_share_rate(model) == pytest.approx(0.0)
    assert analysis.classifier_share_rate(model) == pytest.approx(0.0)


def test_identical_features_share_everything():
    torch.manual_seed(1)
    model = StandIn(num_subnets=3, features=8)
    with torch.no_grad():
        for enc in model.encoders[1:]:
            enc.weight.copy_(model.encoders[0].weight)
        for head in model.heads[1:]:
            head.weight.copy_(-model.heads[0].weight)  # the profile is an L1 norm: the sign does not count
    assert analysis.encoder_share_rate(model) == pytest.approx(100.0)
    assert analysis.classifier_share_rate(model) == pytest.approx(100.0)
    rates = analysis.share_rates(model)
    assert rates["encoder_share_rate_normalized"] == pytest.approx(100.0)
    assert rates["classifier_share_rate_normalized"] == pytest.approx(100.0)


def test_colinear_features_share_everything_only_when_normalised():
    # heads 1 and 2 are heads 0 scaled by -2.5 and 1.5: the same profile up to scale.
    # Literal rate: min over subnetworks is h0, max is 2.5 h0 -> 100 / 2.5 = 40%; normalised: 100%.
    torch.manual_seed(1)
    model = StandIn(num_subnets=3, features=8)
    with torch.no_grad():
        model.heads[1].weight.copy_(-2.5 * model.heads[0].weight)
        model.heads[2].weight.copy_(1.5 * model.heads[0].weight)
    assert analysis.classifier_share_rate(model) == pytest.approx(40.0, rel=1e-5)
    rates = analysis.share_rates(model)
    assert rates["classifier_share_rate"] == pytest.approx(40.0, rel=1e-5)
    assert rates["classifier_share_rate_normalized"] == pytest.approx(100.0)


def test_literal_share_rate_by_hand():
    # MixShare section 2: sum_f min_i h_i(f) / sum_f max_i h_i(f) of the raw profiles.
    # h0 = [1, 2, 0], h1 = [2, 1, 3]: min [1, 1, 0], max [2, 2, 3] -> 2 / 7
    # (normalising each profile by its maximum first would give (5/6) / (8/3) = 31.25%).
    assert analysis.share_rate(torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 3.0]])) == pytest.approx(200 / 7)
    assert analysis.share_rate([[1.0, 2.0, 0.0], [2.0, 1.0, 3.0]]) == pytest.approx(200 / 7)  # lists too
    # a common scale factor cancels
    assert analysis.share_rate(torch.tensor([[10.0, 20.0, 0.0], [20.0, 10.0, 30.0]])) == pytest.approx(200 / 7)
    # identical -> 100, disjoint -> 0, one profile 1.5x the other -> 1 / 1.5
    assert analysis.share_rate(torch.tensor([[0.5, 2.0, 1.0]] * 2)) == pytest.approx(100.0)
    assert analysis.share_rate(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])) == 0.0
    assert analysis.share_rate(torch.tensor([[1.0, 2.0, 3.0], [1.5, 3.0, 4.5]])) == pytest.approx(200 / 3)


def test_head_scaled_by_one_and_a_half_lowers_the_literal_rate_only():
    torch.manual_seed(2)
    model = StandIn(num_subnets=2, features=8)
    with torch.no_grad():
        model.heads[1].weight.copy_(model.heads[0].weight)
    assert analysis.classifier_share_rate(model) == pytest.approx(100.0)
    with torch.no_grad():
        model.heads[1].weight.mul_(1.5)
    assert analysis.classifier_share_rate(model) == pytest.approx(100 / 1.5, rel=1e-5)
    assert analysis.share_rates(model)["classifier_share_rate"] == pytest.approx(100 / 1.5, rel=1e-5)
    assert analysis.normalized_share_rate(analysis.classifier_profiles(model)) == pytest.approx(100.0)
    assert analysis.share_rates(model)["classifier_share_rate_normalized"] == pytest.approx(100.0)


def test_literal_share_rate_matches_bray_curtis():
    # For M = 2, min = (a + b - |a - b|) / 2 and max = (a + b + |a - b|) / 2, so the rate is
    # (1 - BC) / (1 + BC) with BC = sum|a - b| / sum(a + b), scipy's Bray-Curtis dissimilarity.
    distance = pytest.importorskip("scipy.spatial.distance")
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        h = torch.rand(2, 37, generator=gen, dtype=torch.float64) * torch.tensor([[1.0], [3.0]], dtype=torch.float64)
        bc = distance.braycurtis(h[0].numpy(), h[1].numpy())
        assert analysis.share_rate(h) == pytest.approx(100 * (1 - bc) / (1 + bc), rel=1e-12)


def test_partial_sharing_by_hand():
    model = StandIn(num_subnets=2, features=4)
    # literal: min [0, 2, 1, 0] (sum 3) / max [4, 2, 2, 2] (sum 10) -> 30%
    # normalised: [1, 0.5, 0.25, 0] and [0, 1, 1, 1]; sum of min 0.75, sum of max 4 -> 18.75%
    enc0 = [4.0, 2.0, 1.0, 0.0] + [0.0] * 12
    enc1 = [0.0, 2.0, 2.0, 2.0] + [0.0] * 12
    set_encoder_profiles(model, [enc0, enc1])
    set_head_profiles(model, [enc0[:4], enc1[:4]])
    assert analysis.encoder_share_rate(model) == pytest.approx(30.0, rel=1e-5)
    assert analysis.classifier_share_rate(model) == pytest.approx(30.0, rel=1e-5)
    rates = analysis.share_rates(model)
    assert rates["encoder_share_rate"] == pytest.approx(30.0, rel=1e-5)
    assert rates["classifier_share_rate"] == pytest.approx(30.0, rel=1e-5)
    assert rates["encoder_share_rate_normalized"] == pytest.approx(18.75, rel=1e-5)
    assert rates["classifier_share_rate_normalized"] == pytest.approx(18.75, rel=1e-5)
    # three subnetworks: min [1, 0, 0] / max [1, 1, 1], literal and normalised alike
    three = torch.tensor([[1.0, 1, 0], [1, 0, 1], [1, 1, 1]])
    assert analysis.share_rate(three) == pytest.approx(100 / 3)
    assert analysis.normalized_share_rate(three) == pytest.approx(100 / 3)


def test_normalized_share_rate_by_hand():
    # h0 = [1, 2, 0] / 2 = [0.5, 1, 0], h1 = [2, 1, 3] / 3 = [2/3, 1/3, 1]:
    # min [0.5, 1/3, 0] (sum 5/6), max [2/3, 1, 1] (sum 8/3) -> 31.25%
    assert analysis.normalized_share_rate(torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 3.0]])) == pytest.approx(31.25)
    assert analysis.normalized_share_rate(torch.tensor([[1.0, 2.0, 3.0], [1.5, 3.0, 4.5]])) == pytest.approx(100.0)
    assert analysis.normalized_share_rate(torch.tensor([[1.0, 0.0], [0.0, 7.0]])) == 0.0


def test_share_rate_edge_cases():
    assert analysis.share_rate(torch.tensor([[0.3, 0.0, 2.0]])) == 100.0  # M = 1
    assert analysis.normalized_share_rate(torch.tensor([[0.3, 0.0, 2.0]])) == 100.0
    assert analysis.encoder_share_rate(StandIn(num_subnets=1)) == 100.0
    # one subnetwork uses no feature: it shares none (literal 0); it cannot be normalised (nan)
    assert analysis.share_rate(torch.tensor([[1.0, 2.0], [0.0, 0.0]])) == 0.0
    assert math.isnan(analysis.normalized_share_rate(torch.tensor([[1.0, 2.0], [0.0, 0.0]])))
    # no subnetwork uses any feature: sum of max is 0 -> nan, for any M
    for zeros in (torch.zeros(2, 3), torch.zeros(1, 3)):
        assert math.isnan(analysis.share_rate(zeros))
        assert math.isnan(analysis.normalized_share_rate(zeros))
    for rate in (analysis.share_rate, analysis.normalized_share_rate):
        with pytest.raises(ValueError, match="non-negative"):
            rate(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        with pytest.raises(ValueError, match=r"\[M, F\]"):
            rate(torch.ones(4))
        with pytest.raises(ValueError, match="finite"):
            rate(torch.tensor([[1.0, math.inf], [1.0, 1.0]]))


def test_feature_sharing_report_is_json():
    model = StandIn(num_subnets=2, features=4)
    enc0 = [4.0, 2.0, 1.0, 0.0] + [0.0] * 12
    set_encoder_profiles(model, [enc0, enc0])
    set_head_profiles(model, [[1.0, 2.0, 0.0, 3.0], [2.0, 2.0, 1.0, 0.0]])
    report = analysis.feature_sharing_report(model)
    assert set(report) >= {"encoder_share_rate", "classifier_share_rate", "encoder_profiles", "classifier_profiles"}
    assert report["encoder_share_rate"] == pytest.approx(100.0)
    # sum of the minima (1 + 2 + 0 + 0) over sum of the maxima (2 + 2 + 1 + 3)
    assert report["classifier_share_rate"] == pytest.approx(100.0 * 3 / 8)
    for key, value in analysis.share_rates(model).items():
        assert report[key] == value
    assert len(report["encoder_profiles"]) == 2 and len(report["encoder_profiles"][0]) == 16
    assert len(report["classifier_profiles"][1]) == 4
    assert report["encoder_profiles"][0][:4] == pytest.approx([4.0, 2.0, 1.0, 0.0], abs=1e-5)
    json.dumps(report)


def test_interface_mismatch_is_reported():
    model = StandIn(num_subnets=2)
    model.num_subnets = 3
    with pytest.raises(ValueError, match="num_subnets"):
        analysis.encoder_profiles(model)


# --------------------------------------------------------------------------- conditional variance


def test_conditional_variance_zero_for_an_ignored_input():
    torch.manual_seed(2)
    model = FirstInputOnly(num_subnets=2)
    images = torch.randn(10, 3, 6, 6)
    variances = analysis.conditional_variance(model, images, batch_size=3)
    assert [tuple(v.shape) for v in variances] == [(2, 16), (2, 16)]
    assert all(v.dtype == torch.float64 for v in variances)
    for stage, v in enumerate(variances):
        assert torch.all(v[0] > 1e-3), stage
        # subnetwork 1's input changes nothing: zero up to float32 conv rounding, which differs
        # between batch sizes (the last batch holds one image)
        assert torch.all(v[1] < 1e-10 * v[0].min()), stage
    expected = reference_variance(model, images, 0, 0)
    for v, ref in zip(variances, expected):
        assert torch.allclose(v[0], ref, rtol=1e-5)


def test_conditional_variance_matches_definition_in_batches():
    torch.manual_seed(3)
    model = StandIn(num_subnets=3)
    images = torch.randn(11, 3, 4, 4)
    variances = analysis.conditional_variance(model, images, fixed_index=4, batch_size=4)
    assert [tuple(v.shape) for v in variances] == [(3, 16), (3, 16), (3, 16)]
    for i in range(3):
        for v, ref in zip(variances, reference_variance(model, images, 4, i)):
            assert torch.allclose(v[i], ref, rtol=1e-4, atol=1e-10)
    # the fixed image matters here (the second stage multiplies encodings)
    other = analysis.conditional_variance(model, images, fixed_index=0, batch_size=4)
    assert not torch.allclose(other[1][0], variances[1][0])
    # one subnetwork only: [C_s] per stage, the same numbers
    only = analysis.conditional_variance(model, images, fixed_index=4, subnet=2, batch_size=5)
    assert [tuple(v.shape) for v in only] == [(16,), (16,), (16,)]
    for v, row in zip(only, variances):
        assert torch.allclose(v, row[2], rtol=1e-10)


def test_conditional_variance_is_numerically_sound():
    torch.manual_seed(4)
    model = Offset(num_subnets=2, dtype=torch.float64)
    images = torch.randn(40, 3, 4, 4, dtype=torch.float64)
    (v,) = analysis.conditional_variance(model, images, batch_size=7)
    (ref,) = reference_variance(model, images, 0, 0)
    assert torch.allclose(v[0], ref, rtol=1e-6)


def test_conditional_variance_eval_no_grad_and_flags_restored():
    torch.manual_seed(5)
    model = StandIn(num_subnets=2)
    model.train()
    model.heads[0].eval()  # a submodule in a different mode must keep it
    images = torch.randn(6, 3, 4, 4)
    analysis.conditional_variance(model, images, batch_size=4)
    assert model.calls and all(not training and not grad for training, grad, _ in model.calls)
    assert {shape for _, _, shape in model.calls} == {(2, 4, 3, 4, 4), (2, 2, 3, 4, 4)}
    assert model.training and model.dropout.training and model.encoders[0].training
    assert not model.heads[0].training

    model.eval()
    analysis.conditional_variance(model, images)
    assert not model.training and not model.dropout.training


def test_conditional_variance_bad_arguments():
    model = StandIn(num_subnets=2)
    with pytest.raises(ValueError, match="at least 2"):
        analysis.conditional_variance(model, torch.randn(1, 3, 4, 4))
    with pytest.raises(IndexError):
        analysis.conditional_variance(model, torch.randn(3, 3, 4, 4), fixed_index=3)
    with pytest.raises(ValueError, match="subnet"):
        analysis.conditional_variance(model, torch.randn(3, 3, 4, 4), subnet=2)
    with pytest.raises(ValueError, match="images"):
        analysis.conditional_variance(model, torch.randn(3, 4, 4))


def test_project_model_if_present():
    models = pytest.importorskip("mixshare.models")
    if not hasattr(models, "wide_resnet"):
        pytest.skip("mixshare.models has no wide_resnet")
    torch.manual_seed(6)
    model = models.wide_resnet(10, 1, 10, num_subnets=2, encoder_init="identical")
    variances = analysis.conditional_variance(model, torch.randn(5, 3, 8, 8), batch_size=3)
    assert [tuple(v.shape) for v in variances] == [(2, 16), (2, 32), (2, 64)]
    report = analysis.feature_sharing_report(model)
    assert report["encoder_share_rate"] == pytest.approx(100.0)
    heads = torch.stack([head.weight.detach().double().abs().sum(0) for head in model.heads])  # [M, C_final]
    expected = 100.0 * float(heads.amin(0).sum() / heads.amax(0).sum())
    assert 0.0 < expected < 100.0 and report["classifier_share_rate"] == pytest.approx(expected)


# --------------------------------------------------------------------------- plots


def assert_png(path, folder):
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_SIGNATURE
    assert os.path.getsize(path) > 1000
    assert [name for name in os.listdir(folder) if name.endswith(".tmp")] == []  # no temp file left


def test_plot_feature_profiles(tmp_path):
    torch.manual_seed(7)
    path = tmp_path / "encoder.png"
    assert plots.plot_feature_profiles(torch.rand(2, 16), path, "input block") == path
    assert_png(path, tmp_path)
    # M = 3, an all-zero profile (share rate nan), M = 1, a new sub-folder, overwriting
    plots.plot_feature_profiles(torch.rand(3, 40), path, "three")
    plots.plot_feature_profiles(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), tmp_path / "zero.png", "zero")
    nested = tmp_path / "figs" / "one.png"
    plots.plot_feature_profiles([[0.5, 1.0, 0.2]], str(nested), "one")
    for p in (path, tmp_path / "zero.png", nested):
        assert_png(p, p.parent)


def test_plot_conditional_variance(tmp_path):
    torch.manual_seed(8)
    model = FirstInputOnly(num_subnets=3)
    variances = analysis.conditional_variance(model, torch.randn(6, 3, 4, 4))  # input 1: exact zeros
    path = tmp_path / "variance.png"
    assert plots.plot_conditional_variance(variances, path) == path
    assert_png(path, tmp_path)
    positive = [torch.rand(2, 8) + 0.1, torch.rand(2, 4) + 0.1]
    plots.plot_conditional_variance(positive, tmp_path / "positive.png", title="log-log")
    assert_png(tmp_path / "positive.png", tmp_path)
    with pytest.raises(ValueError):
        plots.plot_conditional_variance([torch.rand(1, 8)], tmp_path / "bad.png")


def test_plot_training_curves(tmp_path):
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 30.0 + 5 * e, "lr": 0.1 * (0.9 ** e)}
        for e in range(1, 6)
    ]
    for row in history[1::2]:
        row["test_accuracy"] = row["train_accuracy"] - 3.0
    path = tmp_path / "curves.png"
    assert plots.plot_training_curves(history, path) == path
    assert_png(path, tmp_path)
    minimal = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 10.0 * e} for e in range(1, 4)]
    plots.plot_training_curves(minimal, tmp_path / "minimal.png", title="no lr, no test")
    assert_png(tmp_path / "minimal.png", tmp_path)
    with pytest.raises(ValueError):
        plots.plot_training_curves([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="train_accuracy"):
        plots.plot_training_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "bad.png")
