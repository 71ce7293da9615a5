"""Triton kernels of the mixshare ops.

The launchers in :mod:`mixshare_ops.triton.launch` prepare the arguments
(layouts, opmath weights, outputs) and pick the tile sizes; everything here
assumes valid arguments. The index and box math is that of
``csrc/box_math.h``, so results match the C++ kernels up to the order of
floating-point additions (and fused multiply-adds on GPUs).

Design
------
Every kernel working on features views one sample as a ``[C, H * W]`` slice,
dense in one of two layouts: channels first (``c * HW + p``) or channels last
(``p * C + c``). A program owns one sample ``b``, so the box, the weights and
the per-pixel masks are computed once per program, and works on 2-D tiles of
``CB`` channels by ``PB`` pixels, oriented so that the contiguous axis of the
layout is the fast axis of the tile (``[CB, PB]`` channels first, ``[PB, CB]``
channels last).

* Element-wise ops (box_mix, cutmix_unmix, their backwards and the pooling
  backward) loop over ``CHUNKS`` channel tiles of one pixel block, so the
  per-pixel work (index split, box test, adaptive-pool window overlap) is
  amortised over ``CHUNKS * CB`` channels. The ``M`` subnetworks are a padded
  leading axis ``MB`` (next power of two) of 3-D ``[MB, ...tile]`` tensors:
  one masked load or store covers all subnetworks.
* The pooling ops first run :func:`unmix_masks_kernel`, one program per
  sample, writing the applied masks ``[B, M, HW]`` and the reciprocal pooling
  denominators ``[B, M]`` (a few bytes per pixel, against ``C`` feature values
  per pixel). The pooling forward then reduces ``[CB, HW]`` per program
  (``b``, channel block) reading the masks from that small L2-resident buffer
  instead of recomputing them per channel block: pooling only reads features,
  so recomputing the window math would make it compute bound.

Numerics: arithmetic runs in ``OPMATH`` (float32, or float64 for float64
data), rounded once to the output dtype, except the CutMix cut size, which is
computed in float64 for every dtype (the official code's numpy rule).
Divisions are correctly rounded (``div_rn`` in float32; float64 division and
square root are always correctly rounded). Float scalars (``scale``,
``ratio``) arrive as float32 kernel arguments, i.e. rounded to float32 once,
as the C++ kernels do in float32 opmath; for float64 opmath the launcher
passes them as 1-element float64 tensors instead.

Index widths and limits:

* Offsets across samples and subnetworks (``b * C * HW``, ``b * stride_b +
  i * stride_m``, the mask rows ``(b * M + i) * HW``, the pooled rows
  ``(i * B + b) * C``, the boxes and weights rows) are always int64.
* Values inside one sample (offsets ``c * HW + p``, ``p * C + c``,
  ``y * W + x``; channel and pixel indices of tile lanes, which run up to a
  tile past ``C`` and ``HW``; the adaptive-pool window math ``(y + 1) * box_h``
  and cell counts ``(y1 - y0) * (x1 - x0)``) are int32, unless a bound on them
  reaches ``INT32_LIMIT`` (``2**31``): the launchers then set the constexpr
  ``INT64`` and these are computed in int64 from the start (``C`` and ``HW``
  are widened before any arithmetic). Each kernel checks at compile time that
  its offsets are int64 under ``INT64`` (``tl.static_assert``). The int32
  variant is the code the kernels had before ``INT64`` existed (the same
  Triton IR); the int64 one is a separate compiled variant, used only for the
  sizes that need it. ``cutmix_boxes_kernel`` is O(B) and always uses int64.
* Grids are one-dimensional, ``program_id(0)`` up to ``GRID_LIMIT``
  (``2**31 - 1``); ``program_id(1)`` and ``(2)`` (65,535) are never used.
  A launch that could need more programs (about ``2**31`` samples of a few
  elements) is refused with a ``ValueError`` before anything is allocated.
* Scalar arguments (``B``, ``C``, ``HW``, strides) are int32 or int64 as
  Triton passes them (int64 from ``2**31`` on).

Loops have compile-time trip counts (``CHUNKS``, ``NUM_PB``): no loop bound
is a runtime value (the Triton 3.6 interpreter cannot run those with
numpy >= 2.4). ``NUM_PB`` depends on the feature size, so the pooling kernels
compile once per feature size.

Tuning
------
Tile sizes come from :func:`elementwise_meta` and :func:`pool_meta`. On GPUs
(``AUTOTUNE``) the element-wise and pooling kernels are autotuned over the
``(TILE, num_warps)`` candidates of ``ELEMENTWISE_TUNING`` / ``POOL_TUNING``:
the prune hooks turn each candidate into concrete tile sizes with the same
heuristics, so the tuned configurations are always valid. Edit those lists to
change the search space, or set ``AUTOTUNE = False`` (at any time) to launch
the heuristic defaults (the first candidates) without benchmarking. The autotune key
(``AUTOTUNE_KEY``) holds C, H * W, the layout, M and the index width (and the
dtypes), not the batch size: each new key benchmarks the candidates once,
synchronising the device, so the first call of a feature size must not happen
inside CUDA graph capture, but a new batch size (a last partial batch, an
evaluation batch) reuses the tiles tuned for that feature size, which are valid
for any B (only ``CHUNKS`` and the pooling's channel block were sized for the
B of that first call). ``B`` is also left unspecialised (``do_not_specialize``),
so a new batch size does not compile a new variant either (unless it changes
whether a stride that scales with B is a multiple of 16, which only happens
when C * H * W is not). Under the Triton interpreter (``TRITON_INTERPRET=1``)
autotuning is off and the defaults are launched; :func:`autotuner` builds the
autotuned kernel on demand (the tests run it with faked timings).
"""

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE = not INTERPRET
# In-sample values (offsets, lane indices, window products) that can reach
# this make the launchers set INT64; read at each launch.
INT32_LIMIT = 2**31
# Most programs of a launch grid (program_id(0)); read at each launch.
GRID_LIMIT = 2**31 - 1
# Key: C, H * W, layout, M and index width fix the valid tiles and their speed;
# not B, which would re-tune (and synchronise) at every new batch size.
AUTOTUNE_KEY = ["C", "HW", "CHANNELS_LAST", "MB", "M", "INT64"]
# Scalar arguments not specialised on (== 1, % 16): a new B reuses the binary.
UNSPECIALIZED = ["B"]

