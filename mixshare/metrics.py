"""Evaluation metrics for MIMO ensembles: accuracy, calibration and diversity.

Pure functions on tensors (any device). Shapes:

* ``logits``: ``[M, N, K]``, the logits of each of the M subnetworks on the
  same N test samples (K classes), as a MIMO model's test pass returns them.
* ``probs``: ``[N, K]``, one predictive distribution per sample (rows sum to 1),
  e.g. from :func:`ensemble_probs`.
* ``labels``: ``[N]``, integer class indices in ``[0, K)``.

Every reduction is computed in float64 and every metric returns plain Python
``float`` (or ``list`` of floats), so results can go straight into JSON.

Conventions:

* rates are in percent (0-100): accuracies, :func:`disagreement` and
  :func:`ece` (reliability bins' per-bin accuracy and confidence stay
  fractions: they are probabilities plotted against each other);
* :func:`brier` is the sum over classes (range [0, 2]), not the mean over
  classes; :func:`evaluate_logits` also reports ``brier_official``, the same
  score divided by K (the official MixMo code's convention, range [0, 2/K]);
* :func:`ratio_of_errors` follows the official MixMo code: per pair
  ``(N01 + N10) / N00`` from the fractions of samples, and
  ``2 * (N01 + N10)`` (fractions, so at most 2) when the pair never errs
  together (N00 = 0), which is 0.0 when both are always right; never nan;
* for M = 1 (no pair of subnetworks) :func:`disagreement`,
  :func:`kl_diversity` and :func:`ratio_of_errors` are 0.0 (the subnetwork
  paired with itself).

Temperature scaling (Guo et al., 2017): every logit is divided by one scalar
``T`` before the ensemble is formed (:func:`ensemble_probs`'s ``temperature``);
:func:`fit_temperature` picks the ``T`` of lowest NLL on held-out logits, and
:func:`calibrated_metrics` reports NLL, ECE and Brier at that ``T``.
:func:`reliability_bins` gives the per-bin accuracy and confidence behind
:func:`ece` (a reliability diagram's bars).

For finite logits no metric here returns nan, so :func:`evaluate_logits`'s
dict is strict-JSON safe (``json.dumps(..., allow_nan=False)`` works).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from mixshare.tensor_checks import check_float_tensor

__all__ = [
    "ENSEMBLE_MODES",
    "ensemble_probs",
    "accuracy",
    "subnetwork_accuracy",
    "nll",
    "subnetwork_nll",
    "brier",
    "brier_official",
    "ece",
    "reliability_bins",
    "fit_temperature",
    "calibrated_metrics",
    "disagreement",
    "kl_diversity",
    "ratio_of_errors",
    "evaluate_logits",
]

#: Ways to combine the M subnetworks' predictions (see :func:`ensemble_probs`).
ENSEMBLE_MODES = ("logits", "probs")

#: Probabilities are clamped to at least this before taking logs.
PROB_EPS = 1e-12


# --------------------------------------------------------------------------- checks


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    check_float_tensor(logits, name, "[M, N, K] (subnetworks, samples, classes)")


def _check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    check_float_tensor(probs, name, "[N, K] (samples, classes)")


def _check_labels(labels: torch.Tensor, n: int, k: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be [N={n}], got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]")


def _labels_on(labels: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return labels.to(device=ref.device, dtype=torch.long)


# --------------------------------------------------------------------------- ensemble


def _check_temperature(temperature) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def ensemble_probs(logits: torch.Tensor, mode: str = "logits", temperature: float = 1.0) -> torch.Tensor:
    """The ensemble's predictive distribution, ``[M, N, K]`` -> ``[N, K]`` (float64).

    mode ``"logits"``: softmax of the mean of the M logits (MixMo's rule);
    mode ``"probs"``: mean of the M softmaxes (MIMO's rule, a Deep-Ensemble average).
    ``temperature``: every logit is divided by it first (1: unchanged).
    """
    _check_logits(logits)
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; valid modes: {', '.join(map(repr, ENSEMBLE_MODES))}")
    t = _check_temperature(temperature)
    z = logits.detach().double()
    if t != 1.0:
        z = z / t
    if mode == "logits":
        return torch.softmax(z.mean(0), dim=-1)
    return torch.softmax(z, dim=-1).mean(0)


def accuracy(probs_or_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of ``[N, K]`` probabilities or logits (same argmax) against ``labels [N]``.

    Ties resolve to the lowest class index (``torch.argmax``).
    """
    _check_probs(probs_or_logits, "probs_or_logits")
    n, k = probs_or_logits.shape
    _check_labels(labels, n, k)
    pred = probs_or_logits.detach().argmax(-1)
    return 100.0 * (pred == _labels_on(labels, pred)).double().mean().item()


def subnetwork_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Top-1 accuracy in percent of each subnetwork: ``logits [M, N, K]`` -> list of M floats."""
    _check_logits(logits)
    _, n, k = logits.shape
    _check_labels(labels, n, k)
    pred = logits.detach().argmax(-1)  # [M, N]
    correct = (pred == _labels_on(labels, pred).unsqueeze(0)).double().mean(1)
    return [100.0 * v for v in correct.tolist()]


# --------------------------------------------------------------------------- calibration


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood ``-mean_n log p_n[y_n]`` of ``probs [N, K]`` (nats).

    The true-class probability is clamped to at least ``PROB_EPS`` (1e-12), so a
    confidently wrong prediction costs at most ``-log(1e-12) ~ 27.6`` nats.
    """
    _check_probs(probs)
    n, k = probs.shape
    _check_labels(labels, n, k)
    p = probs.detach().double()
    p_true = p.gather(1, _labels_on(labels, p).unsqueeze(1)).squeeze(1)
    return -p_true.clamp_min(PROB_EPS).log().mean().item()


def subnetwork_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Mean NLL (nats) of each subnetwork's own softmax: ``logits [M, N, K]`` -> list of M floats.

    Computed from log-softmaxes (exact for any finite logit; no clamping).
    """
    _check_logits(logits)
    _, n, k = logits.shape
    _check_labels(labels, n, k)
    logp = torch.log_softmax(logits.detach().double(), dim=-1)  # [M, N, K]
    index = _labels_on(labels, logp).view(1, n, 1).expand(logp.shape[0], n, 1)
    return (-logp.gather(2, index).squeeze(2).mean(1)).tolist()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score of ``probs [N, K]``: ``mean_n sum_k (p_nk - onehot(y_n)_k)^2``.

    Convention: summed over classes and averaged over samples (Brier's original
    multi-class score, range [0, 2], 0 is perfect). Some libraries, and the
    official MixMo code, also divide by K; this one does not (see
    :func:`brier_official`).
    """
    _check_probs(probs)
    n, k = probs.shape
    _check_labels(labels, n, k)
    p = probs.detach().double()
    onehot = F.one_hot(_labels_on(labels, p), k).double()
    return (p - onehot).pow(2).sum(1).mean().item()


def brier_official(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score in the official MixMo code's convention: :func:`brier` divided by K.

    ``mean_n mean_k (p_nk - onehot(y_n)_k)^2`` (mean over classes as well as
    samples; range [0, 2 / K]). For comparing with the MixMo / MixShare
    papers' Brier numbers.
    """
    _check_probs(probs)
    return brier(probs, labels) / probs.shape[1]


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of ``probs [N, K]`` in percent (0-100), as accuracy.

    Confidence is the max probability, correctness is ``argmax == label``. The
    confidences are put in ``n_bins`` equal-width bins ``(b/n_bins, (b+1)/n_bins]``
    on (0, 1] (right-closed; a confidence of exactly 0 goes to the first bin), and

        ECE = sum_b (|B_b| / N) * |accuracy(B_b) - mean confidence(B_b)|

    times 100, with accuracy as a fraction; empty bins contribute nothing.
    """
    _, conf_sum, correct_sum = _bin_sums(probs, labels, n_bins)
    return _ece_percent(conf_sum, correct_sum, probs.shape[0])


def _ece_percent(conf_sum: torch.Tensor, correct_sum: torch.Tensor, n: int) -> float:
    """100 * sum_b |B_b|/N * |acc_b - conf_b| = 100 * sum_b |correct_sum_b - conf_sum_b| / N."""
    return (100.0 * (correct_sum - conf_sum).abs().sum() / n).item()


def _bin_sums(probs: torch.Tensor, labels: torch.Tensor, n_bins: int):
    """Per confidence bin (equal width, right-closed, as :func:`ece`): count, sum of confidences, sum of hits."""
    _check_probs(probs)
    n, k = probs.shape
    _check_labels(labels, n, k)
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    p = probs.detach().double()
    conf, pred = p.max(1)
    correct = (pred == _labels_on(labels, p)).double()
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    # right=False: bin b holds edges[b] < conf <= edges[b + 1]; conf > 1 (rounding) lands in the last bin.
    bins = torch.bucketize(conf, inner_edges, right=False)
    count = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, bins, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, bins, conf)
    correct_sum = torch.zeros_like(count).index_add_(0, bins, correct)
    return count, conf_sum, correct_sum


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """The bins of :func:`ece` for a reliability diagram: lists of ``n_bins`` plain floats.

    ``edges`` (``n_bins + 1`` values from 0 to 1), ``count`` (samples per bin),
    ``accuracy`` and ``confidence`` (fractions: the bin's hit rate and mean
    confidence; nan for an empty bin) and ``ece`` (:func:`ece` of the same bins, %).
    """
    count, conf_sum, correct_sum = _bin_sums(probs, labels, n_bins)
    nan = torch.full_like(count, float("nan"))
    filled = count > 0
    return {
        "edges": torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64).tolist(),
        "count": count.tolist(),
        "accuracy": torch.where(filled, correct_sum / count.clamp_min(1), nan).tolist(),
        "confidence": torch.where(filled, conf_sum / count.clamp_min(1), nan).tolist(),
        "ece": _ece_percent(conf_sum, correct_sum, probs.shape[0]),
    }


#: The temperatures :func:`fit_temperature` searches, as (lowest, highest).
TEMPERATURE_RANGE = (0.05, 20.0)


def _log_likelihood_fn(logits: torch.Tensor, labels: torch.Tensor, mode: str):
    """``log T -> mean NLL`` of the ensemble at temperature T, in the log domain (no clamping)."""
    z = logits.detach().double()
    m, n, _ = z.shape
    y = _labels_on(labels, z)
    if mode == "logits":
        mean = z.mean(0)
        target = mean.gather(1, y.unsqueeze(1)).squeeze(1)

        def value(log_t: float) -> float:
            scale = math.exp(-log_t)
            return (torch.logsumexp(mean * scale, dim=1) - target * scale).mean().item()
    else:
        target = z.gather(2, y.view(1, n, 1).expand(m, n, 1)).squeeze(2)  # [M, N]

        def value(log_t: float) -> float:
            scale = math.exp(-log_t)
            logp = target * scale - torch.logsumexp(z * scale, dim=2)  # [M, N]: log p_i(y)
            return -(torch.logsumexp(logp, dim=0) - math.log(m)).mean().item()
    return value


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, ensemble: str = "logits",
                    iterations: int = 50) -> float:
    """The temperature ``T`` of lowest ensemble NLL on ``logits [M, N, K]`` (held-out data, never the test set).

    Temperature scaling (Guo et al., 2017) as the MixMo code and torch-uncertainty
    apply it: one scalar dividing every logit, the ensemble formed by ``ensemble``
    as in :func:`ensemble_probs`, fitted by NLL. The search is on ``log T`` over
    :data:`TEMPERATURE_RANGE`: a grid of 61 points, then golden-section search
    between the best point's neighbours (``iterations`` steps), so it is
    deterministic and needs no gradients. For ``ensemble="logits"`` the NLL is
    convex in ``1 / T``, so this finds the global minimum within the range.
    """
    _check_logits(logits)
    _, n, k = logits.shape
    _check_labels(labels, n, k)
    if ensemble not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {ensemble!r}; valid modes: {', '.join(map(repr, ENSEMBLE_MODES))}")
    f = _log_likelihood_fn(logits, labels, ensemble)
    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    grid = [lo + (hi - lo) * i / 60 for i in range(61)]
    values = [f(x) for x in grid]
    best = min(range(len(grid)), key=lambda i: (values[i], abs(grid[i])))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    candidates = [(values[best], grid[best]), (fc, c), (fd, d)]
    return math.exp(min(candidates)[1])


