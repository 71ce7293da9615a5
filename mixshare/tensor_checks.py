"""The argument check of a floating-point tensor of a given layout, for the toolkit's public functions."""

from __future__ import annotations

import torch

__all__ = ["check_float_tensor"]


def check_float_tensor(value, name: str, layout: str, *, empty_ok: tuple = ()) -> torch.Tensor:
    """``value`` if it is a floating-point tensor of ``layout`` (e.g. ``"[M, N, K] (subnetworks, samples,
    classes)"``: as many dimensions as names in the brackets) whose sizes are all >= 1, but those at the
    indices in ``empty_ok``; else TypeError or ValueError naming ``name`` and ``layout``."""
    dims = layout[layout.index("[") + 1:layout.index("]")].count(",") + 1
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    shape = tuple(value.shape)
    if value.dim() != dims:
        raise ValueError(f"{name} must be {layout}, got shape {shape}")
    if any(size < 1 for i, size in enumerate(shape) if i not in empty_ok):
        raise ValueError(f"{name} must be {layout} with every size >= 1, got shape {shape}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {value.dtype}")
    return value
