"""Edge checks of the fused kernels against the reference: the paths the unit tests' small cases miss.

    python -m benchmarks.gpu_edge --device cuda --backends cuda triton [--size small|full] [--big] [--stream]
    python -m benchmarks.gpu_edge --device cpu --backends cpu --size tiny        # the CPU dry run

Each check compares a fused backend with :mod:`mixshare_ops.reference` (same
device and dtype, tolerances of :mod:`mixshare_ops.testing`), forward and backward, after
filling the free blocks of the CUDA caching allocator with NaN so that an
output element a kernel never writes shows as a mismatch. What the cases reach:

* 128-bit vector paths (fp32 x4, bf16/fp16 x8, fp64 x2) and their scalar
  fallbacks (odd slice sizes, misaligned ``data_ptr``);
* contiguous (NCHW planes), channels_last (pixels) and generic chunks;
* pooling with 8 lanes per plane (at most 64 vectors a plane) and 32 lanes
  (NCHW), and channel tiles of 8 and 32 lanes (channels_last);
* M = 2, 3 and 5 (one and two passes of 4 subnetworks in the pooling kernels);
* ``[B, M, ...]`` transposed and stride-0 (expanded) stacked inputs;
* wild boxes with value checks off (clamped, never a fault; CUDA only);
* ``--big``: B = 70,000 (above gridDim.y's 65,535) and more than 2**31
  elements, in total and in one sample (64-bit indexing);
* ``--stream``: a side stream, CUDA-graph capture, and no host synchronisation.

Prints one ``PASS``/``FAIL`` line per check and a count; exits 1 if any failed,
2 if a backend in ``--require`` is not usable on the device.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import traceback
import zlib
from typing import Callable, Optional

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import mixshare_ops  # noqa: E402
from mixshare_ops import reference  # noqa: E402
from mixshare_ops.testing import assert_close, make_boxes, to_layout  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


# ------------------------------------------------------------------- helpers


# NaN as a float32 word and as each of its bfloat16 and float16 halves.
NAN_WORD = 0x7FC07FC0


def free_blocks(snapshot: list[dict], device_index: int) -> list[tuple[int, int]]:
    """``(address, bytes)`` of the free blocks of the caching allocator's segments on one device, in
    both pools (``torch.cuda.memory_snapshot()``: blocks in address order within each segment)."""
    blocks = []
    for segment in snapshot:
        if segment.get("device", device_index) != device_index:
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            if block["state"] == "inactive":
                blocks.append((block.get("address", address), block["size"]))
            address += block["size"]
    return blocks


class _DeviceWords:
    """Raw device memory as int32 words, for ``torch.as_tensor`` (no allocation)."""

    def __init__(self, address: int, nbytes: int):
        self.__cuda_array_interface__ = {"shape": (nbytes // 4,), "typestr": "<i4", "data": (address, False),
                                         "strides": None, "version": 2}


def poison(device: torch.device) -> None:
    """Fill every free block of the caching allocator with NaN, the small pool (blocks under 1 MiB,
    where small outputs are allocated) as well as the large one (no-op off CUDA)."""
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.synchronize(device)
    for address, nbytes in free_blocks(torch.cuda.memory_snapshot(), index):
        if nbytes >= 4:
            torch.as_tensor(_DeviceWords(address, nbytes), device=device).fill_(NAN_WORD)
    torch.cuda.synchronize(device)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: Optional[torch.dtype] = None) -> None:
    """Same finiteness pattern (an unwritten NaN shows) and equal within the dtype's tolerance."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite_a, finite_e = torch.isfinite(actual.float()), torch.isfinite(expected.float())
    assert torch.equal(finite_a, finite_e), f"{int((finite_a != finite_e).sum())} elements differ in finiteness"
    assert_close(actual, expected, dtype)


