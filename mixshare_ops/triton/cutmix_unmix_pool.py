"""cutmix_unmix_pool and cutmix_unmix_pool_backward: the masks kernel, the pooling
kernels, launchers, ``mixshare_ops::triton_cutmix_unmix_pool(_backward)``."""

from typing import Optional

import torch
import triton
import triton.language as tl

from mixshare_ops import checks
from mixshare_ops._layout import CHANNELS_FIRST, CHANNELS_LAST, empty_features, feature_layout
from mixshare_ops.conventions import num_subnets, opmath_dtype
from mixshare_ops.triton._common import (
    ELEMENTWISE_TUNING,
    POOL_TUNING,
    UNSPECIALIZED,
    _TILE_PAD,
    _check_grid,
    _elementwise_grid_bound,
    _int64,
    _launch_elementwise,
    _on_device,
    _pool_grid_bound,
    _run,
    _scalar_arg,
    _slice_bound,
    _tile_program,
    _tl_dtype,
    _tuned,
    _unmix_masks,
    _unmix_weights,
    _what,
    _window_bound,
    cdiv,
    elementwise_meta,
    masks_meta,
    next_pow2,
    pool_meta,
)

Tensor = torch.Tensor


@triton.jit
def unmix_masks_kernel(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, masks_ptr, inv_ptr,
                       ratio, h, w, box_h, box_w, HW,
                       M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr, MASKED: tl.constexpr,
                       OPMATH: tl.constexpr, PB: tl.constexpr, NUM_PB: tl.constexpr, INT64: tl.constexpr):
    """Per sample b: the applied masks masks[b, i, p] (OPMATH [B, M, HW]) and
    the reciprocal pooling denominators inv[b, i] (OPMATH [B, M]): 1 / sum_p
    masks[b, i, p] (h * w where that sum is 0) if MASKED, else 1 / (h * w)."""
    b = tl.program_id(0)
    i = tl.arange(0, MB)
    sub = i < M
    rows = masks_ptr + (b.to(tl.int64) * M + i) * HW
    den = tl.zeros([MB], dtype=OPMATH)
    for j in range(NUM_PB):
        if INT64:  # HW + PB and the window math (y + 1) * box_h may pass 2**31
            p = tl.cast(j, tl.int64) * PB + tl.arange(0, PB)
            tl.static_assert(p.dtype == tl.int64)
        else:
            p = j * PB + tl.arange(0, PB)
        pvalid = p < HW
        masks = _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                             M, MB, DEFAULT_W, OPMATH)
        tl.store(rows[:, None] + p[None, :], masks, mask=sub[:, None] & pvalid[None, :])
        den += tl.sum(tl.where(pvalid[None, :], masks, 0.0), axis=1)
    hw = tl.cast(HW, OPMATH)
    if MASKED:
        den = tl.where(den == 0, hw, den)
    else:
        den = tl.zeros([MB], dtype=OPMATH) + hw
    one = tl.full([MB], 1.0, OPMATH)
    if OPMATH == tl.float64:
        inv = one / den
    else:
        inv = tl.div_rn(one, den)
    tl.store(inv_ptr + b.to(tl.int64) * M + i, inv, mask=sub)


