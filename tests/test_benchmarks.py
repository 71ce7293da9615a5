"""The benchmark harness: bytes models, measurement helpers, targets, and a
smoke run of the report command and of the pytest-benchmark suites on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases, targets, timing  # noqa: E402

CPU = torch.device("cpu")


def _shape(b=4, c=8, h=16, w=16, grid=(16, 16)):
    return cases.Shape("t", b, c, h, w, grid, cases.ALL)


@pytest.mark.parametrize("dtype_name, item", [("float32", 4), ("bfloat16", 2)])
def test_bytes_model(dtype_name, item):
    shape = _shape(grid=(32, 32))
    n = 4 * 8 * 16 * 16
    mix = cases.make_case("box_mix", shape, dtype_name, "eager", CPU)
    assert mix.bytes("fwd") == 3 * n * item  # reads M = 2 inputs, writes one
    assert mix.bytes("bwd") == 3 * n * item
    assert mix.bytes("fwd+bwd") == 6 * n * item
    unmix = cases.make_case("cutmix_unmix", shape, dtype_name, "eager", CPU)
    assert unmix.bytes("fwd") == 3 * n * item  # reads one map, writes M = 2
    pool = cases.make_case("cutmix_unmix_pool", shape, dtype_name, "eager", CPU)
    assert pool.bytes("fwd") == (n + 2 * 4 * 8) * item
    mask = cases.make_case("cutmix_mask", shape, dtype_name, "eager", CPU)
    assert mask.bytes("fwd") == 4 * 32 * 32 * item + 4 * 12


@pytest.mark.parametrize("op", cases.OPS)
def test_providers_compute_the_same(op):
    """Every provider's case computes the reference's output (same seed, same inputs)."""
    shape = _shape(b=3, c=5, h=8, w=8, grid=(32, 32))
    outs = {}
    for provider in ("eager", "cpu"):
        case = cases.make_case(op, shape, "float32", provider, CPU, seed=7)
        outs[provider] = case.forward()
        if case.grad_input is not None:
            outs[provider + "-grad"] = case.call("fwd+bwd")()[0]
    torch.testing.assert_close(outs["cpu"], outs["eager"])
    if op != "cutmix_mask":
        torch.testing.assert_close(outs["cpu-grad"], outs["eager-grad"])


def test_saved_for_backward_counts_distinct_storages():
    x = torch.randn(1000, requires_grad=True)
    # x * x saves x twice (one storage); exp saves its 1000-element result.
    assert timing.saved_for_backward(lambda: (x * x).exp()) == 2 * 1000 * 4
    fused = cases.make_case("box_mix", _shape(), "float32", "cpu", CPU)
    eager = cases.make_case("box_mix", _shape(), "float32", "eager", CPU)
    # The fused op keeps the boxes and weights only; the reference keeps dense weight maps.
    assert timing.saved_for_backward(fused.forward) < 4 * 4 * 4 * 4
    assert timing.saved_for_backward(eager.forward) >= 2 * 4 * 16 * 16 * 4


def test_measure_reports_ordered_quantiles():
    t = timing.measure(lambda: torch.randn(256, 256).sum(), CPU, warmup=1, repeat=5, sample_s=0.002)
    assert 0 < t.q25 <= t.median <= t.q75
    assert t.samples == 5


def _row(**kw):
    row = dict(op="box_mix", mode="fwd", shape="s", dtype="float32", provider="cuda", cifar=False,
               bandwidth_bound=True, median_ms=1.0, pct_copy=90.0, x_eager=3.0, x_compile=1.2)
    row.update(kw)
    return row


def test_targets_met_missed_and_not_applicable():
    results = {"ops": [_row(), _row(pct_copy=80.0, mode="bwd")], "train": [], "sync_check": {}}
    by_name = {t["target"]: t for t in targets.evaluate(results)}
    bw = next(t for name, t in by_name.items() if "copy bandwidth" in name)
    assert bw["status"] == "missed" and bw["worst"] == "80.0%" and bw["missed_cases"] == 1
    assert next(t for n, t in by_name.items() if "2x eager" in n)["status"] == "met"
    assert next(t for n, t in by_name.items() if "CIFAR" in n and "cuda" in n)["status"] == "n/a"
    assert next(t for n, t in by_name.items() if "host synchronisation" in n)["status"] == "n/a"


def test_targets_training_step():
    train = [
        dict(model="wrn-28-10", variant="single", step_ms=100.0, images_per_s=1280.0, x_single_step_time=1.0),
        dict(model="wrn-28-10", variant="mixshare/cuda", step_ms=102.0, images_per_s=1255.0, x_single_step_time=1.02),
        dict(model="wrn-28-10", variant="mixmo-dataloader", step_ms=300.0, images_per_s=427.0),
    ]
    by_name = {t["target"]: t for t in targets.evaluate({"ops": [], "train": train, "sync_check": {"a": "ok"}})}
    assert next(t for n, t in by_name.items() if "MIMO overhead" in n)["status"] == "met"
    assert next(t for n, t in by_name.items() if "CPU-mask pipeline" in n)["status"] == "met"
    assert next(t for n, t in by_name.items() if "host synchronisation" in n)["status"] == "met"
    train[1]["x_single_step_time"] = 1.05
    by_name = {t["target"]: t for t in targets.evaluate({"ops": [], "train": train, "sync_check": {}})}
    assert next(t for n, t in by_name.items() if "MIMO overhead" in n)["status"] == "missed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mmap threshold")
def test_page_faults_per_call_sees_fresh_memory():
    """48 MiB is above glibc's largest mmap threshold: every call faults its pages in afresh."""
    pages = 48 * 2**20 // 4096
    fresh = timing.page_faults_per_call(lambda: torch.empty(12 * 2**20).fill_(1.0), torch.device("cpu"))
    assert fresh > pages / 2
    assert timing.page_faults_per_call(lambda: None, torch.device("cpu")) < 100
    assert timing.page_faults_per_call(lambda: None, torch.device("cuda")) is None


@pytest.mark.slow
def test_report_smoke(tmp_path):
    """The README's benchmark command at tiny shapes: every file written, every case measured."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "benchmarks.report", "--out", str(out), "--quick", "--dtypes", "float32"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["environment"]["copy_gbps"] > 0
    rows = results["ops"]
    assert {r["provider"] for r in rows} == {"eager", "compile", "cpu"}
    assert {r["op"] for r in rows} == set(cases.OPS)
    for r in rows:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["q25_ms"] <= r["median_ms"] <= r["q75_ms"]
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9)
        assert r["page_faults"] is not None and r["page_faults"] >= 0
    variants = {r["variant"] for r in results["train"]}
    assert variants == {"single", "mixshare/cpu", "mixshare/reference", "mixmo-dataloader"}
    assert all(r["images_per_s"] > 0 for r in results["train"])
    text = (out / "report.md").read_text()
    assert "## Targets" in text and "cutmix_unmix_pool" in text
    assert len(list((out / "plots").glob("*.png"))) == 11
    with open(out / "ops.csv") as fh:
        assert len(fh.readlines()) == len(rows) + 1


@pytest.mark.slow
def test_pytest_benchmark_suites_smoke():
    """The pytest-benchmark suites collect and run (timing disabled: one call each)."""
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--quick", "--benchmark-disable", "-q", "-p", "no:cacheprovider",
           "-k", "float32 and not compile or train_step"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_sanitizer_driver_runs_every_op():
    """The compute-sanitizer driver's checks pass on the CPU backends (on a GPU it runs cuda and triton)."""
    from benchmarks.sanitize_cuda import run

    assert run("cpu", CPU) == 0
    assert run("reference", CPU) == 0
