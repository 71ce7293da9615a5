"""Launchers of the Triton kernels, one per op.

Arguments are those of the op schemas (``csrc/ops.cpp``), already validated
by the caller: shapes, dtypes, devices and values are not checked again.
Outputs have the layouts the C++ kernels give them: element-wise outputs
follow the input's slice layout (:mod:`mixshare_ops._layout`), pooled outputs
are contiguous ``[M, B, C]``, the pooling backward is channels_last when
asked. Empty outputs are returned without launching anything.

Sizes: each launcher first checks that its grid fits ``kernels.GRID_LIMIT``
programs (else ``ValueError``, before any allocation or copy), and sets the
kernels' ``INT64`` constexpr when an in-sample value they form can reach
``kernels.INT32_LIMIT`` (both read at each call).

The launchers work on CUDA tensors and, under the Triton interpreter
(``TRITON_INTERPRET=1``), on CPU tensors.
"""

import contextlib

import torch
import triton.language as tl
from triton.runtime.autotuner import Autotuner

from mixshare_ops._layout import (
    CHANNELS_FIRST,
    CHANNELS_LAST,
    empty_features,
    empty_stacked,
    feature_layout,
    stacked_layout,
)
from mixshare_ops.triton import kernels

__all__ = [
    "cutmix_boxes",
    "cutmix_mask",
    "box_mix",
    "box_mix_backward",
    "cutmix_unmix",
    "cutmix_unmix_backward",
    "cutmix_unmix_pool",
    "cutmix_unmix_pool_backward",
]

_BOXES_BLOCK = 256
_MASK_TILE = 2048


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it t's."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _scalar_arg(value: float, opmath: torch.dtype, device: torch.device):
    """(float argument, pointer argument) of a float scalar used in opmath.

    Kernel float arguments are float32: rounded once, as the C++ kernels do
    for float32 opmath. A float64 scalar travels as a 1-element tensor
    (filled on the device: no host-device copy, no synchronisation)."""
    if opmath == torch.float64:
        return 0.0, torch.full((1,), float(value), dtype=torch.float64, device=device)
    return float(value), None


def _unmix_weights(inside_weight, outside_weight, opmath):
    """(M, inside, outside, default): None weights are the default M = 2."""
    if inside_weight is None:
        return 2, None, None, True
    w_in = inside_weight.to(opmath).contiguous()
    w_out = outside_weight.to(opmath).contiguous()
    return w_in.shape[1], w_in, w_out, False


# More than any tile extent (CHUNKS * CB, PB, BH, BW): the channel and pixel
# indices of a tile's padding lanes stay below the size plus this.
_TILE_PAD = 2**16


def _int64(*bounds: int) -> bool:
    """Whether a kernel needs int64 in-sample arithmetic (its INT64 constexpr):
    ``bounds`` bound the values it forms (offsets, lane indices, window products)."""
    return max(bounds) >= kernels.INT32_LIMIT


def _slice_bound(channels: int, hw: int) -> int:
    """Bound on the in-sample values of the feature kernels: offsets c * HW + p
    or p * C + c (< C * HW), channel and pixel indices of tile lanes (< C or
    HW plus a tile)."""
    return max(channels * hw, channels + _TILE_PAD, hw + _TILE_PAD)


