"""box_mix and box_mix_backward: kernels, launchers, ``mixshare_ops::triton_box_mix(_backward)``."""

import torch
import triton
import triton.language as tl

from mixshare_ops import checks
from mixshare_ops._layout import empty_features, empty_stacked, feature_layout, stacked_layout
from mixshare_ops.conventions import opmath_dtype
from mixshare_ops.triton._common import (
    ELEMENTWISE_TUNING,
    UNSPECIALIZED,
    _check_grid,
    _elementwise_grid_bound,
    _launch_elementwise,
    _load_box,
    _on_device,
    _scalar_arg,
    _stacked_tiles,
    _tile_program,
    _tuned,
    _what,
    elementwise_meta,
)

Tensor = torch.Tensor


@triton.jit
def _box_weights(boxes_ptr, win_ptr, wout_ptr, scale_ptr, scale, b, p, height, width,
                 M: tl.constexpr, MB: tl.constexpr, OPMATH: tl.constexpr):
    """[MB, PB] weights of pixels p of sample b: scale * inside_weight inside
    the box, scale * outside_weight outside; 0 on the padding subnetworks."""
    top, left, bottom, right = _load_box(boxes_ptr, b, height, width)
    y = p // width
    x = p - y * width
    inside = (y >= top) & (y < bottom) & (x >= left) & (x < right)
    # scale in opmath: float32 kernel argument, or a float64 tensor
    if OPMATH == tl.float64:
        s = tl.load(scale_ptr)
    else:
        s = tl.cast(scale, tl.float32)
    i = tl.arange(0, MB)
    w_row = b.to(tl.int64) * M + i
    w_in = s * tl.load(win_ptr + w_row, mask=i < M, other=0.0)
    w_out = s * tl.load(wout_ptr + w_row, mask=i < M, other=0.0)
    return tl.where(inside[None, :], w_in[:, None], w_out[:, None])


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def box_mix_kernel(x_ptr, boxes_ptr, win_ptr, wout_ptr, scale_ptr, out_ptr,
                   scale, stride_m, stride_b, B, C, HW, height, width,
                   M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                   CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """out[b] = sum_i w_i(b, y, x) * scale * x[i, b]; x [M, B, C, H, W] (strides stride_m, stride_b)."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    weights = _box_weights(boxes_ptr, win_ptr, wout_ptr, scale_ptr, scale, b, p, height, width, M, MB, OPMATH)
    _stacked_tiles(out_ptr, x_ptr, weights, b, c0, p, b.to(tl.int64) * stride_b, stride_m, C, C, HW,
                   M, MB, CHANNELS_LAST, OPMATH, CB, CHUNKS, INT64, REDUCE=True, PARTIAL=False)


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def box_mix_backward_kernel(g_ptr, boxes_ptr, win_ptr, wout_ptr, scale_ptr, out_ptr,
                            scale, out_stride_m, B, C, HW, height, width,
                            M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                            CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """grad_x[i, b] = w_i(b, y, x) * scale * grad_out[b]; grad_x [M, B, C, H, W] (stride out_stride_m)."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    weights = _box_weights(boxes_ptr, win_ptr, wout_ptr, scale_ptr, scale, b, p, height, width, M, MB, OPMATH)
    _stacked_tiles(g_ptr, out_ptr, weights, b, c0, p, b.to(tl.int64) * C * HW, out_stride_m, C, C, HW,
                   M, MB, CHANNELS_LAST, OPMATH, CB, CHUNKS, INT64, REDUCE=False, PARTIAL=False)


def box_mix(x, boxes, inside_weight, outside_weight, scale):
    """Stacked x [M, B, C, H, W] -> mixed [B, C, H, W] in x's slice layout."""
    subnets, batch, channels, height, width = x.shape
    _check_grid(_elementwise_grid_bound(batch, channels, height * width, subnets), "box_mix",
                _what("x", batch, channels, height, width))
    x, layout = stacked_layout(x)
    out = empty_features(batch, channels, height, width, layout, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    opmath = opmath_dtype(x.dtype)
    w_in = inside_weight.to(opmath).contiguous()
    w_out = outside_weight.to(opmath).contiguous()
    scale_v, scale_t = _scalar_arg(scale, opmath, x.device)
    hw = height * width
    with _on_device(x):
        _launch_elementwise(
            box_mix_kernel,
            (x, boxes.contiguous(), w_in, w_out, scale_t, out,
             scale_v, x.stride(0), x.stride(1), batch, channels, hw, height, width),
            batch=batch, channels=channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
        )
    return out


def box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale):
    """grad_out [B, C, H, W] -> grad_x [M, B, C, H, W] in grad_out's slice layout."""
    batch, channels, height, width = grad_out.shape
    subnets = inside_weight.shape[1]
    _check_grid(_elementwise_grid_bound(batch, channels, height * width, subnets), "box_mix_backward",
                _what("grad_out", batch, channels, height, width))
    grad_out, layout = feature_layout(grad_out, "grad_out")
    grad_x = empty_stacked(subnets, batch, channels, height, width, layout, dtype=grad_out.dtype,
                           device=grad_out.device)
    if grad_x.numel() == 0:
        return grad_x
    opmath = opmath_dtype(grad_out.dtype)
    w_in = inside_weight.to(opmath).contiguous()
    w_out = outside_weight.to(opmath).contiguous()
    scale_v, scale_t = _scalar_arg(scale, opmath, grad_out.device)
    hw = height * width
    with _on_device(grad_out):
        _launch_elementwise(
            box_mix_backward_kernel,
            (grad_out, boxes.contiguous(), w_in, w_out, scale_t, grad_x,
             scale_v, grad_x.stride(0), batch, channels, hw, height, width),
            batch=batch, channels=channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
        )
    return grad_x


@torch.library.custom_op("mixshare_ops::triton_box_mix", mutates_args=())
def triton_box_mix(x: Tensor, boxes: Tensor, inside_weight: Tensor, outside_weight: Tensor, scale: float) -> Tensor:
    checks.validate_box_mix(x, boxes, inside_weight, outside_weight, scale)
    checks.check_box_values(boxes, x.shape[3], x.shape[4])
    return box_mix(x, boxes, inside_weight, outside_weight, scale)


@torch.library.custom_op("mixshare_ops::triton_box_mix_backward", mutates_args=())
def triton_box_mix_backward(
    grad_out: Tensor, boxes: Tensor, inside_weight: Tensor, outside_weight: Tensor, scale: float
) -> Tensor:
    checks.validate_box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale)
    checks.check_box_values(boxes, grad_out.shape[2], grad_out.shape[3])
    return box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale)
