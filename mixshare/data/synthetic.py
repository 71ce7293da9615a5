"""Learnable random images of CIFAR shape for benchmarks and smoke runs: ``synthetic_dataset``."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from mixshare.data.dataset import ImageDataset, _float_stats, _normalise

__all__ = ["synthetic_dataset"]


def synthetic_dataset(
    num_train: int,
    num_test: int,
    num_classes: int,
    size: int = 32,
    seed: int = 0,
    noise: float = 1.0,
) -> ImageDataset:
    """Learnable random images ``[N, 3, size, size]``: a smooth per-class template plus Gaussian noise.

    Templates are mirror-symmetric, so ``hflip`` is True as for CIFAR; labels are balanced
    (``i % num_classes``, shuffled). Deterministic for a given ``seed`` (drawn on the CPU).
    """
    num_train, num_test, num_classes, size = map(operator.index, (num_train, num_test, num_classes, size))
    if num_train < 1 or num_test < 0 or num_classes < 1 or size < 1:
        raise ValueError(
            f"need num_train >= 1, num_test >= 0, num_classes >= 1, size >= 1; got {num_train}, {num_test}, "
            f"{num_classes}, {size}"
        )
    gen = torch.Generator().manual_seed(seed)
    coarse = max(1, size // 4)
    templates = torch.randn(num_classes, 3, coarse, coarse, generator=gen)
    templates = F.interpolate(templates, size=(size, size), mode="bilinear", align_corners=False)
    templates = 0.5 * (templates + templates.flip(-1))
    templates /= templates.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        images = torch.randn(n, 3, size, size, generator=gen).mul_(noise)
        return images.add_(templates[labels]), labels

    train_images, train_labels = split(num_train)
    test_images, test_labels = split(num_test)
    mean, std = _float_stats(train_images)
    return ImageDataset(
        train_images=_normalise(train_images, mean, std),
        train_labels=train_labels,
        test_images=_normalise(test_images, mean, std),
        test_labels=test_labels,
        num_classes=num_classes,
        hflip=True,
        name="synthetic",
        mean=mean,
        std=std,
    )
