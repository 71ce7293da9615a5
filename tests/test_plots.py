"""The figures as a reader sees them: rendered, every text inside the figure,
labelled ticks on every axis, no tick labels on top of each other."""

import math

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

from mixshare import metrics, plots

LONG_TITLE = "mixshare-fadeout, seed 0: encoder feature profiles of the first stage"


@pytest.fixture
def figures(monkeypatch):
    """The Figure objects the plot functions save, in order."""
    saved = []
    real = plots._save

    def capture(fig, path):
        saved.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return saved


def _texts(fig):
    """Every visible, non-empty text artist of ``fig`` a reader sees: tick
    labels only of ticks inside the view limits (matplotlib keeps, and does
    not draw, the others)."""
    ticks = {id(label) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for tick in axis.get_major_ticks() + axis.get_minor_ticks() for label in (tick.label1, tick.label2)}
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent"))
             if id(t) not in ticks and t.get_visible() and t.get_text().strip()]
    return texts + [label for ax in fig.axes for axis in "xy" for label in _tick_labels(ax, axis)]


def _tick_labels(ax, axis):
    """Visible, non-empty labels of ticks inside the view limits of one axis."""
    which = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    if which.get_scale() == "log":  # a relative margin: ticks decades below the limits are outside
        inside = lambda tick: lo * (1 - 1e-9) <= tick <= hi * (1 + 1e-9)  # noqa: E731
    else:
        margin = 1e-9 * max(abs(lo), abs(hi), hi - lo)
        inside = lambda tick: lo - margin <= tick <= hi + margin  # noqa: E731
    return [label for tick, label in zip(which.get_majorticklocs(), which.get_ticklabels())
            if label.get_visible() and label.get_text().strip() and inside(tick)]


def check_layout(fig, labelled_axes=None):
    """Problems a reader would see: a text (title, label, tick, legend, note)
    cut off by the figure's edge, an axis with fewer than two labelled ticks,
    tick labels overlapping each other."""
    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.canvas.get_width_height()
    problems = []
    for text in _texts(fig):
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            problems.append(f"text {text.get_text()[:40]!r} leaves the figure ({box.bounds} in {width}x{height})")
    for index, ax in enumerate(fig.axes):
        labels = []
        for axis in "xy":
            if labelled_axes is not None and (index, axis) not in labelled_axes:
                continue
            shown = _tick_labels(ax, axis)
            if len(shown) < 2:
                problems.append(f"axes {index} {axis}: {len(shown)} labelled tick(s) "
                                f"({[t.get_text() for t in shown]})")
            labels += shown
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes[i][1].overlaps(boxes[j][1]):
                    problems.append(f"axes {index}: tick labels {boxes[i][0]!r} and {boxes[j][0]!r} overlap")
    return problems


