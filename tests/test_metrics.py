"""mixshare.metrics against values computed by hand on tiny tensors."""

import json
import math

import pytest
import torch

from mixshare import metrics

# Two subnetworks, four samples, three classes.
#   subnetwork 0 predicts [0, 1, 2, 0], subnetwork 1 predicts [0, 2, 1, 2]; labels [0, 1, 1, 1]
#   -> subnetwork 0 right on samples 0, 1; subnetwork 1 right on samples 0, 2.
LOGITS = torch.tensor(
    [
        [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]],
        [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]],
    ]
)
LABELS = torch.tensor([0, 1, 1, 1])


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_accuracy_and_subnetwork_accuracy():
    assert metrics.subnetwork_accuracy(LOGITS, LABELS) == pytest.approx([50.0, 50.0])
    # mean logits: [2.5, 0, 0] -> 0 (right), [0, 1.5, 1] -> 1 (right), [0, 1, 1.5] -> 2, [1.5, 0, 1] -> 0
    assert metrics.accuracy(LOGITS.mean(0), LABELS) == pytest.approx(50.0)
    assert metrics.accuracy(metrics.ensemble_probs(LOGITS), LABELS) == pytest.approx(50.0)
    assert metrics.accuracy(LOGITS[0], LABELS) == pytest.approx(50.0)
    assert metrics.accuracy(torch.eye(3)[[0, 1, 1, 1]], LABELS) == pytest.approx(100.0)
    assert isinstance(metrics.accuracy(LOGITS[0], LABELS), float)


def test_ensemble_modes_by_hand():
    # One sample where the two rules disagree: averaging logits lets subnetwork 1's
    # strong -10 veto class 0; averaging probabilities keeps subnetwork 0's confident class 0.
    logits = torch.tensor([[[3.0, 0.0, 0.0]], [[-10.0, 1.0, 0.0]]])
    by_logits = metrics.ensemble_probs(logits, "logits")
    by_probs = metrics.ensemble_probs(logits, mode="probs")
    assert by_logits.shape == by_probs.shape == (1, 3)
    expected_logits = softmax([-3.5, 0.5, 0.0])
    p0, p1 = softmax([3.0, 0.0, 0.0]), softmax([-10.0, 1.0, 0.0])
    expected_probs = [(a + b) / 2 for a, b in zip(p0, p1)]
    assert by_logits[0].tolist() == pytest.approx(expected_logits, abs=1e-12)
    assert by_probs[0].tolist() == pytest.approx(expected_probs, abs=1e-12)
    assert int(by_logits.argmax()) == 1 and int(by_probs.argmax()) == 0
    assert metrics.ensemble_probs(logits).tolist() == by_logits.tolist()  # default is MixMo's rule


def test_ensemble_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError, match="logits.*probs"):
        metrics.ensemble_probs(LOGITS, "vote")
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        metrics.evaluate_logits(LOGITS, LABELS, ensemble="median")


PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.25, 0.5, 0.25]], dtype=torch.float64)
PROB_LABELS = torch.tensor([0, 1, 0, 2])


def test_nll_by_hand():
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.25)) / 4
    assert metrics.nll(PROBS, PROB_LABELS) == pytest.approx(expected, rel=1e-12)


def test_nll_clamps_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    value = metrics.nll(probs, torch.tensor([1, 0]))
    assert math.isfinite(value)
    assert value == pytest.approx((-math.log(metrics.PROB_EPS) - math.log(0.5)) / 2)


def test_brier_by_hand():
    # per sample: 0.3^2+0.2^2+0.1^2, 0.1^2+0.2^2+0.1^2, 0.7^2+0.3^2+0.4^2, 0.25^2+0.5^2+0.75^2
    expected = (0.14 + 0.06 + 0.74 + 0.875) / 4
    assert metrics.brier(PROBS, PROB_LABELS) == pytest.approx(expected, rel=1e-12)
    assert metrics.brier(torch.eye(3), torch.tensor([0, 1, 2])) == 0.0
    assert metrics.brier(torch.eye(2), torch.tensor([1, 0])) == pytest.approx(2.0)  # worst case


