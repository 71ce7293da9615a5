"""Run the benchmarks and write the report.

    python -m benchmarks.report --out DIR [--device auto|cpu|cuda] [--quick]
        [--ops ...] [--providers ...] [--dtypes ...] [--layouts channels_first channels_last]

Writes ``DIR/report.md`` (tables and the targets met and missed),
``DIR/results.json`` (everything, with the environment), ``DIR/ops.csv``,
``DIR/train.csv`` and ``DIR/plots/*.png``. On CPU it runs the CPU providers at
CPU-sized shapes; ``--quick`` is the smoke run of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

import mixshare_ops
from benchmarks import cases, markdown, plots, targets, timing, train_step
from benchmarks.sync_check import check_no_sync


def environment(device: torch.device) -> dict:
    """Device, driver and library versions, the date."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_type": device.type,
        "torch": torch.__version__,
        "mixshare_ops": mixshare_ops.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device=props.name, cuda=torch.version.cuda, sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    else:
        env["device"] = f"CPU ({env['cpu']}, {env['cpu_threads']} threads)"
    return env


def run_ops(device, shapes, dtypes, providers, ops, *, repeat, sample_s, layouts=cases.LAYOUTS,
            deadline=None, rotate_bytes=0, on_case=None, log=print) -> list[dict]:
    """One row per (op, mode, shape, layout, M, dtype, provider), run in :func:`cases.value_order`;
    cases not started by ``deadline`` (a ``time.perf_counter()`` value) get a row with ``skipped``
    instead. A case whose inputs and outputs take less than ``rotate_bytes`` (the L2 cache) rotates
    over enough copies of its inputs to exceed it twice. ``on_case(rows)`` runs after each case."""
    cases.allow_many_recompiles()
    rows = []
    with mixshare_ops.value_checks(False):
        for spec in cases.value_order(cases.iter_cases(shapes, dtypes, providers, ops, layouts)):
            if deadline is not None and time.perf_counter() > deadline:
                rows += [{"op": spec.op, "mode": mode, "shape": spec.shape.name, "dims": spec.shape.label,
                          "dtype": spec.dtype_name, "layout": spec.layout, "subnets": spec.subnets,
                          "provider": spec.provider, "skipped": "time limit"} for mode in cases.modes_for(spec.op)]
                continue
            rows += _run_case(spec, device, repeat=repeat, sample_s=sample_s, rotate_bytes=rotate_bytes, log=log)
            if on_case is not None:
                on_case(rows)
    return rows


