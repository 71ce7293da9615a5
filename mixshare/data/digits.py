"""scikit-learn's bundled 8x8 handwritten digits (no download), upsampled: ``load_digits``."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F

from mixshare.data.dataset import ImageDataset, _float_stats, _normalise

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.25, seed: int = 0, size: int = 32) -> ImageDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits as a 10-class dataset of ``[N, 3, size, size]`` images.

    Split stratified and deterministic (``train_test_split(random_state=seed, stratify=labels)``),
    pixels scaled to [0, 1], upsampled bilinearly, replicated to 3 channels and normalised with the
    train split's statistics. ``hflip`` is False: digits are not mirror-invariant.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    size = operator.index(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn (pip install scikit-learn)") from exc

    bunch = sklearn_digits()
    pixels = np.asarray(bunch.images, dtype=np.float32) / 16.0  # [N, 8, 8], values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]), test_size=float(test_fraction), random_state=seed, stratify=labels
    )
    images = torch.from_numpy(pixels).unsqueeze(1)  # [N, 1, 8, 8]
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    train_idx_t = torch.from_numpy(np.asarray(train_idx, dtype=np.int64))
    test_idx_t = torch.from_numpy(np.asarray(test_idx, dtype=np.int64))
    train_images = images[train_idx_t].contiguous()
    test_images = images[test_idx_t].contiguous()
    mean, std = _float_stats(train_images)
    labels_t = torch.from_numpy(labels)
    return ImageDataset(
        train_images=_normalise(train_images, mean, std),
        train_labels=labels_t[train_idx_t].clone(),
        test_images=_normalise(test_images, mean, std),
        test_labels=labels_t[test_idx_t].clone(),
        num_classes=10,
        hflip=False,
        name="digits",
        mean=mean,
        std=std,
    )
