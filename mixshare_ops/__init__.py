"""mixshare_ops: fused, differentiable CutMix mixing and unmixing for MIMO ensembles.

    from mixshare_ops import sample_cutmix_boxes, box_mix, cutmix_unmix_pool

Ops (each also ``torch.ops.mixshare_ops.<name>`` when the C++ extension is
built, and ``torch.ops.mixshare_ops.triton_<name>`` for the Triton kernels):
``cutmix_boxes``, ``cutmix_mask``, ``box_mix`` (and ``cutmix_mix``),
``cutmix_unmix``, ``cutmix_unmix_pool``. Backends: ``cuda``, ``triton``,
``cpu``, ``reference`` (see :mod:`mixshare_ops.backends`).
"""

from mixshare_ops import _extension, _registration
from mixshare_ops.backends import BACKENDS, available_backends
from mixshare_ops.checks import set_value_checks, value_checks, value_checks_enabled
from mixshare_ops.plan import MixPlan, UnmixPlan
from mixshare_ops.ops import (
    box_mix,
    cutmix_boxes,
    cutmix_mask,
    cutmix_mix,
    cutmix_unmix,
    cutmix_unmix_pool,
    sample_cutmix_boxes,
)

_registration.register_all()

__version__ = "0.1.0"


def backend_info() -> dict:
    """What this installation can run: backends per device and the extension's state."""
    return {
        "version": __version__,
        "extension_loaded": _extension.loaded(),
        "extension_error": _extension.load_error(),
        "cpu_kernels": _extension.has_cpu_kernels(),
        "cuda_kernels": _extension.has_cuda_kernels(),
        "cpu_kernel_threads": _extension.cpu_kernel_threads(),
        "available_backends": available_backends(),
    }


__all__ = [
    "BACKENDS",
    "MixPlan",
    "UnmixPlan",
    "available_backends",
    "backend_info",
    "box_mix",
    "cutmix_boxes",
    "cutmix_mask",
    "cutmix_mix",
    "cutmix_unmix",
    "cutmix_unmix_pool",
    "sample_cutmix_boxes",
    "set_value_checks",
    "value_checks",
    "value_checks_enabled",
]
