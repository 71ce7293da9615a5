"""The GPU check (benchmarks/gpu_check.sh): its dry run on CPU, its loud failure when the compiled
backend is missing, and the edge checks it drives."""

import json
import os
import pathlib
import re
import shutil
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


def _dry_run(out: pathlib.Path, budget: int, root: pathlib.Path = ROOT, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "DRY_RUN": "1", "PY": sys.executable, "OUT": str(out), "BUDGET": str(budget), **env}
    for name in ("MIXSHARE_OPS_BACKEND", "MIXSHARE_OPS_JIT", "MIXSHARE_OPS_TRITON_AUTOTUNE", "CAPS", "PHASES"):
        environ.pop(name, None)
    environ.update(env)
    return subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], cwd=root, env=environ,
                          capture_output=True, text=True, timeout=900)


def _clean_copy(dest: pathlib.Path) -> pathlib.Path:
    """The files git tracks or would track: no built _C, so a first import would compile it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    assert not list((dest / "mixshare_ops").glob("_C*"))
    return dest


# The python the dry run calls: logs each call with its MIXSHARE_OPS_JIT; memcheck's edge run (the one with the
# caching allocator off) hangs, ignoring SIGTERM; the op benchmark is killed once it has written a case.
PY_WRAPPER = """#!/usr/bin/env bash
args="$*"; echo "JIT=${MIXSHARE_OPS_JIT-unset} ${args//$'\n'/ }" >>"$CALLS"
if [[ ${PYTORCH_NO_CUDA_MEMORY_CACHING:-} == 1 && " $* " == *" benchmarks.gpu_edge "* ]]; then
  exec "$REAL_PY" -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('hang', flush=True); time.sleep(3600)"
fi
if [[ " $* " == *" benchmarks.report "* && " $* " == *" --ops box_mix "* && " $* " != *" compile "* ]]; then
  argv=("$@"); for i in "${!argv[@]}"; do [[ ${argv[$i]} == --out ]] && out=${argv[$((i + 1))]}; done
  "$REAL_PY" "$@" & pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if grep -q median_ms "$out/results.json" 2>/dev/null; then kill -9 "$pid"; wait "$pid"; echo "cut off" >&2; exit 137; fi
    sleep 0.2
  done
  wait "$pid"; exit $?
fi
exec "$REAL_PY" "$@"
"""


def _phase_seconds(summary: str) -> dict:
    """Each phase's seconds from its summary line."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\[\d+s\] (\S+) \w+ \(rc=\d+\) in (\d+)s", summary, re.M)}


