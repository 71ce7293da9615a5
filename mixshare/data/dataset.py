"""The dataset container: ``ImageDataset`` (whole tensors, normalised per channel), ``DatasetError``, and
the per-channel normalisation the sources share."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

__all__ = ["DatasetError", "DeviceLike", "ImageDataset", "PathLike"]


PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device]


class DatasetError(ValueError):
    """A dataset is missing or its files do not have the expected layout or content."""



@dataclasses.dataclass
class ImageDataset:
    """A classification dataset held as whole tensors.

    Images are float32 ``[N, C, H, W]``, normalised per channel with the train split's ``mean`` and
    ``std`` (given in the [0, 1] pixel scale); labels are int64 ``[N]`` in ``[0, num_classes)``.
    ``hflip`` says whether horizontal flips are a label-preserving augmentation.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    hflip: bool
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Training images withheld from training to fit a temperature (see :func:`hold_out`); None: none withheld.
    calibration_images: Optional[torch.Tensor] = None
    calibration_labels: Optional[torch.Tensor] = None

    def to(self, device: DeviceLike, non_blocking: bool = False) -> "ImageDataset":
        """A copy with the tensors on ``device`` (the same object's tensors if already there)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(
            self,
            train_images=move(self.train_images),
            train_labels=move(self.train_labels),
            test_images=move(self.test_images),
            test_labels=move(self.test_labels),
            calibration_images=move(self.calibration_images),
            calibration_labels=move(self.calibration_labels),
        )

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]

    @property
    def num_test(self) -> int:
        return self.test_images.shape[0]

    @property
    def pad_value(self) -> tuple[float, ...]:
        """Black (pixel value 0) after normalisation, per channel: ``-mean / std``."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train_images.shape[1:])


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """In place: ``(images - mean) / std`` per channel of a float ``[N, C, H, W]`` tensor."""
    shape = (1, len(mean), 1, 1)
    images.sub_(torch.tensor(mean, dtype=images.dtype).view(shape))
    images.div_(torch.tensor(std, dtype=images.dtype).view(shape))
    return images


def _float_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``[N, C, H, W]`` (Welford, one channel at a time)."""
    means, stds = [], []
    for c in range(images.shape[1]):
        var, mean = torch.var_mean(images[:, c], correction=0)
        means.append(mean.item())
        stds.append(max(math.sqrt(var.item()), 1e-12))
    return tuple(means), tuple(stds)
