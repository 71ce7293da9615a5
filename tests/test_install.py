"""A plain `pip install .` (build isolation on, so no torch while building) into
a fresh virtual environment: a pure-Python wheel carrying csrc/, whose first
import compiles the C++ kernels into torch's extension cache."""

import json
import os
import pathlib
import shutil
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
    # Two processes at once: one compiles, the other waits on torch's lock file.
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
    assert sum("compiling the C++ kernels (first use, about" in m for m in messages) >= 1, messages
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