def calibrated_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                       ensemble: str = "logits") -> dict:
    """``nll_ts``, ``ece_ts`` and ``brier_ts``: :func:`nll`, :func:`ece` and :func:`brier` of the
    ensemble at ``temperature`` (as fitted by :func:`fit_temperature` on held-out data)."""
    probs = ensemble_probs(logits, ensemble, temperature)
    return {"nll_ts": nll(probs, labels), "ece_ts": ece(probs, labels), "brier_ts": brier(probs, labels)}


# --------------------------------------------------------------------------- diversity


def _pairs(m: int):
    return list(itertools.combinations(range(m), 2))


def disagreement(logits: torch.Tensor) -> float:
    """Mean over unordered subnetwork pairs of the % of samples where their argmax predictions differ.

    ``logits [M, N, K]``; the MIMO paper's D_disagreement. 0.0 for M = 1.
    """
    _check_logits(logits)
    m = logits.shape[0]
    if m < 2:
        return 0.0
    pred = logits.detach().argmax(-1)  # [M, N]
    rates = [(pred[i] != pred[j]).double().mean().item() for i, j in _pairs(m)]
    return 100.0 * sum(rates) / len(rates)


def kl_diversity(logits: torch.Tensor) -> float:
    """Mean over ordered pairs ``i != j`` of ``mean_n KL(p_i(.|x_n) || p_j(.|x_n))`` (nats).

    ``p_i = softmax(logits[i])``; ``KL(p || q) = sum_k p_k (log p_k - log q_k)``,
    computed from log-softmaxes (no clamping needed). The MIMO paper's D_KL,
    symmetrised by averaging both orders. 0.0 for M = 1.
    """
    _check_logits(logits)
    m = logits.shape[0]
    if m < 2:
        return 0.0
    logp = torch.log_softmax(logits.detach().double(), dim=-1)  # [M, N, K]
    p = logp.exp()
    # kl[i, j] = mean_n sum_k p_i (log p_i - log p_j)
    neg_entropy = (p * logp).sum(-1).mean(-1)  # [M]
    cross = torch.einsum("ink,jnk->ij", p, logp) / logp.shape[1]  # [M, M]: mean_n sum_k p_i log p_j
    kl = neg_entropy.unsqueeze(1) - cross
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=kl.device)
    return kl[off_diagonal].mean().item()


