"""The Triton kernels as operators: ``torch.ops.mixshare_ops.triton_<op>``.

Same schemas and semantics as the compiled operators in csrc/ops.cpp. Each
implementation re-checks the data-dependent arguments (box coordinates, lam
and centre ranges), which the public wrappers cannot do while tracing, and
then calls the launcher in :mod:`mixshare_ops.triton.launch` (imported on
first use, so that defining these ops never imports triton).
"""

from __future__ import annotations

from typing import Optional

import torch

from mixshare_ops import checks

Tensor = torch.Tensor


def _launch():
    from mixshare_ops.triton import launch

    return launch


@torch.library.custom_op("mixshare_ops::triton_cutmix_boxes", mutates_args=())
def cutmix_boxes(
    lam: Tensor, center: Tensor, height: int, width: int, check_values: bool = True
) -> tuple[Tensor, Tensor]:
    checks.check_box_sample(lam, center, height, width)
    if check_values:
        checks.check_box_sample_values(lam, center)
    return _launch().cutmix_boxes(lam, center, height, width)


@torch.library.custom_op("mixshare_ops::triton_cutmix_mask", mutates_args=())
def cutmix_mask(boxes: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    checks.validate_cutmix_mask(boxes, height, width)
    checks.check_box_values(boxes, height, width)
    return _launch().cutmix_mask(boxes, height, width, dtype)


@torch.library.custom_op("mixshare_ops::triton_box_mix", mutates_args=())
def box_mix(x: Tensor, boxes: Tensor, inside_weight: Tensor, outside_weight: Tensor, scale: float) -> Tensor:
    checks.validate_box_mix(x, boxes, inside_weight, outside_weight, scale)
    checks.check_box_values(boxes, x.shape[3], x.shape[4])
    return _launch().box_mix(x, boxes, inside_weight, outside_weight, scale)


@torch.library.custom_op("mixshare_ops::triton_box_mix_backward", mutates_args=())
def box_mix_backward(
    grad_out: Tensor, boxes: Tensor, inside_weight: Tensor, outside_weight: Tensor, scale: float
) -> Tensor:
    checks.validate_box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale)
    checks.check_box_values(boxes, grad_out.shape[2], grad_out.shape[3])
    return _launch().box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale)


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix", mutates_args=())
def cutmix_unmix(
    features: Tensor,
    boxes: Tensor,
    inside_weight: Optional[Tensor],
    outside_weight: Optional[Tensor],
    box_height: int,
    box_width: int,
    ratio: float,
    channels: int,
) -> Tensor:
    checks.validate_unmix(features, boxes, inside_weight, outside_weight, (box_height, box_width), ratio, channels)
    checks.check_box_values(boxes, box_height, box_width)
    return _launch().cutmix_unmix(
        features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels
    )


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix_backward", mutates_args=())
def cutmix_unmix_backward(
    grad_out: Tensor,
    boxes: Tensor,
    inside_weight: Optional[Tensor],
    outside_weight: Optional[Tensor],
    box_height: int,
    box_width: int,
    ratio: float,
    channels: int,
) -> Tensor:
    checks.validate_unmix_backward(grad_out, boxes, inside_weight, outside_weight, (box_height, box_width), ratio, channels)
    checks.check_box_values(boxes, box_height, box_width)
    return _launch().cutmix_unmix_backward(
        grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels
    )


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix_pool", mutates_args=())
def cutmix_unmix_pool(
    features: Tensor,
    boxes: Tensor,
    inside_weight: Optional[Tensor],
    outside_weight: Optional[Tensor],
    box_height: int,
    box_width: int,
    ratio: float,
    channels: int,
    normalize: str,
) -> Tensor:
    checks.validate_unmix(features, boxes, inside_weight, outside_weight, (box_height, box_width), ratio, channels)
    checks.check_normalize(normalize)
    checks.check_box_values(boxes, box_height, box_width)
    return _launch().cutmix_unmix_pool(
        features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels, normalize
    )


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix_pool_backward", mutates_args=())
def cutmix_unmix_pool_backward(
    grad_out: Tensor,
    boxes: Tensor,
    inside_weight: Optional[Tensor],
    outside_weight: Optional[Tensor],
    box_height: int,
    box_width: int,
    ratio: float,
    channels: int,
    normalize: str,
    height: int,
    width: int,
    channels_last: bool,
) -> Tensor:
    checks.validate_unmix_pool_backward(
        grad_out, boxes, inside_weight, outside_weight, (box_height, box_width), ratio, channels, normalize, height, width
    )
    checks.check_box_values(boxes, box_height, box_width)
    return _launch().cutmix_unmix_pool_backward(
        grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels, normalize,
        height, width, channels_last,
    )