def test_brier_official_is_brier_over_classes():
    # the official MixMo code: mean over samples AND classes of (p - onehot)^2 = brier / K
    expected = (0.14 + 0.06 + 0.74 + 0.875) / 4 / 3
    assert metrics.brier_official(PROBS, PROB_LABELS) == pytest.approx(expected, rel=1e-12)
    assert metrics.brier_official(torch.eye(2), torch.tensor([1, 0])) == pytest.approx(1.0)  # worst case 2 / K
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    onehot = torch.nn.functional.one_hot(PROB_LABELS, 3).double()
    assert metrics.brier_official(PROBS, PROB_LABELS) == pytest.approx(
        sklearn_metrics.mean_squared_error(onehot.numpy(), PROBS.numpy()), rel=1e-12)


def test_ece_by_hand_15_bins():
    probs = torch.tensor(
        [
            [0.70, 0.20, 0.10],  # conf 0.70 -> bin 10 = (10/15, 11/15], right
            [0.10, 0.72, 0.18],  # conf 0.72 -> bin 10, wrong
            [0.45, 0.30, 0.25],  # conf 0.45 -> bin 6 = (6/15, 7/15], right
            [0.95, 0.03, 0.02],  # conf 0.95 -> bin 14, right
            [0.05, 0.20, 0.75],  # conf 0.75 -> bin 11, wrong
        ]
    )
    labels = torch.tensor([0, 0, 0, 0, 1])
    expected = 2 / 5 * abs(0.5 - 0.71) + 1 / 5 * abs(1 - 0.45) + 1 / 5 * abs(1 - 0.95) + 1 / 5 * abs(0 - 0.75)
    assert expected == pytest.approx(0.354)
    assert metrics.ece(probs, labels) == pytest.approx(100 * expected, abs=1e-4)  # percent
    assert metrics.ece(probs, labels, n_bins=15) == pytest.approx(100 * expected, abs=1e-4)
    # one bin: |accuracy - mean confidence| over everything
    assert metrics.ece(probs, labels, n_bins=1) == pytest.approx(100 * abs(3 / 5 - 3.57 / 5), abs=1e-4)


def test_ece_bins_are_right_closed():
    # conf 0.5 (right) and 0.9 (wrong) with two bins (0, 0.5] and (0.5, 1]:
    # separate bins -> 0.5*|1-0.5| + 0.5*|0-0.9| = 0.7 = 70% (a shared bin would give 20%).
    probs = torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=torch.float64)
    assert metrics.ece(probs, torch.tensor([0, 0]), n_bins=2) == pytest.approx(70.0)
    # a confidence of exactly 1 goes to the last bin; a perfect, certain model has ECE 0
    assert metrics.ece(torch.eye(3), torch.tensor([0, 1, 2])) == 0.0
    with pytest.raises(ValueError, match="n_bins"):
        metrics.ece(probs, torch.tensor([0, 0]), n_bins=0)


def test_disagreement_by_hand():
    # predictions [0, 1, 2, 0] vs [0, 2, 1, 2]: differ on 3 of 4 samples
    assert metrics.disagreement(LOGITS) == pytest.approx(75.0)
    assert metrics.disagreement(LOGITS[[0, 0]]) == 0.0
    # three subnetworks: pairs (0,1) 75%, (0,2) 0%, (1,2) 75% -> 50%
    assert metrics.disagreement(LOGITS[[0, 1, 0]]) == pytest.approx(50.0)
    assert metrics.disagreement(LOGITS[:1]) == 0.0


def kl_by_hand(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def test_kl_diversity_zero_for_identical_subnetworks():
    assert metrics.kl_diversity(LOGITS[[1, 1, 1]]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.kl_diversity(LOGITS[:1]) == 0.0


def test_kl_diversity_by_hand():
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]], [[0.0, 0.5, 0.0], [1.0, -1.0, 3.0]]])
    p = [[softmax(row) for row in sub] for sub in logits.tolist()]
    kl_01 = (kl_by_hand(p[0][0], p[1][0]) + kl_by_hand(p[0][1], p[1][1])) / 2
    kl_10 = (kl_by_hand(p[1][0], p[0][0]) + kl_by_hand(p[1][1], p[0][1])) / 2
    value = metrics.kl_diversity(logits)
    assert value > 0
    assert value == pytest.approx((kl_01 + kl_10) / 2, rel=1e-6)


def test_kl_diversity_three_subnetworks_matches_pairwise_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 5, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    expected = sum((logp[i].exp() * (logp[i] - logp[j])).sum(-1).mean().item() for i, j in pairs) / len(pairs)
    assert metrics.kl_diversity(logits) == pytest.approx(expected, rel=1e-10)