def ratio_of_errors(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """MixMo's ratio-of-errors diversity, averaged over unordered subnetwork pairs (official convention).

    For a pair (i, j) of the M subnetworks on N samples: N00 = fraction of
    samples both get wrong, N01 + N10 = fraction of samples exactly one of them
    gets wrong. As in the official MixMo code (``ratio_errors`` in
    ``mixmo/core/metrics_ensemble.py``), the pair's ratio is

        (N01 + N10) / N00        if N00 > 0 (the same with counts or fractions)
        2 * (N01 + N10)          if N00 = 0 (fractions: in [0, 2], 0.0 when both are always right)

    higher is more diverse. The result is the mean over the M (M - 1) / 2 pairs.
    Never nan: 0.0 for M = 1 (no pair; the subnetwork paired with itself has
    N01 + N10 = 0, as :func:`disagreement` and :func:`kl_diversity` give 0.0).
    """
    _check_logits(logits)
    m, n, k = logits.shape
    _check_labels(labels, n, k)
    if m < 2:
        return 0.0
    wrong = logits.detach().argmax(-1) != _labels_on(labels, logits).unsqueeze(0)  # [M, N]
    ratios = []
    for i, j in _pairs(m):
        n00 = int((wrong[i] & wrong[j]).sum())
        single = int((wrong[i] ^ wrong[j]).sum())
        ratios.append(single / n00 if n00 > 0 else 2.0 * single / n)
    return sum(ratios) / len(ratios)


# --------------------------------------------------------------------------- everything


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, ensemble: str = "logits") -> dict:
    """All metrics of a MIMO model's test logits ``[M, N, K]`` against ``labels [N]``.

    The calibration metrics (nll, ece, brier) and ensemble_accuracy are those of
    ``ensemble_probs(logits, ensemble)``. Returns a dict of plain Python values:

    * ``ensemble_accuracy`` (%), ``subnetwork_accuracy`` (list of M %),
      ``mean_subnetwork_accuracy`` (%, the papers' "individual accuracy"),
    * ``nll`` (nats), ``subnetwork_nll`` (list of M, nats, each subnetwork's own softmax),
      ``ece`` (%), ``brier`` (sum over classes),
      ``brier_official`` (``brier / K``, the official MixMo code's Brier),
    * ``disagreement`` (%), ``kl_diversity`` (nats), ``ratio_of_errors``
      (official MixMo convention; all three 0.0 for M = 1).

    For finite logits every value is a finite float (no nan): strict-JSON safe.
    """
    _check_logits(logits)
    _, n, k = logits.shape
    _check_labels(labels, n, k)
    probs = ensemble_probs(logits, ensemble)
    sub_acc = subnetwork_accuracy(logits, labels)
    brier_score = brier(probs, labels)
    return {
        "ensemble_accuracy": accuracy(probs, labels),
        "subnetwork_accuracy": sub_acc,
        "mean_subnetwork_accuracy": sum(sub_acc) / len(sub_acc),
        "nll": nll(probs, labels),
        "subnetwork_nll": subnetwork_nll(logits, labels),
        "ece": ece(probs, labels),
        "brier": brier_score,
        "brier_official": brier_score / k,
        "disagreement": disagreement(logits),
        "kl_diversity": kl_diversity(logits),
        "ratio_of_errors": ratio_of_errors(logits, labels),
    }


