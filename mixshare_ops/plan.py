"""A batch's mixing plan: what ``box_mix``, ``cutmix_unmix`` and ``cutmix_unmix_pool`` take as ``plan=``.

A plan holds every argument the mixing and unmixing ops need for one batch, so
that they are written once and cannot disagree between the two ops:
``mixshare.methods.sample_plan`` (and ``draw_plan``) build one per batch by a
method's rule.

A plan is immutable: its fields cannot be reassigned, and its tensors are
checked at every use against the version counters they had when the plan was
built, so a tensor changed in place afterwards (through the plan or any other
reference to it) is refused instead of unmixing by other boxes than it mixed
with. Construction and that check read metadata only (no host sync).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from mixshare_ops import checks


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class UnmixPlan:
    """MixShare's unmixing: ``ratio`` is the fadeout r in [0, 1] (masks ``m + r (1 - m)``), ``channels``
    how many leading channels are unmixed, ``normalize`` the pooling (``"mean"`` or ``"masked"``)."""

    ratio: float
    channels: int
    normalize: str

    def __post_init__(self):
        if not _is_real(self.ratio):
            raise TypeError(f"UnmixPlan.ratio must be a float in [0, 1], got {type(self.ratio).__name__}")
        if not 0.0 <= self.ratio <= 1.0:  # also refuses NaN
            raise ValueError(f"UnmixPlan.ratio must be in [0, 1], got {self.ratio}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise TypeError(f"UnmixPlan.channels must be an int >= 0, got {type(self.channels).__name__}")
        if self.channels < 0:
            raise ValueError(f"UnmixPlan.channels must be >= 0, got {self.channels}")
        if self.normalize not in checks.NORMALIZE_MODES:
            raise ValueError(f"UnmixPlan.normalize must be one of {', '.join(checks.NORMALIZE_MODES)}, "
                             f"got {self.normalize!r}")


_TENSORS = ("boxes", "inside", "outside", "loss_weights")


@dataclasses.dataclass(frozen=True)
class MixPlan:
    """How one batch of R rows of M inputs is mixed, unmixed and weighted in the loss (tensors on one device).

    boxes: int32 [R, 4] on the mixing grid ``grid`` (h, w); inside / outside: [R, M] weights of
    each input inside / outside the box; scale: the ``box_mix`` scale (finite); loss_weights:
    [R, M]; unmix: the unmixing of MixShare's methods, else None.
    """

    boxes: torch.Tensor
    inside: torch.Tensor
    outside: torch.Tensor
    scale: float
    grid: tuple[int, int]
    loss_weights: torch.Tensor
    unmix: Optional[UnmixPlan] = None
    _versions: tuple = dataclasses.field(init=False, repr=False, compare=False, default=())

    def __post_init__(self):
        boxes = self.boxes
        if not isinstance(boxes, torch.Tensor) or boxes.dtype != torch.int32:
            got = boxes.dtype if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise TypeError(f"MixPlan.boxes must be an int32 tensor, got {got}")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"MixPlan.boxes must have shape [R, 4], got {tuple(boxes.shape)}")
        rows = boxes.shape[0]
        subnets = None
        for name in ("inside", "outside", "loss_weights"):
            t = getattr(self, name)
            checks.check_floating(t, f"MixPlan.{name}")
            if t.dim() != 2 or t.shape[0] != rows or t.shape[1] < 1 or subnets not in (None, t.shape[1]):
                expected = f"[{rows}, M]" if subnets is None else f"[{rows}, {subnets}]"
                raise ValueError(f"MixPlan.{name} must have shape [R, M] = {expected} (R from boxes), "
                                 f"got {tuple(t.shape)}")
            subnets = t.shape[1]
            checks.check_same_device(t, boxes, f"MixPlan.{name}", "MixPlan.boxes")
        if not _is_real(self.scale):
            raise TypeError(f"MixPlan.scale must be a float, got {type(self.scale).__name__}")
        if not math.isfinite(self.scale):
            raise ValueError(f"MixPlan.scale must be finite, got {self.scale}")
        grid = self.grid
        if not isinstance(grid, (tuple, list, torch.Size)) or len(grid) != 2:
            raise ValueError(f"MixPlan.grid must be a pair (height, width), got {grid!r}")
        checks.check_positive_size(grid[0], "MixPlan.grid[0]")
        checks.check_positive_size(grid[1], "MixPlan.grid[1]")
        if self.unmix is not None and not isinstance(self.unmix, UnmixPlan):
            raise TypeError(f"MixPlan.unmix must be an UnmixPlan or None, got {type(self.unmix).__name__}")
        object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        object.__setattr__(self, "_versions", tuple(_version(getattr(self, n)) for n in _TENSORS))

    @property
    def num_subnets(self) -> int:
        """M, the inputs the plan mixes (columns of its weights)."""
        return self.inside.shape[1]

    @property
    def rows(self) -> int:
        """R, the rows of the batch the plan mixes."""
        return self.boxes.shape[0]

    def check_unchanged(self) -> None:
        """Raises ValueError if one of the plan's tensors was modified in place since it was built."""
        for name, version in zip(_TENSORS, self._versions):
            if version is not None and _version(getattr(self, name)) != version:
                raise ValueError(f"plan.{name} was modified in place after the plan was built; a plan is "
                                 f"immutable (its ops must see what it mixed with): build a new plan instead")


def _version(t: torch.Tensor) -> Optional[int]:
    """The tensor's version counter (None for inference tensors, which have none)."""
    return None if t.is_inference() else t._version
