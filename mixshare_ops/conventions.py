"""The conventions every backend of the ops shares, each defined once here.

* :func:`opmath_dtype`: the dtype arithmetic runs in.
* :data:`DEFAULT_SUBNETS`, :func:`default_weights`, :func:`num_subnets`: the
  unmixing weights when ``inside_weight`` and ``outside_weight`` are left out.
* :data:`NORMALIZE_MODES`, :data:`DEFAULT_NORMALIZE`: how ``cutmix_unmix_pool``
  divides the masked sum.

The C++ and CUDA kernels hold their own copies (``opmath_dtype`` in
``csrc/op_args.cpp``, ``subnet_weight`` in ``csrc/box_math.h``,
``parse_normalize`` in ``csrc/op_args.cpp``), and so does the Triton kernel
``_unmix_masks`` (its ``DEFAULT_W`` branch); ``tests/test_ops_conventions.py``
compares each with the definitions here.
"""

from __future__ import annotations

import torch

__all__ = [
    "DEFAULT_INSIDE_WEIGHT",
    "DEFAULT_NORMALIZE",
    "DEFAULT_OUTSIDE_WEIGHT",
    "DEFAULT_SUBNETS",
    "NORMALIZE_MEANINGS",
    "NORMALIZE_MODES",
    "default_weights",
    "num_subnets",
    "opmath_dtype",
]


def opmath_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic on tensors of ``dtypes`` runs in: float64 if any is float64, else
    float32 (float16 and bfloat16 compute in float32 and are rounded once at the end)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


# Left out, the unmixing weights are M = 2: the box belongs to subnetwork 0 and
# its complement to subnetwork 1 (Cut-MixMo's split, input 0 pasted into input 1).
DEFAULT_SUBNETS = 2
DEFAULT_INSIDE_WEIGHT = (1.0, 0.0)
DEFAULT_OUTSIDE_WEIGHT = (0.0, 1.0)


def num_subnets(inside_weight) -> int:
    """M of an unmixing call: ``inside_weight``'s columns ([B, M]), :data:`DEFAULT_SUBNETS` if None."""
    return DEFAULT_SUBNETS if inside_weight is None else inside_weight.shape[1]


def default_weights(batch: int, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The default weights as ``(inside, outside)``, each an expanded [B, 2] tensor."""
    inside = torch.tensor(DEFAULT_INSIDE_WEIGHT, dtype=dtype, device=device).expand(batch, DEFAULT_SUBNETS)
    outside = torch.tensor(DEFAULT_OUTSIDE_WEIGHT, dtype=dtype, device=device).expand(batch, DEFAULT_SUBNETS)
    return inside, outside


# cutmix_unmix_pool's ``normalize``: what the sum over (h, w) of an unmixed
# channel, sum_p f[p] * mask_i[p], is divided by.
NORMALIZE_MEANINGS = {
    "mean": "h * w: the global average pool of the masked map; a head's feature shrinks with its share "
            "of the map",
    "masked": "the sum of the applied mask over (h, w) (h * w where that sum is 0): the mean over the "
              "subnetwork's own share of the map, whatever its size",
}
NORMALIZE_MODES = tuple(NORMALIZE_MEANINGS)
# The ops' default. mixshare's training config (``unmix_normalize``) defaults to
# "mean" instead: its presets train that way (changing it would change every
# trained number), and a plan (``UnmixPlan.normalize``) carries the config's
# choice to the op; a call of the op without a plan or ``normalize=`` gets "masked".
DEFAULT_NORMALIZE = "masked"