# --------------------------------------------------------------------------- out-of-distribution detection
#
# Scores (:func:`uncertainty_scores`) are "higher = more likely out of distribution": the negated
# maximum softmax probability, the predictive entropy, the mutual information. Detection metrics
# (:func:`ood_detection`) take the scores of in-distribution and OOD samples:
#
# * ``auroc``: area under the ROC curve with OOD as the positive class (ties count 1/2;
#   ``sklearn.metrics.roc_auc_score``);
# * ``aupr_out``: average precision with OOD positive, ranked by the score; ``aupr_in``: with the
#   in-distribution samples positive, ranked by the negated score (both
#   ``sklearn.metrics.average_precision_score``: sum over thresholds of recall step x precision);
# * ``fpr95``: the fraction of OOD samples accepted as in-distribution at the strictest threshold
#   that still accepts at least 95% of the in-distribution samples (accepted: score <= threshold).
#
# All are fractions in [0, 1].


def uncertainty_scores(logits: torch.Tensor, ensemble: str = "logits") -> dict:
    """OOD scores of ``logits [M, N, K]``, each ``[N]`` float64, higher = more likely OOD.

    ``msp``: minus the ensemble's maximum probability (:func:`ensemble_probs` with ``ensemble``);
    ``entropy``: the ensemble distribution's entropy (nats); ``mutual_information``: the entropy of
    the mean of the M softmaxes minus the mean of their entropies (the subnetworks' disagreement,
    >= 0; 0 for M = 1).
    """
    _check_logits(logits)
    probs = ensemble_probs(logits, ensemble)
    logp = torch.log_softmax(logits.detach().double(), dim=-1)  # [M, N, K]
    log_mean_p = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])  # log of the mean softmax
    # H(mean) - mean H as the mean KL(p_i || mean p): no cancellation, and exactly 0 for M = 1
    # (logsumexp of one value is that value), so a single network's score ties everywhere.
    mutual_information = (logp.exp() * (logp - log_mean_p)).sum(-1).mean(0)
    return {
        "msp": -probs.max(-1).values,
        "entropy": -(probs * probs.clamp_min(PROB_EPS).log()).sum(-1),
        "mutual_information": mutual_information.clamp_min(0.0),
    }