def copies_for(working_set: int, rotate_bytes: int, most: int = 64) -> int:
    """Input copies to rotate over so that they exceed ``rotate_bytes`` twice (1: no rotation)."""
    if working_set <= 0 or working_set >= rotate_bytes:
        return 1
    return min(most, -(-2 * rotate_bytes // working_set))


def _rotating(fns: list):
    """One call of the next function of ``fns`` per call, round robin."""
    if len(fns) == 1:
        return fns[0]
    cycle = itertools.cycle(fns)
    return lambda: next(cycle)()


def _run_case(spec, device, *, repeat, sample_s, rotate_bytes, log) -> list[dict]:
    op, shape, dtype_name, provider = spec.op, spec.shape, spec.dtype_name, spec.provider
    case = spec.make(device)
    copies = [case] + [spec.make(device, seed=k) for k in range(1, copies_for(case.bytes("fwd"), rotate_bytes))]
    rows, saved = [], None
    for mode in cases.modes_for(op):
        row = {
            "op": op, "mode": mode, "shape": shape.name, "dims": shape.label, "dtype": dtype_name,
            "layout": spec.layout, "subnets": spec.subnets,
            "provider": provider, "bytes": case.bytes(mode), "cifar": shape.cifar,
            "bandwidth_bound": shape.bandwidth_bound, "rotated": len(copies),
        }
        try:
            if saved is None and case.grad_input is not None:
                saved = timing.saved_for_backward(case.forward)
            fn = case.call(mode)
            t = timing.measure(_rotating([fn] + [c.call(mode) for c in copies[1:]]), device, repeat=repeat,
                               sample_s=sample_s)
            row.update(
                median_ms=1e3 * t.median, q25_ms=1e3 * t.q25, q75_ms=1e3 * t.q75, spread=t.spread,
                gbps=case.bytes(mode) / t.median / 1e9, saved_bytes=saved,
                peak_mem_mb=_mb(timing.peak_memory(fn, device)),
                page_faults=timing.page_faults_per_call(fn, device),
            )
        except Exception as error:  # reported in the table, never hidden
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log(f"  {spec.id} {mode}: {row['error']}")
        rows.append(row)
    summary = "  ".join(f"{r['mode']} {r['median_ms'] * 1e3:.1f} us" for r in rows if "median_ms" in r)
    variant = " ".join(cases.variant_names(spec.layout, spec.subnets))
    log(f"{op:18s} {shape.name:20s} {variant:18s} {dtype_name:8s} {provider:8s} {summary}")
    return rows


def _mb(nbytes):
    return None if nbytes is None else nbytes / 2**20


def add_ratios(rows: list[dict], copy_gbps: float) -> None:
    """% of the copy bandwidth, and speedups against eager and compile for the same case
    (op, mode, shape, layout, M and dtype)."""
    key = lambda r: (r["op"], r["mode"], r["shape"], r.get("layout"), r.get("subnets"), r["dtype"])  # noqa: E731
    base = {(key(r), r["provider"]): r.get("median_ms") for r in rows}
    for r in rows:
        if "median_ms" not in r:
            continue
        r["pct_copy"] = 100.0 * r["gbps"] / copy_gbps
        for ref in ("eager", "compile"):
            other = base.get((key(r), ref))
            r[f"x_{ref}"] = other / r["median_ms"] if other else None


def run_train(device, settings, variant_names, *, steps, repeat, on_row=None, log=print) -> list[dict]:
    """One row per (setting, variant); ``on_row(rows)`` runs after each."""
    rows = []
    for setting in settings:
        for variant in variant_names:
            try:
                row = train_step.step_throughput(variant, setting, device, steps=steps, repeat=repeat)
            except Exception as error:
                row = {"model": setting.model, "rows": setting.rows, "variant": variant,
                       "error": f"{type(error).__name__}: {error}"}
            log(f"train-step {setting.model:10s} {variant:22s} "
                + (f"{row['step_ms']:.1f} ms/step, {row['images_per_s']:.0f} img/s" if "step_ms" in row
                   else row["error"]))
            rows.append(row)
            _step_ratios(rows, setting.model)
            if on_row is not None:
                on_row(rows)
    return rows


def _step_ratios(rows: list[dict], model: str) -> None:
    """Each row's step time over the single network's, for ``model``."""
    single = next((r for r in rows if r["model"] == model and r["variant"] == "single" and "step_ms" in r), None)
    for r in rows:
        if r["model"] == model and single and "step_ms" in r:
            r["x_single_step_time"] = r["step_ms"] / single["step_ms"]


def _write_csv(path: str, rows: list[dict]) -> None:
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]

    def write(fh):
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)

    _atomic(path, write)


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_partial_report(out: str, results: dict) -> None:
    """results.json and report.md of the rows so far (no CSVs, no plots)."""
    os.makedirs(out, exist_ok=True)
    results["targets"] = targets.evaluate(results)
    _atomic(os.path.join(out, "results.json"), lambda fh: json.dump(results, fh, indent=1))
    text = markdown.report(results, [])
    _atomic(os.path.join(out, "report.md"), lambda fh: fh.write(text))


