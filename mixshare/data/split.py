"""The calibration split: ``hold_out`` withholds a stratified part of the training images."""

from __future__ import annotations

import dataclasses

import torch

from mixshare.data.dataset import ImageDataset
from mixshare.seeds import stream_seed

__all__ = ["hold_out"]


def hold_out(dataset: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """``dataset`` with ``fraction`` of its training images moved to ``calibration_images`` / ``_labels``.

    Stratified: from each class, ``round(fraction * count)`` images, picked by a permutation drawn on
    a CPU generator seeded with ``stream_seed(seed, "calibration")`` (:mod:`mixshare.seeds`; no global
    random state is used). Both parts keep the dataset's order. The normalisation (``mean``, ``std``)
    stays that of the whole training split (pixel statistics, no labels). Raises ValueError unless both
    parts are non-empty and every class keeps a training image.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"calibration_split must lie in (0, 1) to withhold images, got {fraction}")
    labels = dataset.train_labels.cpu()
    gen = torch.Generator().manual_seed(stream_seed(seed, "calibration"))
    order = torch.randperm(labels.shape[0], generator=gen)
    held = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        held[members[: int(round(float(fraction) * members.numel()))]] = True
    kept = int((~held).sum())
    if not held.any() or kept == 0:
        raise ValueError(
            f"calibration_split {fraction} of {labels.shape[0]} training images withholds {int(held.sum())} and "
            f"keeps {kept}; both must be at least 1")
    emptied = [c for c in torch.unique(labels).tolist() if not bool((~held)[labels == c].any())]
    if emptied:
        raise ValueError(
            f"calibration_split {fraction} withholds every training image of class(es) "
            f"{', '.join(map(str, emptied[:10]))}{' ...' if len(emptied) > 10 else ''}; lower it so that each "
            f"class keeps a training image")
    held = held.to(dataset.train_labels.device)
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[~held],
        train_labels=dataset.train_labels[~held],
        calibration_images=dataset.train_images[held],
        calibration_labels=dataset.train_labels[held],
    )