def test_ratio_of_errors_by_hand():
    # wrong: subnetwork 0 on samples 2, 3; subnetwork 1 on samples 1, 3
    # N00 = 1 (sample 3), N01 + N10 = 2 (samples 1, 2) -> 2.0
    assert metrics.ratio_of_errors(LOGITS, LABELS) == pytest.approx(2.0)
    # pairs (0,1): 2, (0,2): 0 / 2 = 0 (identical), (1,2): 2 -> 4/3
    assert metrics.ratio_of_errors(LOGITS[[0, 1, 0]], LABELS) == pytest.approx(4 / 3)


def one_hot_logits(predictions, k):
    """[M, N, K] logits whose argmax is ``predictions[i][n]``."""
    return 3.0 * torch.nn.functional.one_hot(torch.tensor(predictions), k).double()


def test_ratio_of_errors_without_shared_errors_is_the_official_fallback():
    # labels [0, 1, 2, 2]: subnetwork 0 wrong on sample 3 only, subnetwork 1 on samples 1, 2 -> N00 = 0;
    # exactly one wrong on 3 of 4 samples: official ratio 2 * (N01 + N10) with fractions = 2 * 3/4
    assert metrics.ratio_of_errors(LOGITS, torch.tensor([0, 1, 2, 2])) == pytest.approx(1.5)
    # the fallback uses fractions of N: four more samples both get right halve it
    logits = torch.cat([LOGITS, LOGITS[:, :1].expand(2, 4, 3)], dim=1)
    assert metrics.ratio_of_errors(logits, torch.tensor([0, 1, 2, 2, 0, 0, 0, 0])) == pytest.approx(0.75)
    # both always right: 2 * 0 = 0.0
    assert metrics.ratio_of_errors(LOGITS[[0, 0]], torch.tensor([0, 1, 2, 0])) == 0.0
    # subnetwork 0 always right, subnetwork 1 wrong on samples 1, 2, 3: 2 * 3/4, never nan
    assert metrics.ratio_of_errors(LOGITS[[0, 1]], torch.tensor([0, 1, 2, 0])) == pytest.approx(1.5)


def test_ratio_of_errors_three_subnetworks_mixes_both_cases():
    # labels all 0; wrong: subnetwork 0 on {0, 1}, subnetwork 1 on {1, 2}, subnetwork 2 on {3}
    preds = [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]]
    logits = one_hot_logits(preds, 2)
    labels = torch.zeros(5, dtype=torch.long)
    # (0, 1): N00 = 1/5, N01 + N10 = 2/5 -> 2; (0, 2) and (1, 2): N00 = 0, 3/5 one wrong -> 2 * 3/5 = 1.2
    assert metrics.ratio_of_errors(logits, labels) == pytest.approx((2 + 1.2 + 1.2) / 3)
    assert metrics.ratio_of_errors(logits[[0, 1]], labels) == pytest.approx(2.0)
    assert metrics.ratio_of_errors(logits[[1, 2]], labels) == pytest.approx(1.2)


