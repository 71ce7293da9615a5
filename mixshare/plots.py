"""Figures for MIMO analyses: feature profiles, conditional variances, training curves, reliability.

Each function draws one figure with matplotlib's Agg canvas (no display, and
no change to pyplot's global backend), writes it as a PNG to ``path``
atomically (a temporary file in the same folder, then ``os.replace``; the
folder is created if missing) and returns ``path``.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from mixshare.analysis import normalized_share_rate, share_rate
from mixshare.files import temporary_path

__all__ = ["plot_feature_profiles", "plot_conditional_variance", "plot_training_curves", "plot_reliability",
           "plot_comparison", "plot_severity", "run_label", "CONDITIONAL_VARIANCE_NOTE"]

_SUBNET_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink")
_OVERLAP_COLOR = "tab:orange"


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _save(fig: Figure, path):
    """Render ``fig`` as PNG to a temporary file next to ``path``, then move it into place."""
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_path(os.path.join(folder, os.path.basename(target)))
    FigureCanvasAgg(fig)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _color(i: int) -> str:
    return _SUBNET_COLORS[i % len(_SUBNET_COLORS)]


def _wrap(text: str, width_inches: float, points: float = 12.0) -> str:
    """``text`` broken into lines that fit ``width_inches`` at ``points``
    (about 0.6 em per character, so a title never runs off the figure)."""
    chars = max(20, int(width_inches * 72.0 / (0.6 * points)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def run_label(method: Optional[str], seed: Optional[int]) -> Optional[str]:
    """``"<method>, seed <seed>"``, the prefix of a run's plot titles (None when neither is known)."""
    parts = [str(method)] if method else []
    if seed is not None:
        parts.append(f"seed {seed}")
    return ", ".join(parts) or None


# --------------------------------------------------------------------------- feature profiles