def _check_scores(scores, name: str) -> torch.Tensor:
    s = check_float_tensor(scores, name, "[N] (one score per sample)").detach().double()
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} must be finite")
    return s


def _scores_and_labels(scores: torch.Tensor, positive: torch.Tensor, need_negative: bool):
    """``scores [N]`` and the boolean ``positive [N]`` as numpy arrays for scikit-learn, checked."""
    s = _check_scores(scores, "scores")
    pos = positive.to(device=s.device, dtype=torch.bool)
    n_pos = int(pos.sum())
    if n_pos == 0 or (need_negative and n_pos == pos.numel()):
        raise ValueError("positive must mark at least one positive" + (" and one negative" if need_negative else "")
                         + " sample")
    return s.cpu().numpy(), pos.cpu().numpy()


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores [N]`` for the boolean ``positive [N]`` (higher score =
    positive; ties count 1/2): ``sklearn.metrics.roc_auc_score``. Needs both classes."""
    from sklearn.metrics import roc_auc_score

    s, pos = _scores_and_labels(scores, positive, need_negative=True)
    return float(roc_auc_score(pos, s))


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Average precision of ``scores [N]`` for the boolean ``positive [N]``: the sum over distinct
    thresholds (descending) of the recall gained times the precision there,
    ``sklearn.metrics.average_precision_score``. Needs a positive sample."""
    from sklearn.metrics import average_precision_score

    s, pos = _scores_and_labels(scores, positive, need_negative=False)
    return float(average_precision_score(pos, s))


