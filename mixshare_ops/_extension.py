"""Loads the compiled operator library (mixshare_ops._C) if it was built."""

from __future__ import annotations

import torch

_load_error: str | None = None
try:
    from mixshare_ops import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # built without the extension, or an ABI mismatch
    _load_error = f"{type(exc).__name__}: {exc}"


def loaded() -> bool:
    """Whether the C++ operator library is loaded."""
    return _load_error is None


def load_error() -> str | None:
    """Why the C++ operator library could not be loaded (None if it was)."""
    return _load_error


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
