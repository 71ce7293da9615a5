"""Metrics under shift and OOD detection (against scikit-learn / torchmetrics / the definitions),
the CIFAR-C and SVHN readers on files made here, and a model evaluated on corrupted sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from mixshare import corruptions, metrics, shift
from mixshare.evaluate import collect_logits
from mixshare.protocol import MimoModel

sk = pytest.importorskip("sklearn.metrics")


def random_logits(m=3, n=64, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, k, generator=g, dtype=torch.float64) * 2, torch.randint(0, k, (n,), generator=g)


# --------------------------------------------------------------------------- OOD metrics


@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_average_precision_match_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    n = 50 + 37 * seed
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    if seed % 2:
        scores = (scores * 2).round()  # many ties
    positive = torch.rand(n, generator=g) < 0.4
    assert metrics.auroc(scores, positive) == pytest.approx(
        sk.roc_auc_score(positive.numpy(), scores.numpy()), abs=1e-12)
    assert metrics.average_precision(scores, positive) == pytest.approx(
        sk.average_precision_score(positive.numpy(), scores.numpy()), abs=1e-12)


def test_ood_detection_matches_sklearn_and_torchmetrics():
    g = torch.Generator().manual_seed(5)
    s_in = torch.randn(70, generator=g, dtype=torch.float64)
    s_out = torch.randn(40, generator=g, dtype=torch.float64) + 0.8
    out = metrics.ood_detection(s_in, s_out)
    scores = np.concatenate([s_in.numpy(), s_out.numpy()])
    is_out = np.r_[np.zeros(70), np.ones(40)].astype(bool)
    assert out["auroc"] == pytest.approx(sk.roc_auc_score(is_out, scores), abs=1e-12)
    assert out["aupr_out"] == pytest.approx(sk.average_precision_score(is_out, scores), abs=1e-12)
    assert out["aupr_in"] == pytest.approx(sk.average_precision_score(~is_out, -scores), abs=1e-12)
    tm = pytest.importorskip("torchmetrics.functional.classification")
    target = torch.from_numpy(is_out).long()
    assert out["auroc"] == pytest.approx(float(tm.binary_auroc(torch.from_numpy(scores), target)), abs=1e-6)
    # FPR95 from sklearn's ROC curve with the in-distribution class positive, scored by -score:
    fpr, tpr, _ = sk.roc_curve(~is_out, -scores)
    assert out["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_fpr95_by_hand():
    # 20 in-distribution scores 1..20: accepting >= 95% (19 of 20) needs the threshold 19 (score <= 19).
    s_in = torch.arange(1, 21, dtype=torch.float64)
    # OOD scores: 5 of 8 are <= 19 (accepted), so FPR = 5 / 8.
    s_out = torch.tensor([0.5, 10.0, 18.0, 19.0, 19.0, 19.5, 25.0, 30.0], dtype=torch.float64)
    assert metrics.fpr_at_tpr(s_in, s_out) == 5 / 8
    # TPR 0.5: 10 of 20 accepted, threshold 10; OOD <= 10: 0.5, 10.0 -> 2 / 8.
    assert metrics.fpr_at_tpr(s_in, s_out, tpr=0.5) == 2 / 8
    # ties at the threshold: in = [1, 2, 2, 2] (4 samples, 95% -> all 4, threshold 2); out = [2, 3] -> 1 / 2.
    assert metrics.fpr_at_tpr(torch.tensor([2.0, 1.0, 2.0, 2.0]), torch.tensor([2.0, 3.0])) == 1 / 2
    # perfectly separated: no OOD accepted
    assert metrics.fpr_at_tpr(torch.zeros(10), torch.ones(3)) == 0.0


def test_uncertainty_scores_by_definition():
    logits, _ = random_logits(m=3, n=10, k=4)
    p = torch.softmax(logits, -1).numpy()  # [M, N, K]
    mean_p = p.mean(0)
    h = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    scores = metrics.uncertainty_scores(logits, "probs")
    np.testing.assert_allclose(scores["msp"].numpy(), -mean_p.max(-1), atol=1e-12)
    np.testing.assert_allclose(scores["entropy"].numpy(), h(mean_p), atol=1e-12)
    np.testing.assert_allclose(scores["mutual_information"].numpy(), h(mean_p) - h(p).mean(0), atol=1e-12)
    ens = torch.softmax(logits.mean(0), -1).numpy()
    np.testing.assert_allclose(metrics.uncertainty_scores(logits)["entropy"].numpy(), h(ens), atol=1e-12)
    same = metrics.uncertainty_scores(logits[:1].expand(3, -1, -1))["mutual_information"]
    assert float(same.abs().max()) < 1e-12  # identical subnetworks do not disagree


def test_ood_metrics_per_score():
    logits_in, _ = random_logits(n=40, seed=1)
    logits_out = random_logits(n=30, seed=2)[0] * 0.3  # flatter: more uncertain
    out = metrics.ood_metrics(logits_in, logits_out)
    assert set(out) == {"msp", "entropy", "mutual_information"}
    for name, row in out.items():
        s_in = metrics.uncertainty_scores(logits_in)[name]
        s_out = metrics.uncertainty_scores(logits_out)[name]
        assert row == metrics.ood_detection(s_in, s_out)
        assert set(row) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    assert out["entropy"]["auroc"] > 0.5
    with pytest.raises(ValueError, match="share M and K"):
        metrics.ood_metrics(logits_in, logits_out[:, :, :3])


def test_ood_bad_input():
    with pytest.raises(ValueError, match="one positive and one negative"):
        metrics.auroc(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="scores_in must be finite"):
        metrics.fpr_at_tpr(torch.tensor([float("nan"), 1.0]), torch.rand(3))
    with pytest.raises(ValueError, match=r"scores must be \[N\] \(one score per sample\), got shape \(2, 3\)"):
        metrics.auroc(torch.rand(2, 3), torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="tpr must lie in"):
        metrics.fpr_at_tpr(torch.rand(3), torch.rand(3), tpr=0.0)


# --------------------------------------------------------------------------- metrics under shift


def test_set_metrics_per_subnetwork():
    logits, labels = random_logits()
    row = shift.set_metrics(logits, labels, "probs")
    probs = torch.softmax(logits, -1).mean(0)
    assert row["accuracy"] == pytest.approx(100 * (probs.argmax(1) == labels).double().mean().item())
    assert row["nll"] == pytest.approx(-probs[torch.arange(64), labels].log().mean().item())
    tm = pytest.importorskip("torchmetrics.functional.classification")
    for i, z in enumerate(logits):
        p = torch.softmax(z, -1)
        expected = float(tm.multiclass_calibration_error(p.float(), labels, num_classes=5, n_bins=15, norm="l1"))
        assert row["subnetwork_ece"][i] == pytest.approx(100 * expected, abs=1e-3)  # percent
        assert row["subnetwork_accuracy"][i] == pytest.approx(100 * (z.argmax(1) == labels).double().mean().item())
    assert row["ece"] == pytest.approx(100 * float(tm.multiclass_calibration_error(
        probs.float(), labels, num_classes=5, n_bins=15, norm="l1")), abs=1e-3)


def test_shift_summary_and_mce_by_definition():
    _, labels = random_logits()
    by_set = {(c, s): random_logits(seed=10 * s + i)[0] for i, c in enumerate(("fog", "snow")) for s in (1, 2, 3)}
    results = shift.corruption_metrics(by_set, labels)
    assert set(results) == {f"{c}/{s}" for c, s in by_set}
    summary = shift.shift_summary(results)
    rows = list(results.values())
    assert summary["cAcc"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))
    assert summary["cNLL"] == pytest.approx(np.mean([r["nll"] for r in rows]))
    assert summary["cECE"] == pytest.approx(np.mean([r["ece"] for r in rows]))
    np.testing.assert_allclose(summary["subnetwork_cAcc"],
                               np.mean([r["subnetwork_accuracy"] for r in rows], axis=0))
    assert summary["by_severity"][2]["accuracy"] == pytest.approx(
        np.mean([results["fog/2"]["accuracy"], results["snow/2"]["accuracy"]]))
    assert summary["by_corruption"]["snow"]["nll"] == pytest.approx(
        np.mean([results[f"snow/{s}"]["nll"] for s in (1, 2, 3)]))
    baseline = shift.corruption_metrics({k: v * 0.2 for k, v in by_set.items()}, labels)
    mce = shift.mean_corruption_error(results, baseline)
    for c in ("fog", "snow"):
        err = sum(100 - results[f"{c}/{s}"]["accuracy"] for s in (1, 2, 3))
        base = sum(100 - baseline[f"{c}/{s}"]["accuracy"] for s in (1, 2, 3))
        assert mce["CE"][c] == pytest.approx(100 * err / base)
    assert mce["mCE"] == pytest.approx((mce["CE"]["fog"] + mce["CE"]["snow"]) / 2)
    assert shift.mean_corruption_error(results, results)["mCE"] == pytest.approx(100.0)
    # From the per-corruption means over the same severities (metrics.json's shift_by_corruption): the same.
    of_means = shift.mean_corruption_error_of_means(summary["by_corruption"],
                                                    shift.shift_summary(baseline)["by_corruption"])
    assert of_means["mCE"] == pytest.approx(mce["mCE"]) and of_means["CE"] == pytest.approx(mce["CE"])
    with pytest.raises(ValueError, match="baseline has no result for 'snow'"):
        shift.mean_corruption_error_of_means(summary["by_corruption"], {"fog": {"accuracy": 50.0}})
    with pytest.raises(ValueError, match="baseline has no result for 'fog/1'"):
        shift.mean_corruption_error(results, {})
    with pytest.raises(ValueError, match="at least one corrupted set"):
        shift.shift_summary({})


# --------------------------------------------------------------------------- readers


def write_cifar_c(folder, names=("fog",), n=6, size=4, labels_dtype=np.uint8):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(labels_dtype))
    data = {}
    for name in names:
        data[name] = rng.integers(0, 256, (5 * n, size, size, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", data[name])
    return data, labels


def test_read_cifar_c(tmp_path):
    data, labels = write_cifar_c(tmp_path, ("fog", "saturate"))
    images, got = shift.read_cifar_c(tmp_path, "fog", num_classes=10)
    assert images.shape == (5, 6, 3, 4, 4) and images.dtype == torch.uint8
    assert got.dtype == torch.int64 and got.tolist() == labels.tolist()
    for s in range(5):  # severity s+1 is block s, HWC -> CHW
        np.testing.assert_array_equal(images[s].permute(0, 2, 3, 1).numpy(), data["fog"][6 * s: 6 * s + 6])
    two, _ = shift.read_cifar_c(tmp_path, "saturate", severities=(2, 5))
    np.testing.assert_array_equal(two[1].permute(0, 2, 3, 1).numpy(), data["saturate"][24:30])


def test_read_cifar_c_errors_name_the_file(tmp_path):
    write_cifar_c(tmp_path, ("fog",))
    with pytest.raises(FileNotFoundError, match="snow.npy: file not found"):
        shift.read_cifar_c(tmp_path, "snow")
    with pytest.raises(ValueError, match="unknown corruption 'mist'"):
        shift.read_cifar_c(tmp_path, "mist")
    np.save(tmp_path / "snow.npy", np.zeros((30, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"snow.npy: expected uint8 \[5 n, H, W, 3\]"):
        shift.read_cifar_c(tmp_path, "snow")
    np.save(tmp_path / "snow.npy", np.zeros((25, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="snow.npy: expected 30 images"):
        shift.read_cifar_c(tmp_path, "snow")
    np.save(tmp_path / "snow.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="snow.npy: malformed .npy file"):
        shift.read_cifar_c(tmp_path, "snow")
    (tmp_path / "snow.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="snow.npy: malformed"):
        shift.read_cifar_c(tmp_path, "snow")
    with pytest.raises(ValueError, match=r"labels.npy: labels must lie in \[0, 3\)"):
        shift.read_cifar_c(tmp_path, "fog", num_classes=3)
    np.save(tmp_path / "labels.npy", np.arange(30))
    with pytest.raises(ValueError, match="labels.npy: the 5 severity blocks hold different labels"):
        shift.read_cifar_c(tmp_path, "fog")
    np.save(tmp_path / "labels.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels.npy: expected \[5 n\] labels"):
        shift.read_cifar_c(tmp_path, "fog")
    np.save(tmp_path / "labels.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="labels.npy: expected integer labels"):
        shift.read_cifar_c(tmp_path, "fog")
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy: file not found"):
        shift.read_cifar_c(tmp_path, "fog")


def test_read_svhn_mat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
    y = np.array([[1], [10], [3], [10], [9], [2], [5]], dtype=np.uint8)
    sio.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    images, labels = shift.read_svhn_mat(tmp_path / "test_32x32.mat")
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [1, 0, 3, 0, 9, 2, 5]
    np.testing.assert_array_equal(images[4].permute(1, 2, 0).numpy(), x[..., 4])
    sio.savemat(tmp_path / "bad.mat", {"X": x, "y": np.zeros((7, 1))})
    with pytest.raises(ValueError, match=r"bad.mat: y must hold labels 1..10"):
        shift.read_svhn_mat(tmp_path / "bad.mat")
    sio.savemat(tmp_path / "bad.mat", {"X": x.astype(np.float32), "y": y})
    with pytest.raises(ValueError, match=r"bad.mat: X must be uint8"):
        shift.read_svhn_mat(tmp_path / "bad.mat")
    sio.savemat(tmp_path / "bad.mat", {"X": x})
    with pytest.raises(ValueError, match="bad.mat: expected variables X and y"):
        shift.read_svhn_mat(tmp_path / "bad.mat")
    sio.savemat(tmp_path / "bad.mat", {"X": x, "y": y[:5]})
    with pytest.raises(ValueError, match="bad.mat: y must be"):
        shift.read_svhn_mat(tmp_path / "bad.mat")
    with pytest.raises(FileNotFoundError, match="missing.mat: file not found"):
        shift.read_svhn_mat(tmp_path / "missing.mat")
    (tmp_path / "junk.mat").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.mat: not a readable .mat file"):
        shift.read_svhn_mat(tmp_path / "junk.mat")


# --------------------------------------------------------------------------- a model under shift


class TinyMimo(MimoModel):
    """M linear heads on the flattened image (each subnetwork sees its own input)."""

    num_features = 8

    def __init__(self, m=2, classes=4, pixels=3 * 8 * 8):
        super().__init__()
        self.num_subnets = m
        torch.manual_seed(0)
        self.heads = nn.ModuleList(nn.Linear(pixels, classes) for _ in range(m))

    def forward(self, images, plan=None):
        return torch.stack([h(x.flatten(1)) for h, x in zip(self.heads, images)])


def test_evaluate_corruptions_equals_doing_it_by_hand(tmp_path):
    model = TinyMimo()
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 8, 8, generator=g)
    labels = torch.randint(0, 4, (6,), generator=g)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    lines = []
    out = shift.evaluate_corruptions(model, pixels, labels, mean, std, names=("contrast", "gaussian_noise"),
                                     severities=(1, 5), seed=3, batch_size=4, keep_logits=True,
                                     progress=lambda *a: lines.append(a))
    assert [a[:3] for a in lines] == [(1, 4, "contrast/1"), (2, 4, "contrast/5"), (3, 4, "gaussian_noise/1"),
                                      (4, 4, "gaussian_noise/5")]
    corrupted = corruptions.corrupt(pixels, "gaussian_noise", 5, torch.Generator().manual_seed(3))
    normalised = (corrupted - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    logits = collect_logits(model, normalised)
    torch.testing.assert_close(out["logits"][("gaussian_noise", 5)], logits)
    assert out["sets"]["gaussian_noise/5"] == shift.set_metrics(logits, labels)
    assert out["cAcc"] == pytest.approx(np.mean([r["accuracy"] for r in out["sets"].values()]))

    # The same sets written as a CIFAR-C folder give the same metrics (up to uint8 rounding of the pixels).
    n = 6
    np.save(tmp_path / "labels.npy", np.tile(labels.numpy(), 5).astype(np.uint8))
    blocks = [corruptions.corrupt(pixels, "contrast", s) for s in corruptions.SEVERITIES]
    u8 = torch.cat(blocks).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    np.save(tmp_path / "contrast.npy", u8)
    released = shift.evaluate_cifar_c(model, tmp_path, mean, std, names=("contrast",), severities=(1, 5),
                                      progress=True)
    assert set(released["sets"]) == {"contrast/1", "contrast/5"}
    by_hand = collect_logits(model, shift.to_model_input(torch.from_numpy(u8[4 * n:]).permute(0, 3, 1, 2),
                                                         mean, std))
    assert released["sets"]["contrast/5"] == shift.set_metrics(by_hand, labels)


def test_mutual_information_of_one_network_is_exactly_zero():
    """M = 1 has no disagreement: the score is 0 everywhere, so it ranks nothing (AUROC 1/2), never
    rounding noise that would pass for a detector."""
    gen = torch.Generator().manual_seed(3)
    inside, outside = 4 * torch.randn(1, 40, 5, generator=gen), 4 * torch.randn(1, 30, 5, generator=gen)
    assert torch.equal(metrics.uncertainty_scores(inside)["mutual_information"], torch.zeros(40, dtype=torch.float64))
    assert metrics.ood_metrics(inside, outside)["mutual_information"]["auroc"] == 0.5
