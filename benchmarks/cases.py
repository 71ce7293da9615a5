"""Benchmark cases: ops, shapes, providers and the bytes each call must move.

A case is one (op, shape, dtype, provider, layout, M) on one device. The
layout is the memory layout of the feature maps: ``channels_first`` (NCHW
contiguous) or ``channels_last`` (as GPU training runs; for ``box_mix`` each
of the M stacked inputs, as ``torch.stack`` of channels_last maps gives). M
is the number of inputs ``box_mix`` mixes (2, and MixMo's M = 3 at some
shapes); the unmixing ops split into M = 2. ``cutmix_mask`` has neither
(both None). ``Case.call(mode)`` gives the function to time for ``mode`` in
``fwd`` (forward with autograd recording, as in training), ``bwd`` (backward
of a recorded forward) and ``fwd+bwd``; ``Case.bytes(mode)`` is the fewest
bytes that call must move through memory (each input read once, each output
written once), the numerator of the GB/s column.

Providers: ``eager`` (the plain PyTorch reference, :mod:`mixshare_ops.reference`),
``compile`` (``torch.compile`` of the same reference function), and the
fused backends ``triton``, ``cuda`` and ``cpu`` through the public ops.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import torch

import mixshare_ops
from mixshare.mixers import cut_weights
from mixshare_ops import reference, testing
from mixshare_ops.backends import available_backends

OPS = ("cutmix_mask", "box_mix", "cutmix_unmix", "cutmix_unmix_pool")
MODES = ("fwd", "bwd", "fwd+bwd")
PROVIDERS = ("eager", "compile", "triton", "cuda", "cpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NUM_SUBNETS = 2
LAYOUTS = ("channels_first", "channels_last")
FADE_RATIO = 0.5  # unmixing halfway through MixShare's fadeout


@dataclasses.dataclass(frozen=True)
class Shape:
    """A feature map ``[B, C, H, W]``; ``grid`` is the box grid (the input image size)."""

    name: str
    batch: int
    channels: int
    height: int
    width: int
    grid: tuple[int, int]
    ops: tuple[str, ...]
    cifar: bool = False  # a CIFAR WRN shape (the 4x-eager target)
    bandwidth_bound: bool = False  # large enough to be limited by memory bandwidth
    layouts: tuple[str, ...] = LAYOUTS  # feature-map memory layouts run at this shape
    mix_subnets: tuple[int, ...] = (NUM_SUBNETS,)  # the M values box_mix runs at this shape

    @property
    def label(self) -> str:
        return f"{self.name} [{self.batch},{self.channels},{self.height},{self.width}]"


MIX = ("cutmix_mask", "box_mix")
UNMIX = ("cutmix_unmix", "cutmix_unmix_pool")
ALL = MIX + UNMIX


M3 = (2, 3)  # box_mix at M = 2 and MixMo's M = 3


def cuda_shapes() -> list[Shape]:
    """Launch-bound to bandwidth-bound: CIFAR mixing, WRN final maps, ImageNet stem, ViT grid."""
    shapes = [
        Shape(f"cifar-mix B={b}", b, 16, 32, 32, (32, 32), MIX, cifar=True, mix_subnets=M3 if b == 128 else (2,))
        for b in (64, 128, 256, 512)
    ]
    shapes += [
        Shape("wrn28-2-final", 128, 128, 8, 8, (32, 32), UNMIX, cifar=True),
        Shape("wrn28-10-final", 128, 640, 8, 8, (32, 32), UNMIX, cifar=True),
        Shape("imagenet-stem", 256, 64, 112, 112, (112, 112), ALL, bandwidth_bound=True, mix_subnets=M3),
        Shape("vit-grid", 256, 384, 14, 14, (14, 14), ALL, bandwidth_bound=True, mix_subnets=M3),
    ]
    return shapes


def cpu_shapes() -> list[Shape]:
    """The same families at sizes two CPU cores get through in seconds."""
    return [
        Shape("cifar-mix B=64", 64, 16, 32, 32, (32, 32), MIX, cifar=True),
        Shape("cifar-mix B=128", 128, 16, 32, 32, (32, 32), MIX, cifar=True, mix_subnets=M3),
        Shape("wrn28-2-final", 128, 128, 8, 8, (32, 32), UNMIX, cifar=True),
        Shape("wrn28-10-final", 128, 640, 8, 8, (32, 32), UNMIX, cifar=True),
        Shape("imagenet-stem B=8", 8, 64, 112, 112, (112, 112), ALL, bandwidth_bound=True, mix_subnets=M3),
        Shape("vit-grid B=32", 32, 384, 14, 14, (14, 14), ALL, bandwidth_bound=True, mix_subnets=M3),
    ]


def quick_shapes() -> list[Shape]:
    """Tiny shapes for the smoke run in the test suite: every op in both layouts, and box_mix at M = 3
    in channels_last only (each case costs the smoke run a few torch.compile calls)."""
    return [
        Shape("cifar-mix B=4", 4, 16, 32, 32, (32, 32), MIX, cifar=True),
        Shape("cifar-mix B=4", 4, 16, 32, 32, (32, 32), ("box_mix",), cifar=True, layouts=("channels_last",),
              mix_subnets=(3,)),
        Shape("wrn-final B=4", 4, 32, 8, 8, (32, 32), UNMIX, cifar=True),
    ]


def default_providers(device: torch.device) -> list[str]:
    """Every provider that runs on ``device`` (the Triton interpreter excluded)."""
    usable = [b for b in available_backends(device) if b != "reference"]
    if device.type != "cuda":
        usable = [b for b in usable if b != "triton"]
    return ["eager", "compile"] + [p for p in PROVIDERS if p in usable]


def modes_for(op: str) -> tuple[str, ...]:
    return ("fwd",) if op == "cutmix_mask" else MODES


# ----------------------------------------------------------------- functions


def _reference_fn(op: str) -> Callable:
    """The reference computation of ``op`` with the benchmark's fixed arguments."""
    if op == "cutmix_mask":
        return lambda lam, center, h, w, dtype: reference.cutmix_mask(
            reference.cutmix_boxes(lam, center, h, w)[0], h, w, dtype
        )
    if op == "box_mix":
        return reference.box_mix
    if op == "cutmix_unmix":
        return lambda f, boxes, box_size: reference.cutmix_unmix(
            f, boxes, box_size=box_size, ratio=FADE_RATIO, channels=f.shape[1]
        )
    return lambda f, boxes, box_size: reference.cutmix_unmix_pool(
        f, boxes, box_size=box_size, ratio=FADE_RATIO, channels=f.shape[1], normalize="mean"
    )


