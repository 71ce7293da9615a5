"""A plain `pip install .` (build isolation on, so no torch while building) into
a fresh virtual environment: a pure-Python wheel carrying csrc/, whose first
import compiles the C++ kernels into torch's extension cache."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in the fresh environment, outside the source tree: the cpu backend
# against the reference, and where the package and the library come from.
CHECK = textwrap.dedent(
    """
    import json, torch
    import mixshare_ops
    from mixshare_ops import _extension, reference
    info = mixshare_ops.backend_info()
    result = {"info": info, "package": mixshare_ops.__file__, "library": _extension.library_path()}
    if "cpu" in info["available_backends"]:
        torch.manual_seed(0)
        boxes, _ = mixshare_ops.cutmix_boxes(torch.rand(5), torch.rand(5, 2), 8, 8)
        x = torch.randn(2, 5, 3, 8, 8)
        w_in, w_out = torch.rand(5, 2), torch.rand(5, 2)
        out = mixshare_ops.box_mix(x, boxes, w_in, w_out, backend="cpu")
        ref = mixshare_ops.box_mix(x, boxes, w_in, w_out, backend="reference")
        torch.testing.assert_close(out, ref)
        result["box_mix_matches"] = True
    print(json.dumps(result))
    """
)


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert run.returncode == 0, f"{cmd}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run


def _copy_sources(dest: pathlib.Path) -> None:
    """The working tree's files that git tracks or would track (no build outputs)."""
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, files.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git work tree")
@pytest.mark.skipif(not torch.__version__.endswith("+cpu"), reason="installs this CPU torch into a fresh venv")
def test_plain_pip_install_compiles_on_first_use(tmp_path):
    start = time.monotonic()
    src = tmp_path / "src"
    _copy_sources(src)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MIXSHARE_OPS_BACKEND", "MIXSHARE_OPS_JIT", "TRITON_INTERPRET", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The CPU wheel of this torch: `pip install torch==X+cpu` matches no CUDA build.
    torch_spec = f"torch=={torch.__version__}"
    installed = subprocess.run([py, "-m", "pip", "install", "-q", torch_spec], capture_output=True, text=True, env=env)
    if installed.returncode != 0:
        pytest.skip(f"{torch_spec} cannot be installed here: {installed.stderr[-500:]}")
    # Build isolation on: the build environment has setuptools and wheel only.
    _run([py, "-m", "pip", "install", "-q", str(src)], env=env, cwd=tmp_path)
    timing = {"install": time.monotonic() - start}
    site = pathlib.Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    package = site / "mixshare_ops"
    assert not list(package.glob("_C*")), "the isolated build must not compile the extension"
    assert (package / "csrc" / "ops.cpp").is_file() and (package / "csrc" / "cpu" / "kernel_utils.h").is_file()
    assert (package / "csrc" / "cuda" / "box_mix.cu").is_file()

    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "torch_extensions")
    env.pop("MAX_JOBS", None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    check = [py, "-W", "ignore", "-c", CHECK]
    # A first import killed mid-build (with its compilers) leaves its lock behind ...
    killed = subprocess.Popen(check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=run_dir, start_new_session=True)
    assert "compiling the C++ kernels" in killed.stderr.readline()
    time.sleep(10)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert list((tmp_path / "torch_extensions").rglob("build.lock"))
    # ... which one of two processes started together takes over; it compiles, the other waits.
    started = time.monotonic()
    procs = [subprocess.Popen(check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=run_dir)
             for _ in range(2)]
    outputs = [p.communicate() for p in procs]
    timing["first_import"] = time.monotonic() - started
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-5000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["package"].startswith(str(site)), result["package"]
        assert result["info"]["extension_loaded"], result["info"]["extension_error"]
        assert "cpu" in result["info"]["available_backends"]
        assert result["box_mix_matches"]
        assert result["library"].startswith(env["TORCH_EXTENSIONS_DIR"]), result["library"]
    messages = [err for _, err in outputs]
    assert sum("compiling the C++ kernels (first use, about" in m for m in messages) == 1, messages
    assert sum("taking over the build lock" in m and "has ended" in m for m in messages) == 1, messages
    assert sum("waiting for process" in m for m in messages) == 1, messages
    assert all("mixshare_ops: done in" in m for m in messages if "compiling the C++ kernels (first use" in m), messages

    # Later imports load the cached library without compiling.
    started = time.monotonic()
    again = _run(check, env=env, cwd=run_dir)
    timing["cached_import"] = time.monotonic() - started
    assert "compiling" not in again.stderr, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["box_mix_matches"]

    # MIXSHARE_OPS_JIT=0 in a new cache: nothing is compiled, the reference backend runs.
    off = _run(check, env={**env, "MIXSHARE_OPS_JIT": "0", "TORCH_EXTENSIONS_DIR": str(tmp_path / "unused")},
               cwd=run_dir)
    info = json.loads(off.stdout.strip().splitlines()[-1])["info"]
    assert not info["extension_loaded"] and "MIXSHARE_OPS_JIT=0" in info["extension_error"]
    assert "cpu" not in info["available_backends"] and "reference" in info["available_backends"]
    assert not (tmp_path / "unused").exists()
    print(f"timing (s): {json.dumps({k: round(v) for k, v in timing.items()})}")


def test_setup_without_torch_builds_a_pure_python_package(tmp_path):
    """setup.py without torch (an isolated build): no extension, csrc copied into the package."""
    script = (
        "import sys; sys.modules['torch'] = None; "
        f"sys.argv = ['setup.py', '-q', 'build_py', '--build-lib', {str(tmp_path)!r}]; "
        "import runpy; runpy.run_path('setup.py', run_name='__main__')"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    package = tmp_path / "mixshare_ops"
    assert (package / "_extension.py").is_file() and not list(package.glob("_C*"))
    copied = sorted(p.relative_to(package / "csrc").as_posix() for p in (package / "csrc").rglob("*") if p.is_file())
    expected = sorted(p.relative_to(ROOT / "csrc").as_posix() for p in (ROOT / "csrc").rglob("*")
                      if p.suffix in (".cpp", ".h", ".cu", ".cuh"))
    assert copied == expected


# ------------------------------------------------- the first-use build's cache

from mixshare_ops import _build_cache, _extension  # noqa: E402

needs_library = pytest.mark.skipif(_extension.library_path() is None, reason="C++ extension not built")

# Runs _jit_load in a child process with a stand-in for the compiler: it logs its
# pid, waits a moment and copies the built library (argv[1]) into place.
FAKE_BUILD = textwrap.dedent(
    """
    import os, pathlib, shutil, sys, time
    import torch
    from torch.utils import cpp_extension
    from mixshare_ops import _extension

    def fake_load(name, build_directory, **kwargs):
        assert not (pathlib.Path(build_directory) / "lock").exists(), "a stale torch lock was left in place"
        with open(os.environ["BUILD_LOG"], "a") as log:
            log.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ.get("BUILD_SECONDS", "0")))
        path = pathlib.Path(build_directory) / f"{name}.so"
        shutil.copy(sys.argv[1], path)
        torch.ops.load_library(str(path))  # as cpp_extension.load does
        return str(path)

    cpp_extension.load = fake_load
    _extension.JIT_HEARTBEAT_S = float(os.environ.get("HEARTBEAT_S", "30"))
    torch.ops.load_library = lambda path: print("loaded", path)
    print("error:", _extension._jit_load())
    """
)


def _fake_build_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MIXSHARE_OPS_JIT_WAIT",)}
    env.update(TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), BUILD_LOG=str(tmp_path / "builds.log"), **extra)
    return env


def _cache_paths(env: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """The cache folder and library file _jit_load uses under ``env``."""
    script = ("from torch.utils import cpp_extension; from mixshare_ops import _extension as e; "
              "root = e.source_root(); name = e._jit_name(root, e._jit_build_args(root)); "
              "print(cpp_extension._get_build_directory(name, verbose=False)); print(name)")
    directory, name = _run([sys.executable, "-c", script], env=env, cwd=ROOT).stdout.split()
    return pathlib.Path(directory), pathlib.Path(directory) / f"{name}.so"


@needs_library
def test_library_check_sees_truncation(tmp_path):
    built = pathlib.Path(_extension.library_path())
    assert _build_cache.library_problem(built) is None
    data = built.read_bytes()
    cut = tmp_path / "cut.so"
    for size in (len(data) - 100, len(data) // 2, 4096):
        cut.write_bytes(data[:size])
        assert "is truncated" in _build_cache.library_problem(cut), size
    cut.write_bytes(b"not a library" * 200)
    assert "is not an ELF file" in _build_cache.library_problem(cut)
    cut.write_bytes(b"")
    assert "has only 0 bytes" in _build_cache.library_problem(cut)


@needs_library
def test_truncated_cached_library_is_rebuilt_and_two_importers_build_once(tmp_path):
    """A truncated library and a killed build's torch lock in the cache: of two importers
    started together one rebuilds, the other waits and loads its library; neither loads the
    truncated file."""
    env = _fake_build_env(tmp_path, BUILD_SECONDS="2", HEARTBEAT_S="0.5")
    directory, library = _cache_paths(env)
    (directory / "build").mkdir(parents=True)
    (directory / "build" / "lock").touch()
    built = pathlib.Path(_extension.library_path())
    library.write_bytes(built.read_bytes()[:50_000])
    procs = [subprocess.Popen([sys.executable, "-c", FAKE_BUILD, str(built)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and "error: None" in out, out + err
    loaded = sorted(line for out, _ in outputs for line in out.splitlines() if line.startswith("loaded"))
    # the builder loads what it linked (then renamed into place), the waiter the renamed file
    assert loaded == [f"loaded {directory / 'build' / library.name}", f"loaded {library}"], loaded
    assert len((tmp_path / "builds.log").read_text().split()) == 1, "exactly one process builds"
    errs = "".join(err for _, err in outputs)
    assert "waiting for process" in errs and "is truncated" in errs, errs
    assert re.search(r"still compiling the C\+\+ kernels \(\d+ s so far\)", errs), errs  # the builder's heartbeat
    assert library.read_bytes() == built.read_bytes()
    assert not (directory / _build_cache.LOCK_NAME).exists()


HOLD_LOCK = ("import sys, time; from mixshare_ops._build_cache import BuildLock; "
             "lock = BuildLock(sys.argv[1], 0); lock.acquire(); print('held', flush=True); time.sleep(600)")


def _holder(path: pathlib.Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_of_a_killed_compiler_is_taken_over(tmp_path):
    path = tmp_path / "build.lock"
    proc = _holder(path)
    proc.kill()  # SIGKILL: no clean-up; not yet reaped, so a zombie first
    taken = []
    lock = _build_cache.BuildLock(path, wait_s=5, on_take_over=taken.append)
    started = time.monotonic()
    with lock:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 3
    assert taken and f"process {proc.pid}" in taken[0] and "has ended" in taken[0]
    assert not path.exists()
    proc.wait()


def test_lock_not_refreshed_is_taken_over(tmp_path, monkeypatch):
    """A lock from another host (its owner cannot be checked) is taken over once it is too old."""
    path = tmp_path / "build.lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0, "start_ticks": None}))
    lock = _build_cache.BuildLock(path, wait_s=0.5)
    with pytest.raises(_build_cache.LockTimeout):
        lock.acquire()
    old = time.time() - _build_cache.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    taken = []
    with _build_cache.BuildLock(path, wait_s=0.5, on_take_over=taken.append):
        pass
    assert "process 1 on host elsewhere" in taken[0] and "has not refreshed it" in taken[0]


def test_wait_for_a_live_build_is_limited_and_says_what_to_do(tmp_path, monkeypatch):
    """A build that runs too long: the import gives up after MIXSHARE_OPS_JIT_WAIT seconds with a message
    naming the holder and what to do, and keeps the other backends."""
    env = _fake_build_env(tmp_path)
    directory, library = _cache_paths(env)
    proc = _holder(directory / _build_cache.LOCK_NAME)
    try:
        run = _run([sys.executable, "-c", FAKE_BUILD, _extension.library_path() or "unused"],
                   cwd=ROOT, env={**env, "MIXSHARE_OPS_JIT_WAIT": "1"})
    finally:
        proc.kill()
        proc.wait()
    assert f"gave up after 1 s waiting for process {proc.pid}" in run.stdout, run.stdout
    assert "if it is not running, delete that file" in run.stdout and "MIXSHARE_OPS_JIT_WAIT" in run.stdout
    assert f"waiting for process {proc.pid}" in run.stderr
    assert not (tmp_path / "builds.log").exists() and not library.exists()