def plot_feature_profiles(profiles, path, title: str = "feature profiles"):
    """Bars of each subnetwork's normalised feature profile and their overlap (MixShare figures 3 and 5).

    ``profiles [M, F]`` (e.g. :func:`mixshare.analysis.encoder_profiles`): each
    row is divided by its maximum (an all-zero row stays zero). Features are
    sorted on x by subnetwork 0's normalised profile minus subnetwork 1's (by
    subnetwork 0's alone when M = 1), so features of subnetwork 0 come first
    and those of subnetwork 1 last. Each subnetwork's bars are drawn
    translucent; the overlap (min over subnetworks) is drawn on top in orange.
    The title gives the share rate of the raw profiles
    (:func:`mixshare.analysis.share_rate`, the paper's) and, as "normalised",
    that of the drawn normalised profiles
    (:func:`mixshare.analysis.normalized_share_rate`: the orange area over the
    union of the bars).
    """
    h = _to_numpy(profiles)
    if h.ndim != 2 or h.shape[0] < 1 or h.shape[1] < 1:
        raise ValueError(f"profiles must be [M, F] with M, F >= 1, got shape {h.shape}")
    m, f = h.shape
    rate, rate_normalized = share_rate(h), normalized_share_rate(h)
    peak = h.max(axis=1, keepdims=True)
    norm = np.divide(h, peak, out=np.zeros_like(h), where=peak > 0)
    key = norm[0] - norm[1] if m > 1 else norm[0]
    order = np.argsort(-key, kind="stable")
    norm = norm[:, order]
    overlap = norm.min(axis=0)
    x = np.arange(f)

    width = max(6.0, min(16.0, 0.08 * f + 4.0))
    fig = Figure(figsize=(width, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for i in range(m):
        ax.bar(x, norm[i], width=1.0, color=_color(i), alpha=0.45, linewidth=0, label=f"subnetwork {i}")
    if m > 1:
        ax.bar(x, overlap, width=1.0, color=_OVERLAP_COLOR, alpha=0.95, linewidth=0, label="overlap (min)")
    ax.set_xlim(-0.5, f - 0.5)
    ax.set_ylim(0.0, 1.2)  # headroom for the legend
    ax.set_xlabel("feature (sorted by normalised profile 0 - profile 1)" if m > 1 else "feature (sorted)")
    ax.set_ylabel("L1 norm / max")
    def percent(value):
        return "nan" if math.isnan(value) else f"{value:.1f}%"

    ax.set_title(_wrap(f"{title}\nshare rate {percent(rate)}, normalised {percent(rate_normalized)}", width))
    ax.legend(loc="upper center", fontsize="small", ncol=min(m + 1, 4), frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------- conditional variance


def _set_scale(ax, axis: str, values: np.ndarray) -> None:
    """log if every value is positive, symlog (linear below the smallest positive) if some are 0."""
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    positive = values[values > 0]
    if positive.size == 0:
        return
    if positive.size == values.size:
        setter("log")
        # labelled ticks at 1, 2 and 5 per decade (powers of 10 only over more
        # than two decades, at most 6 of them), the limits widened past the
        # enclosing ticks (so a range narrower than a decade still has two)
        # by a tenth of the span (so the lowest x and y labels clear the corner)
        lo, hi = _enclosing_125(float(positive.min()), float(positive.max()))
        pad = (hi / lo) ** 0.1
        (ax.set_xlim if axis == "x" else ax.set_ylim)(lo / pad, hi * pad)
        ticks = ax.xaxis if axis == "x" else ax.yaxis
        subs = (1.0, 2.0, 5.0) if hi / lo <= 100.0 else (1.0,)
        ticks.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=6))
        ticks.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ticks.set_minor_locator(LogLocator(base=10.0, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
        ticks.set_minor_formatter("")
    else:
        setter("symlog", linthresh=float(positive.min()))
        if values.min() >= 0:  # variances: show no negative half
            (ax.set_xlim if axis == "x" else ax.set_ylim)(0, None)


def _enclosing_125(lo: float, hi: float) -> tuple[float, float]:
    """The largest 1-2-5 value (1, 2 or 5 times a power of 10) at most ``lo``
    and the smallest at least ``hi``, one step further out when they meet."""
    def steps(value):
        decade = math.floor(math.log10(value))
        return [m * 10.0**e for e in (decade - 1, decade, decade + 1) for m in (1.0, 2.0, 5.0)]

    below = max(v for v in steps(lo) if v <= lo * (1 + 1e-12))
    above = min(v for v in steps(hi) if v >= hi * (1 - 1e-12))
    if below >= above:
        below = max(v for v in steps(lo) if v < below)
        above = min(v for v in steps(hi) if v > above)
    return below, above


CONDITIONAL_VARIANCE_NOTE = (
    "Each point is one channel: x = how much it varies when only input 0 changes, y = when only input 1 "
    "changes (the other input held fixed). Points far below the dashed diagonal respond to input 0 only, far above "
    "it to input 1 only (features private to one subnetwork); points near it respond to both (shared features)."
)


def plot_conditional_variance(
    variances: Sequence,
    path,
    title: Optional[str] = None,
    stage_names: Optional[Sequence[str]] = None,
    channel_groups: Optional[Sequence[int]] = None,
    note: Optional[str] = CONDITIONAL_VARIANCE_NOTE,
):
    """One scatter panel per stage: each channel's variance w.r.t. input 0 (x) vs input 1 (y).

    ``variances``: list over stages of ``[M, C_s]`` (from
    :func:`mixshare.analysis.conditional_variance`); for M > 2 only the first two
    subnetworks are drawn. An axis is logarithmic when all its values are
    positive (symlog when some are exactly 0). Separated subnetworks put their
    points along the two axes; shared channels sit near the diagonal (dashed).
    Needs M >= 2. ``stage_names``: panel titles (default "stage s");
    ``channel_groups``: per stage, G > 1 splits the C_s channels into G equal
    consecutive groups coloured apart (a ViT's class tokens, one per subnetwork).
    ``note``: the subtitle under ``title`` that says how to read the panels
    (:data:`CONDITIONAL_VARIANCE_NOTE`; None: none).
    """
    stages = [_to_numpy(v) for v in variances]
    if not stages:
        raise ValueError("variances must hold at least one stage")
    for s, v in enumerate(stages):
        if v.ndim != 2 or v.shape[0] < 2:
            raise ValueError(f"stage {s}: variances must be [M >= 2, C_s], got shape {v.shape}")
    if stage_names is not None and len(stage_names) != len(stages):
        raise ValueError(f"stage_names has {len(stage_names)} names for {len(stages)} stages")
    if channel_groups is not None:
        if len(channel_groups) != len(stages):
            raise ValueError(f"channel_groups has {len(channel_groups)} entries for {len(stages)} stages")
        for s, (g, v) in enumerate(zip(channel_groups, stages)):
            if g < 1 or v.shape[1] % g:
                raise ValueError(f"stage {s}: {v.shape[1]} channels cannot be split into {g} equal groups")

    n = len(stages)
    width = max(3.6 * n, 8.0 if note else 0.0)
    title = _wrap(title, width) if title else title
    note = _wrap(note, width, points=7.0) if note else note
    title_height = 0.3 + 0.22 * title.count("\n") if title else 0.0
    note_height = 0.12 * (note.count("\n") + 1) if note else 0.0
    fig = Figure(figsize=(width, 3.8 + title_height + note_height), dpi=100)
    for s, v in enumerate(stages):
        ax = fig.add_subplot(1, n, s + 1)
        x, y = v[0], v[1]
        groups = channel_groups[s] if channel_groups is not None else 1
        if groups > 1:
            size = v.shape[1] // groups
            for g in range(groups):
                part = slice(g * size, (g + 1) * size)
                ax.scatter(x[part], y[part], s=10, alpha=0.6, color=_color(g), linewidths=0, label=f"class token {g}")
            ax.legend(fontsize="x-small", loc="best")
        else:
            ax.scatter(x, y, s=10, alpha=0.6, color="tab:blue", linewidths=0)
        finite = np.concatenate([x, y])
        finite = finite[np.isfinite(finite)]
        if finite.size and finite.max() > 0:
            lo = finite[finite > 0].min()
            hi = finite.max()
            ax.plot([lo, hi], [lo, hi], linestyle="--", color="gray", linewidth=0.8)
        _set_scale(ax, "x", x)
        _set_scale(ax, "y", y)
        ax.set_xlabel("variance w.r.t. input 0")
        if s == 0:
            ax.set_ylabel("variance w.r.t. input 1")
        name = stage_names[s] if stage_names is not None else f"stage {s + 1}"
        ax.set_title(f"{name} ({v.shape[1]} channels)", fontsize="small" if stage_names else "medium")
    height = fig.get_figheight()
    top = 1.0
    if title:
        fig.suptitle(title, y=1.0 - 0.05 / height, va="top")
        top -= title_height / height
    if note:
        fig.text(0.5, top, note, ha="center", va="top", fontsize=7.0, color="dimgray")
        top -= note_height / height
    fig.tight_layout(rect=(0.0, 0.0, 1.0, top + 0.15 / height))  # tight_layout leaves a margin above the panels
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves


def _series(history: Sequence[dict], key: str):
    """(epochs, values) of the rows that have a finite number under ``key``."""
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            xs.append(float(row["epoch"]))
            ys.append(value)
    return xs, ys


_CURVE_COLORS = ("tab:gray", "black")  # training, test (the ensemble); subnetworks take _color(i)


def _subnet_keys(rows: Sequence[dict], prefix: str) -> list[str]:
    """``<prefix>_sub<i>`` keys present in the rows, by subnetwork index."""
    found = {key for row in rows for key in row if key.startswith(prefix + "_sub") and key[len(prefix) + 4:].isdigit()}
    return sorted(found, key=lambda key: int(key[len(prefix) + 4:]))


def plot_training_curves(history: Sequence[dict], path, title: Optional[str] = None):
    """Loss, test NLL and accuracy against epoch (plus a learning-rate panel when rows have ``lr``).

    ``history``: rows (dicts) with at least ``epoch``, ``train_loss`` and
    ``train_accuracy``; optional keys may be missing or None in some rows (e.g.
    evaluated every few epochs): ``test_loss`` (drawn with the training loss),
    ``test_nll`` (the ensemble's test NLL) and ``test_nll_sub<i>`` (subnetwork
    i's) in a test-NLL panel, ``test_accuracy`` (the ensemble's) and
    ``test_accuracy_sub<i>`` with the training accuracy, and ``lr``.
    Subnetworks are drawn dashed, one colour each.
    """
    rows = list(history)
    if not rows:
        raise ValueError("history is empty")
    for i, row in enumerate(rows):
        missing = [k for k in ("epoch", "train_loss", "train_accuracy") if k not in row]
        if missing:
            raise ValueError(f"history row {i} lacks {', '.join(missing)}")

    panels = [("loss (summed over the heads)", ("train_loss", "test_loss"), ())]
    nll_subnets = _subnet_keys(rows, "test_nll")
    if any(row.get("test_nll") is not None for row in rows) or nll_subnets:
        panels.append(("test NLL (nats)", ("test_nll",), nll_subnets))
    panels.append(("accuracy (%)", ("train_accuracy", "test_accuracy"), _subnet_keys(rows, "test_accuracy")))
    if any(row.get("lr") is not None for row in rows):
        panels.append(("learning rate", ("lr",), ()))

    fig = Figure(figsize=(4.2 * len(panels), 3.6 + (0.3 if title else 0.0)), dpi=100)
    for p, (ylabel, keys, subnet_keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        lines = [(key, color, "-", key.replace("_", " ")) for key, color in zip(keys, _CURVE_COLORS)]
        lines += [(key, _color(i), "--", f"subnetwork {key.rsplit('_sub', 1)[1]}") for i, key in enumerate(subnet_keys)]
        if keys == ("test_nll",):
            lines[0] = ("test_nll", "black", "-", "ensemble")
        for key, color, style, label in lines:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, color=color, linestyle=style, marker="o" if len(xs) < 30 else None, markersize=3,
                        linewidth=1.2, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth()))
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- reliability


def plot_reliability(bins: dict, path, title: Optional[str] = None, scaled: Optional[dict] = None,
                     temperature: Optional[float] = None, nll: Optional[float] = None,
                     scaled_nll: Optional[float] = None):
    """Reliability diagram: accuracy against confidence per bin, with the confidence histogram below.

    ``bins``: :func:`mixshare.metrics.reliability_bins` of the test predictions;
    ``scaled``: the same after temperature scaling (drawn beside it, with
    ``temperature`` in its legend). A perfectly calibrated model's bars reach
    the dashed diagonal; bars below it are over-confident, above it
    under-confident. The legends give each curve's ECE (%) and, when given,
    its NLL.
    """
    sets = [("raw", bins, "tab:blue", nll)]
    if scaled is not None:
        name = f"temperature-scaled (T = {temperature:.3g})" if temperature is not None else "temperature-scaled"
        sets.append((name, scaled, "tab:orange", scaled_nll))
    for name, b, _, _ in sets:
        if not all(k in b for k in ("edges", "count", "accuracy", "confidence", "ece")):
            raise ValueError(f"{name} bins need edges, count, accuracy, confidence and ece")
    edges = _to_numpy(bins["edges"])
    n_bins = edges.size - 1
    width = (edges[1:] - edges[:-1]) / len(sets)

    fig = Figure(figsize=(5.2, 6.0), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)
    for s, (name, b, color, nll_value) in enumerate(sets):
        accuracy = _to_numpy(b["accuracy"])
        confidence = _to_numpy(b["confidence"])
        count = _to_numpy(b["count"])
        left = edges[:-1] + s * width
        filled = count > 0
        label = f"{name}: ECE {float(b['ece']):.2f}%"
        if nll_value is not None:
            label += f", NLL {nll_value:.3f}"
        ax.bar(left[filled], accuracy[filled], width=width[filled], align="edge", color=color, alpha=0.75,
               edgecolor="white", linewidth=0.5, label=label)
        ax.scatter(confidence[filled], accuracy[filled], s=8, color=color, edgecolors="black", linewidths=0.3,
                   zorder=3)
        hist.bar(left, count / max(count.sum(), 1.0), width=width, align="edge", color=color, alpha=0.75)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.tick_params(labelbottom=False)
    hist.set_xlabel(f"confidence (max probability, {n_bins} bins)")
    hist.set_ylabel("fraction")
    ax.set_title(_wrap(title or "reliability diagram", 5.2, points=10.0), fontsize="medium")
    return _save(fig, path)


# --------------------------------------------------------------------------- comparison across methods

# (report key, axis label): what compare's figure shows, in the units of metrics.json and its table
COMPARISON_PANELS = (
    ("ensemble_accuracy", "ensemble accuracy (%)"),
    ("nll", "test NLL (nats)"),
    ("ece", "test ECE (%)"),
    ("classifier_share_rate", "classifier share rate (%)"),
    ("encoder_share_rate", "encoder share rate (%)"),
)


def plot_comparison(results: dict, path, title: Optional[str] = None):
    """Methods side by side, one panel per metric of :data:`COMPARISON_PANELS`:
    one point per run (seed), a bar at the mean of each method.

    ``results``: ``{method: [report, ...]}`` as ``mixshare compare`` collects
    them (each report a ``metrics.json`` dict); a missing or None value is
    left out (a panel with no value says so).
    """
    if not results or not all(isinstance(runs, (list, tuple)) and runs for runs in results.values()):
        raise ValueError("results must map each method to a non-empty list of reports")
    methods = list(results)
    width = max(8.0, 2.3 * len(COMPARISON_PANELS))
    fig = Figure(figsize=(width, 3.6 + 0.15 * max(len(m) for m in methods) / 4), dpi=100, layout="constrained")
    for p, (key, label) in enumerate(COMPARISON_PANELS):
        ax = fig.add_subplot(1, len(COMPARISON_PANELS), p + 1)
        drawn = False
        for i, method in enumerate(methods):
            values = [float(r[key]) for r in results[method]
                      if r.get(key) is not None and math.isfinite(float(r[key]))]
            if not values:
                continue
            drawn = True
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(i + offsets, values, s=16, color=_color(i), zorder=3)
            ax.hlines(float(np.mean(values)), i - 0.3, i + 0.3, color=_color(i), linewidth=2.0)
        if not drawn:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=90, fontsize="small")
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(_wrap(title, width))
    return _save(fig, path)


# --------------------------------------------------------------------------- under corruption, per method

# (metric of metrics.json's shift_by_severity, axis label): what the severity figure shows
SEVERITY_PANELS = (
    ("accuracy", "ensemble accuracy (%)"),
    ("nll", "NLL (nats)"),
)


def _by_severity(report: dict) -> dict:
    """``{severity (int): {accuracy, nll, ece}}`` of a report's ``shift_by_severity`` (JSON keys are strings)."""
    rows = report.get("shift_by_severity") or {}
    return {int(s): row for s, row in rows.items()}


def plot_severity(results: dict, path, title: Optional[str] = None):
    """Accuracy and NLL against the corruption severity (0 = clean, 1..5), one line per method: the
    mean over its runs (seeds) of ``shift_by_severity`` (metrics.json with ``shift_eval``; the mean
    over the corruptions at each severity). Runs without it are left out; a method with none is
    not drawn (a panel with no line says so).

    ``results``: ``{method: [report, ...]}`` as ``mixshare compare`` collects them.
    """
    if not results or not all(isinstance(runs, (list, tuple)) and runs for runs in results.values()):
        raise ValueError("results must map each method to a non-empty list of reports")
    width = 9.0
    fig = Figure(figsize=(width, 4.0), dpi=100, layout="constrained")
    axes = [fig.add_subplot(1, len(SEVERITY_PANELS), p + 1) for p in range(len(SEVERITY_PANELS))]
    drawn = False
    severities_seen: set = set()
    for i, (method, runs) in enumerate(results.items()):
        tables = [t for t in (_by_severity(r) for r in runs) if t]
        if not tables:
            continue
        severities = sorted(set.intersection(*(set(t) for t in tables)))
        if not severities:
            continue
        drawn = True
        severities_seen.update(severities)
        for ax, (key, _) in zip(axes, SEVERITY_PANELS):
            means = [float(np.mean([float(t[s][key]) for t in tables])) for s in severities]
            ax.plot(severities, means, marker="o", color=_color(i),
                    label=f"{method} ({len(tables)} run{'s' if len(tables) != 1 else ''})")
    for ax, (_, label) in zip(axes, SEVERITY_PANELS):
        if not drawn:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="gray")
        ticks = sorted(severities_seen) or list(range(6))
        ax.set_xticks(ticks)
        ax.set_xticklabels(["clean" if s == 0 else str(s) for s in ticks])
        ax.set_xlim(min(ticks) - 0.3, max(ticks) + 0.3)
        ax.set_xlabel("corruption severity (mean over corruptions)")
        ax.set_ylabel(label)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.grid(True, alpha=0.3)
    if drawn:
        axes[0].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(_wrap(title, width))
    return _save(fig, path)
