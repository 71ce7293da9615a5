"""The GPU check (benchmarks/gpu_check.sh): its dry run on CPU, its loud failure when the compiled
backend is missing, and the edge checks it drives."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest
import torch

import mixshare_ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RESULT_FILES = {"summary.txt", "env.txt", "build.txt", "edge.txt", "sass.txt", "sanitizer.txt", "tests.txt",
                "bench.tar.gz"}

needs_cpu_kernels = pytest.mark.skipif(not mixshare_ops.backend_info()["cpu_kernels"], reason="C++ extension not built")


def _dry_run(out: pathlib.Path, budget: int, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "DRY_RUN": "1", "PY": sys.executable, "OUT": str(out), "BUDGET": str(budget), **env}
    environ.pop("MIXSHARE_OPS_BACKEND", None)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@needs_cpu_kernels
def test_dry_run_runs_every_phase(tmp_path):
    out = tmp_path / "out"
    run = _dry_run(out, budget=500)
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 0, summary + run.stderr[-2000:]
    for phase in ("edge-triton ok", "build rc=0", "backend ok", "edge-cuda ok", "sass SKIPPED", "memcheck ok",
                  "tests ok", "bench ok", "racecheck ok", "all phases passed"):
        assert phase in summary, phase
    files = {p.name for p in out.iterdir()}
    assert files <= RESULT_FILES and len(files) <= 8, files
    with tarfile.open(out / "bench.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"bench/report.md", "bench/results.json", "bench/log.txt"} <= names, names
        results = json.load(tar.extractfile("bench/results.json"))
    layouts = {(r["op"], r["layout"]) for r in results["ops"]}
    for op in ("box_mix", "cutmix_unmix", "cutmix_unmix_pool"):
        assert {(op, "channels_first"), (op, "channels_last")} <= layouts, op
    for log, runs in (("edge.txt", 2), ("sanitizer.txt", 2)):  # triton and cpu; memcheck and racecheck
        counts = [line for line in (out / log).read_text().splitlines() if line.startswith("edge: ") and " passed" in line]
        assert len(counts) == runs and all(" 0 failed" in line for line in counts), (log, counts)


@pytest.mark.slow
def test_missing_backend_fails_loudly(tmp_path):
    """The compiled backend did not load: exit 2 and say so, never a green run of skips."""
    out = tmp_path / "out"
    run = _dry_run(out, budget=45, FUSED_BACKEND="cuda")
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 2, summary
    assert "'cuda' kernels NOT loaded" in summary and "CUDA BACKEND NOT LOADED" in summary
    assert "tests " not in summary and "memcheck" not in summary  # the CUDA phases never ran
    assert len(list(out.iterdir())) <= 8


def test_pytest_refuses_a_missing_required_backend():
    missing = next(b for b in ("cuda", "cpu", "triton") if b not in mixshare_ops.available_backends())
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--require-backends", missing,
         "tests/test_ops_errors.py", "--co"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0
    assert f"required backend(s) {missing} not usable" in run.stdout + run.stderr


@needs_cpu_kernels
def test_edge_checks_pass_on_cpu_kernels():
    """The edge checks' cases on the C++ CPU kernels (on a GPU they run on cuda and triton)."""
    from benchmarks import gpu_edge

    args = gpu_edge.parse_args(["--device", "cpu", "--size", "small", "--dtypes", "float32", "float64"])
    results = gpu_edge.run_checks(gpu_edge.plan("cpu", torch.device("cpu"), args), log=lambda line: None)
    assert results and all(r["ok"] for r in results), [r for r in results if not r["ok"]]


def test_edge_checks_see_an_unwritten_output(monkeypatch):
    """A kernel that leaves part of its output unwritten (NaN, as the poisoned allocator gives) fails."""
    from benchmarks import gpu_edge

    real = mixshare_ops.box_mix

    def leaves_a_hole(*args, **kwargs):
        out = real(*args, **kwargs).clone()
        out.view(-1)[-1] = float("nan")
        return out

    monkeypatch.setattr(gpu_edge.mixshare_ops, "box_mix", leaves_a_hole)
    args = gpu_edge.parse_args(["--device", "cpu", "--size", "tiny", "--dtypes", "float32", "--ops", "mix"])
    results = gpu_edge.run_checks(gpu_edge.plan("reference", torch.device("cpu"), args), log=lambda line: None)
    assert results and not any(r["ok"] for r in results)
    assert all("finiteness" in r["error"] for r in results)


def test_edge_requires_backend():
    from benchmarks import gpu_edge

    missing = next(b for b in ("cuda", "cpu", "triton") if b not in mixshare_ops.available_backends("cpu"))
    assert gpu_edge.main(["--device", "cpu", "--require", missing]) == 2


SASS = """
	code for sm_90
		Function : _Z14box_mix_kernelIfLi4EEvPT_
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0080*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0090*/              @!P0 STG.E.128 desc[UR4][R6.64], R8 ;
        /*00a0*/                   STG.E desc[UR4][R6.64+0x10], R9 ;
		Function : _Z14box_mix_kernelIfLi1EEvPT_
        /*0080*/                   LDG.E.CONSTANT R4, desc[UR4][R2.64] ;
        /*0090*/                   STG.E desc[UR4][R6.64], R8 ;
"""


def test_sass_store_widths_are_counted_per_kernel():
    """The SASS reader counts accesses by width per kernel and flags a split vector store."""
    from benchmarks import sass_stores

    vec4, scalar = sass_stores.parse_sass(SASS)
    assert vec4.base_name == scalar.base_name == "box_mix_kernel"
    assert (vec4.vec, scalar.vec) == (4, 1)
    assert vec4.stores == {"STG.E": 1, "STG.E.128": 1} and vec4.loads == {"LDG.E.128": 1}
    assert scalar.stores == {"STG.E": 1} and scalar.loads == {"LDG.E": 1}
    assert sass_stores.regressions([vec4, scalar]) == [vec4]


def test_poison_word_is_nan_in_every_float_dtype():
    from benchmarks import gpu_edge

    word = torch.tensor([gpu_edge.NAN_WORD], dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert word.view(dtype).isnan().all(), dtype


def test_poison_finds_the_free_blocks_of_both_pools():
    from benchmarks import gpu_edge

    snapshot = [
        {"device": 0, "address": 1000, "segment_type": "small",
         "blocks": [{"size": 512, "state": "active_allocated"}, {"size": 1536, "state": "inactive"}]},
        {"device": 0, "address": 1 << 30, "segment_type": "large",
         "blocks": [{"address": (1 << 30), "size": 4096, "state": "inactive"},
                    {"address": (1 << 30) + 4096, "size": 8192, "state": "active_allocated"}]},
        {"device": 1, "address": 5000, "blocks": [{"size": 512, "state": "inactive"}]},
    ]
    assert gpu_edge.free_blocks(snapshot, 0) == [(1512, 1536), (1 << 30, 4096)]