# ---------------------------------------------------------------------------
# Tuning: tile heuristics and autotune search spaces
# ---------------------------------------------------------------------------

# (TILE, num_warps) candidates; TILE is the number of feature elements of one
# [CB, PB] tile for M = 2 (halved for every doubling of MB beyond 2). The first
# one is the default: 16 elements of the [MB, CB, PB] tensors per thread keeps
# the channels_last variants near 60 registers (32 per thread doubles that).
ELEMENTWISE_TUNING = [(1024, 4), (2048, 8), (512, 4), (2048, 4)]
POOL_TUNING = [(1024, 4), (2048, 8), (512, 4), (2048, 4)]

# Enough programs to fill a large GPU several times over before channel tiles
# are grouped into one program (element-wise kernels), or before channel
# blocks of the pooling reduction are narrowed.
TARGET_PROGRAMS = 2048
POOL_TARGET_PROGRAMS = 1024
MAX_CHUNKS = 8
MASKS_BLOCK = 512  # pixels per iteration of unmix_masks_kernel (M = 2)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _scaled_tile(tile: int, mb: int) -> int:
    """Tile size for MB subnetworks: the [MB, CB, PB] tensors stay ~2 * TILE."""
    return max(256, tile * 2 // max(mb, 2))


def _pixel_block(hw: int, cap: int) -> int:
    """The largest power-of-two block <= cap whose padding of HW wastes at most
    1/8 of the lanes (else the one wasting least)."""
    best, best_waste = None, None
    pb = min(next_pow2(hw), cap)
    while pb >= 1:
        waste = cdiv(hw, pb) * pb - hw
        if waste * 8 <= cdiv(hw, pb) * pb:
            return pb
        if best is None or waste < best_waste:
            best, best_waste = pb, waste
        if pb <= 32:
            break
        pb //= 2
    return best


def elementwise_meta(batch: int, channels: int, hw: int, channels_last: bool, mb: int,
                     tile: int = ELEMENTWISE_TUNING[0][0], num_warps: int = ELEMENTWISE_TUNING[0][1]) -> dict:
    """CB, PB, CHUNKS and num_warps of the element-wise kernels."""
    tile = _scaled_tile(tile, mb)
    c2, p2 = next_pow2(channels), next_pow2(hw)
    if channels_last:
        cb = min(c2, 128)
        pb = min(p2, max(1, tile // cb))
    else:
        pb = _pixel_block(hw, min(512, tile))
        cb = min(c2, max(1, tile // pb))
    n_cb, n_pb = cdiv(channels, cb), cdiv(hw, pb)
    chunks = 1
    while (chunks < MAX_CHUNKS and chunks * 2 <= n_cb
           and batch * n_pb * cdiv(n_cb, chunks * 2) >= TARGET_PROGRAMS):
        chunks *= 2
    return {"CB": cb, "PB": pb, "CHUNKS": chunks, "num_warps": num_warps}


def elementwise_programs(batch: int, channels: int, hw: int, meta: dict) -> int:
    return batch * cdiv(cdiv(channels, meta["CB"]), meta["CHUNKS"]) * cdiv(hw, meta["PB"])


def pool_meta(batch: int, channels: int, hw: int, channels_last: bool, mb: int,
              tile: int = POOL_TUNING[0][0], num_warps: int = POOL_TUNING[0][1]) -> dict:
    """CB, PB, NUM_PB and num_warps of the pooling reduction."""
    tile = _scaled_tile(tile, mb)
    c2, p2 = next_pow2(channels), next_pow2(hw)
    if channels_last:
        cb = min(c2, 128)
        pb = min(p2, max(1, tile // cb))
        min_cb = 16
    else:
        pb = _pixel_block(hw, min(256, tile))
        cb = min(c2, max(1, tile // pb))
        min_cb = 4
    while cb > min_cb and batch * cdiv(channels, cb) < POOL_TARGET_PROGRAMS:
        cb //= 2
    return {"CB": cb, "PB": pb, "NUM_PB": cdiv(hw, pb), "num_warps": num_warps}


def masks_meta(hw: int, mb: int) -> dict:
    """PB and NUM_PB of unmix_masks_kernel (one program per sample)."""
    pb = min(next_pow2(hw), max(64, MASKS_BLOCK * 2 // max(mb, 2)))
    return {"PB": pb, "NUM_PB": cdiv(hw, pb), "num_warps": 4}


def _prune(meta_fn):
    """early_config_prune hook: (TILE, num_warps) candidates -> concrete tiles."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        out, seen = [], set()
        for config in configs:
            meta = meta_fn(int(args["B"]), int(args["C"]), int(args["HW"]), bool(args["CHANNELS_LAST"]),
                           int(args["MB"]), config.kwargs["TILE"], config.num_warps)
            num_warps = meta.pop("num_warps")
            key = (tuple(sorted(meta.items())), num_warps)
            if key not in seen:
                seen.add(key)
                out.append(triton.Config(meta, num_warps=num_warps, num_stages=config.num_stages))
        return out

    return prune


def autotuner(fn, meta_fn, candidates):
    """``fn`` autotuned over ``candidates`` (key: AUTOTUNE_KEY; the autotuner
    adds the dtypes of the tensor arguments)."""
    configs = [triton.Config({"TILE": tile}, num_warps=num_warps) for tile, num_warps in candidates]
    return triton.autotune(
        configs=configs,
        key=AUTOTUNE_KEY,
        prune_configs_by={"early_config_prune": _prune(meta_fn)},
    )(fn)


def _tuned(meta_fn, candidates):
    """Autotunes a kernel on GPUs; leaves it as it is under the interpreter."""

    def decorate(fn):
        return autotuner(fn, meta_fn, candidates) if AUTOTUNE else fn

    return decorate


# ---------------------------------------------------------------------------
# Shared device functions
#
# Few and coarse on purpose: the Triton interpreter re-patches triton.language
# on every device-function call (milliseconds each), so each program makes at
# most two such calls and none inside its loops. Compiled, they are inlined.
# ---------------------------------------------------------------------------


@triton.jit
def _tile_program(C, HW, CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                  INT64: tl.constexpr):
    """This element-wise program's sample b, first channel and [PB] pixel indices
    (all int64 if INT64, computed from C and HW in int64: C + CB and HW + PB
    may pass 2**31 too)."""
    pid = tl.program_id(0)
    if INT64:
        C = tl.cast(C, tl.int64)
        HW = tl.cast(HW, tl.int64)
    n_cg = ((C + CB - 1) // CB + CHUNKS - 1) // CHUNKS
    n_pb = (HW + PB - 1) // PB
    per_sample = n_cg * n_pb
    b = pid // per_sample
    r = pid - b * per_sample
    # Consecutive programs walk along the layout's memory order.
    if CHANNELS_LAST:
        pb = r // n_cg
        cg = r - pb * n_cg
    else:
        cg = r // n_pb
        pb = r - cg * n_pb
    return b, cg * (CHUNKS * CB), pb * PB + tl.arange(0, PB)


@triton.jit
def _box_weights(boxes_ptr, win_ptr, wout_ptr, scale_ptr, scale, b, p, height, width,
                 M: tl.constexpr, MB: tl.constexpr, OPMATH: tl.constexpr):
    """[MB, PB] box_mix weights of pixels p of sample b: scale * inside_weight
    inside the box (clamped to the grid as load_box does), scale *
    outside_weight outside; 0 on the padding subnetworks."""
    row = boxes_ptr + b.to(tl.int64) * 4
    top = tl.minimum(tl.maximum(tl.load(row), 0), height)
    left = tl.minimum(tl.maximum(tl.load(row + 1), 0), width)
    bottom = tl.minimum(tl.maximum(tl.load(row + 2), top), height)
    right = tl.minimum(tl.maximum(tl.load(row + 3), left), width)
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


@triton.jit
def _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                 M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr, OPMATH: tl.constexpr):
    """[MB, PB] applied masks m_i + ratio * (1 - m_i) of feature cells p of
    sample b (UnmixParams::mask of box_math.h); DEFAULT_W: the default M = 2
    weights, inside (1, 0), outside (0, 1)."""
    row = boxes_ptr + b.to(tl.int64) * 4
    top = tl.minimum(tl.maximum(tl.load(row), 0), box_h)
    left = tl.minimum(tl.maximum(tl.load(row + 1), 0), box_w)
    bottom = tl.minimum(tl.maximum(tl.load(row + 2), top), box_h)
    right = tl.minimum(tl.maximum(tl.load(row + 3), left), box_w)
    i = tl.arange(0, MB)
    if DEFAULT_W:
        w_in = (i == 0).to(OPMATH)
        w_out = (i == 1).to(OPMATH)
    else:
        w_row = b.to(tl.int64) * M + i
        w_in = tl.load(win_ptr + w_row, mask=i < M, other=0.0)
        w_out = tl.load(wout_ptr + w_row, mask=i < M, other=0.0)
    if OPMATH == tl.float64:
        r = tl.load(ratio_ptr)
    else:
        r = tl.cast(ratio, tl.float32)
    # adaptive_avg_pool2d window of cell (y, x) on the box grid, and the
    # fraction of it the box covers
    y = p // w
    x = p - y * w
    y0 = (y * box_h) // h
    y1 = ((y + 1) * box_h + h - 1) // h
    x0 = (x * box_w) // w
    x1 = ((x + 1) * box_w + w - 1) // w
    cov_y = tl.maximum(tl.minimum(y1, bottom) - tl.maximum(y0, top), 0)
    cov_x = tl.maximum(tl.minimum(x1, right) - tl.maximum(x0, left), 0)
    covered = (cov_y * cov_x).to(OPMATH)
    cells = ((y1 - y0) * (x1 - x0)).to(OPMATH)
    if OPMATH == tl.float64:
        frac = covered / cells
    else:
        frac = tl.div_rn(covered, cells)
    # window_weight of box_math.h: the outside (inside) weight alone where the
    # box covers none (all) of the window, so a non-finite weight of the other
    # side never enters
    blend = w_out[:, None] + (w_in - w_out)[:, None] * frac[None, :]
    m = tl.where(frac[None, :] == 0, w_out[:, None], tl.where(frac[None, :] == 1, w_in[:, None], blend))
    return m + r * (1.0 - m)


# ---------------------------------------------------------------------------
# cutmix_boxes / cutmix_mask
# ---------------------------------------------------------------------------


@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_boxes_kernel(lam_ptr, center_ptr, boxes_ptr, area_ptr, B, height, width, HW,
                        OPMATH: tl.constexpr, BLOCK: tl.constexpr):
    """lam [B], center [B, 2] (both OPMATH, contiguous) -> boxes int32 [B, 4],
    area [B] (OPMATH): cutmix_box of box_math.h. Indices and box arithmetic
    are int64 (as in box_math.h: cy + cut_h / 2 may pass 2**31), which costs
    nothing measurable in this O(B) kernel."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = n < B
    lam = tl.load(lam_ptr + n, mask=valid, other=0.0)
    u_row = tl.load(center_ptr + 2 * n, mask=valid, other=0.0)
    u_col = tl.load(center_ptr + 2 * n + 1, mask=valid, other=0.0)
    # The cut size in float64 whatever OPMATH is (the official code's numpy
    # rule): lam (exact in float64) clamped into [0, 1], NaN -> 0, then
    # trunc(size * sqrt(lam)); float64 sqrt and product are correctly rounded.
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
    """[B, 1, H, W] contiguous mask, 1 inside each box; one [BH, BW] tile
    (in-sample indices and offsets int64 if INT64)."""
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
    row = boxes_ptr + b.to(tl.int64) * 4
    top = tl.minimum(tl.maximum(tl.load(row), 0), height)
    left = tl.minimum(tl.maximum(tl.load(row + 1), 0), width)
    bottom = tl.minimum(tl.maximum(tl.load(row + 2), top), height)
    right = tl.minimum(tl.maximum(tl.load(row + 3), left), width)
    y = yb * BH + tl.arange(0, BH)
    x = xb * BW + tl.arange(0, BW)
    if INT64:
        tl.static_assert(y.dtype == tl.int64 and x.dtype == tl.int64)
    inside = ((y >= top) & (y < bottom))[:, None] & ((x >= left) & (x < right))[None, :]
    valid = (y < height)[:, None] & (x < width)[None, :]
    base = out_ptr + b.to(tl.int64) * height * width
    tl.store(base + y[:, None] * width + x[None, :], inside.to(out_ptr.dtype.element_ty), mask=valid)


# ---------------------------------------------------------------------------
# Element-wise kernels. Tiles: [CB, PB] channels first, [PB, CB] channels
# last; [MB, ...] tensors add the subnetwork axis in front.
# ---------------------------------------------------------------------------


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def box_mix_kernel(x_ptr, boxes_ptr, win_ptr, wout_ptr, scale_ptr, out_ptr,
                   scale, stride_m, stride_b, B, C, HW, height, width,
                   M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                   CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """out[b] = sum_i w_i(b, y, x) * scale * x[i, b] over stacked x [M, B, C, H, W]."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    weights = _box_weights(boxes_ptr, win_ptr, wout_ptr, scale_ptr, scale, b, p, height, width, M, MB, OPMATH)
    i = tl.arange(0, MB)
    sub = (i < M)[:, None, None]
    x_base = x_ptr + b.to(tl.int64) * stride_b + (i.to(tl.int64) * stride_m)[:, None, None]
    out_base = out_ptr + b.to(tl.int64) * C * HW
    pvalid = p < HW
    if CHANNELS_LAST:
        weights = weights[:, :, None]
    else:
        weights = weights[:, None, :]
    for j in range(CHUNKS):
        c = c0 + j * CB + tl.arange(0, CB)
        if INT64:  # checked at compile time (and by the interpreter tests)
            tl.static_assert(c.dtype == tl.int64 and p.dtype == tl.int64)
        if CHANNELS_LAST:
            offs = p[:, None] * C + c[None, :]
            valid = pvalid[:, None] & (c < C)[None, :]
        else:
            offs = c[:, None] * HW + p[None, :]
            valid = (c < C)[:, None] & pvalid[None, :]
        xs = tl.load(x_base + offs[None], mask=sub & valid[None], other=0.0)
        acc = tl.sum(weights * xs.to(OPMATH), axis=0)
        tl.store(out_base + offs, acc.to(out_ptr.dtype.element_ty), mask=valid)


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def box_mix_backward_kernel(g_ptr, boxes_ptr, win_ptr, wout_ptr, scale_ptr, out_ptr,
                            scale, out_stride_m, B, C, HW, height, width,
                            M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                            CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """grad_x[i, b] = w_i(b, y, x) * scale * grad_out[b]."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    weights = _box_weights(boxes_ptr, win_ptr, wout_ptr, scale_ptr, scale, b, p, height, width, M, MB, OPMATH)
    i = tl.arange(0, MB)
    sub = (i < M)[:, None, None]
    g_base = g_ptr + b.to(tl.int64) * C * HW
    out_base = out_ptr + b.to(tl.int64) * C * HW + (i.to(tl.int64) * out_stride_m)[:, None, None]
    pvalid = p < HW
    if CHANNELS_LAST:
        weights = weights[:, :, None]
    else:
        weights = weights[:, None, :]
    for j in range(CHUNKS):
        c = c0 + j * CB + tl.arange(0, CB)
        if INT64:  # checked at compile time (and by the interpreter tests)
            tl.static_assert(c.dtype == tl.int64 and p.dtype == tl.int64)
        if CHANNELS_LAST:
            offs = p[:, None] * C + c[None, :]
            valid = pvalid[:, None] & (c < C)[None, :]
        else:
            offs = c[:, None] * HW + p[None, :]
            valid = (c < C)[:, None] & pvalid[None, :]
        g = tl.load(g_base + offs, mask=valid, other=0.0).to(OPMATH)
        res = weights * g[None]
        tl.store(out_base + offs[None], res.to(out_ptr.dtype.element_ty), mask=sub & valid[None])


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_unmix_kernel(f_ptr, boxes_ptr, win_ptr, wout_ptr, ratio_ptr, out_ptr,
                        ratio, out_stride_m, B, C, HW, h, w, box_h, box_w, channels,
                        M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        OPMATH: tl.constexpr, CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """out[i, b, c] = features[b, c] * mask_i (c < channels), features[b, c] otherwise."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    masks = _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                         M, MB, DEFAULT_W, OPMATH)
    i = tl.arange(0, MB)
    sub = (i < M)[:, None, None]
    f_base = f_ptr + b.to(tl.int64) * C * HW
    out_base = out_ptr + b.to(tl.int64) * C * HW + (i.to(tl.int64) * out_stride_m)[:, None, None]
    pvalid = p < HW
    if CHANNELS_LAST:
        masks = masks[:, :, None]
    else:
        masks = masks[:, None, :]
    for j in range(CHUNKS):
        c = c0 + j * CB + tl.arange(0, CB)
        if INT64:  # checked at compile time (and by the interpreter tests)
            tl.static_assert(c.dtype == tl.int64 and p.dtype == tl.int64)
        if CHANNELS_LAST:
            offs = p[:, None] * C + c[None, :]
            valid = pvalid[:, None] & (c < C)[None, :]
            unmixed_channel = (c < channels)[None, None, :]
        else:
            offs = c[:, None] * HW + p[None, :]
            valid = (c < C)[:, None] & pvalid[None, :]
            unmixed_channel = (c < channels)[None, :, None]
        f = tl.load(f_base + offs, mask=valid, other=0.0)[None]
        unmixed = (f.to(OPMATH) * masks).to(out_ptr.dtype.element_ty)
        res = tl.where(unmixed_channel, unmixed, f)  # other channels: copied exactly
        tl.store(out_base + offs[None], res, mask=sub & valid[None])


@_tuned(elementwise_meta, ELEMENTWISE_TUNING)
@triton.jit(do_not_specialize=UNSPECIALIZED)
def cutmix_unmix_backward_kernel(g_ptr, boxes_ptr, win_ptr, wout_ptr, ratio_ptr, out_ptr,
                                 ratio, stride_m, stride_b, B, C, HW, h, w, box_h, box_w, channels,
                                 M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr,
                                 CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                                 CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr):
    """grad_f[b, c] = sum_i grad_out[i, b, c] * (mask_i if c < channels else 1)."""
    b, c0, p = _tile_program(C, HW, CB, PB, CHUNKS, CHANNELS_LAST, INT64)
    masks = _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                         M, MB, DEFAULT_W, OPMATH)
    i = tl.arange(0, MB)
    sub = (i < M)[:, None, None]
    g_base = g_ptr + b.to(tl.int64) * stride_b + (i.to(tl.int64) * stride_m)[:, None, None]
    out_base = out_ptr + b.to(tl.int64) * C * HW
    pvalid = p < HW
    if CHANNELS_LAST:
        masks = masks[:, :, None]
    else:
        masks = masks[:, None, :]
    for j in range(CHUNKS):
        c = c0 + j * CB + tl.arange(0, CB)
        if INT64:  # checked at compile time (and by the interpreter tests)
            tl.static_assert(c.dtype == tl.int64 and p.dtype == tl.int64)
        if CHANNELS_LAST:
            offs = p[:, None] * C + c[None, :]
            valid = pvalid[:, None] & (c < C)[None, :]
            unmixed_channel = (c < channels)[None, None, :]
        else:
            offs = c[:, None] * HW + p[None, :]
            valid = (c < C)[:, None] & pvalid[None, :]
            unmixed_channel = (c < channels)[None, :, None]
        g = tl.load(g_base + offs[None], mask=sub & valid[None], other=0.0).to(OPMATH)
        acc = tl.sum(tl.where(unmixed_channel, g * masks, g), axis=0)
        tl.store(out_base + offs, acc.to(out_ptr.dtype.element_ty), mask=valid)


# ---------------------------------------------------------------------------
# cutmix_unmix_pool
# ---------------------------------------------------------------------------


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
    mean_p f[b, c, p] otherwise. One program per (b, channel block)."""
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
    (c < channels), sum_i grad_out[i, b, c] / (h * w) otherwise."""
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
