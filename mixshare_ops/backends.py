"""Backend names, what is usable here, and per-call selection.

Backends, in the order automatic selection tries them:

* ``cuda``: the compiled CUDA kernels (CUDA tensors);
* ``triton``: the Triton kernels (CUDA tensors; CPU tensors only under
  ``TRITON_INTERPRET=1``, set before ``import mixshare_ops``, and only when
  asked for by name: the interpreter is a testing aid);
* ``cpu``: the compiled C++ CPU kernels (CPU tensors);
* ``reference``: plain PyTorch (any device), the specification.

``MIXSHARE_OPS_BACKEND`` forces a backend for every call that does not name
one; a backend named per call (``backend=``) wins over the variable.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from mixshare_ops import _extension

BACKENDS = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "MIXSHARE_OPS_BACKEND"


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _usable(backend: str, device_type: str) -> bool:
    if backend == "cuda":
        return device_type == "cuda" and _extension.has_cuda_kernels()
    if backend == "triton":
        return triton_installed() and (device_type == "cuda" or triton_interpreted())
    if backend == "cpu":
        return device_type == "cpu" and _extension.has_cpu_kernels()
    return True


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable for tensors on ``device`` (default: on any device here)."""
    if device is None:
        types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        types = [torch.device(device).type]
    return [b for b in BACKENDS if any(_usable(b, t) for t in types)]


def op(backend: str, name: str):
    """The operator implementing ``name`` on ``backend``: ``torch.ops.mixshare_ops.<name>`` for the
    compiled backends (``cuda``, ``cpu``), ``torch.ops.mixshare_ops.triton_<name>`` for ``triton``.
    The ``reference`` backend has no operators."""
    if backend == "triton":
        return getattr(torch.ops.mixshare_ops, "triton_" + name)
    if backend in ("cuda", "cpu"):
        return getattr(torch.ops.mixshare_ops, name)
    raise ValueError(f"the {backend!r} backend has no operators: expected one of cuda, triton, cpu")


def check_backend_name(backend: str, source: str = "backend") -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown {source} {backend!r}: expected one of {', '.join(BACKENDS)}")


@functools.lru_cache(maxsize=None)
def _warn_reference_fallback(device_type: str) -> None:
    reason = _extension.load_error() or "it was built without kernels for this device"
    warnings.warn(
        f"mixshare_ops: no compiled or Triton kernels for {device_type} tensors; using the slow reference "
        f"backend (the C++ extension is not usable: {reason}). Reinstall with `pip install --no-build-isolation .`.",
        RuntimeWarning,
        stacklevel=4,
    )


def select_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend a call on ``device`` uses: the one asked for, else
    ``$MIXSHARE_OPS_BACKEND``, else the first usable one in BACKENDS order."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = f"backend in ${ENV_VAR}"
    if backend is not None:
        check_backend_name(backend, source)
        if not _usable(backend, device.type):
            raise RuntimeError(
                f"{source} {backend!r} cannot run on {device.type} tensors here; "
                f"usable: {', '.join(available_backends(device))}"
            )
        return backend
    for name in BACKENDS:
        # The Triton interpreter is a testing aid: never picked automatically.
        if name == "triton" and device.type != "cuda":
            continue
        if _usable(name, device.type):
            if name == "reference" and device.type in ("cpu", "cuda"):
                _warn_reference_fallback(device.type)
            return name
    raise AssertionError("unreachable: the reference backend is always usable")
