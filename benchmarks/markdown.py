"""report.md of a benchmark run: environment, targets, one table per op and mode."""

from __future__ import annotations

from typing import Optional

from benchmarks import cases

FUSED = ("cuda", "triton", "cpu")


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _time(ms) -> str:
    if ms is None:
        return "—"
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.2f} ms"


def _cell(row) -> str:
    if row is None:
        return "—"
    if "error" in row:
        return "error"
    if "skipped" in row:
        return "skipped"
    return f"{_time(row['median_ms'])} ±{100 * row['spread'] / 2:.0f}%"


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _bytes(n) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _shape(row) -> str:
    """The shape label, with M where it is not 2."""
    m = row.get("subnets")
    return row["dims"] + (f" M={m}" if m is not None and m != cases.NUM_SUBNETS else "")


def _layout(row) -> str:
    if "layout" not in row and row["op"] != "cutmix_mask":  # results from before layouts were measured
        return "channels_first"
    return row.get("layout") or "—"


def _key(row) -> tuple:
    """What tells apart the rows of one (op, mode) at one provider."""
    return row["dims"], row.get("layout"), row.get("subnets"), row["dtype"]


def op_tables(rows: list[dict], providers: list[str]) -> list[str]:
    parts = []
    fused = [p for p in providers if p in FUSED]
    for op in cases.OPS:
        for mode in cases.modes_for(op):
            sel = [r for r in rows if r["op"] == op and r["mode"] == mode]
            if not sel:
                continue
            keys = list(dict.fromkeys(_key(r) for r in sel))
            header = ["shape", "layout", "dtype", "MB moved"] + providers
            for p in fused:
                header += [f"{p} GB/s (% copy)", f"{p} x eager", f"{p} x compile"]
            lines = []
            for key in keys:
                by = {r["provider"]: r for r in sel if _key(r) == key}
                any_row = next(iter(by.values()))
                moved = next((r["bytes"] for r in by.values() if "bytes" in r), None)  # none if all were skipped
                line = [_shape(any_row), _layout(any_row), any_row["dtype"], "—" if moved is None else f"{moved / 1e6:.2f}"]
                line += [_cell(by.get(p)) for p in providers]
                for p in fused:
                    r = by.get(p)
                    if r is None or "median_ms" not in r:
                        line += ["—", "—", "—"]
                    else:
                        line += [f"{r['gbps']:.1f} ({r['pct_copy']:.0f}%)", _ratio(r.get("x_eager")),
                                 _ratio(r.get("x_compile"))]
                lines.append(line)
            parts.append(f"### `{op}` {mode}\n\n" + _table(header, lines))
    return parts


def memory_table(rows: list[dict], providers: list[str]) -> str:
    """Bytes saved for backward (per forward) and peak memory of forward+backward."""
    sel = [r for r in rows if r["mode"] == "fwd+bwd"]
    keys = list(dict.fromkeys((r["op"],) + _key(r) for r in sel))
    header = ["op", "shape", "layout", "dtype"] + [f"{p} saved" for p in providers] + [f"{p} peak" for p in providers]
    lines = []
    for key in keys:
        by = {r["provider"]: r for r in sel if (r["op"],) + _key(r) == key}
        any_row = next(iter(by.values()))
        line = [any_row["op"], _shape(any_row), _layout(any_row), any_row["dtype"]]
        line += [_bytes(by[p].get("saved_bytes")) if p in by else "—" for p in providers]
        line += [
            (f"{by[p]['peak_mem_mb']:.1f} MiB" if by[p].get("peak_mem_mb") is not None else "—") if p in by else "—"
            for p in providers
        ]
        lines.append(line)
    return _table(header, lines)


# 1,000 faults is 4 MB of fresh pages: far above what a kernel's own
# bookkeeping causes, so the time also holds the cost of getting memory from the OS.
FAULTS_SHOWN = 1000


def page_fault_table(rows: list[dict], providers: list[str]) -> Optional[str]:
    """Cases where some provider takes >= FAULTS_SHOWN host page faults per call (CPU)."""
    keys = list(dict.fromkeys(
        (r["op"], r["mode"]) + _key(r) for r in rows if (r.get("page_faults") or 0) >= FAULTS_SHOWN
    ))
    if not keys:
        return None
    lines = []
    for key in keys:
        by = {r["provider"]: r for r in rows if (r["op"], r["mode"]) + _key(r) == key}
        any_row = next(iter(by.values()))
        cells = [any_row["op"], any_row["mode"], _shape(any_row), _layout(any_row), any_row["dtype"]]
        for p in providers:
            r = by.get(p)
            if r is None or "median_ms" not in r or r.get("page_faults") is None:
                cells.append("—")
            else:
                cells.append(f"{r['page_faults']:.0f} ({_time(r['median_ms'])})")
        lines.append(cells)
    return _table(["op", "mode", "shape", "layout", "dtype"] + [f"{p} faults (time)" for p in providers], lines)


