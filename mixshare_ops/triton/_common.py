"""Shared parts of the Triton ops: the launch limits and autotuning switches (``INT32_LIMIT``,
``GRID_LIMIT``, ``AUTOTUNE``, ``AUTOTUNE_KEY``), the tile heuristics and autotuning
(:func:`elementwise_meta`, :func:`pool_meta`, :func:`masks_meta`, :func:`autotuner`), the jit
device helpers (``_tile_program``, ``_load_box``, ``_unmix_masks``, ``_stacked_tiles``) and the
launch helpers (grid bounds and checks, ``_run``, ``_launch_elementwise``).

Kernels assume valid arguments (the ops check them with :mod:`mixshare_ops.checks`); their index
and box math is that of ``csrc/box_math.h``. How the kernels tile, round, index and tune: the
README, "The Triton kernels".
"""

import contextlib
import os

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner

from mixshare_ops._layout import CHANNELS_LAST
from mixshare_ops.conventions import DEFAULT_SUBNETS

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# MIXSHARE_OPS_TRITON_AUTOTUNE=0 (read at import) launches the heuristic tiles
# without benchmarking, as the interpreter does: one compile per variant.
AUTOTUNE_ENV_VAR = "MIXSHARE_OPS_TRITON_AUTOTUNE"
AUTOTUNE = not INTERPRET and os.environ.get(AUTOTUNE_ENV_VAR, "1").lower() not in ("0", "false", "no", "off")
# In-sample values (offsets, lane indices, window products) that can reach
# this make the launchers set INT64.
INT32_LIMIT = 2**31
# Most programs of a launch grid (program_id(0)).
GRID_LIMIT = 2**31 - 1
# C, H * W, layout, M and index width fix the valid tiles and their speed;
# B is left out so that a new batch size does not re-tune (and synchronise).
AUTOTUNE_KEY = ["C", "HW", "CHANNELS_LAST", "MB", "M", "INT64"]
# Scalar arguments not specialised on (== 1, % 16): a new B reuses the binary.
UNSPECIALIZED = ["B"]

# ---------------------------------------------------------------------------
# Tile heuristics and autotune search spaces
# ---------------------------------------------------------------------------

# (TILE, num_warps) candidates; TILE is the number of feature elements of one
# [CB, PB] tile for M = 2 (halved for every doubling of MB beyond 2). The first
# is the default: 16 elements of the [MB, CB, PB] tensors per thread keeps the
# channels_last variants near 60 registers (32 per thread doubles that).
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
    """Decorator: autotunes a kernel on GPUs, leaves it as it is under the interpreter."""

    def decorate(fn):
        return autotuner(fn, meta_fn, candidates) if AUTOTUNE else fn

    return decorate


# ---------------------------------------------------------------------------
# Device helpers, inlined when compiled. Under the interpreter each call
# re-patches triton.language (about half a millisecond), so none is called
# inside a channel loop.
# ---------------------------------------------------------------------------


@triton.jit
def _tile_program(C, HW, CB: tl.constexpr, PB: tl.constexpr, CHUNKS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                  INT64: tl.constexpr):
    """This element-wise program's sample b, first channel and [PB] pixel indices
    (int64 if INT64, from C and HW widened first: C + CB and HW + PB may pass
    2**31 too)."""
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
def _load_box(boxes_ptr, b, height, width):
    """(top, left, bottom, right) of box b (int32 [B, 4]) clamped to a height x
    width grid, as load_box of box_math.h."""
    row = boxes_ptr + b.to(tl.int64) * 4
    top = tl.minimum(tl.maximum(tl.load(row), 0), height)
    left = tl.minimum(tl.maximum(tl.load(row + 1), 0), width)
    bottom = tl.minimum(tl.maximum(tl.load(row + 2), top), height)
    right = tl.minimum(tl.maximum(tl.load(row + 3), left), width)
    return top, left, bottom, right