@pytest.mark.slow
@needs_cpu_kernels
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git work tree")
def test_dry_run_in_a_clean_tree_with_a_hang_and_a_cut_off_benchmark(tmp_path):
    """One dry run in a tree with no built _C (its build step copies one in after 10 s, while edge-triton
    imports mixshare_ops): no import starts a first-use build; memcheck hangs and ends as a TIMEOUT, the
    later phases run and the summary is written; the benchmark, killed after its first case, leaves a table.
    Then the follow-up call picks what the first one did not finish."""
    src = _clean_copy(tmp_path / "src")
    wrapper = tmp_path / "py"
    wrapper.write_text(PY_WRAPPER)
    wrapper.chmod(0o755)
    calls, out, state = tmp_path / "calls.txt", tmp_path / "out", tmp_path / "state"
    env = dict(REAL_PY=sys.executable, PY=str(wrapper), CALLS=str(calls), STATE=str(state),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), DRY_RUN_LIBRARY=_extension_library(),
               CAPS="memcheck=12 tests-cuda=150")
    run = _dry_run(out, budget=500, root=src, **env)
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 1, summary + run.stderr[-2000:]
    assert "copied in place of compiling" in (out / "build.txt").read_text()
    for line in ("edge-triton ok", "build rc=0", "backend ok", "edge-cuda ok",
                 "sass SKIPPED", "memcheck TIMEOUT", "tests-cuda ok", "tests-triton ok", "tests-autotune ok",
                 "bench TIMEOUT", "train ok", "cost ok", "racecheck ok", "edge-triton-big ok", "done: FAILED"):
        assert line in summary, line
    # No second build: every call ran with MIXSHARE_OPS_JIT=0 and nothing was compiled.
    assert all(line.startswith("JIT=0 ") for line in calls.read_text().splitlines())
    assert not (tmp_path / "ext").exists()
    logs = "".join(p.read_text() for p in out.glob("*.txt"))
    assert "compiling the C++ kernels" not in logs
    assert "hang" in (out / "sanitizer.txt").read_text()
    files = {p.name for p in out.iterdir()}
    assert files <= RESULT_FILES and len(files) <= 8, files
    with tarfile.open(out / "bench.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"./bench/report.md", "./bench/results.json", "./bench/log.txt", "./train/report.md"} <= names, names
        results = json.load(tar.extractfile("./bench/results.json"))
        report = tar.extractfile("./bench/report.md").read().decode()
        train = json.load(tar.extractfile("./train/results.json"))
        prediction = json.load(tar.extractfile("./cost/cost.json"))
    measured = [r for r in results["ops"] if "median_ms" in r]
    assert measured and not results["settings"]["complete"] and "partial report" in report
    assert f"| {measured[0]['dims']} |" in report
    assert any(r["rotated"] > 1 for r in measured)  # the tiny shapes rotate over copies of their inputs
    assert {r["variant"] for r in train["train"] if "step_ms" in r} == {"single", "mixshare/cpu"}
    (record,) = prediction["records"]  # wrn-10-1, M = 2, float32 on the CPU
    assert record["num_subnets"] == 2 and set(record["costs"]) == {"single", "mimo", "deep_ensemble"}
    assert [record["costs"][k]["forward_passes"] for k in ("single", "mimo", "deep_ensemble")] == [1, 1, 2]
    assert record["costs"]["deep_ensemble"]["flops_per_example"] == 2 * record["costs"]["single"]["flops_per_example"]
    assert "cost: wrn-10-1 M=2 B=4 float32 cpu: single" in summary
    for log, runs in (("edge.txt", 3), ("sanitizer.txt", 1)):  # triton, cpu, triton-big; racecheck
        counts = [line for line in (out / log).read_text().splitlines() if line.startswith("edge: ") and " passed" in line]
        assert len(counts) == runs and all(" 0 failed" in line for line in counts), (log, counts)
    seconds = _phase_seconds(summary)
    print(f"dry-run phase seconds: {json.dumps(seconds)}")

    # The follow-up: no build, then what the first call did not finish, then bench-compile.
    follow = _dry_run(tmp_path / "out2", budget=40, root=src, MODE="followup", **env)
    summary2 = (tmp_path / "out2" / "summary.txt").read_text()
    assert "phases: memcheck bench bench-compile" in summary2, summary2
    assert "build rc" not in summary2 and "backend ok" in summary2 and "done:" in summary2
    assert follow.returncode == 1, summary2  # memcheck hangs again


def _extension_library() -> str:
    from mixshare_ops import _extension

    return _extension.library_path()


def test_missing_backend_fails_loudly(tmp_path):
    """The compiled backend did not load: exit 2 and say so, never a green run of skips; its phases do not run."""
    out = tmp_path / "out"
    run = _dry_run(out, budget=60, FUSED_BACKEND="cuda", MODE="followup", PHASES="memcheck tests-cuda",
                   STATE=str(tmp_path / "state"))
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 2, summary
    assert "'cuda' kernels NOT loaded" in summary and "CUDA BACKEND NOT LOADED" in summary
    after = summary.split("phases: memcheck tests-cuda\n")[1]  # the phases asked for never ran
    assert "tests-cuda" not in after and "memcheck" not in after, after
    assert len(list(out.iterdir())) <= 8


def test_triton_autotune_switch():
    """MIXSHARE_OPS_TRITON_AUTOTUNE=0 turns autotuning off (the check's Triton tests use heuristic tiles)."""
    script = "from mixshare_ops.triton import _common; print(_common.AUTOTUNE)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    results = [subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**env, "MIXSHARE_OPS_TRITON_AUTOTUNE": value}) for value in ("1", "0")]
    assert [r.stdout.strip() for r in results] == ["True", "False"], [r.stderr[-1000:] for r in results]


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
