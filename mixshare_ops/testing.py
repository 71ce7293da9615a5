"""What the tests and the benchmarks' checks share when they compare a backend with the
reference: per-dtype tolerances, boxes of a given kind, feature maps in a given memory layout.

Like :mod:`torch.testing`, a public module of the package, so that ``tests/`` and
``benchmarks/`` import it and neither imports the other.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["BOX_KINDS", "TOLERANCES", "assert_close", "make_boxes", "to_layout"]

# (atol, rtol) for comparing a backend with the reference. Kernels compute in
# float32 (float64 for float64) and round once, as the reference does, so the
# difference is a few units in the last place of the output dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: Optional[torch.dtype] = None) -> None:
    """``torch.testing.assert_close`` within :data:`TOLERANCES` of ``dtype`` (default: ``expected``'s)."""
    atol, rtol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


BOX_KINDS = ("random", "empty", "full", "mixed")


def make_boxes(batch: int, height: int, width: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """int32 [B, 4] boxes on a height x width grid (CPU): ``random``, ``empty`` (all zero), ``full``
    (the whole grid), or ``mixed`` (random, and with B >= 3 one full box and one empty box off the origin)."""
    if kind not in BOX_KINDS:
        raise ValueError(f"kind must be one of {', '.join(BOX_KINDS)}, got {kind!r}")
    if kind == "empty":
        return torch.zeros((batch, 4), dtype=torch.int32)
    if kind == "full":
        return torch.tensor([[0, 0, height, width]] * batch, dtype=torch.int32).reshape(batch, 4)
    top = torch.randint(0, height + 1, (batch,), generator=generator)
    left = torch.randint(0, width + 1, (batch,), generator=generator)
    bottom = top + (torch.rand(batch, generator=generator) * (height - top + 1)).long().clamp(max=height - top)
    right = left + (torch.rand(batch, generator=generator) * (width - left + 1)).long().clamp(max=width - left)
    boxes = torch.stack([top, left, bottom, right], 1).to(torch.int32)
    if kind == "mixed" and batch >= 3:
        boxes[0] = torch.tensor([0, 0, height, width])
        boxes[1] = torch.tensor([2 % height, 1 % width, 2 % height, 1 % width])  # empty, not at the origin
    return boxes


def to_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``t`` [..., C, H, W] with the same values, each [C, H, W] slice channels_last in memory if
    ``channels_last`` (for a stack [M, B, C, H, W], the strides ``torch.stack`` of M channels_last
    maps gives), else ``t`` itself (whatever its strides)."""
    if not channels_last:
        return t
    lead = list(range(t.dim() - 3))
    c, h, w = t.dim() - 3, t.dim() - 2, t.dim() - 1
    return t.permute(lead + [h, w, c]).contiguous().permute(lead + [w, c, h])