def train_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["model"], str(r["rows"]), r["variant"], "error: " + r["error"][:80], "—", "—"])
            continue
        lines.append([
            r["model"], str(r["rows"]), r["variant"], f"{r['step_ms']:.1f} ({r['step_ms_min']:.1f}–{r['step_ms_max']:.1f})",
            f"{r['images_per_s']:.0f}", _ratio(r.get("x_single_step_time")),
        ])
    return _table(["model", "rows/step", "variant", "ms/step (min–max)", "images/s", "step time / single"], lines)


def report(results: dict, images: list[str]) -> str:
    env = results["environment"]
    settings = results["settings"]
    providers = settings["providers"]
    out = [
        "# mixshare_ops benchmark",
        "",
        f"- device: {env['device']}" + (f", driver {env['driver']}, CUDA {env['cuda']}" if env.get("cuda") else ""),
        f"- torch {env['torch']}, triton {env.get('triton')}, mixshare_ops {env['mixshare_ops']}, "
        f"python {env['python']}; {env['date']}",
        f"- device-to-device copy bandwidth, measured in this run: **{env['copy_gbps']:.1f} GB/s** "
        f"(read + write, {env['copy_buffer_mib']:.0f} MiB buffer)",
        f"- times are medians over {settings['repeat']} samples (± half the interquartile range); each sample times "
        "back-to-back calls between two synchronisations; value checks off; run took "
        f"{settings['seconds']} s" + (" (**quick smoke run**: tiny shapes, not a measurement)" if settings["quick"] else ""),
        "- GB/s counts the fewest bytes a call must move (inputs read once, outputs written once); "
        "`bwd` is the backward of a recorded forward, `fwd` records autograd as in training",
        "- layout: the feature maps' memory layout (`channels_last`: each of `box_mix`'s M stacked inputs, as "
        "`torch.stack` of channels_last maps gives); M = 2 unless the shape says M=3 (MixMo's rule: input 0 fills "
        "the box, the others mix linearly outside it); speedups compare the same shape, layout, M and dtype",
    ]
    if env.get("rotate_bytes"):
        out.append(f"- cases whose inputs and outputs fit in {env['rotate_bytes'] / 2**20:.0f} MiB (the L2 cache) rotate "
                   "over copies of their inputs exceeding it twice (`rotated` in results.json), so they are not "
                   "timed warm in L2")
    if settings.get("complete") is False:
        out.append("- **partial report**: written case by case; the run was cut off or is still running")
    if settings.get("skipped_cases"):
        out.append(f"- **{settings['skipped_cases']} case rows not run**: the time limit was reached (marked skipped)")
    out += [
        "",
        "## Targets",
        "",
        _table(
            ["target", "status", "worst", "where", "missed / cases"],
            [[t["target"], t["status"], t.get("worst") or "—", t.get("where") or "—",
              f"{t['missed_cases']} / {t['cases']}" if "cases" in t else "—"] for t in results["targets"]],
        ),
        "",
        "## Ops",
        "",
    ]
    out += [part + "\n" for part in op_tables(results["ops"], providers)]
    out += ["## Memory: bytes saved for backward, peak of forward + backward", "", memory_table(results["ops"], providers), ""]
    faults = page_fault_table(results["ops"], providers)
    if faults:
        out += [
            "## Host page faults per call",
            "",
            f"Cases where a provider takes {FAULTS_SHOWN} or more minor page faults per call: an output above glibc's "
            "mmap threshold (at most 32 MiB) is fresh memory on every call, each 4 KiB page faulted in and zeroed by "
            "the kernel, and freed memory is reused or not depending on the allocator's state. Those times measure "
            "the operating system as much as the op.",
            "",
            faults,
            "",
        ]
    if results.get("train"):
        out += ["## Training step", "", train_table(results["train"]), ""]
    if results.get("sync_check"):
        out += ["## Host synchronisation check", ""]
        out += [f"- `{k}`: {v}" for k, v in results["sync_check"].items()] + [""]
    if images:
        out += ["## Plots", ""] + [f"![{img}]({img})" for img in images] + [""]
    return "\n".join(out)
