"""The cost of a prediction, MIMO's Tables 1-2 column: single network vs MIMO (M subnetworks in one
pass) vs a Deep Ensemble of M networks, measured side by side in one process
(:func:`mixshare.cost.compare_costs`) on random weights and CIFAR-shaped random images.

    python -m benchmarks.prediction_cost --device cuda --model wrn-28-2 --subnets 2 3 --batch 500 --out DIR

Writes ``DIR/cost.json`` (one record per precision and M: the three costs) and prints a ``cost:`` line
per record. Precisions: ``float32``, and on CUDA also ``bf16`` (autocast, channels_last), the
settings training uses on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn as nn

from mixshare import cost
from mixshare.models import build_model
from mixshare.runtime import bf16_autocast, gpu_only


class Autocast(nn.Module):
    """``model.predict`` under bfloat16 autocast on CUDA: images [B, C, H, W] -> logits [M, B, K]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_subnets = model.num_subnets

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with bf16_autocast(True, images.device):
            return self.model.predict(images)


def measure(model_name: str, subnets: list, batch: int, device: torch.device, precision: str,
            num_classes: int = 10, size: int = 32, repeats: int = 20, warmup: int = 3) -> list:
    """One record per M of ``subnets``: ``{model, num_subnets, precision, batch, costs: {single, mimo,
    deep_ensemble}}`` from :func:`mixshare.cost.compare_costs` on ``batch`` random images."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size, device=device)
    layout = torch.channels_last if gpu_only(precision == "bf16", device) else torch.contiguous_format
    images = images.contiguous(memory_format=layout)

    def built(m: int) -> nn.Module:
        model = build_model(model_name, num_classes, m).to(device=device, memory_format=layout).eval()
        return Autocast(model) if precision == "bf16" else model

    single = built(1)
    records = []
    for m in subnets:
        costs = cost.compare_costs(single, built(m), images, ensemble_size=m, repeats=repeats, warmup=warmup)
        records.append({"model": model_name, "num_subnets": m, "precision": precision, "batch": batch,
                        "costs": costs})
    return records


def line(record: dict) -> str:
    """``cost: ...`` summary of one record: ms per example, passes and the ratio to the single network."""
    costs = record["costs"]
    base = costs["single"]["ms_per_example"]
    parts = [f"{name} {c['ms_per_example']:.4f} ms/ex ({c['forward_passes']} pass{'es' if c['forward_passes'] > 1 else ''}, "
             f"{c['ms_per_example'] / base:.2f}x, {c['flops_per_example'] / 1e6:.1f} MFLOP)"
             for name, c in costs.items()]
    return (f"cost: {record['model']} M={record['num_subnets']} B={record['batch']} {record['precision']} "
            f"{costs['single']['device']}: " + "; ".join(parts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="wrn-28-2")
    parser.add_argument("--subnets", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(m < 2 for m in args.subnets):
        parser.error(f"--subnets must each be >= 2, got {args.subnets}")
    device = torch.device(args.device)
    precisions = ["float32", "bf16"] if gpu_only(True, device) else ["float32"]
    os.makedirs(args.out, exist_ok=True)
    started, records = time.perf_counter(), []
    for precision in precisions:
        for record in measure(args.model, args.subnets, args.batch, device, precision,
                              repeats=args.repeats, warmup=args.warmup):
            records.append(record)
            print(line(record), flush=True)
            path = os.path.join(args.out, "cost.json")
            with open(path + ".tmp", "w") as fh:
                json.dump({"records": records, "device": str(device)}, fh, indent=2)
            os.replace(path + ".tmp", path)
    print(f"prediction cost: {len(records)} records in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
