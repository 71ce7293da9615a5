"""A batch's mixing plan: what ``box_mix``, ``cutmix_unmix`` and ``cutmix_unmix_pool`` take as ``plan=``.

A plan holds every argument the mixing and unmixing ops need for one batch, so
that they are written once and cannot disagree between the two ops:
``mixshare.methods.sample_plan`` (and ``draw_plan``) build one per batch by a
method's rule.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch


@dataclasses.dataclass(frozen=True)
class UnmixPlan:
    """MixShare's unmixing: ``ratio`` is the fadeout r (masks ``m + r (1 - m)``), ``channels``
    how many leading channels are unmixed, ``normalize`` the pooling (``"mean"`` or ``"masked"``)."""

    ratio: float
    channels: int
    normalize: str


@dataclasses.dataclass(frozen=True)
class MixPlan:
    """How one batch of R rows is mixed, unmixed and weighted in the loss (tensors on the device).

    boxes: int32 [R, 4] on the mixing grid ``grid`` (h, w); inside / outside: [R, M] weights of
    each input inside / outside the box; scale: the ``box_mix`` scale; loss_weights: [R, M];
    unmix: the unmixing of MixShare's methods, else None.
    """

    boxes: torch.Tensor
    inside: torch.Tensor
    outside: torch.Tensor
    scale: float
    grid: tuple[int, int]
    loss_weights: torch.Tensor
    unmix: Optional[UnmixPlan] = None
