"""cutmix_boxes and cutmix_mask: kernels, launchers,
``mixshare_ops::triton_cutmix_boxes`` and ``mixshare_ops::triton_cutmix_mask``."""

import torch
import triton
import triton.language as tl

from mixshare_ops import checks
from mixshare_ops.conventions import opmath_dtype
from mixshare_ops.triton._common import (
    UNSPECIALIZED,
    _check_grid,
    _int64,
    _load_box,
    _on_device,
    _tl_dtype,
    cdiv,
    next_pow2,
)

Tensor = torch.Tensor

_BOXES_BLOCK = 256
_MASK_TILE = 2048


@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_boxes_kernel(lam_ptr, center_ptr, boxes_ptr, area_ptr, B, height, width, HW,
                        OPMATH: tl.constexpr, BLOCK: tl.constexpr):
    """lam [B], center [B, 2] (both OPMATH, contiguous) -> boxes int32 [B, 4],
    area [B] (OPMATH): cutmix_box of box_math.h. Indices and box arithmetic
    are int64 (as in box_math.h: cy + cut_h / 2 may pass 2**31)."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = n < B
    lam = tl.load(lam_ptr + n, mask=valid, other=0.0)
    u_row = tl.load(center_ptr + 2 * n, mask=valid, other=0.0)
    u_col = tl.load(center_ptr + 2 * n + 1, mask=valid, other=0.0)
    # The cut size in float64 whatever OPMATH is (the official code's numpy
    # rule): lam (exact in float64) clamped into [0, 1], NaN -> 0, then
    # trunc(size * sqrt(lam)); float64 sqrt (sqrt.rn.f64 in the PTX, numpy's
    # in the interpreter) and product are correctly rounded.
    lam64 = lam.to(tl.float64)
    lam64 = tl.where(lam64 >= 0, lam64, 0.0)  # NaN -> 0
    lam64 = tl.where(lam64 > 1, 1.0, lam64)
    cut_frac = tl.sqrt(lam64)
    cut_h = (tl.cast(height, tl.float64) * cut_frac).to(tl.int64)  # truncation
    cut_w = (tl.cast(width, tl.float64) * cut_frac).to(tl.int64)
    h = tl.cast(height, OPMATH)
    w = tl.cast(width, OPMATH)
    # uniform_to_index: floor(u * size) clamped into [0, size - 1], NaN -> 0
    v_row = u_row * h
    v_row = tl.where(v_row >= 0, v_row, 0.0)
    v_row = tl.where(v_row > h - 1, h - 1, v_row)
    v_col = u_col * w
    v_col = tl.where(v_col >= 0, v_col, 0.0)
    v_col = tl.where(v_col > w - 1, w - 1, v_col)
    cy = tl.floor(v_row).to(tl.int64)
    cx = tl.floor(v_col).to(tl.int64)
    top = tl.minimum(tl.maximum(cy - cut_h // 2, 0), height)
    bottom = tl.minimum(tl.maximum(cy + cut_h // 2, 0), height)
    left = tl.minimum(tl.maximum(cx - cut_w // 2, 0), width)
    right = tl.minimum(tl.maximum(cx + cut_w // 2, 0), width)
    row = boxes_ptr + 4 * n
    tl.store(row, top.to(tl.int32), mask=valid)
    tl.store(row + 1, left.to(tl.int32), mask=valid)
    tl.store(row + 2, bottom.to(tl.int32), mask=valid)
    tl.store(row + 3, right.to(tl.int32), mask=valid)
    area = ((bottom - top) * (right - left)).to(OPMATH)
    if OPMATH == tl.float64:
        area = area / tl.cast(HW, OPMATH)
    else:
        area = tl.div_rn(area, tl.cast(HW, OPMATH))
    tl.store(area_ptr + n, area, mask=valid)


@triton.jit
def cutmix_mask_kernel(boxes_ptr, out_ptr, height, width, BH: tl.constexpr, BW: tl.constexpr,
                       INT64: tl.constexpr):
    """out [B, 1, H, W] contiguous: 1 inside each box, 0 outside; one [BH, BW]
    tile per program (in-sample indices and offsets int64 if INT64)."""
    pid = tl.program_id(0)
    if INT64:
        height = tl.cast(height, tl.int64)
        width = tl.cast(width, tl.int64)
    n_yb = (height + BH - 1) // BH
    n_xb = (width + BW - 1) // BW
    per_sample = n_yb * n_xb
    b = pid // per_sample
    r = pid - b * per_sample
    yb = r // n_xb
    xb = r - yb * n_xb
    top, left, bottom, right = _load_box(boxes_ptr, b, height, width)
    y = yb * BH + tl.arange(0, BH)
    x = xb * BW + tl.arange(0, BW)
    if INT64:
        tl.static_assert(y.dtype == tl.int64 and x.dtype == tl.int64)
    inside = ((y >= top) & (y < bottom))[:, None] & ((x >= left) & (x < right))[None, :]
    valid = (y < height)[:, None] & (x < width)[None, :]
    base = out_ptr + b.to(tl.int64) * height * width
    tl.store(base + y[:, None] * width + x[None, :], inside.to(out_ptr.dtype.element_ty), mask=valid)


def cutmix_boxes(lam, center, height, width):
    """lam [B], center [B, 2] -> (boxes int32 [B, 4], area [B] in lam.dtype)."""
    height, width = int(height), int(width)
    compute = opmath_dtype(lam.dtype, center.dtype)
    batch = lam.shape[0]
    _check_grid(cdiv(batch, _BOXES_BLOCK), "cutmix_boxes", f"lam with B = {batch}")
    boxes = torch.empty((batch, 4), dtype=torch.int32, device=lam.device)
    area = torch.empty((batch,), dtype=compute, device=lam.device)
    if batch > 0:
        lam_c = lam.to(compute).contiguous()
        center_c = center.to(compute).contiguous()
        with _on_device(lam):
            cutmix_boxes_kernel[(cdiv(batch, _BOXES_BLOCK),)](
                lam_c, center_c, boxes, area, batch, height, width, height * width,
                OPMATH=_tl_dtype(compute), BLOCK=_BOXES_BLOCK, num_warps=4,
            )
    return boxes, area.to(lam.dtype)


def cutmix_mask(boxes, height, width, dtype):
    """boxes [B, 4] -> [B, 1, H, W] mask in dtype: 1 inside each box."""
    height, width = int(height), int(width)
    batch = boxes.shape[0]
    bw = min(next_pow2(width), 256)
    bh = min(next_pow2(height), max(1, _MASK_TILE // bw))
    grid = (batch * cdiv(height, bh) * cdiv(width, bw),)
    _check_grid(grid[0], "cutmix_mask", f"boxes with B = {batch} on a {height} x {width} grid")
    out = torch.empty((batch, 1, height, width), dtype=dtype, device=boxes.device)
    if out.numel() == 0:
        return out
    with _on_device(boxes):
        cutmix_mask_kernel[grid](boxes.contiguous(), out, height, width, BH=bh, BW=bw,
                                 INT64=_int64((height + bh) * width + bw), num_warps=4)
    return out


@torch.library.custom_op("mixshare_ops::triton_cutmix_boxes", mutates_args=())
def triton_cutmix_boxes(
    lam: Tensor, center: Tensor, height: int, width: int, check_values: bool = True
) -> tuple[Tensor, Tensor]:
    checks.check_box_sample(lam, center, height, width)
    if check_values:
        checks.check_box_sample_values(lam, center)
    return cutmix_boxes(lam, center, height, width)


@torch.library.custom_op("mixshare_ops::triton_cutmix_mask", mutates_args=())
def triton_cutmix_mask(boxes: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    checks.validate_cutmix_mask(boxes, height, width)
    checks.check_box_values(boxes, height, width)
    return cutmix_mask(boxes, height, width, dtype)
