"""The performance targets of the benchmark, checked against measured rows.

Each target names its scope, the worst measured value in that scope, and
whether it is met. The op targets take every layout and M measured (a
channels_last or M = 3 case counts as any other at its shape). A target
with no measured row in scope (say, the CUDA targets on a CPU machine) is
reported as not applicable, never as met.
"""

from __future__ import annotations

GPU_FUSED = ("cuda", "triton")
BANDWIDTH_PCT = 85.0
EAGER_BANDWIDTH_BOUND = 2.0
EAGER_CIFAR = 4.0
POOL_EAGER = 3.0
CPU_EAGER = 2.0
MIMO_OVERHEAD = 0.03
DATALOADER = 2.0


def _measured(rows):
    return [r for r in rows if r.get("median_ms") is not None]


def _where(row) -> list[str]:
    """The worst case's coordinates: op, mode, shape, layout, M (where not 2), dtype, provider; or the train step's."""
    out = []
    for k in ("op", "mode", "shape", "layout", "subnets", "dtype", "provider", "model", "variant"):
        value = row.get(k)
        if value is None or (k == "subnets" and value == 2):
            continue
        out.append(f"M={value}" if k == "subnets" else str(value))
    return out


def _target(name, rows, value, threshold, higher_is_better=True, fmt="{:.2f}"):
    """Worst row of ``rows`` by ``value(row)`` against ``threshold``."""
    scored = [(value(r), r) for r in rows]
    scored = [(v, r) for v, r in scored if v is not None]
    if not scored:
        return {"target": name, "status": "n/a", "worst": None, "where": "no measured case in scope"}
    v, r = min(scored, key=lambda s: s[0]) if higher_is_better else max(scored, key=lambda s: s[0])
    met = v >= threshold if higher_is_better else v <= threshold
    missed = sum(1 for s, _ in scored if (s < threshold if higher_is_better else s > threshold))
    where = " ".join(_where(r))
    return {
        "target": name, "status": "met" if met else "missed", "worst": fmt.format(v), "where": where,
        "cases": len(scored), "missed_cases": missed,
    }


def evaluate(results: dict) -> list[dict]:
    ops = _measured(results["ops"])
    gpu = [r for r in ops if r["provider"] in GPU_FUSED]
    bandwidth_bound = [r for r in gpu if r["bandwidth_bound"] and r["mode"] in ("fwd", "bwd")]
    out = [
        _target(f"cuda/triton >= {BANDWIDTH_PCT:.0f}% of copy bandwidth, bandwidth-bound shapes, fwd and bwd",
                bandwidth_bound, lambda r: r.get("pct_copy"), BANDWIDTH_PCT, fmt="{:.1f}%"),
        _target(f"cuda/triton >= {EAGER_BANDWIDTH_BOUND:.0f}x eager, bandwidth-bound shapes",
                [r for r in gpu if r["bandwidth_bound"]], lambda r: r.get("x_eager"), EAGER_BANDWIDTH_BOUND,
                fmt="{:.2f}x"),
        _target(f"cuda/triton >= {EAGER_CIFAR:.0f}x eager, CIFAR shapes",
                [r for r in gpu if r["cifar"]], lambda r: r.get("x_eager"), EAGER_CIFAR, fmt="{:.2f}x"),
        _target("cuda/triton never slower than torch.compile(reference)",
                gpu, lambda r: r.get("x_compile"), 1.0, fmt="{:.2f}x"),
        _target(f"cutmix_unmix_pool >= {POOL_EAGER:.0f}x eager, WRN-28-10 final map, fwd+bwd",
                [r for r in gpu if r["op"] == "cutmix_unmix_pool" and r["shape"] == "wrn28-10-final"
                 and r["mode"] == "fwd+bwd"], lambda r: r.get("x_eager"), POOL_EAGER, fmt="{:.2f}x"),
        _target(f"cpu kernels >= {CPU_EAGER:.0f}x eager, CIFAR shapes",
                [r for r in ops if r["provider"] == "cpu" and r["cifar"]], lambda r: r.get("x_eager"), CPU_EAGER,
                fmt="{:.2f}x"),
    ]
    train = [r for r in results.get("train", []) if r.get("step_ms") is not None]
    fused_gpu = [r for r in train if r["model"] == "wrn-28-10" and r["variant"] in ("mixshare/cuda", "mixshare/triton")]
    out.append(_target(f"MIMO overhead <= {MIMO_OVERHEAD:.0%} of the single network's step, WRN-28-10",
                       fused_gpu, lambda r: r.get("x_single_step_time", 0) - 1, MIMO_OVERHEAD,
                       higher_is_better=False, fmt="{:+.1%}"))
    speedups = []
    for r in train:
        if not r["variant"].startswith("mixshare/") or r["variant"] == "mixshare/reference":
            continue
        loader = next((o for o in train if o["model"] == r["model"] and o["variant"] == "mixmo-dataloader"), None)
        if loader:
            speedups.append({**r, "x_dataloader": r["images_per_s"] / loader["images_per_s"]})
    out.append(_target(f"training throughput >= {DATALOADER:.0f}x the per-sample CPU-mask pipeline",
                       speedups, lambda r: r["x_dataloader"], DATALOADER, fmt="{:.2f}x"))
    sync = results.get("sync_check") or {}
    if sync:
        bad = [k for k, v in sync.items() if v != "ok"]
        out.append({"target": "no host synchronisation (set_sync_debug_mode('error'))",
                    "status": "missed" if bad else "met", "worst": ", ".join(bad) or "none",
                    "where": ", ".join(sync), "cases": len(sync), "missed_cases": len(bad)})
    else:
        out.append({"target": "no host synchronisation (set_sync_debug_mode('error'))", "status": "n/a",
                    "worst": None, "where": "CUDA only"})
    return out
