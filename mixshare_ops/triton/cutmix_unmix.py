"""cutmix_unmix and cutmix_unmix_backward: kernels, launchers,
``mixshare_ops::triton_cutmix_unmix(_backward)``."""

from typing import Optional

import torch
import triton
import triton.language as tl

from mixshare_ops import checks
from mixshare_ops._layout import empty_features, empty_stacked, feature_layout, stacked_layout
from mixshare_ops.conventions import num_subnets, opmath_dtype
from mixshare_ops.triton._common import (
    ELEMENTWISE_TUNING,
    UNSPECIALIZED,
    _check_grid,
    _elementwise_grid_bound,
    _launch_elementwise,
    _on_device,
    _scalar_arg,
    _stacked_tiles,
    _tile_program,
    _tuned,
    _unmix_masks,
    _unmix_weights,
    _what,
    _window_bound,
    elementwise_meta,
)

Tensor = torch.Tensor


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_unmix_kernel(f_ptr, boxes_ptr, win_ptr, wout_ptr, ratio_ptr, out_ptr,
                        ratio, out_stride_m, B, C, HW, h, w, box_h, box_w, channels,
                        M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        OPMATH: tl.constexpr, CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """out[i, b, c] = features[b, c] * mask_i (c < channels), features[b, c]
    otherwise; out [M, B, C, h, w] (stride out_stride_m)."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    masks = _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                         M, MB, DEFAULT_W, OPMATH)
    _stacked_tiles(f_ptr, out_ptr, masks, b, c0, p, b.to(tl.int64) * C * HW, out_stride_m, channels, C, HW,
                   M, MB, CHANNELS_LAST, OPMATH, CB, CHUNKS, INT64, REDUCE=False, PARTIAL=True)


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_unmix_backward_kernel(g_ptr, boxes_ptr, win_ptr, wout_ptr, ratio_ptr, out_ptr,
                                 ratio, stride_m, stride_b, B, C, HW, h, w, box_h, box_w, channels,
                                 M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr,
                                 CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                                 CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """grad_f[b, c] = sum_i grad_out[i, b, c] * (mask_i if c < channels else 1);
    grad_out [M, B, C, h, w] (strides stride_m, stride_b)."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    masks = _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                         M, MB, DEFAULT_W, OPMATH)
    _stacked_tiles(out_ptr, g_ptr, masks, b, c0, p, b.to(tl.int64) * stride_b, stride_m, channels, C, HW,
                   M, MB, CHANNELS_LAST, OPMATH, CB, CHUNKS, INT64, REDUCE=True, PARTIAL=True)


def cutmix_unmix(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels):
    """features [B, C, h, w] -> unmixed [M, B, C, h, w] in features' slice layout."""
    batch, num_channels, h, w = features.shape
    subnets = num_subnets(inside_weight)
    _check_grid(_elementwise_grid_bound(batch, num_channels, h * w, subnets), "cutmix_unmix",
                _what("features", batch, num_channels, h, w))
    features, layout = feature_layout(features)
    opmath = opmath_dtype(features.dtype)
    subnets, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    out = empty_stacked(subnets, batch, num_channels, h, w, layout, dtype=features.dtype, device=features.device)
    if out.numel() == 0:
        return out
    ratio_v, ratio_t = _scalar_arg(ratio, opmath, features.device)
    hw = h * w
    with _on_device(features):
        _launch_elementwise(
            cutmix_unmix_kernel,
            (features, boxes.contiguous(), w_in, w_out, ratio_t, out,
             ratio_v, out.stride(0), batch, num_channels, hw, h, w, int(box_height), int(box_width), int(channels)),
            batch=batch, channels=num_channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
            window=_window_bound(h, w, int(box_height), int(box_width)), DEFAULT_W=default,
        )
    return out


def cutmix_unmix_backward(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels):
    """grad_out [M, B, C, h, w] -> grad_features [B, C, h, w] in grad_out's slice layout."""
    subnets, batch, num_channels, h, w = grad_out.shape
    _check_grid(_elementwise_grid_bound(batch, num_channels, h * w, subnets), "cutmix_unmix_backward",
                _what("grad_out", batch, num_channels, h, w))
    grad_out, layout = stacked_layout(grad_out, "grad_out")
    grad_f = empty_features(batch, num_channels, h, w, layout, dtype=grad_out.dtype, device=grad_out.device)
    if grad_f.numel() == 0:
        return grad_f
    opmath = opmath_dtype(grad_out.dtype)
    _, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    ratio_v, ratio_t = _scalar_arg(ratio, opmath, grad_out.device)
    hw = h * w
    with _on_device(grad_out):
        _launch_elementwise(
            cutmix_unmix_backward_kernel,
            (grad_out, boxes.contiguous(), w_in, w_out, ratio_t, grad_f,
             ratio_v, grad_out.stride(0), grad_out.stride(1), batch, num_channels, hw, h, w,
             int(box_height), int(box_width), int(channels)),
            batch=batch, channels=num_channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
            window=_window_bound(h, w, int(box_height), int(box_width)), DEFAULT_W=default,
        )
    return grad_f


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix", mutates_args=())
def triton_cutmix_unmix(
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
    return cutmix_unmix(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels)


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix_backward", mutates_args=())
def triton_cutmix_unmix_backward(
    grad_out: Tensor,
    boxes: Tensor,
    inside_weight: Optional[Tensor],
    outside_weight: Optional[Tensor],
    box_height: int,
    box_width: int,
    ratio: float,
    channels: int,
) -> Tensor:
    checks.validate_unmix_backward(grad_out, boxes, inside_weight, outside_weight, (box_height, box_width), ratio,
                                   channels)
    checks.check_box_values(boxes, box_height, box_width)
    return cutmix_unmix_backward(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio,
                                 channels)