def fpr_at_tpr(scores_in: torch.Tensor, scores_out: torch.Tensor, tpr: float = 0.95) -> float:
    """The fraction of OOD samples accepted (score <= t) at the smallest threshold t that accepts at
    least ``tpr`` of the in-distribution samples (scores higher = more likely OOD)."""
    s_in, s_out = _check_scores(scores_in, "scores_in"), _check_scores(scores_out, "scores_out")
    if not 0.0 < float(tpr) <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    n = s_in.shape[0]
    k = math.ceil(round(float(tpr) * n, 9))  # accept at least k in-distribution samples
    threshold = torch.sort(s_in).values[k - 1]
    return (s_out.to(s_in.device) <= threshold).double().mean().item()


def ood_detection(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict:
    """``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95`` (fractions) of OOD scores (higher = more OOD)
    of in-distribution ``[N_in]`` and OOD ``[N_out]`` samples."""
    s_in, s_out = _check_scores(scores_in, "scores_in"), _check_scores(scores_out, "scores_out")
    scores = torch.cat([s_in, s_out.to(s_in.device)])
    is_out = torch.cat([torch.zeros_like(s_in, dtype=torch.bool), torch.ones_like(s_out, dtype=torch.bool)])
    return {
        "auroc": auroc(scores, is_out),
        "aupr_in": average_precision(-scores, ~is_out),
        "aupr_out": average_precision(scores, is_out),
        "fpr95": fpr_at_tpr(s_in, s_out, 0.95),
    }


def ood_metrics(logits_in: torch.Tensor, logits_out: torch.Tensor, ensemble: str = "logits") -> dict:
    """:func:`ood_detection` for each score of :func:`uncertainty_scores`: ``{score: {metric: value}}``,
    from ``logits_in [M, N_in, K]`` (in-distribution test set) and ``logits_out [M, N_out, K]``."""
    _check_logits(logits_in, "logits_in")
    _check_logits(logits_out, "logits_out")
    if logits_in.shape[0] != logits_out.shape[0] or logits_in.shape[2] != logits_out.shape[2]:
        raise ValueError(f"logits_in and logits_out must share M and K, got shapes {tuple(logits_in.shape)} "
                         f"and {tuple(logits_out.shape)}")
    s_in, s_out = uncertainty_scores(logits_in, ensemble), uncertainty_scores(logits_out, ensemble)
    return {name: ood_detection(s_in[name], s_out[name]) for name in s_in}


def subnetwork_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[float]:
    """:func:`ece` of each subnetwork's own softmax: ``logits [M, N, K]`` -> list of M percentages."""
    _check_logits(logits)
    return [ece(torch.softmax(z.detach().double(), -1), labels, n_bins) for z in logits]