def _window_bound(h: int, w: int, box_height: int, box_width: int) -> int:
    """Bound on the adaptive-pool window math: (y + 1) * box_h + h - 1 (and x),
    and the cell counts (y1 - y0) * (x1 - x0), each factor <= box_h // h + 2."""
    return max((h + 1) * box_height + h, (w + 1) * box_width + w,
               (box_height // h + 2) * (box_width // w + 2))


def _check_grid(programs: int, op: str, what: str) -> None:
    if programs > kernels.GRID_LIMIT:
        raise ValueError(
            f"{op} (Triton backend): {what} needs up to {programs} programs, more than a launch grid holds "
            f"(kernels.GRID_LIMIT = {kernels.GRID_LIMIT}, Triton's limit on program_id(0)); "
            "use a smaller batch or the cuda backend")


def _candidates(tuning):
    """(TILE, num_warps) candidates a launch may use: all when autotuning, else the default."""
    return tuning if kernels.AUTOTUNE else tuning[:1]


def _elementwise_grid_bound(batch: int, channels: int, hw: int, subnets: int) -> int:
    """Most programs an element-wise launch can have, whatever tile it gets: a
    tuned tile may come from another batch size, so CHUNKS = 1; CB and PB do
    not depend on B."""
    if batch * channels * hw <= kernels.GRID_LIMIT:  # every program covers an element
        return batch * channels * hw
    mb = kernels.next_pow2(subnets)
    return max(kernels.elementwise_programs(batch, channels, hw,
                                            {**kernels.elementwise_meta(1, channels, hw, channels_last, mb,
                                                                        tile, warps), "CHUNKS": 1})
               for tile, warps in _candidates(kernels.ELEMENTWISE_TUNING) for channels_last in (False, True))


def _pool_grid_bound(batch: int, channels: int, hw: int, subnets: int) -> int:
    """Most programs of the pooling forward (and of unmix_masks_kernel, B): the
    smallest channel block a tile can have is pool_meta's at B = 1."""
    if batch * channels <= kernels.GRID_LIMIT:  # CB >= 1; unmix_masks_kernel: B programs
        return batch * channels
    mb = kernels.next_pow2(subnets)
    return max(batch * kernels.cdiv(channels, kernels.pool_meta(1, channels, hw, channels_last, mb, tile, warps)["CB"])
               for tile, warps in _candidates(kernels.POOL_TUNING) for channels_last in (False, True))


def _what(name: str, batch: int, channels: int, height: int, width: int) -> str:
    return f"{name} with B = {batch} samples of C * H * W = {channels} * {height} * {width}"


def _run(kernel, grid, args, consts, default_meta):
    """Launches a tunable kernel: autotuned, or with the heuristic defaults."""
    if isinstance(kernel, Autotuner):
        if kernels.AUTOTUNE:
            kernel[grid](*args, **consts)
            return
        kernel = kernel.fn
    kernel[grid](*args, **consts, **default_meta())


def _launch_elementwise(kernel, args, *, batch, channels, hw, subnets, layout, opmath, window=0, **consts):
    """Launches one of the element-wise kernels over a [B, C, HW] problem
    (``window``: the bound of its adaptive-pool window products, if any)."""
    mb = kernels.next_pow2(subnets)
    channels_last = layout == CHANNELS_LAST
    consts.update(M=subnets, MB=mb, CHANNELS_LAST=channels_last, OPMATH=_tl_dtype(opmath),
                  INT64=_int64(_slice_bound(channels, hw), window))

    def grid(meta):
        programs = kernels.elementwise_programs(batch, channels, hw, meta)
        # the launchers' _elementwise_grid_bound has refused such sizes before allocating
        _check_grid(programs, "Triton element-wise kernel", f"a [B, C, H * W] = [{batch}, {channels}, {hw}] problem")
        return (programs,)

    _run(kernel, grid, args, consts, lambda: kernels.elementwise_meta(batch, channels, hw, channels_last, mb))


def _unmix_masks(boxes, w_in, w_out, default, subnets, batch, h, w, box_height, box_width, ratio,
                 normalize, opmath, device):
    """Applied masks [B, M, h * w] and reciprocal pooling denominators [B, M]."""
    hw = h * w
    masks = torch.empty((batch, subnets, hw), dtype=opmath, device=device)
    inv = torch.empty((batch, subnets), dtype=opmath, device=device)
    ratio_v, ratio_t = _scalar_arg(ratio, opmath, device)
    mb = kernels.next_pow2(subnets)
    meta = kernels.masks_meta(hw, mb)
    kernels.unmix_masks_kernel[(batch,)](
        boxes, w_in, w_out, ratio_t, masks, inv,
        ratio_v, h, w, box_height, box_width, hw,
        M=subnets, MB=mb, DEFAULT_W=default, MASKED=normalize == "masked", OPMATH=_tl_dtype(opmath),
        INT64=_int64(hw + _TILE_PAD, _window_bound(h, w, box_height, box_width)), **meta,
    )
    return masks, inv


def cutmix_boxes(lam, center, height, width):
    """(boxes int32 [B, 4], area [B] in lam.dtype)."""
    height, width = int(height), int(width)
    compute = torch.float64 if torch.float64 in (lam.dtype, center.dtype) else torch.float32
    batch = lam.shape[0]
    _check_grid(kernels.cdiv(batch, _BOXES_BLOCK), "cutmix_boxes", f"lam with B = {batch}")
    boxes = torch.empty((batch, 4), dtype=torch.int32, device=lam.device)
    area = torch.empty((batch,), dtype=compute, device=lam.device)
    if batch > 0:
        lam_c = lam.to(compute).contiguous()
        center_c = center.to(compute).contiguous()
        with _on_device(lam):
            kernels.cutmix_boxes_kernel[(kernels.cdiv(batch, _BOXES_BLOCK),)](
                lam_c, center_c, boxes, area, batch, height, width, height * width,
                OPMATH=_tl_dtype(compute), BLOCK=_BOXES_BLOCK, num_warps=4,
            )
    return boxes, area.to(lam.dtype)


def cutmix_mask(boxes, height, width, dtype):
    """[B, 1, H, W] mask in dtype: 1 inside each box."""
    height, width = int(height), int(width)
    batch = boxes.shape[0]
    bw = min(kernels.next_pow2(width), 256)
    bh = min(kernels.next_pow2(height), max(1, _MASK_TILE // bw))
    grid = (batch * kernels.cdiv(height, bh) * kernels.cdiv(width, bw),)
    _check_grid(grid[0], "cutmix_mask", f"boxes with B = {batch} on a {height} x {width} grid")
    out = torch.empty((batch, 1, height, width), dtype=dtype, device=boxes.device)
    if out.numel() == 0:
        return out
    with _on_device(boxes):
        kernels.cutmix_mask_kernel[grid](boxes.contiguous(), out, height, width, BH=bh, BW=bw,
                                         INT64=_int64((height + bh) * width + bw), num_warps=4)
    return out


def box_mix(x, boxes, inside_weight, outside_weight, scale):
    """Stacked x [M, B, C, H, W] -> mixed [B, C, H, W] in x's slice layout."""
    subnets, batch, channels, height, width = x.shape
    _check_grid(_elementwise_grid_bound(batch, channels, height * width, subnets), "box_mix",
                _what("x", batch, channels, height, width))
    x, layout = stacked_layout(x)
    out = empty_features(batch, channels, height, width, layout, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    opmath = _opmath(x.dtype)
    w_in = inside_weight.to(opmath).contiguous()
    w_out = outside_weight.to(opmath).contiguous()
    scale_v, scale_t = _scalar_arg(scale, opmath, x.device)
    hw = height * width
    with _on_device(x):
        _launch_elementwise(
            kernels.box_mix_kernel,
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
    opmath = _opmath(grad_out.dtype)
    w_in = inside_weight.to(opmath).contiguous()
    w_out = outside_weight.to(opmath).contiguous()
    scale_v, scale_t = _scalar_arg(scale, opmath, grad_out.device)
    hw = height * width
    with _on_device(grad_out):
        _launch_elementwise(
            kernels.box_mix_backward_kernel,
            (grad_out, boxes.contiguous(), w_in, w_out, scale_t, grad_x,
             scale_v, grad_x.stride(0), batch, channels, hw, height, width),
            batch=batch, channels=channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
        )
    return grad_x


def cutmix_unmix(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels):
    """features [B, C, h, w] -> unmixed [M, B, C, h, w] in features' slice layout."""
    batch, num_channels, h, w = features.shape
    subnets = 2 if inside_weight is None else inside_weight.shape[1]
    _check_grid(_elementwise_grid_bound(batch, num_channels, h * w, subnets), "cutmix_unmix",
                _what("features", batch, num_channels, h, w))
    features, layout = feature_layout(features)
    opmath = _opmath(features.dtype)
    subnets, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    out = empty_stacked(subnets, batch, num_channels, h, w, layout, dtype=features.dtype, device=features.device)
    if out.numel() == 0:
        return out
    ratio_v, ratio_t = _scalar_arg(ratio, opmath, features.device)
    hw = h * w
    with _on_device(features):
        _launch_elementwise(
            kernels.cutmix_unmix_kernel,
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
    opmath = _opmath(grad_out.dtype)
    _, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    ratio_v, ratio_t = _scalar_arg(ratio, opmath, grad_out.device)
    hw = h * w
    with _on_device(grad_out):
        _launch_elementwise(
            kernels.cutmix_unmix_backward_kernel,
            (grad_out, boxes.contiguous(), w_in, w_out, ratio_t, grad_f,
             ratio_v, grad_out.stride(0), grad_out.stride(1), batch, num_channels, hw, h, w,
             int(box_height), int(box_width), int(channels)),
            batch=batch, channels=num_channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
            window=_window_bound(h, w, int(box_height), int(box_width)), DEFAULT_W=default,
        )
    return grad_f


def cutmix_unmix_pool(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels,
                      normalize):
    """features [B, C, h, w] -> pooled [M, B, C] (contiguous)."""
    batch, num_channels, h, w = features.shape
    subnets = 2 if inside_weight is None else inside_weight.shape[1]
    _check_grid(_pool_grid_bound(batch, num_channels, h * w, subnets), "cutmix_unmix_pool",
                _what("features", batch, num_channels, h, w))
    features, layout = feature_layout(features)
    opmath = _opmath(features.dtype)
    subnets, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    out = torch.empty((subnets, batch, num_channels), dtype=features.dtype, device=features.device)
    if out.numel() == 0:
        return out
    hw = h * w
    mb = kernels.next_pow2(subnets)
    channels_last = layout == CHANNELS_LAST
    with _on_device(features):
        masks, inv = _unmix_masks(boxes.contiguous(), w_in, w_out, default, subnets, batch, h, w, int(box_height),
                                  int(box_width), ratio, normalize, opmath, features.device)
        consts = dict(M=subnets, MB=mb, CHANNELS_LAST=channels_last, OPMATH=_tl_dtype(opmath),
                      INT64=_int64(_slice_bound(num_channels, hw)))

        def grid(meta):
            return (batch * kernels.cdiv(num_channels, meta["CB"]),)

        args = (features, masks, inv, out, batch, num_channels, hw, int(channels))
        _run(kernels.cutmix_unmix_pool_kernel, grid, args, consts,
             lambda: kernels.pool_meta(batch, num_channels, hw, channels_last, mb))
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
    opmath = _opmath(grad_out.dtype)
    _, w_in, w_out, default = _unmix_weights(inside_weight, outside_weight, opmath)
    grad_out = grad_out.contiguous()
    hw = h * w
    with _on_device(grad_out):
        masks, inv = _unmix_masks(boxes.contiguous(), w_in, w_out, default, subnets, batch, h, w, int(box_height),
                                  int(box_width), ratio, normalize, opmath, grad_out.device)
        _launch_elementwise(
            kernels.cutmix_unmix_pool_backward_kernel,
            (grad_out, masks, inv, grad_f, batch, num_channels, hw, int(channels)),
            batch=batch, channels=num_channels, hw=hw, subnets=subnets, layout=layout, opmath=opmath,
        )
    return grad_f
