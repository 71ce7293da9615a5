"""Plain PyTorch reference of every mixshare op: the specification.

Written to be read, not to be fast: masks and weight maps are materialised
densely and autograd differentiates through ordinary tensor ops. Every other
backend (C++ CPU, CUDA, Triton) is tested against these functions.

Conventions shared by all ops:

* ``boxes`` is int32 ``[B, 4]``, rows ``(top, left, bottom, right)``, half-open,
  in pixels of the mixing grid ``H x W``. An empty box is legal.
* ``inside_weight`` / ``outside_weight`` are ``[B, M]``: subnetwork ``i``'s
  weight inside / outside box ``b``.
* Arithmetic runs in the "opmath" dtype (:func:`~mixshare_ops.conventions.opmath_dtype`:
  float64 for float64 inputs, float32 otherwise) and is rounded once to the
  output dtype.
* Unmixing weights left out are the default M = 2 weights
  (:func:`~mixshare_ops.conventions.default_weights`).

Argument checking lives in :mod:`mixshare_ops.checks`; these functions assume
valid arguments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mixshare_ops.conventions import DEFAULT_NORMALIZE, default_weights, opmath_dtype

__all__ = [
    "opmath_dtype",
    "sqrt_rn",
    "cutmix_boxes",
    "cutmix_mask",
    "box_mix",
    "unmix_masks",
    "cutmix_unmix",
    "cutmix_unmix_pool",
]


def _exceeds_midpoint_square(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Whether ``x > m**2`` exactly, for ``m`` the midpoint between float64
    ``a`` (positive, normal, near ``sqrt(x)``, at most 1) and the next float64.

    With ``u`` the spacing above ``a`` and ``A = a / u`` (an integer below
    2**53): ``x - m**2 = (x - a**2 - a*u) - u**2 / 4``. ``a**2 = P + E``
    exactly (``P = fl(a*a)``, ``E`` by Dekker's product on a split of ``a``
    into two halves of at most 26 significant bits, rounded at bit 26 of the
    mantissa), ``x - P`` is exact (Sterbenz: ``x`` and ``P`` are within a
    factor 2), and ``x - P``, ``E`` and ``a*u`` are integer multiples of
    ``u**2`` below 2**57 of it, so their sum ``T`` is exact in int64 units of
    ``u**2``. ``x > m**2`` iff ``T > 0`` (``T = 0`` leaves ``-u**2 / 4``).
    Every operation is a separate IEEE-rounded tensor op (no contraction).
    """
    u = torch.nextafter(a, torch.full_like(a, math.inf)) - a
    half_bits = torch.tensor((1 << 27) - 1, dtype=torch.int64, device=a.device)
    hi = ((a.view(torch.int64) + (1 << 26)) & ~half_bits).view(torch.float64)
    lo = a - hi
    p = a * a
    e = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
    q = u * u
    t = ((x - p) / q).to(torch.int64) - (e / q).to(torch.int64) - (a / u).to(torch.int64)
    return t > 0


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root of float64 ``x`` in [0, 1] (NaN-free), on
    any device: what numpy, ``math.sqrt`` and C's ``sqrt`` return.

    ``torch.sqrt`` is not correctly rounded on every CPU (its AVX-512 float64
    kernel gives ``sqrt(0.25 - 2**-54) = 0.5``, not ``0.49999999999999994``),
    so its result ``s`` (assumed within one ulp) is moved to the neighbouring
    float64 whenever ``sqrt(x)`` lies past the midpoint between them, decided
    by exact arithmetic. Values below 2**-800 are scaled by 2**800 first
    (exact) so every intermediate stays normal.
    """
    tiny = x < 2.0**-800
    scaled = torch.where(tiny, x * 2.0**800, x)
    positive = scaled > 0
    y = torch.where(positive, scaled, torch.ones_like(scaled))  # 0 is its own root; keep 0 out of the ulp maths
    s = torch.sqrt(y)
    down = torch.nextafter(s, torch.zeros_like(s))
    up = torch.nextafter(s, torch.full_like(s, math.inf))
    s = torch.where(_exceeds_midpoint_square(y, s), up, torch.where(_exceeds_midpoint_square(y, down), s, down))
    s = torch.where(tiny, s * 2.0**-400, s)
    return torch.where(positive, s, torch.zeros_like(s))


def cutmix_boxes(lam: torch.Tensor, center: torch.Tensor, height: int, width: int):
    """CutMix boxes by the MixMo/CutMix reference rule.

    lam: [B] target box ratios in [0, 1]; center: [B, 2] uniforms in [0, 1)
    (row, column). Returns ``boxes`` int32 [B, 4] and ``area`` [B] (dtype of
    ``lam``): the realised box area divided by ``height * width``.

    The cut size is computed in float64 whatever the dtypes, as the official
    MixMo code does with numpy: lam, converted exactly to float64 and clamped
    into [0, 1] (NaN -> 0), gives ``cut = trunc(size * sqrt(lam))``, equal to
    Python's ``int(size * math.sqrt(lam))`` for every lam (the root is
    :func:`sqrt_rn`, correctly rounded on every platform). The centre
    ``c = floor(u * size)`` and the area are computed in the opmath dtype of
    ``lam`` and ``center`` (float64 if either is float64, else float32); the
    box is ``[clip(c - cut // 2), clip(c + cut // 2))``.
    """
    compute = opmath_dtype(lam.dtype, center.dtype)
    lam64 = lam.to(torch.float64).nan_to_num(nan=0.0).clamp(0.0, 1.0)
    center_c = center.to(compute)
    cut_frac = sqrt_rn(lam64)
    cut_h = torch.trunc(height * cut_frac).to(torch.int64)
    cut_w = torch.trunc(width * cut_frac).to(torch.int64)
    cy = torch.floor(center_c[:, 0] * height).to(torch.int64)
    cx = torch.floor(center_c[:, 1] * width).to(torch.int64)
    top = (cy - cut_h // 2).clamp(0, height)
    bottom = (cy + cut_h // 2).clamp(0, height)
    left = (cx - cut_w // 2).clamp(0, width)
    right = (cx + cut_w // 2).clamp(0, width)
    boxes = torch.stack([top, left, bottom, right], dim=1).to(torch.int32)
    area = ((bottom - top) * (right - left)).to(compute) / (height * width)
    return boxes, area.to(lam.dtype)


def cutmix_mask(boxes: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.float32):
    """[B, 1, H, W] mask: 1 inside each sample's box, 0 outside."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    b = boxes.to(torch.int64)
    in_rows = (rows[None, :] >= b[:, 0:1]) & (rows[None, :] < b[:, 2:3])  # [B, H]
    in_cols = (cols[None, :] >= b[:, 1:2]) & (cols[None, :] < b[:, 3:4])  # [B, W]
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    return inside[:, None].to(dtype)


def _weight_maps(boxes, inside_weight, outside_weight, height, width, dtype):
    """[M, B, H, W] map of each subnetwork's weight on the box grid."""
    inside = cutmix_mask(boxes, height, width, torch.bool)[:, 0]  # [B, H, W]
    w_in = inside_weight.to(dtype).t()[:, :, None, None]  # [M, B, 1, 1]
    w_out = outside_weight.to(dtype).t()[:, :, None, None]
    return torch.where(inside[None], w_in, w_out)


def box_mix(x, boxes, inside_weight, outside_weight, scale: float = 1.0):
    """Masked mixing of M inputs. x: [M, B, C, H, W] -> [B, C, H, W].

    ``out[b, c, h, w] = scale * sum_i w_i(b, h, w) * x[i, b, c, h, w]`` with
    ``w_i = inside_weight[b, i]`` inside box ``b`` and ``outside_weight[b, i]``
    outside.
    """
    compute = opmath_dtype(x.dtype)
    _, _, _, height, width = x.shape
    weights = _weight_maps(boxes, inside_weight, outside_weight, height, width, compute)
    mixed = (weights[:, :, None] * x.to(compute)).sum(dim=0) * scale
    return mixed.to(x.dtype)


def unmix_masks(boxes, inside_weight, outside_weight, box_size, feature_size, ratio, dtype):
    """[M, B, h, w] applied unmixing masks ``m_i + ratio * (1 - m_i)``.

    ``m_i`` is subnetwork i's weight map on the ``box_size`` grid, downsampled
    to ``feature_size`` exactly as ``adaptive_avg_pool2d`` does.
    """
    if inside_weight is None:
        inside_weight, outside_weight = default_weights(boxes.shape[0], boxes.device, dtype)
    weights = _weight_maps(boxes, inside_weight, outside_weight, box_size[0], box_size[1], dtype)
    masks = F.adaptive_avg_pool2d(weights, feature_size)
    return masks + ratio * (1 - masks)


def _unmix_inputs(features, boxes, inside_weight, outside_weight, box_size, ratio, channels):
    """(features in opmath [B, C, h, w], applied masks [M, B, h, w] in opmath, channels as an int);
    ``box_size`` defaults to the feature size, ``channels`` to all."""
    compute = opmath_dtype(features.dtype)
    num_channels, h, w = features.shape[1:]
    box_size = (h, w) if box_size is None else tuple(box_size)
    masks = unmix_masks(boxes, inside_weight, outside_weight, box_size, (h, w), ratio, compute)
    return features.to(compute), masks, num_channels if channels is None else channels


def cutmix_unmix(
    features,
    boxes,
    inside_weight=None,
    outside_weight=None,
    *,
    box_size=None,
    ratio: float = 0.0,
    channels=None,
):
    """MixShare unmixing with fadeout. features: [B, C, h, w] -> [M, B, C, h, w].

    The first ``channels`` channels are multiplied by subnetwork i's applied
    mask; the other channels pass through unchanged.
    """
    feats, masks, channels = _unmix_inputs(features, boxes, inside_weight, outside_weight, box_size, ratio, channels)
    unmixed = feats[None, :, :channels] * masks[:, :, None]
    passthrough = feats[None, :, channels:].expand(masks.shape[0], -1, -1, -1, -1)
    return torch.cat([unmixed, passthrough], dim=2).to(features.dtype)


def cutmix_unmix_pool(
    features,
    boxes,
    inside_weight=None,
    outside_weight=None,
    *,
    box_size=None,
    ratio: float = 0.0,
    channels=None,
    normalize: str = DEFAULT_NORMALIZE,
):
    """Unmixing fused with global average pooling. [B, C, h, w] -> [M, B, C].

    ``normalize`` (:data:`~mixshare_ops.conventions.NORMALIZE_MEANINGS`): ``"mean"``
    divides by ``h * w``; ``"masked"`` by the sum over (h, w) of the applied
    mask (by ``h * w`` where that sum is 0).
    """
    feats, masks, channels = _unmix_inputs(features, boxes, inside_weight, outside_weight, box_size, ratio, channels)
    h, w = features.shape[2:]
    masked_sum = torch.einsum("bchw,mbhw->mbc", feats[:, :channels], masks)  # [M, B, channels]
    if normalize == "masked":
        denom = masks.sum(dim=(2, 3))  # [M, B]
        denom = torch.where(denom == 0, torch.full_like(denom, h * w), denom)
    else:
        denom = torch.full(masks.shape[:2], float(h * w), dtype=feats.dtype, device=features.device)
    pooled = masked_sum / denom[:, :, None]
    plain = feats[:, channels:].mean(dim=(2, 3))[None].expand(masks.shape[0], -1, -1)
    return torch.cat([pooled, plain], dim=2).to(features.dtype)
