"""Augmentation drawn on the device: the random crop of the padded image and the horizontal flip."""

from __future__ import annotations

import operator
from typing import Optional, Sequence, Union

import torch

__all__ = ["augment"]


def augment(
    images: torch.Tensor,
    hflip: bool,
    generator: Optional[torch.Generator] = None,
    padding: int = 4,
    fill: Union[float, Sequence[float], torch.Tensor] = 0.0,
) -> torch.Tensor:
    """Per-sample random crop of the ``padding``-padded image and, if ``hflip``, random horizontal flip (p = 0.5).

    ``images``: ``[N, C, H, W]`` -> a new ``[N, C, H, W]`` tensor of the same dtype and device. Each
    sample is the ``H x W`` window at a random offset in ``[0, 2 * padding]`` of its copy padded with
    ``fill`` (a scalar or one value per channel; ``ImageDataset.pad_value`` is black, as the official
    ``RandomCrop(32, padding=4)`` on pixels). Vectorised, one gather: draws (top, left, flip) from
    ``generator`` on the images' device, no host sync.
    """
    if images.dim() != 4:
        raise ValueError(f"augment expects images [N, C, H, W], got shape {tuple(images.shape)}")
    padding = operator.index(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    device = images.device
    fill = torch.as_tensor(fill, dtype=images.dtype, device=device)
    if fill.dim() > 1 or fill.numel() not in (1, c):
        raise ValueError(f"fill must be a scalar or one value per channel ({c}), got shape {tuple(fill.shape)}")
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    rows = top + torch.arange(h, device=device) - padding  # [N, H] rows of the image, out of range in the padding
    cols = left + torch.arange(w, device=device) - padding  # [N, W]
    if hflip:
        flip = torch.rand(n, 1, generator=generator, device=device) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    batch_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan_idx = torch.arange(c, device=device).view(1, c, 1, 1)
    gathered = images[batch_idx, chan_idx, rows.clamp(0, h - 1).view(n, 1, h, 1), cols.clamp(0, w - 1).view(n, 1, 1, w)]
    if padding == 0:
        return gathered
    return torch.where(inside, gathered, fill.view(1, -1, 1, 1))
