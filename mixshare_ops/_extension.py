"""Loads the compiled operator library: mixshare_ops._C if it was built, else a
copy compiled on first use (JIT) into torch's extension cache; either one is
used only if it is current.

An install without ``_C`` (a plain ``pip install .``: a pure-Python wheel that
carries the C++/CUDA sources as package data) compiles the library at the first
``import mixshare_ops`` with ``torch.utils.cpp_extension.load`` and ninja, with
a message on stderr; later imports load the cached library directly.
``MIXSHARE_OPS_JIT=0`` turns this off (the reference and Triton backends
remain). The cache is ``$TORCH_EXTENSIONS_DIR/mixshare_ops_<hash>`` (default
``~/.cache/torch_extensions/py<ver>_<cpu|cu…>/``), one folder per torch version,
source tree and set of flags. The build runs in its ``build`` subfolder under
a lock naming its owner (``_build_cache.BuildLock``: another importer waits at
most ``MIXSHARE_OPS_JIT_WAIT`` seconds, and takes the lock over from an owner
that has ended or stopped refreshing it); the library is checked
(``_build_cache.library_problem``) and renamed into the folder, so a partial
file never has the final name, and a cached one is checked before it is
loaded. A failed build leaves its compiler output in ``FAILED`` there and is
not retried until that file is deleted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil
import sys
import threading
import time

import torch

from mixshare_ops import _build_cache

# A library missing any operator below, or an Autograd kernel, was built from
# older sources and is not used.
# The differentiable operators of csrc/ops.cpp, each with an Autograd kernel (csrc/autograd.cpp).
AUTOGRAD_OPERATORS = (
    "box_mix",
    "box_mix_backward",
    "cutmix_unmix",
    "cutmix_unmix_backward",
    "cutmix_unmix_pool",
    "cutmix_unmix_pool_backward",
)
# Every operator of csrc/ops.cpp.
OPERATORS = ("cutmix_boxes", "cutmix_mask") + AUTOGRAD_OPERATORS + (
    "_set_value_checks", "_value_checks_enabled", "_cpu_parallel_for_threads")
REBUILD = "pip install --no-build-isolation -e ."

JIT_ENV_VAR = "MIXSHARE_OPS_JIT"
# Wall time of the build of the C++ kernels on 2 cores, for the message shown
# while it runs: about 225 s of CPU time with torch 2.13 and GCC 12, so about
# 2 minutes on 2 idle cores, rounded up for busy ones.
JIT_MINUTES_2_CORES = 3
JIT_HEARTBEAT_S = 30.0  # a "still compiling" line this often while the first-use build runs
JIT_WAIT_ENV_VAR = "MIXSHARE_OPS_JIT_WAIT"
# Default wait for another process's build: a CUDA build on few cores.
JIT_WAIT_S = 1800.0


def _has_operator(op: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"mixshare_ops::{op}", "")
    except RuntimeError:
        return False
    return True


def outdated_reason() -> str | None:
    """Why the loaded library is not the one these sources build (None if it is)."""
    for op in OPERATORS:
        if not _has_operator(op):
            return f"no operator {op}"
    for op in AUTOGRAD_OPERATORS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mixshare_ops::{op}", "Autograd"):
            return f"no Autograd kernel for {op}"
    return None


# ------------------------------------------------------------------ JIT build


def jit_enabled() -> bool:
    return os.environ.get(JIT_ENV_VAR, "1").lower() not in ("0", "false", "no", "off")


def source_root() -> pathlib.Path | None:
    """The folder of the C++/CUDA sources: the package data of an installed
    wheel (mixshare_ops/csrc), else the source tree's csrc (editable installs)."""
    here = pathlib.Path(__file__).resolve().parent
    for root in (here / "csrc", here.parent / "csrc"):
        if (root / "ops.cpp").is_file():
            return root
    return None