def write_report(out: str, results: dict) -> None:
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    _atomic(os.path.join(out, "results.json"), lambda fh: json.dump(results, fh, indent=1))
    _write_csv(os.path.join(out, "ops.csv"), results["ops"])
    if results["train"]:
        _write_csv(os.path.join(out, "train.csv"), results["train"])
    images = plots.write_plots(results, os.path.join(out, "plots"))
    text = markdown.report(results, [os.path.relpath(p, out) for p in images])
    _atomic(os.path.join(out, "report.md"), lambda fh: fh.write(text))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for report.md, results.json, the CSVs and plots")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: the smoke run")
    parser.add_argument("--ops", nargs="+", choices=cases.OPS, default=list(cases.OPS))
    parser.add_argument("--providers", nargs="+", choices=cases.PROVIDERS, help="default: all that run here")
    parser.add_argument("--dtypes", nargs="+", choices=list(cases.DTYPES), default=list(cases.DTYPES))
    parser.add_argument("--layouts", nargs="+", choices=cases.LAYOUTS, default=list(cases.LAYOUTS),
                        help="memory layouts of the feature maps (cutmix_mask has none and always runs)")
    parser.add_argument("--repeat", type=int, help="timing samples per case (default 15; 3 with --quick)")
    parser.add_argument("--shapes", nargs="+", metavar="NAME",
                        help="only the shapes with these names (default: all for the device)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no op case after this many seconds; the rest are listed as skipped")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step benchmark")
    parser.add_argument("--train-steps", type=int, help="steps per timed block (default 10; 2 with --quick)")
    parser.add_argument("--train-only", action="store_true", help="only the training-step benchmark")
    parser.add_argument("--train-models", nargs="+", metavar="MODEL", help="only these training-step models")
    parser.add_argument("--train-variants", nargs="+", metavar="VARIANT",
                        help="only these training-step variants (e.g. single mixshare/cuda mixshare/triton)")
    parser.add_argument("--rotate-bytes", type=int, metavar="BYTES",
                        help="rotate the inputs of cases smaller than this over copies exceeding it twice "
                             "(default: the GPU's L2 cache size; 0 on CPU)")
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    on_gpu = device.type == "cuda"
    if args.quick:
        shapes, settings = cases.quick_shapes(), train_step.quick_settings()
    elif on_gpu:
        shapes, settings = cases.cuda_shapes(), train_step.cuda_settings()
    else:
        shapes, settings = cases.cpu_shapes(), train_step.cpu_settings()
    if args.shapes:
        unknown = sorted(set(args.shapes) - {shape.name for shape in shapes})
        if unknown:
            parser.error(f"unknown shapes {unknown}; here: {[shape.name for shape in shapes]}")
        shapes = [shape for shape in shapes if shape.name in args.shapes]
    providers = args.providers or cases.default_providers(device)
    unusable = [p for p in providers if p not in cases.default_providers(device)]
    if unusable:
        parser.error(f"providers {unusable} cannot run on {device.type} here; usable: "
                     f"{cases.default_providers(device)}")
    repeat = args.repeat or (3 if args.quick else 15)
    if args.train_models:
        unknown = sorted(set(args.train_models) - {setting.model for setting in settings})
        if unknown:
            parser.error(f"unknown training-step models {unknown}; here: {[s.model for s in settings]}")
        settings = [setting for setting in settings if setting.model in args.train_models]
    variants = train_step.variants(device)
    if args.train_variants:
        unknown = sorted(set(args.train_variants) - set(variants))
        if unknown:
            parser.error(f"training-step variants {unknown} cannot run here; usable: {variants}")
        variants = args.train_variants
    started = time.perf_counter()

    env = environment(device)
    copy_bytes = (2**20 if args.quick else 2**30 if on_gpu else 2**28)
    copy_gbps, copy_t = timing.copy_bandwidth(device, copy_bytes, repeat=repeat)
    env.update(copy_gbps=copy_gbps / 1e9, copy_buffer_mib=copy_bytes / 2**20, copy_spread=copy_t.spread)
    print(f"{env['device']}: copy bandwidth {copy_gbps / 1e9:.1f} GB/s (buffer {copy_bytes / 2**20:.0f} MiB)")
    rotate_bytes = args.rotate_bytes
    if rotate_bytes is None:
        rotate_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) if on_gpu else 0
    env["rotate_bytes"] = rotate_bytes

    results = {
        "environment": env,
        "settings": {"quick": args.quick, "repeat": repeat, "providers": providers, "dtypes": args.dtypes,
                     "layouts": args.layouts, "seconds": None, "skipped_cases": 0, "complete": False},
        "ops": [],
        "train": [],
        "sync_check": {},
    }

    def checkpoint(key: str):
        """Writes results.json and report.md with the rows so far (a run cut off keeps them)."""
        def write(rows):
            results[key] = rows
            if key == "ops":
                add_ratios(rows, copy_gbps / 1e9)
                results["settings"]["skipped_cases"] = sum(1 for r in rows if "skipped" in r)
            results["settings"]["seconds"] = round(time.perf_counter() - started, 1)
            write_partial_report(args.out, results)
        return write

    if not args.train_only:
        run_ops(device, shapes, args.dtypes, providers, args.ops, repeat=repeat,
                sample_s=0.005 if args.quick else 0.02, layouts=args.layouts,
                deadline=None if args.time_limit is None else started + args.time_limit,
                rotate_bytes=rotate_bytes, on_case=checkpoint("ops"))
    if not args.no_train:
        run_train(device, settings, variants, steps=args.train_steps or (2 if args.quick else 10),
                  repeat=2 if args.quick else 3, on_row=checkpoint("train"))
    fused = [p for p in providers if p in ("cuda", "triton")]
    results["sync_check"] = check_no_sync(device, fused) if on_gpu and not args.train_only else {}
    results["settings"]["complete"] = True
    results["targets"] = targets.evaluate(results)
    results["settings"]["seconds"] = round(time.perf_counter() - started, 1)
    write_report(args.out, results)
    print(f"report: {os.path.join(args.out, 'report.md')} ({results['settings']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
