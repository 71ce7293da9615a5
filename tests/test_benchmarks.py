"""The benchmark harness: bytes models, measurement helpers, targets, and a
smoke run of the report command and of the pytest-benchmark suites on CPU."""

import dataclasses
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
    assert (mask.layout, mask.subnets) == (None, None)
    for layout in cases.LAYOUTS:  # the layout moves the same bytes
        mix3 = cases.make_case("box_mix", shape, dtype_name, "eager", CPU, layout=layout, subnets=3)
        assert mix3.bytes("fwd") == 4 * n * item  # reads M = 3 inputs, writes one
        assert mix3.bytes("fwd+bwd") == 8 * n * item
        pool = cases.make_case("cutmix_unmix_pool", shape, dtype_name, "eager", CPU, layout=layout)
        assert pool.bytes("fwd") == (n + 2 * 4 * 8) * item


def test_channels_last_cases():
    """channels_last cases hold the same values as channels_first ones, in channels_last memory."""
    shape = _shape()
    for op in ("box_mix", "cutmix_unmix", "cutmix_unmix_pool"):
        first = cases.make_case(op, shape, "float32", "eager", CPU, layout="channels_first")
        last = cases.make_case(op, shape, "float32", "eager", CPU, layout="channels_last")
        x = last.grad_input
        assert last.layout == "channels_last" and first.grad_input.is_contiguous()
        if op == "box_mix":  # each of the M stacked inputs channels_last, as torch.stack of such maps
            stacked = torch.stack([t.contiguous(memory_format=torch.channels_last) for t in x.detach()])
            assert x.stride() == stacked.stride() and not x.is_contiguous()
        else:
            assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        assert x.is_leaf and x.requires_grad
        torch.testing.assert_close(x, first.grad_input, rtol=0, atol=0)
        torch.testing.assert_close(last.forward(), first.forward())
    with pytest.raises(ValueError, match="layout"):
        cases.make_case("box_mix", shape, "float32", "eager", CPU, layout="nhwc")


def test_box_mix_m3_follows_mixmo_rule():
    """M = 3 weights as mixshare.methods builds them: input 0 fills the box; outside it inputs 1 and 2
    mix by their ratios."""
    shape = _shape(b=16)
    case = cases.make_case("box_mix", shape, "float32", "eager", CPU, subnets=3)
    assert case.subnets == 3 and case.grad_input.shape[0] == 3
    lam = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    inside, outside = cases.mixmo_weights(lam)
    torch.testing.assert_close(inside, torch.tensor([[1.0, 0.0, 0.0]] * 2))
    torch.testing.assert_close(outside, torch.tensor([[0.0, 0.5 / 0.8, 0.3 / 0.8], [0.0, 0.25, 0.75]]))
    _, outside2 = cases.mixmo_weights(torch.tensor([[0.3, 0.7]]))
    torch.testing.assert_close(outside2, torch.tensor([[0.0, 1.0]]))  # M = 2: Cut-MixMo


def test_iter_cases_layouts_and_subnets():
    specs = list(cases.iter_cases(cases.quick_shapes(), ["float32"], ["eager"]))
    by_op = {}
    for spec in specs:
        by_op.setdefault(spec.op, set()).add((spec.layout, spec.subnets))
    assert by_op["cutmix_mask"] == {(None, None)}
    assert {("channels_first", 2), ("channels_last", 2), ("channels_last", 3)} <= by_op["box_mix"]
    for op in cases.UNMIX:
        assert by_op[op] == {("channels_first", 2), ("channels_last", 2)}
    assert len({s.id for s in specs}) == len(specs)
    only_last = list(cases.iter_cases(cases.quick_shapes(), ["float32"], ["eager"], layouts=["channels_last"]))
    assert {s.layout for s in only_last} == {None, "channels_last"}
    for shapes in (cases.cpu_shapes(), cases.cuda_shapes()):
        assert any(s.subnets == 3 for s in cases.iter_cases(shapes, ["float32"], ["eager"], ["box_mix"]))


DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("op", cases.OPS)
def test_providers_compute_the_same(op, device):
    """Every fused provider's case computes the reference's output (same seed, same inputs),
    in each layout and, for box_mix, at M = 2 and 3."""
    shape = dataclasses.replace(_shape(b=3, c=5, h=8, w=8, grid=(32, 32)), mix_subnets=(2, 3))
    fused = [p for p in cases.default_providers(device) if p not in ("eager", "compile")]
    assert fused, f"no fused provider on {device}"
    specs = list(cases.iter_cases([shape], ["float32"], ["eager"] + fused, [op]))
    for spec in specs:
        if spec.provider == "eager":
            continue
        ref = spec._replace(provider="eager").make(device, seed=7)
        case = spec.make(device, seed=7)
        torch.testing.assert_close(case.forward(), ref.forward(), msg=lambda m: f"{spec.id}: {m}")
        if op != "cutmix_mask":
            torch.testing.assert_close(case.call("fwd+bwd")()[0], ref.call("fwd+bwd")()[0],
                                       msg=lambda m: f"{spec.id} grad: {m}")
    assert {s.layout for s in specs} == ({None} if op == "cutmix_mask" else set(cases.LAYOUTS))


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
    """The README's benchmark command at tiny shapes on CPU: every file written, every case measured."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "benchmarks.report", "--out", str(out), "--quick", "--dtypes", "float32",
           "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["environment"]["copy_gbps"] > 0
    assert results["settings"]["layouts"] == list(cases.LAYOUTS)
    rows = results["ops"]
    assert {r["provider"] for r in rows} == set(cases.default_providers(CPU))
    assert {r["op"] for r in rows} == set(cases.OPS)
    for r in rows:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["q25_ms"] <= r["median_ms"] <= r["q75_ms"]
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9)
        assert r["page_faults"] is not None and r["page_faults"] >= 0
        assert r["x_eager"] is not None and r["x_compile"] is not None  # eager and compile of the same case
    for op in set(cases.OPS) - {"cutmix_mask"}:  # every op with a layout has channels_last rows
        for layout in cases.LAYOUTS:
            assert {r["provider"] for r in rows if r["op"] == op and r["layout"] == layout} == \
                set(cases.default_providers(CPU)), (op, layout)
    assert {(r["layout"], r["subnets"]) for r in rows if r["op"] == "cutmix_mask"} == {(None, None)}
    m3 = [r for r in rows if r["op"] == "box_mix" and r["subnets"] == 3]
    assert {r["layout"] for r in m3} == {"channels_last"} and {r["mode"] for r in m3} == set(cases.MODES)
    assert {r["provider"] for r in m3} == set(cases.default_providers(CPU))
    two = next(r for r in rows if r["op"] == "box_mix" and r["subnets"] == 2 and r["layout"] == "channels_last"
               and r["mode"] == "fwd")
    assert m3[0]["bytes"] == two["bytes"] * 4 // 3  # reads M inputs, writes one
    variants = {r["variant"] for r in results["train"]}
    assert variants == {"single", "mixshare/cpu", "mixshare/reference", "mixmo-dataloader"}
    assert all(r["images_per_s"] > 0 for r in results["train"])
    text = (out / "report.md").read_text()
    assert "## Targets" in text and "cutmix_unmix_pool" in text
    assert "| channels_last |" in text and "[4,16,32,32] M=3 |" in text
    assert len(list((out / "plots").glob("*.png"))) == 11
    with open(out / "ops.csv") as fh:
        header = fh.readline().strip().split(",")
        assert "layout" in header and "subnets" in header
        assert len(fh.readlines()) == len(rows)


@pytest.mark.slow
def test_pytest_benchmark_suites_smoke():
    """The pytest-benchmark suites collect and run (timing disabled: one call each)."""
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--quick", "--bench-device", "cpu", "--benchmark-disable",
           "-v", "-p", "no:cacheprovider", "-k", "float32 and not compile or train_step"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    passed = [line for line in proc.stdout.splitlines() if "test_op[" in line and "PASSED" in line]
    for op in set(cases.OPS) - {"cutmix_mask"}:
        assert any(f"{op}-" in line and "channels_last" in line for line in passed), op
    assert any("box_mix-" in line and "-M=3]" in line for line in passed)


def test_time_limit_lists_cases_not_run():
    """Cases not started before the deadline become rows marked skipped, and the report still renders."""
    from benchmarks import markdown, report

    rows = report.run_ops(CPU, cases.quick_shapes(), ["float32"], ["cpu"], ["box_mix"], repeat=1, sample_s=0.001,
                          deadline=0.0, log=lambda line: None)
    assert rows and all(r["skipped"] == "time limit" and "median_ms" not in r for r in rows)
    env = dict(device="cpu", torch="t", mixshare_ops="m", python="p", date="d", copy_gbps=1.0, copy_buffer_mib=1)
    settings = dict(providers=["cpu"], repeat=1, seconds=0.0, quick=True, skipped_cases=len(rows))
    text = markdown.report({"environment": env, "settings": settings, "ops": rows, "train": [], "sync_check": {},
                            "targets": []}, [])
    assert f"{len(rows)} case rows not run" in text and "skipped" in text


def test_value_order_puts_bandwidth_bound_first_and_compile_last():
    specs = list(cases.iter_cases(cases.cuda_shapes(), ["bfloat16"], ["cuda", "compile", "eager"],
                                  ["box_mix", "cutmix_unmix_pool"]))
    ordered = cases.value_order(specs)
    assert sorted(s.id for s in ordered) == sorted(s.id for s in specs)
    ranks = [(s.provider == "compile", 0 if s.shape.bandwidth_bound else 1 if s.shape.cifar else 2) for s in ordered]
    assert ranks == sorted(ranks) and ranks[0] == (False, 0) and ranks[-1][0]
    first = [s for s in ordered if s.provider != "compile" and s.shape.bandwidth_bound]
    assert {s.op for s in first} == {"box_mix", "cutmix_unmix_pool"} and {s.provider for s in first} == {"cuda", "eager"}


def test_cases_smaller_than_l2_rotate_over_copies():
    """A case that fits in rotate_bytes is timed over copies whose inputs exceed it twice."""
    from benchmarks import report

    assert report.copies_for(10 << 20, 50 << 20) == 10 and report.copies_for(60 << 20, 50 << 20) == 1
    assert report.copies_for(1, 50 << 20) == 64 and report.copies_for(1 << 20, 0) == 1
    calls = []
    fn = report._rotating([lambda i=i: calls.append(i) for i in range(3)])
    for _ in range(7):
        fn()
    assert calls == [0, 1, 2, 0, 1, 2, 0]
    written = []
    rows = report.run_ops(CPU, cases.quick_shapes()[:1], ["float32"], ["cpu"], ["box_mix"], repeat=1,
                          sample_s=0.001, rotate_bytes=4 << 20, on_case=lambda rows: written.append(len(rows)),
                          log=lambda line: None)
    assert rows and all(r["rotated"] > 1 and "median_ms" in r for r in rows)
    assert written == [3, 6]  # after each case (2 layouts x 3 modes)