@triton.jit
def _unmix_masks(boxes_ptr, win_ptr, wout_ptr, ratio_ptr, ratio, b, p, h, w, box_h, box_w,
                 M: tl.constexpr, MB: tl.constexpr, DEFAULT_W: tl.constexpr, OPMATH: tl.constexpr):
    """[MB, PB] applied masks m_i + ratio * (1 - m_i) of feature cells p of
    sample b (UnmixParams::mask of box_math.h); DEFAULT_W: the default M = 2
    weights of mixshare_ops.conventions, inside (1, 0), outside (0, 1), formed here (compared with
    the definition by tests/test_ops_conventions.py)."""
    top, left, bottom, right = _load_box(boxes_ptr, b, box_h, box_w)
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


@triton.jit
def _stacked_tiles(flat_ptr, stacked_ptr, coef, b, c0, p, stacked_offset, stride_m, channels, C, HW,
                   M: tl.constexpr, MB: tl.constexpr, CHANNELS_LAST: tl.constexpr, OPMATH: tl.constexpr,
                   CB: tl.constexpr, CHUNKS: tl.constexpr, INT64: tl.constexpr,
                   REDUCE: tl.constexpr, PARTIAL: tl.constexpr):
    """The body of the element-wise kernels: channels c0 + [0, CHUNKS * CB) by
    pixels p of sample b, between a flat tensor (sample b at b * C * HW) and a
    stacked one (subnetwork i of sample b at stacked_offset + i * stride_m),
    with the [MB, PB] per-pixel coefficients coef.

    REDUCE: flat = sum_i coef_i * stacked_i, else stacked_i = coef_i * flat.
    PARTIAL: only channels < ``channels`` are weighted; the others are summed
    (REDUCE) or copied exactly."""
    i = tl.arange(0, MB)
    sub = (i < M)[:, None, None]
    flat = flat_ptr + b.to(tl.int64) * C * HW
    stacked = stacked_ptr + stacked_offset + (i.to(tl.int64) * stride_m)[:, None, None]
    pvalid = p < HW
    if CHANNELS_LAST:
        coef = coef[:, :, None]
    else:
        coef = coef[:, None, :]
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
        if PARTIAL:
            if CHANNELS_LAST:
                weighted = (c < channels)[None, None, :]
            else:
                weighted = (c < channels)[None, :, None]
        if REDUCE:
            xs = tl.load(stacked + offs[None], mask=sub & valid[None], other=0.0).to(OPMATH)
            terms = coef * xs
            if PARTIAL:
                terms = tl.where(weighted, terms, xs)
            tl.store(flat + offs, tl.sum(terms, axis=0).to(flat_ptr.dtype.element_ty), mask=valid)
        else:
            x = tl.load(flat + offs, mask=valid, other=0.0)[None]
            res = (x.to(OPMATH) * coef).to(stacked_ptr.dtype.element_ty)
            if PARTIAL:
                res = tl.where(weighted, res, x)
            tl.store(stacked + offs[None], res, mask=sub & valid[None])


# ---------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------

# More than any tile extent (CHUNKS * CB, PB, BH, BW): the channel and pixel
# indices of a tile's padding lanes stay below the size plus this.
_TILE_PAD = 2**16


def _tl_dtype(opmath: torch.dtype):
    """The Triton dtype of an opmath dtype (:func:`mixshare_ops.conventions.opmath_dtype`)."""
    return tl.float64 if opmath == torch.float64 else tl.float32


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it t's."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _scalar_arg(value: float, opmath: torch.dtype, device: torch.device):
    """(float argument, pointer argument) of a float scalar used in opmath:
    a float32 kernel argument, or for float64 opmath a 1-element tensor
    (filled on the device: no host-device copy)."""
    if opmath == torch.float64:
        return 0.0, torch.full((1,), float(value), dtype=torch.float64, device=device)
    return float(value), None


def _unmix_weights(inside_weight, outside_weight, opmath):
    """(M, inside [B, M], outside [B, M], default): None weights are the default M = 2 weights,
    which the kernels form themselves (``DEFAULT_W``)."""
    if inside_weight is None:
        return DEFAULT_SUBNETS, None, None, True
    w_in = inside_weight.to(opmath).contiguous()
    w_out = outside_weight.to(opmath).contiguous()
    return w_in.shape[1], w_in, w_out, False


def _int64(*bounds: int) -> bool:
    """A kernel's INT64 constexpr: whether ``bounds`` (of the values it forms:
    offsets, lane indices, window products) reach INT32_LIMIT."""
    return max(bounds) >= INT32_LIMIT