@functools.lru_cache(maxsize=None)
def _compiled_fn(op: str) -> Callable:
    """``torch.compile`` of the reference (one per op; static shapes, recompiled per shape and dtype)."""
    return torch.compile(_reference_fn(op), dynamic=False)


def _fused_fn(op: str, backend: str) -> Callable:
    if op == "cutmix_mask":
        def mask(lam, center, h, w, dtype):
            boxes, _ = mixshare_ops.cutmix_boxes(lam, center, h, w, check_values=False, backend=backend)
            return mixshare_ops.cutmix_mask(boxes, h, w, dtype, backend=backend)

        return mask
    if op == "box_mix":
        return functools.partial(mixshare_ops.box_mix, backend=backend)
    if op == "cutmix_unmix":
        return lambda f, boxes, box_size: mixshare_ops.cutmix_unmix(
            f, boxes, box_size=box_size, ratio=FADE_RATIO, backend=backend
        )
    return lambda f, boxes, box_size: mixshare_ops.cutmix_unmix_pool(
        f, boxes, box_size=box_size, ratio=FADE_RATIO, normalize="mean", backend=backend
    )


def provider_fn(op: str, provider: str) -> Callable:
    if provider == "eager":
        return _reference_fn(op)
    if provider == "compile":
        return _compiled_fn(op)
    return _fused_fn(op, provider)