def test_check_layout_sees_a_clipped_title_and_a_lone_tick(tmp_path):
    """The checker itself: a figure with a title wider than the figure and a
    log axis inside one decade is reported (the faults the plots had)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 3), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0.3, 0.5], [1.0, 2.0])
    ax.set_xscale("log")
    ax.set_xlim(0.3, 0.5)
    ax.set_title(LONG_TITLE * 2)
    problems = check_layout(fig)
    assert any("leaves the figure" in p for p in problems) and any("axes 0 x" in p for p in problems), problems


def test_feature_profiles_title_fits(tmp_path, figures):
    torch.manual_seed(0)
    for m, f in ((2, 16), (3, 64), (1, 4)):
        plots.plot_feature_profiles(torch.rand(m, f), tmp_path / "p.png", LONG_TITLE)
        assert check_layout(figures[-1]) == []
        assert "share rate" in figures[-1].axes[0].get_title()


def _variances(seed: int, spread: str) -> list:
    """Stage variances [2, C] within one decade (one labelled tick before) or over many decades."""
    gen = torch.Generator().manual_seed(seed)
    if spread == "one decade":
        return [torch.rand(2, 12, generator=gen) * 0.2 + 0.3, torch.rand(2, 6, generator=gen) * 0.2 + 0.3]
    decades = torch.randint(-6, 2, (2, 12), generator=gen).double()
    return [torch.rand(2, 12, generator=gen, dtype=torch.float64) * 10.0 ** decades + 1e-7]


@pytest.mark.parametrize("seed", [0, 3, 7])
@pytest.mark.parametrize("spread", ["one decade", "many decades"])
def test_conditional_variance_ticks_and_note(tmp_path, figures, spread, seed):
    values = _variances(seed, spread)
    plots.plot_conditional_variance(values, tmp_path / "cv.png", title=LONG_TITLE)
    fig = figures[-1]
    panels = len(values)
    y_labelled = {(0, "y")}  # only the first panel labels its y axis title; all panels have y ticks
    assert check_layout(fig, {(i, "x") for i in range(panels)} | y_labelled | {(i, "y") for i in range(panels)}) == []
    note = [t.get_text() for t in fig.texts if "diagonal" in t.get_text()]
    assert note and "along an axis" not in " ".join(note)


def test_conditional_variance_with_exact_zeros(tmp_path, figures):
    torch.manual_seed(2)
    v = torch.rand(2, 10) + 0.1
    v[1, :4] = 0.0  # channels that ignore input 1: symlog y axis
    plots.plot_conditional_variance([v], tmp_path / "cv0.png", title="zeros")
    assert check_layout(figures[-1]) == []


def test_training_curves_integer_epochs_and_loss_label(tmp_path, figures):
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 40.0 + e, "test_accuracy": 38.0 + e,
                "test_nll": 1.0 / e, "lr": 0.1 / e} for e in (1, 2)]
    plots.plot_training_curves(history, tmp_path / "c.png", title=LONG_TITLE)
    fig = figures[-1]
    assert check_layout(fig) == []
    for ax in fig.axes:
        ticks = [float(t.get_text().replace("\u2212", "-")) for t in _tick_labels(ax, "x")]
        assert ticks and all(t == math.floor(t) for t in ticks), ticks  # no epoch 1.25
    assert "summed over the heads" in fig.axes[0].get_ylabel()


def test_reliability_long_title_fits(tmp_path, figures):
    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(2, 100, 4, generator=gen)
    labels = torch.randint(0, 4, (100,), generator=gen)
    bins = metrics.reliability_bins(metrics.ensemble_probs(logits), labels)
    plots.plot_reliability(bins, tmp_path / "r.png", title=LONG_TITLE, scaled=bins, temperature=1.5, nll=0.9,
                           scaled_nll=0.8)
    # the top panel shares the histogram's x axis and hides its labels
    assert check_layout(figures[-1], {(0, "y"), (1, "x"), (1, "y")}) == []


def _report(accuracy, nll, ece, classifier, encoder):
    return {"ensemble_accuracy": accuracy, "nll": nll, "ece": ece, "classifier_share_rate": classifier,
            "encoder_share_rate": encoder}


def test_comparison_figure(tmp_path, figures):
    results = {"single": [_report(99.4, 0.03, 1.6, 100.0, 100.0), _report(99.2, 0.035, 1.7, 100.0, 100.0)],
               "cut-mixmo": [_report(82.0, 0.81, 29.0, 53.0, 74.8)],
               "mixshare-fadeout": [_report(96.8, 0.33, 21.0, 81.0, None), _report(96.6, None, 19.0, 79.0, 95.6)]}
    plots.plot_comparison(results, tmp_path / "compare.png", title="digits, wrn-10-1, seeds [0, 1]")
    fig = figures[-1]
    assert check_layout(fig) == []
    assert [ax.get_ylabel() for ax in fig.axes] == [label for _, label in plots.COMPARISON_PANELS]
    # one point per run with a value, in metrics.json's units
    ece = fig.axes[[k for k, _ in plots.COMPARISON_PANELS].index("ece")]
    points = sorted(float(y) for c in ece.collections if isinstance(c, PathCollection) for _, y in c.get_offsets())
    assert points == pytest.approx([1.6, 1.7, 19.0, 21.0, 29.0])
    nll = fig.axes[[k for k, _ in plots.COMPARISON_PANELS].index("nll")]
    assert sum(len(c.get_offsets()) for c in nll.collections if isinstance(c, PathCollection)) == 4  # None left out
    with pytest.raises(ValueError, match="non-empty"):
        plots.plot_comparison({"single": []}, tmp_path / "bad.png")
