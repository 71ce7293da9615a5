"""Sample inputs shared by every operator test.

One list of cases per op; every test (correctness per backend, gradcheck,
opcheck, torch.compile, saved-tensor bound) draws from these lists. The
per-dtype tolerances, boxes and layouts come from :mod:`mixshare_ops.testing`
(re-exported here), which the benchmarks' checks use too.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
import torch

import mixshare_ops
from mixshare_ops import backends
from mixshare_ops.conventions import DEFAULT_NORMALIZE
from mixshare_ops.testing import TOLERANCES, assert_close, make_boxes, to_layout  # noqa: F401 (the tests' names)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params():
    """(backend, device) pairs under test; those not usable here are skipped."""
    params = []
    for backend, device in (("cpu", "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda")):
        usable = (device == "cpu" or torch.cuda.is_available()) and backend in mixshare_ops.available_backends(device)
        marks = [] if usable else [pytest.mark.skip(reason=f"backend {backend!r} is not usable on {device} here")]
        params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


def dtypes_for(backend: str, device: str):
    """Dtypes each backend supports (bf16 math is wrong in the Triton interpreter)."""
    out = [torch.float32, torch.float16, torch.bfloat16]
    if backend in ("cpu", "reference", "triton"):
        out.append(torch.float64)
    if backend == "triton" and device == "cpu" and backends.triton_interpreted():
        out.remove(torch.bfloat16)
    return out


@dataclasses.dataclass
class MixCase:
    """box_mix inputs: x [M, B, C, H, W]."""

    name: str
    subnets: int = 2
    batch: int = 3
    channels: int = 4
    height: int = 6
    width: int = 5
    boxes: str = "mixed"
    channels_last: bool = False
    transposed: bool = False  # x built as a [B, M, ...] tensor transposed
    scale: float = 2.0

    def make(self, dtype=torch.float32, device="cpu", seed=0):
        g = torch.Generator().manual_seed(seed)
        shape = (self.subnets, self.batch, self.channels, self.height, self.width)
        if self.transposed:
            x = torch.randn((self.batch, self.subnets) + shape[2:], generator=g, dtype=torch.float64).transpose(0, 1)
        else:
            x = torch.randn(shape, generator=g, dtype=torch.float64)
        x = to_layout(x, self.channels_last).to(device=device, dtype=dtype)
        boxes = make_boxes(self.batch, self.height, self.width, self.boxes, g).to(device)
        inside = torch.rand((self.batch, self.subnets), generator=g).to(device)
        outside = torch.rand((self.batch, self.subnets), generator=g).to(device)
        return x, boxes, inside, outside, self.scale


MIX_CASES = [
    MixCase("m2"),
    MixCase("m3_odd", subnets=3, channels=3, height=5, width=7),
    MixCase("channels_last", channels_last=True),
    MixCase("transposed", transposed=True, boxes="random"),
    MixCase("transposed_channels_last", subnets=3, transposed=True, channels_last=True),
    MixCase("empty_boxes", boxes="empty", scale=1.0),
    MixCase("full_boxes", boxes="full"),
    MixCase("batch0", batch=0),
    MixCase("channels0", channels=0),
    MixCase("one_pixel", height=1, width=1, channels=2),
]


@dataclasses.dataclass
class UnmixCase:
    """cutmix_unmix / cutmix_unmix_pool inputs: features [B, C, h, w]."""

    name: str
    batch: int = 3
    channels: int = 4
    height: int = 4
    width: int = 4
    box_size: Optional[tuple] = (8, 8)
    subnets: Optional[int] = None  # None: default weights (M = 2)
    boxes: str = "mixed"
    ratio: float = 0.0
    unmixed_channels: Optional[int] = None
    channels_last: bool = False
    normalize: str = DEFAULT_NORMALIZE

    def make(self, dtype=torch.float32, device="cpu", seed=0):
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn((self.batch, self.channels, self.height, self.width), generator=g, dtype=torch.float64)
        feats = to_layout(feats, self.channels_last).to(device=device, dtype=dtype)
        grid = self.box_size or (self.height, self.width)
        boxes = make_boxes(self.batch, grid[0], grid[1], self.boxes, g).to(device)
        if self.subnets is None:
            inside = outside = None
        else:
            inside = torch.rand((self.batch, self.subnets), generator=g).to(device)
            outside = torch.rand((self.batch, self.subnets), generator=g).to(device)
        kwargs = dict(box_size=self.box_size, ratio=self.ratio, channels=self.unmixed_channels)
        return feats, boxes, inside, outside, kwargs

    def op_args(self, dtype=torch.float32, device="cpu", seed=0, pool=False):
        """Positional arguments of the operator (schema order)."""
        feats, boxes, inside, outside, kw = self.make(dtype, device, seed)
        box = kw["box_size"] or (self.height, self.width)
        channels = self.channels if kw["channels"] is None else kw["channels"]
        args = (feats, boxes, inside, outside, box[0], box[1], float(kw["ratio"]), channels)
        return args + ((self.normalize,) if pool else ())


UNMIX_CASES = [
    UnmixCase("default"),
    UnmixCase("same_grid", box_size=None, ratio=0.3),
    UnmixCase("m3_partial", subnets=3, unmixed_channels=1, ratio=0.5),
    UnmixCase("odd_grid", channels=3, height=5, width=7, box_size=(32, 32), ratio=0.25),
    UnmixCase("not_divisible", height=3, width=5, box_size=(7, 11), subnets=2),
    UnmixCase("channels_last", channels_last=True, unmixed_channels=2, ratio=0.7),
    UnmixCase("channels_last_m3", channels_last=True, subnets=3, height=5, width=3, box_size=(9, 9)),
    UnmixCase("empty_boxes_masked", boxes="empty", box_size=None),  # masked denominator 0 for subnetwork 0
    UnmixCase("full_boxes", boxes="full", normalize="mean"),
    UnmixCase("ratio_one", ratio=1.0, normalize="mean"),
    UnmixCase("no_unmixed_channels", unmixed_channels=0),
    UnmixCase("batch0", batch=0),
    UnmixCase("one_pixel", height=1, width=1, box_size=(4, 4), channels=2),
]