def allow_many_recompiles(limit: int = 256) -> None:
    """The compiled references recompile per shape and dtype: lift dynamo's
    per-function limit so that no case silently falls back to eager."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


# ---------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    op: str
    shape: Shape
    dtype_name: str
    provider: str
    device: torch.device
    forward: Callable[[], torch.Tensor]
    grad_input: Optional[torch.Tensor]
    read_bytes: int  # forward: inputs read
    write_bytes: int  # forward: outputs written
    layout: Optional[str] = "channels_first"  # feature maps' memory layout; None for the mask
    subnets: Optional[int] = NUM_SUBNETS  # M; None for the mask

    def bytes(self, mode: str) -> int:
        """Fewest bytes moved: the backward reads the output's gradient and writes the input's."""
        if mode == "fwd":
            return self.read_bytes + self.write_bytes
        if mode == "bwd":
            return self.write_bytes + self.read_bytes
        return 2 * (self.read_bytes + self.write_bytes)

    def call(self, mode: str) -> Callable[[], object]:
        """The function timed for ``mode`` (``bwd`` records one forward first and keeps its graph)."""
        if mode == "fwd":
            return self.forward
        if self.grad_input is None:
            raise ValueError(f"{self.op} has no backward")
        x = self.grad_input
        if mode == "bwd":
            out = self.forward()
            grad = _random_like(out)
            return lambda: torch.autograd.grad(out, x, grad, retain_graph=True)
        grad = _random_like(self.forward())

        def forward_backward():
            return torch.autograd.grad(self.forward(), x, grad)

        return forward_backward

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]


def _random_like(t: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A seeded normal tensor like ``t`` (the same on every provider)."""
    generator = torch.Generator(t.device).manual_seed(seed)
    return torch.randn(t.shape, generator=generator, device=t.device).to(t.dtype)