@_tuned(pool_meta, POOL_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_unmix_pool_kernel(f_ptr, masks_ptr, inv_ptr, out_ptr, B, C, HW, channels,
                             M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                             CB: tl.constexpr, PB: tl.constexpr, NUM_PB: tl.constexpr, INT64: tl.constexpr):
    """out[i, b, c] = sum_p f[b, c, p] masks[b, i, p] * inv[b, i] (c < channels),
    mean_p f[b, c, p] otherwise; out [M, B, C]. One program per (b, channel block)."""
    pid = tl.program_id(0)
    if INT64:  # C + CB, HW + PB and the offsets may pass 2**31
        C = tl.cast(C, tl.int64)
        HW = tl.cast(HW, tl.int64)
    n_cb = (C + CB - 1) // CB
    b = pid // n_cb
    c = (pid - b * n_cb) * CB + tl.arange(0, CB)
    cvalid = c < C
    i = tl.arange(0, MB)
    sub = i < M
    rows = masks_ptr + (b.to(tl.int64) * M + i) * HW
    f_base = f_ptr + b.to(tl.int64) * C * HW
    acc = tl.zeros([MB, CB], dtype=OPMATH)
    plain = tl.zeros([CB], dtype=OPMATH)
    for j in range(NUM_PB):
        if INT64:
            p = tl.cast(j, tl.int64) * PB + tl.arange(0, PB)
            tl.static_assert(c.dtype == tl.int64 and p.dtype == tl.int64)
        else:
            p = j * PB + tl.arange(0, PB)
        pvalid = p < HW
        masks = tl.load(rows[:, None] + p[None, :], mask=sub[:, None] & pvalid[None, :], other=0.0)
        if CHANNELS_LAST:  # f: [PB, CB]
            f = tl.load(f_base + p[:, None] * C + c[None, :], mask=pvalid[:, None] & cvalid[None, :], other=0.0)
            f = f.to(OPMATH)
            acc += tl.sum(f[None, :, :] * masks[:, :, None], axis=1)
            plain += tl.sum(f, axis=0)
        else:  # f: [CB, PB]
            f = tl.load(f_base + c[:, None] * HW + p[None, :], mask=cvalid[:, None] & pvalid[None, :], other=0.0)
            f = f.to(OPMATH)
            acc += tl.sum(f[None, :, :] * masks[:, None, :], axis=2)
            plain += tl.sum(f, axis=1)
    inv = tl.load(inv_ptr + b.to(tl.int64) * M + i, mask=sub, other=0.0)
    pooled = acc * inv[:, None]
    if OPMATH == tl.float64:
        mean = plain / tl.cast(HW, OPMATH)
    else:
        mean = tl.div_rn(plain, tl.cast(HW, OPMATH))
    res = tl.where((c < channels)[None, :], pooled, mean[None, :])
    out = out_ptr + (i.to(tl.int64)[:, None] * B + b) * C + c[None, :]
    tl.store(out, res.to(out_ptr.dtype.element_ty), mask=sub[:, None] & cvalid[None, :])


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_unmix_pool_backward_kernel(g_ptr, masks_ptr, inv_ptr, out_ptr, B, C, HW, channels,
                                      M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                                      OPMATH: tl.constexpr, CB: tl.constexpr, PB: tl.constexpr,
                                      CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """grad_f[b, c, p] = sum_i grad_out[i, b, c] * inv[b, i] * masks[b, i, p]
    (c < channels), sum_i grad_out[i, b, c] / (h * w) otherwise; grad_out [M, B, C]."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    i = tl.arange(0, MB)
    sub = i < M
    pvalid = p < HW
    masks = tl.load(masks_ptr + ((b.to(tl.int64) * M + i) * HW)[:, None] + p[None, :],
                    mask=sub[:, None] & pvalid[None, :], other=0.0)
    if CHANNELS_LAST:
        masks = masks[:, :, None]
    else:
        masks = masks[:, None, :]
    inv = tl.load(inv_ptr + b.to(tl.int64) * M + i, mask=sub, other=0.0)
    hw = tl.cast(HW, OPMATH)
    g_rows = g_ptr + (i.to(tl.int64) * B + b) * C
    out_base = out_ptr + b.to(tl.int64) * C * HW
    for j in range(CHUNKS):
        c = c0 + j * CB + tl.arange(0, CB)
        if INT64:
            tl.static_assert(c.dtype == tl.int64 and p.dtype == tl.int64)
        cvalid = c < C
        g = tl.load(g_rows[:, None] + c[None, :], mask=sub[:, None] & cvalid[None, :], other=0.0).to(OPMATH)
        coef = g * inv[:, None]  # [MB, CB]
        if OPMATH == tl.float64:
            plain = tl.sum(g, axis=0) / hw
        else:
            plain = tl.div_rn(tl.sum(g, axis=0), hw)
        if CHANNELS_LAST:
            acc = tl.sum(coef[:, None, :] * masks, axis=0)  # [PB, CB]
            res = tl.where((c < channels)[None, :], acc, plain[None, :])
            offs = p[:, None] * C + c[None, :]
            valid = pvalid[:, None] & cvalid[None, :]
        else:
            acc = tl.sum(coef[:, :, None] * masks, axis=0)  # [CB, PB]
            res = tl.where((c < channels)[:, None], acc, plain[:, None])
            offs = c[:, None] * HW + p[None, :]
            valid = cvalid[:, None] & pvalid[None, :]
        tl.store(out_base + offs, res.to(out_ptr.dtype.element_ty), mask=valid)


def _applied_masks(boxes, w_in, w_out, default, subnets, batch, h, w, box_height, box_width, ratio,
                   normalize, opmath, device):
    """Applied masks [B, M, h * w] and reciprocal pooling denominators [B, M], in opmath."""
    hw = h * w
    masks = torch.empty((batch, subnets, hw), dtype=opmath, device=device)
    inv = torch.empty((batch, subnets), dtype=opmath, device=device)
    ratio_v, ratio_t = _scalar_arg(ratio, opmath, device)
    mb = next_pow2(subnets)
    meta = masks_meta(hw, mb)
    unmix_masks_kernel[(batch,)](
        boxes, w_in, w_out, ratio_t, masks, inv,
        ratio_v, h, w, box_height, box_width, hw,
        M=subnets, MB=mb, DEFAULT_W=default, MASKED=normalize == "masked", OPMATH=_tl_dtype(opmath),
        INT64=_int64(hw + _TILE_PAD, _window_bound(h, w, box_height, box_width)), **meta,
    )
    return masks, inv


def cutmix_unmix_pool(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels,
                      normalize):
    """features [B, C, h, w] -> pooled [M, B, C] (contiguous)."""
    batch, num_channels, h, w = features.shape
    subnets = num_subnets(inside_weight)
    _check_grid(_pool_grid_bound(batch, num_channels, h * w, subnets), "cutmix_unmix_pool",
                _what("features", batch, num_channels, h, w))
    features, layout = feature_layout(features)
    opmath = opmath_dtype(features.dtype)
    subnets, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    out = torch.empty((subnets, batch, num_channels), dtype=features.dtype, device=features.device)
    if out.numel() == 0:
        return out
    hw = h * w
    mb = next_pow2(subnets)
    channels_last = layout == CHANNELS_LAST
    with _on_device(features):
        masks, inv = _applied_masks(boxes.contiguous(), w_in, w_out, default, subnets, batch, h, w, int(box_height),
                                    int(box_width), ratio, normalize, opmath, features.device)
        consts = dict(M=subnets, MB=mb, CHANNELS_LAST=channels_last, OPMATH=_tl_dtype(opmath),
                      INT64=_int64(_slice_bound(num_channels, hw)))

        def grid(meta):
            return (batch * cdiv(num_channels, meta["CB"]),)

        args = (features, masks, inv, out, batch, num_channels, hw, int(channels))
        _run(cutmix_unmix_pool_kernel, grid, args, consts,
             lambda: pool_meta(batch, num_channels, hw, channels_last, mb))
    return out


def cutmix_unmix_pool_backward(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio,
                               channels, normalize, height, width, channels_last):
    """grad_out [M, B, C] -> grad_features [B, C, height, width] (channels_last if asked)."""
    subnets, batch, num_channels = grad_out.shape
    h, w = int(height), int(width)
    _check_grid(_elementwise_grid_bound(batch, num_channels, h * w, subnets), "cutmix_unmix_pool_backward",
                _what("grad_out", batch, num_channels, h, w))
    layout = CHANNELS_LAST if channels_last else CHANNELS_FIRST
    grad_f = empty_features(batch, num_channels, h, w, layout, dtype=grad_out.dtype, device=grad_out.device)
    if grad_f.numel() == 0:
        return grad_f
    opmath = opmath_dtype(grad_out.dtype)
    _, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    grad_out = grad_out.contiguous()
    hw = h * w
    with _on_device(grad_out):
        masks, inv = _applied_masks(boxes.contiguous(), w_in, w_out, default, subnets, batch, h, w, int(box_height),
                                    int(box_width), ratio, normalize, opmath, grad_out.device)
        _launch_elementwise(
            cutmix_unmix_pool_backward_kernel,
            (grad_out, masks, inv, grad_f, batch, num_channels, hw, int(channels)),
            batch=batch, channels=num_channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
        )
    return grad_f


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix_pool", mutates_args=())
def triton_cutmix_unmix_pool(
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
    checks.validate_unmix_pool(features, boxes, inside_weight, outside_weight, (box_height, box_width), ratio, channels,
                               normalize)
    checks.check_box_values(boxes, box_height, box_width)
    return cutmix_unmix_pool(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels,
                             normalize)


@torch.library.custom_op("mixshare_ops::triton_cutmix_unmix_pool_backward", mutates_args=())
def triton_cutmix_unmix_pool_backward(
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
        grad_out, boxes, inside_weight, outside_weight, (box_height, box_width), ratio, channels, normalize, height,
        width,
    )
    checks.check_box_values(boxes, box_height, box_width)
    return cutmix_unmix_pool_backward(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio,
                                      channels, normalize, height, width, channels_last)
