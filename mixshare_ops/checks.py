"""Argument checks of the operators (the same rules and messages as ``csrc/op_args.cpp``).

The Triton operators and the fake (meta) kernels of every operator run these
checks; the public wrappers run them for the ``reference`` backend only,
which has no operator (see :mod:`mixshare_ops.ops`).

Shape, dtype and device checks read only tensor metadata and trace cleanly
under ``torch.compile``. Value checks (box coordinates, ``lam`` and
``center`` ranges) read tensor data: free on CPU, a host-device
synchronisation on CUDA, where :func:`value_checks` can turn them off.
Kernels clamp boxes to the grid either way, so disabling the checks never
leads to out-of-bounds memory access, only to clamped boxes.
"""

from __future__ import annotations

import contextlib
import math

import torch

from mixshare_ops import _extension
from mixshare_ops.conventions import DEFAULT_SUBNETS, NORMALIZE_MODES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The value-check switch. With the C++ library loaded, its flag (read and set
# through torch.ops.mixshare_ops._value_checks_enabled / _set_value_checks)
# is the only one, read by the compiled operators, the Triton operators and
# the reference wrappers alike; this variable is the switch only without it.
_value_checks = True


def value_checks_enabled() -> bool:
    """Whether value checks of CUDA inputs are on (CPU inputs are always checked)."""
    if _extension.loaded():
        return bool(torch.ops.mixshare_ops._value_checks_enabled())
    return _value_checks


def set_value_checks(enabled: bool) -> bool:
    """Turns value checks of CUDA inputs on or off for every backend; returns the previous setting.

    CPU inputs are always checked (it costs no synchronisation).
    """
    global _value_checks
    if _extension.loaded():
        return bool(torch.ops.mixshare_ops._set_value_checks(bool(enabled)))
    previous, _value_checks = _value_checks, bool(enabled)
    return previous


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Context manager: ``with mixshare_ops.value_checks(False): ...`` skips the
    host-side value checks of CUDA inputs (no host-device synchronisation)."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def _should_check_values(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" or value_checks_enabled()


def check_floating(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor, got {t.dtype}")


def check_same_device(t: torch.Tensor, like: torch.Tensor, name: str, like_name: str) -> None:
    """Tensor argument ``name`` on the device of ``like_name`` (every backend's message, as
    ``check_same_device`` of csrc/op_args.cpp)."""
    if t.device != like.device:
        raise ValueError(f"{name} must be on the same device as {like_name} ({like.device}), got {t.device}")


MAX_GRID_SIZE = 2**31 - 1  # kMaxGridSize in csrc/op_args.h: box coordinates are int32


def check_positive_size(value, name: str) -> None:
    """A grid or feature height or width: an int in [1, MAX_GRID_SIZE]."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0 or value > MAX_GRID_SIZE:
        raise ValueError(f"{name} must be in [1, {MAX_GRID_SIZE}] (boxes are int32 pixel coordinates), got {value}")


def check_features(t: torch.Tensor, name: str = "features") -> None:
    """A floating [B, C, H, W] tensor with H, W >= 1."""
    check_floating(t, name)
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D [B, C, H, W] tensor, got {t.dim()} dims with shape {tuple(t.shape)}")
    check_positive_size(t.shape[2], f"the height of {name}")
    check_positive_size(t.shape[3], f"the width of {name}")


def check_stacked(x: torch.Tensor, name: str = "x") -> None:
    """A floating [M, B, C, H, W] tensor with M >= 2 and H, W >= 1."""
    check_floating(x, name)
    if x.dim() != 5:
        raise ValueError(f"{name} must be a 5-D [M, B, C, H, W] tensor, got {x.dim()} dims with shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} must stack M >= 2 inputs along dim 0, got M = {x.shape[0]}")
    check_positive_size(x.shape[3], f"the height of {name}")
    check_positive_size(x.shape[4], f"the width of {name}")


def check_boxes(boxes, like: torch.Tensor, like_name: str, batch: int) -> None:
    """int32 [B, 4] boxes on ``like``'s device (metadata only)."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be an int32 tensor, got {type(boxes).__name__}")
    if boxes.dtype != torch.int32:
        raise TypeError(f"boxes must be an int32 tensor, got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [B, 4], got {tuple(boxes.shape)}")
    if boxes.shape[0] != batch:
        raise ValueError(f"boxes must have one row per sample: expected B = {batch} (from {like_name}), got {boxes.shape[0]}")
    check_same_device(boxes, like, "boxes", like_name)


def check_box_values(boxes: torch.Tensor, height: int, width: int) -> None:
    """Every box inside [0, H] x [0, W] with top <= bottom, left <= right."""
    if boxes.numel() == 0 or not _should_check_values(boxes):
        return
    top, left, bottom, right = boxes.unbind(1)
    bad = (top < 0) | (left < 0) | (top > bottom) | (left > right) | (bottom > height) | (right > width)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"boxes[{b}] = {tuple(boxes[b].tolist())} must satisfy 0 <= top <= bottom <= {height} "
            f"and 0 <= left <= right <= {width}"
        )


def check_weights(weights, name: str, like: torch.Tensor, like_name: str, batch: int, subnets: int) -> None:
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{name} must be a [B, M] tensor, got {type(weights).__name__}")
    if weights.dim() != 2 or weights.shape[0] != batch or weights.shape[1] != subnets:
        raise ValueError(f"{name} must have shape [B, M] = [{batch}, {subnets}], got {tuple(weights.shape)}")
    check_floating(weights, name)
    check_same_device(weights, like, name, like_name)
    if weights.requires_grad:
        raise ValueError(f"{name} must not require grad: the mixing ops are differentiable with respect to the features only")


def check_unmix_weights(inside_weight, outside_weight, like: torch.Tensor, like_name: str, batch: int) -> int:
    """Both weights [B, M] (M >= 2) or both None (the default M = 2 weights). Returns M."""
    if (inside_weight is None) != (outside_weight is None):
        raise ValueError("inside_weight and outside_weight must be given together or both left out "
                         f"(default M = {DEFAULT_SUBNETS})")
    if inside_weight is None:
        return DEFAULT_SUBNETS
    if not isinstance(inside_weight, torch.Tensor) or inside_weight.dim() != 2:
        shape = tuple(inside_weight.shape) if isinstance(inside_weight, torch.Tensor) else type(inside_weight).__name__
        raise ValueError(f"inside_weight must have shape [B, M], got {shape}")
    subnets = inside_weight.shape[1]
    if subnets < 2:
        raise ValueError(f"inside_weight must have M >= 2 columns (one per subnetwork), got {subnets}")
    check_weights(inside_weight, "inside_weight", like, like_name, batch, subnets)
    check_weights(outside_weight, "outside_weight", like, like_name, batch, subnets)
    return subnets


def check_unmix_scalars(box_size, height: int, width: int, ratio, channels, num_channels: int) -> None:
    box_h, box_w = box_size
    check_positive_size(box_h, "box_size[0]")
    check_positive_size(box_w, "box_size[1]")
    if box_h < height or box_w < width:
        raise ValueError(f"box_size must be at least the feature size ({height}, {width}), got ({box_h}, {box_w})")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio must be a float in [0, 1], got {type(ratio).__name__}")
    if not (0.0 <= ratio <= 1.0):  # also rejects NaN
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if isinstance(channels, bool) or not isinstance(channels, (int, torch.SymInt)):
        raise TypeError(f"channels must be an int in [0, C], got {type(channels).__name__}")
    if channels < 0 or channels > num_channels:
        raise ValueError(f"channels must be in [0, C] = [0, {num_channels}], got {channels}")


def check_normalize(normalize) -> None:
    """One of :data:`~mixshare_ops.conventions.NORMALIZE_MODES`."""
    if normalize not in NORMALIZE_MODES:
        modes = " or ".join(f'"{mode}"' for mode in NORMALIZE_MODES)
        raise ValueError(f"normalize must be {modes}, got {normalize!r}")


def check_scale(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def check_box_sample(lam, center, height, width) -> None:
    """lam [B] and center [B, 2], floating, on one device; positive grid size."""
    check_positive_size(height, "height")
    check_positive_size(width, "width")
    check_floating(lam, "lam")
    if lam.dim() != 1:
        raise ValueError(f"lam must be a 1-D [B] tensor, got shape {tuple(lam.shape)}")
    check_floating(center, "center")
    if center.dim() != 2 or center.shape[0] != lam.shape[0] or center.shape[1] != 2:
        raise ValueError(f"center must have shape [B, 2] = [{lam.shape[0]}, 2], got {tuple(center.shape)}")
    check_same_device(center, lam, "center", "lam")


def check_box_sample_values(lam: torch.Tensor, center: torch.Tensor) -> None:
    if lam.numel() == 0 or not _should_check_values(lam):
        return
    if not bool(((lam >= 0) & (lam <= 1)).all()):  # NaN fails
        raise ValueError("lam must lie in [0, 1] (no NaN)")
    if not bool(((center >= 0) & (center < 1)).all()):
        raise ValueError("center must lie in [0, 1) (no NaN)")


# Per-op validation of everything but tensor values: the Triton operators,
# the fake kernels and the reference wrappers run these.


def validate_cutmix_mask(boxes, height, width) -> None:
    check_positive_size(height, "height")
    check_positive_size(width, "width")
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must have shape [B, 4], got {shape}")
    check_boxes(boxes, boxes, "boxes", boxes.shape[0])


def validate_box_mix(x, boxes, inside_weight, outside_weight, scale) -> None:
    check_stacked(x, "x")
    subnets, batch = x.shape[0], x.shape[1]
    check_boxes(boxes, x, "x", batch)
    check_weights(inside_weight, "inside_weight", x, "x", batch, subnets)
    check_weights(outside_weight, "outside_weight", x, "x", batch, subnets)
    check_scale(scale)


def validate_box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale) -> None:
    check_features(grad_out, "grad_out")
    batch = grad_out.shape[0]
    subnets = check_unmix_weights(inside_weight, outside_weight, grad_out, "grad_out", batch)
    del subnets
    check_boxes(boxes, grad_out, "grad_out", batch)
    check_scale(scale)


def validate_unmix(features, boxes, inside_weight, outside_weight, box_size, ratio, channels) -> int:
    """Checks cutmix_unmix arguments; returns M."""
    check_features(features, "features")
    batch, num_channels, height, width = features.shape
    check_unmix_scalars(box_size, height, width, ratio, channels, num_channels)
    check_boxes(boxes, features, "features", batch)
    return check_unmix_weights(inside_weight, outside_weight, features, "features", batch)


def validate_unmix_pool(features, boxes, inside_weight, outside_weight, box_size, ratio, channels, normalize) -> int:
    """Checks cutmix_unmix_pool arguments; returns M."""
    subnets = validate_unmix(features, boxes, inside_weight, outside_weight, box_size, ratio, channels)
    check_normalize(normalize)
    return subnets


def validate_unmix_backward(grad_out, boxes, inside_weight, outside_weight, box_size, ratio, channels) -> None:
    check_stacked(grad_out, "grad_out")
    subnets, batch, num_channels, height, width = grad_out.shape
    check_unmix_scalars(box_size, height, width, ratio, channels, num_channels)
    check_boxes(boxes, grad_out, "grad_out", batch)
    expected = check_unmix_weights(inside_weight, outside_weight, grad_out, "grad_out", batch)
    if subnets != expected:
        raise ValueError(f"grad_out must have M = {expected} (from the weights) along dim 0, got {subnets}")


def validate_unmix_pool_backward(
    grad_out, boxes, inside_weight, outside_weight, box_size, ratio, channels, normalize, height, width
) -> None:
    check_floating(grad_out, "grad_out")
    if grad_out.dim() != 3:
        raise ValueError(f"grad_out must be a 3-D [M, B, C] tensor, got shape {tuple(grad_out.shape)}")
    check_positive_size(height, "height")
    check_positive_size(width, "width")
    subnets, batch, num_channels = grad_out.shape
    check_unmix_scalars(box_size, height, width, ratio, channels, num_channels)
    check_normalize(normalize)
    check_boxes(boxes, grad_out, "grad_out", batch)
    expected = check_unmix_weights(inside_weight, outside_weight, grad_out, "grad_out", batch)
    if subnets != expected:
        raise ValueError(f"grad_out must have M = {expected} (from the weights) along dim 0, got {subnets}")
