"""PNG plots of a benchmark run: GB/s against bytes moved, one line per provider (and M), one panel per
memory layout and dtype."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from benchmarks import cases  # noqa: E402

STYLE = {
    "eager": dict(color="tab:gray", marker="o"),
    "compile": dict(color="tab:blue", marker="s"),
    "triton": dict(color="tab:orange", marker="^"),
    "cuda": dict(color="tab:green", marker="D"),
    "cpu": dict(color="tab:purple", marker="v"),
}


def _op_figure(rows, op, mode, dtypes, copy_gbps, path):
    """One panel per (layout, dtype); a line per provider and M (M = 3 dotted, hollow markers)."""
    sel = [r for r in rows if r["op"] == op and r["mode"] == mode and r.get("gbps") is not None]
    layouts = [layout for layout in (None,) + cases.LAYOUTS if any(r.get("layout") == layout for r in sel)]
    subnets = sorted({r.get("subnets") for r in sel}, key=lambda m: (m is not None, m))
    fig, axes = plt.subplots(len(layouts), len(dtypes), figsize=(5.5 * len(dtypes), 4 * len(layouts)), squeeze=False)
    for row_axes, layout in zip(axes, layouts):
        for ax, dtype in zip(row_axes, dtypes):
            for provider in STYLE:
                for m in subnets:
                    pts = sorted(
                        (r["bytes"], r["gbps"]) for r in sel
                        if r["dtype"] == dtype and r["provider"] == provider and r.get("layout") == layout
                        and r.get("subnets") == m
                    )
                    if not pts:
                        continue
                    style = dict(STYLE[provider])
                    label = provider
                    if m is not None and m != cases.NUM_SUBNETS:
                        style.update(linestyle=":", markerfacecolor="none")
                        label = f"{provider} M={m}"
                    ax.plot([b / 2**20 for b, _ in pts], [g for _, g in pts], label=label, **style)
            ax.axhline(copy_gbps, color="black", linestyle="--", linewidth=1, label="copy bandwidth")
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1, 2, 5 x 10^k: ranges are often under a decade
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("bytes moved per call (MiB)")
            ax.set_ylabel("GB/s")
            ax.set_title(f"{op} {mode}, {dtype}" + (f", {layout}" if layout else ""))
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_figure(rows, path):
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        sel = [r for r in rows if r["model"] == model and r.get("images_per_s")]
        ax.barh([r["variant"] for r in sel], [r["images_per_s"] for r in sel], color="tab:green")
        ax.invert_yaxis()
        ax.set_xlabel("training images per second")
        ax.set_title(f"{model}, {sel[0]['rows'] if sel else '?'} rows per step")
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict, folder: str) -> list[str]:
    """One PNG per (op, mode) and one for the training step; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rows = results["ops"]
    dtypes = results["settings"]["dtypes"]
    copy_gbps = results["environment"]["copy_gbps"]
    paths = []
    for op in cases.OPS:
        for mode in cases.modes_for(op):
            if any(r["op"] == op and r["mode"] == mode and r.get("gbps") for r in rows):
                path = os.path.join(folder, f"{op}_{mode.replace('+', '_')}.png")
                _op_figure(rows, op, mode, dtypes, copy_gbps, path)
                paths.append(path)
    if any(r.get("images_per_s") for r in results.get("train", [])):
        path = os.path.join(folder, "train_step.png")
        _train_figure(results["train"], path)
        paths.append(path)
    return paths