def official_pair_ratio(y, pred1, pred2):
    """The official formula from a confusion matrix of the two subnetworks' correctness (scikit-learn)."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    right1, right2 = (pred1 == y).numpy(), (pred2 == y).numpy()
    (n00, n01), (n10, _) = sklearn_metrics.confusion_matrix(right1, right2, labels=[False, True]) / len(y)
    return 2 * (n01 + n10) if n00 == 0 else (n01 + n10) / n00


def test_ratio_of_errors_matches_pairwise_confusion_matrices():
    gen = torch.Generator().manual_seed(4)
    for m, n, k in [(4, 30, 3), (3, 7, 10), (2, 5, 2)]:
        logits = torch.randn(m, n, k, generator=gen)
        labels = torch.randint(0, k, (n,), generator=gen)
        pred = logits.argmax(-1)
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        expected = sum(official_pair_ratio(labels, pred[i], pred[j]) for i, j in pairs) / len(pairs)
        assert metrics.ratio_of_errors(logits, labels) == pytest.approx(expected, rel=1e-12)
    # a case with N00 = 0 for every pair goes through the fallback
    logits = one_hot_logits([[0, 1, 1], [1, 0, 1], [1, 1, 0]], 2)
    labels = torch.tensor([1, 1, 1])
    expected = official_pair_ratio(labels, logits[0].argmax(-1), logits[1].argmax(-1))
    assert expected == pytest.approx(2 * 2 / 3)
    assert metrics.ratio_of_errors(logits, labels) == pytest.approx(expected)


def test_ratio_of_errors_single_subnetwork_is_zero():
    assert metrics.ratio_of_errors(LOGITS[:1], LABELS) == 0.0  # M = 1: no pair, documented as 0.0


def test_evaluate_logits_keys_values_and_json():
    result = metrics.evaluate_logits(LOGITS, LABELS)
    assert set(result) == {
        "ensemble_accuracy", "subnetwork_accuracy", "mean_subnetwork_accuracy", "nll", "subnetwork_nll", "ece",
        "brier", "brier_official", "disagreement", "kl_diversity", "ratio_of_errors",
    }
    probs = metrics.ensemble_probs(LOGITS, "logits")
    assert result["ensemble_accuracy"] == pytest.approx(50.0)
    assert result["subnetwork_accuracy"] == pytest.approx([50.0, 50.0])
    assert result["mean_subnetwork_accuracy"] == pytest.approx(50.0)
    assert result["nll"] == pytest.approx(metrics.nll(probs, LABELS))
    assert result["ece"] == pytest.approx(metrics.ece(probs, LABELS))
    assert result["brier"] == pytest.approx(metrics.brier(probs, LABELS))
    assert result["brier_official"] == pytest.approx(result["brier"] / 3, rel=1e-12)
    assert result["disagreement"] == pytest.approx(75.0)
    assert result["ratio_of_errors"] == pytest.approx(2.0)
    for key, value in result.items():
        if key in ("subnetwork_accuracy", "subnetwork_nll"):
            assert isinstance(value, list) and all(type(v) is float for v in value)
        else:
            assert type(value) is float, key
    assert json.loads(json.dumps(result, allow_nan=False)) == result

    by_probs = metrics.evaluate_logits(LOGITS, LABELS, ensemble="probs")
    assert by_probs["nll"] == pytest.approx(metrics.nll(metrics.ensemble_probs(LOGITS, "probs"), LABELS))


def test_evaluate_logits_single_subnetwork():
    result = metrics.evaluate_logits(LOGITS[:1], LABELS)
    assert result["subnetwork_accuracy"] == pytest.approx([50.0])
    assert result["ensemble_accuracy"] == pytest.approx(50.0)
    assert result["disagreement"] == 0.0 and result["kl_diversity"] == 0.0
    assert result["ratio_of_errors"] == 0.0
    assert result["brier_official"] == pytest.approx(result["brier"] / 3, rel=1e-12)
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN


def test_low_precision_logits():
    result = metrics.evaluate_logits(LOGITS.half(), LABELS)
    assert result["ensemble_accuracy"] == pytest.approx(50.0)
    assert result["nll"] == pytest.approx(metrics.evaluate_logits(LOGITS, LABELS)["nll"], rel=1e-3)


@pytest.mark.parametrize(
    "logits, labels, error",
    [
        (LOGITS[0], LABELS, ValueError),  # not [M, N, K]
        (LOGITS, LABELS[:3], ValueError),  # N mismatch
        (LOGITS, torch.tensor([0, 1, 3, 1]), ValueError),  # label out of range
        (LOGITS, LABELS.float(), TypeError),  # float labels
        (LOGITS.long(), LABELS, TypeError),  # integer logits
    ],
)
def test_bad_inputs(logits, labels, error):
    with pytest.raises(error):
        metrics.evaluate_logits(logits, labels)


# --------------------------------------------------------------------------- against other implementations


def _random_predictions(m=2, n=600, k=7, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(m, n, k, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=gen)
    # make the labels agree with the ensemble's argmax about 60% of the time
    agree = torch.rand(n, generator=gen) < 0.6
    labels = torch.where(agree, logits.mean(0).argmax(-1), labels)
    return logits, labels


@pytest.mark.parametrize("mode", metrics.ENSEMBLE_MODES)
def test_metrics_match_scikit_learn(mode):
    sk = pytest.importorskip("sklearn.metrics")
    logits, labels = _random_predictions()
    probs = metrics.ensemble_probs(logits, mode)
    p, y = probs.numpy(), labels.numpy()
    assert metrics.accuracy(probs, labels) == pytest.approx(100 * sk.accuracy_score(y, p.argmax(1)), rel=1e-12)
    assert metrics.nll(probs, labels) == pytest.approx(sk.log_loss(y, p, labels=list(range(p.shape[1]))), rel=1e-9)
    onehot = torch.nn.functional.one_hot(labels, p.shape[1]).numpy()
    # scikit-learn's multiclass Brier: the mean over samples of the sum over classes (this module's brier)
    assert metrics.brier(probs, labels) == pytest.approx(sk.brier_score_loss(y, p, labels=list(range(p.shape[1]))),
                                                         rel=1e-9)
    assert metrics.brier(probs, labels) == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-12)
    subnet = metrics.subnetwork_nll(logits, labels)
    for i in range(logits.shape[0]):
        p_i = torch.softmax(logits[i], -1).numpy()
        assert subnet[i] == pytest.approx(sk.log_loss(y, p_i, labels=list(range(p.shape[1]))), rel=1e-9)
        expected = 100 * sk.accuracy_score(y, p_i.argmax(1))
        assert metrics.subnetwork_accuracy(logits, labels)[i] == pytest.approx(expected)


@pytest.mark.parametrize("mode", metrics.ENSEMBLE_MODES)
def test_metrics_match_torchmetrics(mode):
    tm = pytest.importorskip("torchmetrics.classification")
    logits, labels = _random_predictions(seed=1)
    probs = metrics.ensemble_probs(logits, mode)
    k = probs.shape[1]
    ece_tm = tm.MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(probs, labels).item()
    assert metrics.ece(probs, labels) == pytest.approx(100 * ece_tm, abs=1e-4)  # percent, torchmetrics' a fraction
    assert metrics.reliability_bins(probs, labels)["ece"] == pytest.approx(100 * ece_tm, abs=1e-4)
    acc_tm = tm.MulticlassAccuracy(num_classes=k, average="micro")(probs, labels).item()
    assert metrics.accuracy(probs, labels) == pytest.approx(100 * acc_tm, abs=1e-4)


def test_reliability_bins_are_those_of_ece():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    bins = metrics.reliability_bins(probs, labels, n_bins=5)
    assert bins["count"] == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert bins["accuracy"][2:] == pytest.approx([1.0, 1.0, 0.5])
    assert bins["confidence"][2:] == pytest.approx([0.55, 0.7, 0.925])
    assert all(math.isnan(v) for v in bins["accuracy"][:2])
    assert bins["edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins["ece"] == pytest.approx(metrics.ece(probs, labels, n_bins=5))


@pytest.mark.parametrize("mode", metrics.ENSEMBLE_MODES)
@pytest.mark.parametrize("scale", [0.3, 3.0, 10.0])
def test_fit_temperature_reaches_the_minimum_nll(mode, scale):
    """The fitted temperature's NLL is the minimum scipy finds for scikit-learn's log_loss of the same ensemble."""
    sk = pytest.importorskip("sklearn.metrics")
    optimize = pytest.importorskip("scipy.optimize")
    logits, labels = _random_predictions(scale=scale, seed=2)
    k = logits.shape[2]
    t = metrics.fit_temperature(logits, labels, mode)

    def sk_nll(temperature):
        return sk.log_loss(labels.numpy(), metrics.ensemble_probs(logits, mode, temperature).numpy(),
                           labels=list(range(k)))

    best = optimize.minimize_scalar(sk_nll, bounds=metrics.TEMPERATURE_RANGE, method="bounded",
                                    options={"xatol": 1e-10})
    fitted = metrics.calibrated_metrics(logits, labels, t, mode)
    assert fitted["nll_ts"] == pytest.approx(best.fun, rel=1e-7)
    assert fitted["nll_ts"] <= sk_nll(1.0) + 1e-12  # never worse than no scaling
    assert t == pytest.approx(best.x, rel=1e-3)
    assert fitted["ece_ts"] == pytest.approx(metrics.ece(metrics.ensemble_probs(logits, mode, t), labels))


def test_fit_temperature_undoes_a_known_scaling():
    """Labels drawn from softmax(z) make T = 1 the best fit of z, so z * 4 needs T close to 4."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 5000, 5, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z[0], -1), 1, generator=gen).squeeze(1)
    assert metrics.fit_temperature(4.0 * z, labels) == pytest.approx(4.0, rel=0.1)
    assert metrics.fit_temperature(z, labels) == pytest.approx(1.0, rel=0.1)


def test_temperature_arguments_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        metrics.ensemble_probs(LOGITS, "logits", 0.0)
    with pytest.raises(ValueError, match="temperature"):
        metrics.ensemble_probs(LOGITS, "logits", float("nan"))
    with pytest.raises(ValueError, match="ensemble mode"):
        metrics.fit_temperature(LOGITS, LABELS, "median")
    assert torch.equal(metrics.ensemble_probs(LOGITS, "probs", 1.0), metrics.ensemble_probs(LOGITS, "probs"))