def _jit_cuda() -> bool:
    """CUDA kernels too: as setup.py decides (MIXSHARE_OPS_CUDA, else a visible GPU
    with a CUDA torch and toolkit)."""
    from torch.utils.cpp_extension import CUDA_HOME

    flag = os.environ.get("MIXSHARE_OPS_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    buildable = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "true", "yes"):
        return buildable
    return buildable and torch.cuda.is_available()


def _jit_build_args(root: pathlib.Path) -> dict:
    """torch.utils.cpp_extension.load's arguments: the sources and flags of
    setup.py's build (its -DNDEBUG -fwrapv come from Python's compiler flags
    there); the library is loaded with torch.ops.load_library, so the Python
    module file is not compiled."""
    sources = sorted(str(p) for p in [root / "ops.cpp", root / "op_args.cpp", root / "autograd.cpp"])
    sources += sorted(str(p) for p in (root / "cpu").glob("*.cpp"))
    cflags = ["-O3", "-DNDEBUG", "-fwrapv"]
    ldflags = []
    if (sys.platform.startswith("linux") and torch.backends.openmp.is_available()
            and os.environ.get("MIXSHARE_OPS_OPENMP", "1").lower() not in ("0", "false", "no")):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    with_cuda = _jit_cuda()
    if with_cuda:
        sources += sorted(str(p) for p in (root / "cuda").glob("*.cu"))
    return {
        "sources": sources,
        "extra_cflags": cflags,
        "extra_cuda_cflags": ["-O3", "--expt-relaxed-constexpr"],
        "extra_ldflags": ldflags,
        "extra_include_paths": [str(root)],
        "with_cuda": with_cuda,
    }


def _jit_name(root: pathlib.Path, args: dict) -> str:
    """mixshare_ops_<hash> of torch's version, the flags and every source and header."""
    digest = hashlib.sha256()
    digest.update(repr((torch.__version__, torch.version.cuda, sys.version_info[:2],
                        {k: v for k, v in args.items() if k not in ("sources", "extra_include_paths")},
                        os.environ.get("TORCH_CUDA_ARCH_LIST"))).encode())
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "mixshare_ops_" + digest.hexdigest()[:16]


def _say(message: str) -> None:
    print(f"mixshare_ops: {message}", file=sys.stderr, flush=True)


def _jit_wait_s() -> float:
    """Seconds to wait for another process's build (``MIXSHARE_OPS_JIT_WAIT``)."""
    value = os.environ.get(JIT_WAIT_ENV_VAR, "")
    try:
        return float(value) if value else JIT_WAIT_S
    except ValueError:
        raise ValueError(f"{JIT_WAIT_ENV_VAR} must be a number of seconds, got {value!r}") from None


def _jit_load() -> str | None:
    """Compiles (once) and loads the library; None, or why it is not loaded."""
    root = source_root()
    if root is None:
        return "mixshare_ops._C is not built and the C++ sources (mixshare_ops/csrc) are not installed"
    args = _jit_build_args(root)
    name = _jit_name(root, args)
    from torch.utils import cpp_extension

    directory = pathlib.Path(cpp_extension._get_build_directory(name, verbose=False))
    library = directory / f"{name}.so"
    failed = directory / "FAILED"
    kernels = "C++ and CUDA kernels" if args["with_cuda"] else "C++ kernels"
    if _build_cache.library_problem(library) is None:
        return _load_library(library)
    if failed.is_file():
        return _failed_message(failed)

    def on_wait(owner):
        _say(f"waiting for {_build_cache.describe(owner)}, which is compiling the {kernels} into {directory} "
             f"(at most {wait_s:.0f} s: {JIT_WAIT_ENV_VAR})")

    def on_take_over(reason):
        _say(f"taking over the build lock in {directory}: {reason}")

    wait_s = _jit_wait_s()
    lock = _build_cache.BuildLock(directory / _build_cache.LOCK_NAME, wait_s, on_wait, on_take_over)
    try:
        with lock:
            # The process waited for may have built it, or failed.
            if _build_cache.library_problem(library) is None:
                return _load_library(library)
            if failed.is_file():
                return _failed_message(failed)
            return _jit_build(name, args, directory, library, kernels)
    except _build_cache.LockTimeout as exc:
        return (f"the C++ kernels were not loaded: {exc} (or set {JIT_WAIT_ENV_VAR} to wait longer, "
                f"{JIT_ENV_VAR}=0 not to compile them)")


def _jit_build(name: str, args: dict, directory: pathlib.Path, library: pathlib.Path, kernels: str) -> str | None:
    """Builds in ``directory/build`` (holding the build lock) and renames the checked library to ``library``."""
    from torch.utils import cpp_extension

    problem = _build_cache.library_problem(library) if library.exists() else None
    build = directory / "build"
    build.mkdir(parents=True, exist_ok=True)
    # torch's own lock there is left by a killed build: this process holds the build lock.
    (build / "lock").unlink(missing_ok=True)
    _say(f"compiling the {kernels} (first use, about {JIT_MINUTES_2_CORES} minutes on 2 cores"
         f"{', longer with CUDA' if args['with_cuda'] else ''}) into {directory} ... "
         f"(set {JIT_ENV_VAR}=0 to skip; the reference and Triton backends work without them)"
         + (f"; replacing {problem}" if problem else ""))
    start = time.monotonic()
    path_before = os.environ.get("PATH")
    done = threading.Event()
    heartbeat = threading.Thread(target=_heartbeat, args=(done, start, kernels), name="mixshare_ops build heartbeat",
                                 daemon=True)
    heartbeat.start()
    try:
        _put_ninja_on_path()
        built = pathlib.Path(cpp_extension.load(name, build_directory=str(build), is_python_module=False,
                                                verbose=False, **args))
        problem = _build_cache.library_problem(built)
        if problem is not None:
            raise RuntimeError(f"Error building extension: the linked library is unusable: {problem}")
        os.replace(built, library)  # a partial file never has the final name
    except Exception as exc:  # noqa: BLE001 - any failure leaves the other backends usable
        output = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RuntimeError) and str(exc).startswith("Error building extension"):
            (directory / "FAILED").write_text(output)  # a compiler error: not retried at every import
        _say(f"compiling the {kernels} failed after {time.monotonic() - start:.0f} s; "
             "using the reference and Triton backends")
        return f"compiling the C++ kernels failed:\n{_tail(output)}"
    finally:
        done.set()
        heartbeat.join()
        if path_before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path_before
    _say(f"done in {time.monotonic() - start:.0f} s ({library})")
    global _library_path
    _library_path = str(library)  # cpp_extension.load loaded it; the rename kept the file
    return None


