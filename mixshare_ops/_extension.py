"""Loads the compiled operator library (mixshare_ops._C) if it was built and is current."""

from __future__ import annotations

import torch

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


def _load() -> str | None:
    try:
        from mixshare_ops import _C  # noqa: F401  (importing registers the ops)
    except ImportError as exc:  # built without the extension, or an ABI mismatch
        return f"{type(exc).__name__}: {exc}"
    reason = outdated_reason()
    if reason is not None:
        return f"mixshare_ops/_C was built from older sources ({reason}); rebuild: {REBUILD}"
    return None


_load_error: str | None = _load()


def loaded() -> bool:
    """Whether the C++ operator library is loaded (and current)."""
    return _load_error is None


def load_error() -> str | None:
    """Why the C++ operator library is not used (None if it is)."""
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