def _boxes(batch: int, grid: tuple[int, int], device: torch.device, generator: torch.Generator) -> torch.Tensor:
    boxes, _, _ = mixshare_ops.sample_cutmix_boxes(batch, *grid, generator=generator, device=device)
    return boxes


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` [..., C, H, W] with the same values, each [C, H, W] slice in ``layout``.

    A channels_last [M, B, C, H, W] stack has the strides of ``torch.stack`` of M
    channels_last [B, C, H, W] maps (the subnetworks' encodings in training).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    return testing.to_layout(t.contiguous(), channels_last=layout == "channels_last")


# Cut-MixMo's box_mix weights (inside [B, M], outside [B, M]) of mixing ratios [B, M], input 0 filling the box.
mixmo_weights = cut_weights


def make_case(op: str, shape: Shape, dtype_name: str, provider: str, device: torch.device, seed: int = 0,
              *, layout: str = "channels_first", subnets: int = NUM_SUBNETS) -> Case:
    """Fresh random inputs (never zeros) for one case on ``device``.

    ``layout`` is the feature maps' memory layout (the same values in either);
    ``subnets`` the M of ``box_mix`` (the unmixing ops split into M = 2).
    ``cutmix_mask`` has neither: its case has layout and subnets None.
    """
    generator = torch.Generator(device).manual_seed(seed)
    dtype = DTYPES[dtype_name]
    item = torch.empty((), dtype=dtype).element_size()
    fn = provider_fn(op, provider)
    b, c, h, w = shape.batch, shape.channels, shape.height, shape.width

    if op == "cutmix_mask":
        gh, gw = shape.grid
        lam = torch._sample_dirichlet(torch.full((b, 2), 2.0, device=device), generator=generator)[:, 0]
        center = torch.rand(b, 2, generator=generator, device=device)
        return Case(
            op, shape, dtype_name, provider, device,
            lambda: fn(lam, center, gh, gw, dtype), None,
            read_bytes=b * 3 * 4, write_bytes=b * gh * gw * item, layout=None, subnets=None,
        )

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    numel = b * c * h * w
    if op == "box_mix":
        m = subnets
        x = torch.randn(m, b, c, h, w, generator=generator, device=device).to(dtype)
        x = to_layout(x, layout).detach().requires_grad_()
        boxes = _boxes(b, (h, w), device, generator)
        lam = torch._sample_dirichlet(torch.full((b, m), 2.0, device=device), generator=generator)
        inside, outside = mixmo_weights(lam)
        return Case(
            op, shape, dtype_name, provider, device,
            lambda: fn(x, boxes, inside, outside, float(m)), x,
            read_bytes=m * numel * item, write_bytes=numel * item, layout=layout, subnets=m,
        )

    if subnets != NUM_SUBNETS:
        raise ValueError(f"{op} cases split into M = {NUM_SUBNETS}, not {subnets}")
    m = NUM_SUBNETS
    features = torch.randn(b, c, h, w, generator=generator, device=device).to(dtype)
    features = to_layout(features, layout).detach().requires_grad_()
    boxes = _boxes(b, shape.grid, device, generator)
    out_numel = m * numel if op == "cutmix_unmix" else m * b * c
    return Case(
        op, shape, dtype_name, provider, device,
        lambda: fn(features, boxes, shape.grid), features,
        read_bytes=numel * item, write_bytes=out_numel * item, layout=layout, subnets=m,
    )


class Spec(NamedTuple):
    """One benchmark case's coordinates; ``make(device)`` builds its :class:`Case`."""

    op: str
    shape: Shape
    dtype_name: str
    provider: str
    layout: Optional[str]
    subnets: Optional[int]

    def make(self, device: torch.device, seed: int = 0) -> Case:
        return make_case(self.op, self.shape, self.dtype_name, self.provider, device, seed,
                         layout=self.layout or "channels_first", subnets=self.subnets or NUM_SUBNETS)

    @property
    def id(self) -> str:
        names = [self.op, self.shape.name, self.dtype_name, self.provider]
        return "-".join(names + variant_names(self.layout, self.subnets))


def variant_names(layout: Optional[str], subnets: Optional[int]) -> list[str]:
    """The layout, and M where it is not 2: what tells apart cases at one shape."""
    names = [layout] if layout else []
    if subnets is not None and subnets != NUM_SUBNETS:
        names.append(f"M={subnets}")
    return names


def variants_for(op: str, shape: Shape, layouts=LAYOUTS) -> list[tuple[Optional[str], Optional[int]]]:
    """(layout, M) pairs of ``op`` at ``shape``: none for the mask, which has no feature map."""
    if op == "cutmix_mask":
        return [(None, None)]
    subnets = shape.mix_subnets if op == "box_mix" else (NUM_SUBNETS,)
    return [(layout, m) for m in subnets for layout in shape.layouts if layout in layouts]


def iter_cases(shapes, dtypes, providers, ops=OPS, layouts=LAYOUTS):
    """Every :class:`Spec` in report order: op, shape, M, layout, dtype, provider."""
    for op in ops:
        for shape in shapes:
            if op not in shape.ops:
                continue
            for layout, subnets in variants_for(op, shape, layouts):
                for dtype_name in dtypes:
                    for provider in providers:
                        yield Spec(op, shape, dtype_name, provider, layout, subnets)


def value_order(specs) -> list[Spec]:
    """``specs`` in the order that answers the targets soonest when a run may be cut off: the
    bandwidth-bound shapes of every op first, then the CIFAR shapes, then the rest, and
    ``torch.compile`` (a cold compile per case) after all others; report order within each group."""
    def rank(spec: Spec) -> tuple[int, int]:
        shape_rank = 0 if spec.shape.bandwidth_bound else 1 if spec.shape.cifar else 2
        return spec.provider == "compile", shape_rank

    return sorted(specs, key=rank)