def _heartbeat(done: threading.Event, start: float, kernels: str) -> None:
    """Says every :data:`JIT_HEARTBEAT_S` seconds that the build goes on, until ``done`` is set."""
    while not done.wait(JIT_HEARTBEAT_S):
        _say(f"still compiling the {kernels} ({time.monotonic() - start:.0f} s so far)")


def _load_library(library: pathlib.Path) -> None:
    global _library_path
    torch.ops.load_library(str(library))
    _library_path = str(library)
    return None


def _failed_message(failed: pathlib.Path) -> str:
    return (f"compiling the C++ kernels failed (compiler output: {failed}; delete it to try again):\n"
            + _tail(failed.read_text()))


def _put_ninja_on_path() -> None:
    """The ninja of the ninja package (a dependency) when none is on PATH, as in
    a virtual environment used without activating it."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join(filter(None, [ninja.BIN_DIR, os.environ.get("PATH")]))


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------- loading

_library_path: str | None = None


def _load() -> str | None:
    global _library_path
    if importlib.util.find_spec("mixshare_ops._C") is None:  # a pure-Python install, or a source tree before its build
        if not jit_enabled():
            return f"mixshare_ops._C is not built and {JIT_ENV_VAR}=0 turns off compiling it on first use"
        try:
            error = _jit_load()
        except Exception as exc:  # noqa: BLE001 - e.g. an unwritable cache: the other backends remain
            error = f"the C++ kernels could not be compiled on first use: {type(exc).__name__}: {exc}"
        if error is not None:
            return error
        where = f"the library compiled on first use ({_library_path})"
    else:
        try:
            from mixshare_ops import _C  # importing registers the ops
        except ImportError as exc:  # an ABI mismatch
            return f"{type(exc).__name__}: {exc}"
        _library_path = _C.__file__
        where = "mixshare_ops/_C"
    reason = outdated_reason()
    if reason is not None:
        return f"{where} was built from older sources ({reason}); rebuild: {REBUILD}"
    return None


_load_error: str | None = _load()


def loaded() -> bool:
    """Whether the C++ operator library is loaded (and current)."""
    return _load_error is None


def load_error() -> str | None:
    """Why the C++ operator library is not used (None if it is)."""
    return _load_error


def library_path() -> str | None:
    """The file of the loaded library: mixshare_ops/_C's, or the one compiled on first use."""
    return _library_path


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``mixshare_ops::<op>`` has a compiled kernel for ``dispatch_key``."""
    if not loaded():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mixshare_ops::{op}", dispatch_key)


# Fixed once the library is loaded; kept as constants so that backend
# selection traces under torch.compile without calling into the dispatcher.
_HAS_CPU_KERNELS = has_kernel("box_mix", "CPU")
_HAS_CUDA_KERNELS = has_kernel("box_mix", "CUDA")


def has_cpu_kernels() -> bool:
    return _HAS_CPU_KERNELS


def has_cuda_kernels() -> bool:
    return _HAS_CUDA_KERNELS


def cpu_kernel_threads() -> int | None:
    """Threads the CPU kernels' parallel loops use now (None without the library).

    1 on a multi-core machine means the library was built without OpenMP.
    """
    if not _HAS_CPU_KERNELS:
        return None
    return int(torch.ops.mixshare_ops._cpu_parallel_for_threads(1 << 16))
