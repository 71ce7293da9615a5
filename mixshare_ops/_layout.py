"""Memory layouts the kernels accept, mirrored from ``csrc/op_args.cpp``.

Feature tensors are handled in one of two slice layouts: the ``[C, H, W]``
slices are NCHW-contiguous ("channels first") or channels_last. Anything else
is made contiguous first, except a broadcast (stride-0) view that would grow
past ``MAX_BROADCAST_COPY_BYTES`` in the copy: that is refused, as in C++. Outputs are allocated in the input's layout; the
fake kernels use the same functions, so fake and real strides agree.
"""

from __future__ import annotations

import torch

CHANNELS_FIRST = 0
CHANNELS_LAST = 1
MAX_BROADCAST_COPY_BYTES = 2**30  # kMaxBroadcastCopyBytes in csrc/op_args.cpp


def dense_copy(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t.contiguous()``, refused (ValueError) for a broadcast view whose copy passes the limit."""
    broadcast = any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride()))
    nbytes = t.numel() * t.element_size()
    if broadcast and nbytes > MAX_BROADCAST_COPY_BYTES:
        raise ValueError(
            f"{name} is a broadcast (stride-0) view of shape {tuple(t.shape)}: the kernels would copy it to "
            f"{nbytes} bytes, above the limit of {MAX_BROADCAST_COPY_BYTES} (1 GiB); pass {name}.contiguous() "
            "to copy it anyway")
    return t.contiguous()


def _is_channels_first_slice(t: torch.Tensor, first: int) -> bool:
    c, h, w = t.shape[first : first + 3]
    sc, sh, sw = t.stride()[first : first + 3]
    return (w == 1 or sw == 1) and (h == 1 or sh == w) and (c == 1 or sc == h * w)


def _is_channels_last_slice(t: torch.Tensor, first: int) -> bool:
    c, h, w = t.shape[first : first + 3]
    sc, sh, sw = t.stride()[first : first + 3]
    return (c == 1 or sc == 1) and (w == 1 or sw == c) and (h == 1 or sh == w * c)


def feature_layout(t: torch.Tensor, name: str = "features") -> tuple[torch.Tensor, int]:
    """A 4-D [B, C, H, W] tensor as (data, layout): contiguous or channels_last."""
    if t.is_contiguous():
        return t, CHANNELS_FIRST
    if t.is_contiguous(memory_format=torch.channels_last):
        return t, CHANNELS_LAST
    return dense_copy(t, name), CHANNELS_FIRST


def stacked_layout(t: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, int]:
    """A 5-D [M, B, C, H, W] tensor as (data, layout); any strides over M and B."""
    if _is_channels_first_slice(t, 2):
        return t, CHANNELS_FIRST
    if _is_channels_last_slice(t, 2):
        return t, CHANNELS_LAST
    return dense_copy(t, name), CHANNELS_FIRST


def empty_features(batch, channels, height, width, layout, *, dtype, device) -> torch.Tensor:
    """Uninitialised [B, C, H, W] tensor in ``layout``."""
    fmt = torch.channels_last if layout == CHANNELS_LAST else torch.contiguous_format
    return torch.empty((batch, channels, height, width), dtype=dtype, device=device, memory_format=fmt)


def empty_stacked(subnets, batch, channels, height, width, layout, *, dtype, device) -> torch.Tensor:
    """Uninitialised [M, B, C, H, W] tensor whose slices are in ``layout``."""
    if layout == CHANNELS_FIRST:
        return torch.empty((subnets, batch, channels, height, width), dtype=dtype, device=device)
    nhwc = torch.empty((subnets, batch, height, width, channels), dtype=dtype, device=device)
    return nhwc.permute(0, 1, 4, 2, 3)