def _slice_bound(channels: int, hw: int) -> int:
    """Bound on the in-sample values of the feature kernels: offsets c * HW + p
    or p * C + c (< C * HW), lane indices (< C or HW plus a tile)."""
    return max(channels * hw, channels + _TILE_PAD, hw + _TILE_PAD)


def _window_bound(h: int, w: int, box_height: int, box_width: int) -> int:
    """Bound on the adaptive-pool window math: (y + 1) * box_h + h - 1 (and x),
    and the cell counts (y1 - y0) * (x1 - x0), each factor <= box_h // h + 2."""
    return max((h + 1) * box_height + h, (w + 1) * box_width + w,
               (box_height // h + 2) * (box_width // w + 2))


def _check_grid(programs: int, op: str, what: str) -> None:
    if programs > GRID_LIMIT:
        raise ValueError(
            f"{op} (Triton backend): {what} needs up to {programs} programs, more than a launch grid holds "
            f"(GRID_LIMIT = {GRID_LIMIT}, Triton's limit on program_id(0)); "
            "use a smaller batch or the cuda backend")


def _candidates(tuning):
    """(TILE, num_warps) candidates a launch may use: all when autotuning, else the default."""
    return tuning if AUTOTUNE else tuning[:1]


def _elementwise_grid_bound(batch: int, channels: int, hw: int, subnets: int) -> int:
    """Most programs an element-wise launch can have, whatever tile it gets: a
    tuned tile may come from another batch size, so CHUNKS = 1; CB and PB do
    not depend on B."""
    if batch * channels * hw <= GRID_LIMIT:  # every program covers an element
        return batch * channels * hw
    mb = next_pow2(subnets)
    return max(elementwise_programs(batch, channels, hw,
                                    {**elementwise_meta(1, channels, hw, channels_last, mb, tile, warps), "CHUNKS": 1})
               for tile, warps in _candidates(ELEMENTWISE_TUNING) for channels_last in (False, True))


def _pool_grid_bound(batch: int, channels: int, hw: int, subnets: int) -> int:
    """Most programs of the pooling forward (and of unmix_masks_kernel, B): the
    smallest channel block a tile can have is pool_meta's at B = 1."""
    if batch * channels <= GRID_LIMIT:  # CB >= 1; unmix_masks_kernel: B programs
        return batch * channels
    mb = next_pow2(subnets)
    return max(batch * cdiv(channels, pool_meta(1, channels, hw, channels_last, mb, tile, warps)["CB"])
               for tile, warps in _candidates(POOL_TUNING) for channels_last in (False, True))


def _what(name: str, batch: int, channels: int, height: int, width: int) -> str:
    return f"{name} with B = {batch} samples of C * H * W = {channels} * {height} * {width}"


def _run(kernel, grid, args, consts, default_meta):
    """Launches a tunable kernel: autotuned, or with the heuristic defaults."""
    if isinstance(kernel, Autotuner):
        if AUTOTUNE:
            kernel[grid](*args, **consts)
            return
        kernel = kernel.fn
    kernel[grid](*args, **consts, **default_meta())


def _launch_elementwise(kernel, args, *, batch, channels, hw, subnets, layout, opmath, window=0, **consts):
    """Launches an element-wise kernel over a [B, C, HW] problem (``window``:
    the bound of its adaptive-pool window products, if any)."""
    mb = next_pow2(subnets)
    channels_last = layout == CHANNELS_LAST
    consts.update(M=subnets, MB=mb, CHANNELS_LAST=channels_last, OPMATH=_tl_dtype(opmath),
                  INT64=_int64(_slice_bound(channels, hw), window))

    def grid(meta):
        programs = elementwise_programs(batch, channels, hw, meta)
        # the launchers' _elementwise_grid_bound has refused such sizes before allocating
        _check_grid(programs, "Triton element-wise kernel", f"a [B, C, H * W] = [{batch}, {channels}, {hw}] problem")
        return (programs,)

    _run(kernel, grid, args, consts, lambda: elementwise_meta(batch, channels, hw, channels_last, mb))