def seeded(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(shape, dtype, device, generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device, dtype)


def misaligned(shape, dtype, device, generator) -> torch.Tensor:
    """A contiguous tensor whose data_ptr is one element past an aligned address."""
    numel = 1
    for s in shape:
        numel *= s
    t = torch.empty(numel + 1, dtype=dtype, device=device)[1:].view(shape)
    return t.copy_(torch.randn(shape, generator=generator).to(dtype))


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``[..., C, H, W]`` with channels innermost in memory, same values."""
    return to_layout(t, channels_last=True)


def random_boxes(batch: int, height: int, width: int, generator: torch.Generator, device) -> torch.Tensor:
    """The test suite's mixed boxes (random; with 3 or more samples one full and one empty) on ``device``."""
    return make_boxes(batch, height, width, "mixed", generator).to(device)


# --------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class MixCase:
    """box_mix on x ``[M, B, C, H, W]``; ``kind``: plain, transposed ([B, M, ...] storage), expanded
    (stride 0 over M), misaligned."""

    subnets: int
    batch: int
    channels: int
    height: int
    width: int
    layout: str  # "cf" (channels first) or "cl" (channels_last)
    kind: str = "plain"
    sizes: tuple = ("full", "small")

    def __str__(self) -> str:
        dims = f"[{self.subnets},{self.batch},{self.channels},{self.height},{self.width}]"
        return f"x{dims} {self.layout} {self.kind}"


@dataclasses.dataclass(frozen=True)
class UnmixCase:
    """cutmix_unmix(_pool) on features ``[B, C, h, w]`` with boxes on ``box`` (M None: default weights)."""

    batch: int
    channels: int
    height: int
    width: int
    box: tuple[int, int]
    subnets: Optional[int]
    unmixed_channels: int
    ratio: float
    layout: str
    kind: str = "plain"
    sizes: tuple = ("full", "small")

    def __str__(self) -> str:
        dims = f"[{self.batch},{self.channels},{self.height},{self.width}]"
        subnets = 2 if self.subnets is None else self.subnets
        return (f"f{dims} box {self.box[0]}x{self.box[1]} M={subnets} channels={self.unmixed_channels} "
                f"ratio={self.ratio} {self.layout} {self.kind}")


ALL_SIZES = ("full", "small", "tiny")
MIX_CASES = [
    MixCase(2, 4, 16, 32, 32, "cf", sizes=ALL_SIZES),  # vector, every dtype
    MixCase(2, 4, 16, 32, 32, "cl"),
    MixCase(3, 3, 13, 11, 9, "cf", sizes=ALL_SIZES),  # odd slice: scalar fallback; M = 3
    MixCase(3, 3, 3, 8, 8, "cl"),  # channels_last with C = 3 (slice still a multiple of 8)
    MixCase(2, 5, 8, 6, 6, "cf", "transposed", sizes=ALL_SIZES),
    MixCase(2, 5, 8, 6, 6, "cl", "expanded", sizes=ALL_SIZES),
    MixCase(2, 4, 16, 8, 8, "cf", "misaligned"),  # aligned sizes, misaligned pointer: scalar fallback
    MixCase(5, 2, 8, 8, 8, "cl"),
]
UNMIX_CASES = [
    UnmixCase(8, 640, 8, 8, (32, 32), None, 640, 0.5, "cf", sizes=("full",)),  # WRN-28-10 final map, 8 lanes
    UnmixCase(4, 64, 32, 32, (64, 64), None, 64, 0.5, "cf", sizes=("full",)),  # 32 lanes
    UnmixCase(4, 64, 56, 56, (224, 224), 3, 40, 0.3, "cf", sizes=("full",)),  # M = 3, partial channels
    UnmixCase(4, 64, 8, 8, (32, 32), None, 64, 0.5, "cl", sizes=("full", "small", "tiny")),  # pixel chunks
    UnmixCase(4, 40, 7, 7, (32, 32), 5, 20, 0.5, "cl"),  # M = 5: two passes of 4
    UnmixCase(3, 13, 5, 7, (11, 9), 3, 7, 0.25, "cl", sizes=ALL_SIZES),  # odd: scalar fallback
    UnmixCase(3, 13, 5, 7, (11, 9), None, 13, 0.0, "cf"),
    UnmixCase(2, 8, 5, 5, (10, 10), 3, 8, 0.5, "cf"),  # slice % 8 == 0, cells % 8 != 0: generic chunks
    UnmixCase(2, 12, 2, 2, (8, 8), None, 12, 0.5, "cl"),  # slice % 8 == 0, C % 8 != 0: generic chunks
    UnmixCase(300, 256, 2, 2, (8, 8), None, 200, 0.5, "cl"),  # many samples: 32-lane channel tiles (pool)
    UnmixCase(8, 64, 8, 8, (32, 32), None, 64, 0.5, "cf", "misaligned"),
    UnmixCase(8, 64, 8, 8, (32, 32), 2, 32, 0.5, "cl", "misaligned"),
]


def check_forward_backward(fused, spec, inp, dtype, device, g) -> None:
    """``fused(inp)`` against ``spec`` on a copy of ``inp``, forward and backward, each output
    written into poisoned memory. ``fused`` gets ``inp``'s own storage (strides, misalignment)."""
    inp_fused = inp.detach().requires_grad_()
    inp_ref = inp.detach().clone().requires_grad_()
    poison(device)
    out = fused(inp_fused)
    expected = spec(inp_ref)
    assert_matches(out, expected)
    grad = randn(out.shape, dtype, device, g)
    poison(device)
    (got,) = torch.autograd.grad(out, inp_fused, grad)
    (want,) = torch.autograd.grad(expected, inp_ref, grad)
    assert_matches(got, want, dtype)


def mix_input(case: MixCase, dtype, device, g) -> torch.Tensor:
    m, b, c, h, w = case.subnets, case.batch, case.channels, case.height, case.width
    if case.kind == "transposed":
        x = randn((b, m, c, h, w), dtype, device, g).transpose(0, 1)
    elif case.kind == "expanded":
        one = randn((1, b, c, h, w), dtype, device, g)
        return (channels_last(one) if case.layout == "cl" else one).expand(m, b, c, h, w)
    elif case.kind == "misaligned":
        x = misaligned((m, b, c, h, w), dtype, device, g)
    else:
        x = randn((m, b, c, h, w), dtype, device, g)
    return channels_last(x) if case.layout == "cl" else x


def check_box_mix(backend, device, dtype, case: MixCase) -> None:
    g = seeded(case)
    x = mix_input(case, dtype, device, g)
    boxes = random_boxes(case.batch, case.height, case.width, g, device)
    w_in = torch.rand(case.batch, case.subnets, generator=g).to(device)
    w_out = torch.rand(case.batch, case.subnets, generator=g).to(device)
    check_forward_backward(lambda t: mixshare_ops.box_mix(t, boxes, w_in, w_out, float(case.subnets), backend=backend),
                           lambda t: reference.box_mix(t, boxes, w_in, w_out, float(case.subnets)), x, dtype, device, g)


def unmix_input(case: UnmixCase, dtype, device, g) -> torch.Tensor:
    shape = (case.batch, case.channels, case.height, case.width)
    if case.kind != "misaligned":
        f = randn(shape, dtype, device, g)
        return f.contiguous(memory_format=torch.channels_last) if case.layout == "cl" else f
    if case.layout == "cf":
        return misaligned(shape, dtype, device, g)
    b, c, h, w = shape
    return misaligned((b, h, w, c), dtype, device, g).permute(0, 3, 1, 2)


def check_unmix(backend, device, dtype, case: UnmixCase, pool: bool, normalize: str = "masked") -> None:
    g = seeded(case)
    f = unmix_input(case, dtype, device, g)
    boxes = random_boxes(case.batch, *case.box, g, device)
    w_in = w_out = None
    if case.subnets is not None:
        w_in = torch.rand(case.batch, case.subnets, generator=g).to(device)
        w_out = torch.rand(case.batch, case.subnets, generator=g).to(device)
    kwargs = dict(box_size=case.box, ratio=case.ratio, channels=case.unmixed_channels)
    if pool:
        kwargs["normalize"] = normalize
    fused = mixshare_ops.cutmix_unmix_pool if pool else mixshare_ops.cutmix_unmix
    spec = reference.cutmix_unmix_pool if pool else reference.cutmix_unmix
    check_forward_backward(lambda t: fused(t, boxes, w_in, w_out, backend=backend, **kwargs),
                           lambda t: spec(t, boxes, w_in, w_out, **kwargs), f, dtype, device, g)


def check_boxes_and_masks(backend, device, sizes=((32, 32), (7, 5), (224, 224)), samples=1000) -> None:
    g = torch.Generator().manual_seed(0)
    lam, center = torch.rand(samples, generator=g), torch.rand(samples, 2, generator=g)
    lam[:4] = torch.tensor([0.0, 1.0, 0.25, 0.5])
    for h, w in sizes:
        for dt in (torch.float32, torch.float64):
            boxes, area = mixshare_ops.cutmix_boxes(lam.to(device, dt), center.to(device, dt), h, w, backend=backend)
            ref_boxes, ref_area = reference.cutmix_boxes(lam.to(dt), center.to(dt), h, w)
            assert torch.equal(boxes.cpu(), ref_boxes), (h, w, dt)
            assert torch.equal(area.cpu(), ref_area), (h, w, dt)
        for mask_dtype in (torch.float32, torch.bfloat16, torch.float16, torch.bool, torch.int64, torch.uint8):
            if mask_dtype == torch.bfloat16 and backend == "triton" and device.type == "cpu":
                continue  # the Triton interpreter's bfloat16 is not the GPU's
            poison(device)
            mask = mixshare_ops.cutmix_mask(boxes, h, w, mask_dtype, backend=backend)
            assert torch.equal(mask.cpu(), reference.cutmix_mask(boxes.cpu(), h, w, mask_dtype)), (h, w, mask_dtype)


def check_wild_boxes(backend, device) -> None:
    """Value checks off: boxes outside the grid or inverted are clamped, never read or written out of bounds."""
    b, c, h, w = 6, 8, 8, 8
    wild = torch.tensor([[-5, -5, 100, 100], [7, 7, 3, 3], [-1, 4, 2, 900], [0, 0, 0, 0], [8, 8, 8, 8],
                         [2**31 - 1, -2**31, 5, 5]], dtype=torch.int32)
    clamped = wild.clone()
    clamped[:, 0] = wild[:, 0].clamp(0, h)
    clamped[:, 1] = wild[:, 1].clamp(0, w)
    clamped[:, 2] = torch.maximum(wild[:, 2].clamp(max=h), clamped[:, 0])
    clamped[:, 3] = torch.maximum(wild[:, 3].clamp(max=w), clamped[:, 1])
    wild, clamped = wild.to(device), clamped.to(device)
    x = torch.randn(2, b, c, h, w, device=device)
    f = torch.randn(b, c, h, w, device=device)
    eye = torch.eye(2, device=device)
    w_in, w_out = eye[0].expand(b, 2), eye[1].expand(b, 2)
    with mixshare_ops.value_checks(False):
        out = mixshare_ops.box_mix(x, wild, w_in, w_out, 2.0, backend=backend)
        pooled = mixshare_ops.cutmix_unmix_pool(f, wild, ratio=0.5, backend=backend)
        unmixed = mixshare_ops.cutmix_unmix(f, wild, ratio=0.5, backend=backend)
        mask = mixshare_ops.cutmix_mask(wild, h, w, backend=backend)
    assert_matches(out, reference.box_mix(x, clamped, w_in, w_out, 2.0))
    assert_matches(pooled, reference.cutmix_unmix_pool(f, clamped, ratio=0.5))
    assert_matches(unmixed, reference.cutmix_unmix(f, clamped, ratio=0.5))
    assert torch.equal(mask, reference.cutmix_mask(clamped, h, w))


def check_big_batch(backend, device) -> None:
    """B = 70,000 > 65,535: the CUDA grids cap gridDim.y and loop over samples."""
    b = 70000
    g = torch.Generator().manual_seed(1)
    x = randn((2, b, 1, 2, 4), torch.float32, device, g)
    boxes = random_boxes(b, 2, 4, g, device)
    w_in, w_out = torch.rand(b, 2, generator=g).to(device), torch.rand(b, 2, generator=g).to(device)
    poison(device)
    assert_matches(mixshare_ops.box_mix(x, boxes, w_in, w_out, 1.0, backend=backend),
                   reference.box_mix(x, boxes, w_in, w_out, 1.0))
    f = randn((b, 2, 2, 2), torch.float32, device, g)
    grid_boxes = random_boxes(b, 8, 8, g, device)
    for fused, spec in ((mixshare_ops.cutmix_unmix, reference.cutmix_unmix),
                        (mixshare_ops.cutmix_unmix_pool, reference.cutmix_unmix_pool)):
        poison(device)
        assert_matches(fused(f, grid_boxes, box_size=(8, 8), ratio=0.5, backend=backend),
                       spec(f, grid_boxes, box_size=(8, 8), ratio=0.5))
    assert torch.equal(mixshare_ops.cutmix_mask(grid_boxes, 8, 8, backend=backend),
                       reference.cutmix_mask(grid_boxes, 8, 8))


def check_over_2_31(backend, device, one_sample: bool) -> None:
    """More than 2**31 bf16 elements (exact: integer values < 256, 0/1 weights, scale 1),
    in two samples of 2**30 and more (``one_sample`` False) or in one sample."""
    h, w = (46341, 46341) if one_sample else (32768, 32769)
    b = 1 if one_sample else 2
    x = torch.empty(2, b, 1, h, w, dtype=torch.bfloat16, device=device)
    pattern = (torch.arange(h, device=device, dtype=torch.int32)[:, None] * 7
               + torch.arange(w, device=device, dtype=torch.int32)[None, :] * 3) % 241
    for i in range(2):
        for j in range(b):
            x[i, j, 0] = ((pattern + 11 * i + 5 * j) % 251).to(torch.bfloat16)
    del pattern
    boxes = torch.tensor([[h // 3, w // 5, h - 3, w - 1]] * b, dtype=torch.int32, device=device)
    eye = torch.eye(2, device=device)
    inside = reference.cutmix_mask(boxes, h, w, torch.bool)
    with mixshare_ops.value_checks(False):
        out = mixshare_ops.box_mix(x, boxes, eye[0].expand(b, 2), eye[1].expand(b, 2), 1.0, backend=backend)
        assert torch.equal(out, torch.where(inside, x[0], x[1])), "box_mix"
        del out
        features = x[1]
        unmixed = mixshare_ops.cutmix_unmix(features, boxes, backend=backend)
    zero = torch.zeros((), dtype=features.dtype, device=device)
    assert torch.equal(unmixed[0], torch.where(inside, features, zero)), "cutmix_unmix, subnetwork 0"
    assert torch.equal(unmixed[1], torch.where(inside, zero, features)), "cutmix_unmix, subnetwork 1"


def _step_inputs(device, batch=32):
    x = torch.randn(2, batch, 16, 32, 32, device=device, requires_grad=True)
    f = torch.randn(batch, 64, 8, 8, device=device, requires_grad=True)
    eye = torch.eye(2, device=device)
    return x, f, eye[0].expand(batch, 2).contiguous(), eye[1].expand(batch, 2).contiguous()


def _step(backend, x, f, boxes, w_in, w_out):
    return (mixshare_ops.box_mix(x, boxes, w_in, w_out, 2.0, backend=backend),
            mixshare_ops.cutmix_unmix_pool(f, boxes, box_size=(32, 32), ratio=0.5, backend=backend),
            mixshare_ops.cutmix_unmix(f, boxes, box_size=(32, 32), ratio=0.5, backend=backend))


def _expected(x, f, boxes, w_in, w_out):
    x, f = x.detach(), f.detach()
    return (reference.box_mix(x, boxes, w_in, w_out, 2.0),
            reference.cutmix_unmix_pool(f, boxes, box_size=(32, 32), ratio=0.5),
            reference.cutmix_unmix(f, boxes, box_size=(32, 32), ratio=0.5))


def check_side_stream(backend, device) -> None:
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream), mixshare_ops.value_checks(False):
        x, f, w_in, w_out = _step_inputs(device)
        boxes, _, _ = mixshare_ops.sample_cutmix_boxes(32, 32, 32, device=device, backend=backend)
        outs = _step(backend, x, f, boxes, w_in, w_out)
        sum(o.square().sum() for o in outs).backward()
    stream.synchronize()
    for out, expected in zip(outs, _expected(x, f, boxes, w_in, w_out)):
        assert_matches(out, expected)


def check_graph_capture(backend, device) -> None:
    x, f, w_in, w_out = _step_inputs(device)
    x, f = x.detach(), f.detach()
    boxes, _, _ = mixshare_ops.sample_cutmix_boxes(32, 32, 32, device=device, backend=backend)
    with mixshare_ops.value_checks(False):
        warm = torch.cuda.Stream(device)
        warm.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(warm):
            for _ in range(3):
                _step(backend, x, f, boxes, w_in, w_out)
        torch.cuda.current_stream(device).wait_stream(warm)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = _step(backend, x, f, boxes, w_in, w_out)
    x.copy_(torch.randn_like(x))
    f.copy_(torch.randn_like(f))
    graph.replay()
    torch.cuda.synchronize(device)
    for out, expected in zip(outs, _expected(x, f, boxes, w_in, w_out)):
        assert_matches(out, expected)


def check_no_host_sync(backend, device) -> None:
    x, f, w_in, w_out = _step_inputs(device, 16)

    def run():
        boxes, _, _ = mixshare_ops.sample_cutmix_boxes(16, 32, 32, device=device, backend=backend)
        mixshare_ops.cutmix_mask(boxes, 32, 32, backend=backend)
        sum(o.sum() for o in _step(backend, x, f, boxes, w_in, w_out)).backward()

    with mixshare_ops.value_checks(False):
        run()  # first calls may compile, tune and synchronise once
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------- driver


def plan(backend: str, device: torch.device, args) -> list[tuple[str, Callable[[], None]]]:
    """``(name, check)`` for one backend, in run order (the large ones last)."""
    checks = []
    add = lambda name, fn: checks.append((f"{backend} {name}", fn))  # noqa: E731
    if "boxes" in args.ops:
        if args.size == "tiny":
            add("boxes+masks", lambda: check_boxes_and_masks(backend, device, ((7, 5),), samples=16))
        else:
            add("boxes+masks", lambda: check_boxes_and_masks(backend, device))
    if "mix" in args.ops and device.type == "cuda":  # CPU inputs are value-checked whatever the switch
        add("wild boxes, value checks off", lambda: check_wild_boxes(backend, device))
    for name in args.dtypes:
        dtype = DTYPES[name]
        if "mix" in args.ops:
            for case in (c for c in MIX_CASES if args.size in c.sizes):
                add(f"box_mix {name} {case}", lambda case=case, dtype=dtype: check_box_mix(backend, device, dtype, case))
        for case in (c for c in UNMIX_CASES if args.size in c.sizes):
            if "unmix" in args.ops:
                add(f"cutmix_unmix {name} {case}",
                    lambda case=case, dtype=dtype: check_unmix(backend, device, dtype, case, pool=False))
            for normalize in ("masked", "mean") if "pool" in args.ops else ():
                add(f"cutmix_unmix_pool/{normalize} {name} {case}",
                    lambda case=case, dtype=dtype, normalize=normalize: check_unmix(
                        backend, device, dtype, case, pool=True, normalize=normalize))
    if args.stream and device.type == "cuda":
        add("side stream", lambda: check_side_stream(backend, device))
        add("CUDA graph capture", lambda: check_graph_capture(backend, device))
        add("no host sync (value checks off)", lambda: check_no_host_sync(backend, device))
    if args.big and device.type == "cuda":
        add("B=70000 (gridDim.y cap)", lambda: check_big_batch(backend, device))
        add(">2^31 elements in two samples", lambda: check_over_2_31(backend, device, one_sample=False))
        add(">2^31 elements in one sample", lambda: check_over_2_31(backend, device, one_sample=True))
    return checks


def run_checks(checks, log=print) -> list[dict]:
    results = []
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            fn()
            results.append(dict(name=name, ok=True, seconds=round(time.perf_counter() - t0, 3)))
            log(f"PASS {name}")
        except Exception as error:  # noqa: BLE001 - every failure is reported, then the next check runs
            message = f"{type(error).__name__}: {str(error)[:600]}"
            results.append(dict(name=name, ok=False, error=message))
            log(f"FAIL {name}: {message}")
            if os.environ.get("EDGE_TRACE"):
                traceback.print_exc()
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results


@contextlib.contextmanager
def triton_heuristic_tiles(enabled: bool):
    """Launch the Triton kernels with their heuristic tiles (no autotuning) while ``enabled``."""
    if not enabled:
        yield
        return
    from mixshare_ops.triton import _common

    saved = _common.AUTOTUNE
    _common.AUTOTUNE = False
    try:
        yield
    finally:
        _common.AUTOTUNE = saved


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", help="default: every fused backend usable on the device")
    parser.add_argument("--require", nargs="*", default=[],
                        help="backends that must be usable: exit 2 before any check otherwise")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", choices=ALL_SIZES, default="full",
                        help="case set: full, small (for compute-sanitizer), tiny (the CPU dry run)")
    parser.add_argument("--ops", nargs="+", choices=("boxes", "mix", "unmix", "pool"),
                        default=["boxes", "mix", "unmix", "pool"])
    parser.add_argument("--big", action="store_true", help="B = 70,000 and more than 2**31 elements (CUDA)")
    parser.add_argument("--stream", action="store_true", help="side stream, graph capture, no host sync (CUDA)")
    parser.add_argument("--autotune", action="store_true", help="let Triton autotune (default: heuristic tiles)")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    usable = mixshare_ops.available_backends(device)
    missing = [b for b in args.require if b not in usable]
    if missing:
        print(f"edge: backend(s) {', '.join(missing)} NOT usable on {device} (usable: {', '.join(usable)}); "
              f"extension: {mixshare_ops.backend_info()['extension_error'] or 'loaded'}", flush=True)
        return 2
    backends = args.backends or [b for b in usable if b != "reference" and (b != "triton" or device.type == "cuda")]
    print(f"edge: {device}, backends {' '.join(backends)}, dtypes {' '.join(args.dtypes)}, {args.size} cases"
          f"{', big' if args.big else ''}{', streams' if args.stream else ''}", flush=True)
    t0 = time.perf_counter()
    results = []
    with triton_heuristic_tiles(not args.autotune and "triton" in backends):
        for backend in backends:
            results += run_checks(plan(backend, device, args), log=lambda line: print(line, flush=True))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    failed = [r for r in results if not r["ok"]]
    print(f"edge: {len(results) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
