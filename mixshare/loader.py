"""MIMO batch formation: the epoch's index matrices (:func:`mimo_epoch_indices`) and ``MimoLoader``,
the training batches formed, augmented and laid out on the device.

One pass over the loader is one epoch. Each step yields ``images [M, R, C, H, W]``
(row r of member i is the image subnetwork i sees at batch position r) and
``labels [M, R]``, with the MIMO batch formation of the official MixMo sampler
(batch repetition b, input repetition rho, M shuffled views: see
:func:`mimo_epoch_indices`), a random crop and flip per image,
channels_last if asked, and under DDP this rank's share of the rows. Nothing
syncs with the host. Each member's copy of an image is augmented on its own, except
at ``input_repetition == 1`` (every row shared, the ``multihead`` preset), where one
augmentation per image is drawn and every member sees the same pixels.
"""

from __future__ import annotations

import operator
from typing import Iterator, Optional

import torch

from mixshare import data
from mixshare.data.dataset import DeviceLike
from mixshare.seeds import stream_seed

__all__ = ["MimoLoader", "images_per_step", "mimo_batches", "mimo_epoch_indices", "steps_per_epoch"]


def images_per_step(batch_size: int, batch_repetition: int = 1) -> int:
    """Distinct images in a step of ``batch_size`` rows, each repeated ``batch_repetition`` times.

    ``ceil(batch_size / batch_repetition)``: a step holds that many images times ``batch_repetition``
    rows, ``batch_size`` rounded up to a multiple of ``batch_repetition`` (as the official MixMo
    sampler, which adds b copies of an image until the batch has at least ``batch_size`` rows).
    """
    batch_size, batch_repetition = operator.index(batch_size), operator.index(batch_repetition)
    if batch_size < 1 or batch_repetition < 1:
        raise ValueError(f"need batch_size >= 1 and batch_repetition >= 1, got {batch_size}, {batch_repetition}")
    return -(-batch_size // batch_repetition)


def steps_per_epoch(num_samples: int, batch_size: int, batch_repetition: int = 1) -> int:
    """Steps in one pass over ``num_samples`` images at ``batch_size`` rows per step, repetitions included.

    ``num_samples // images_per_step(batch_size, batch_repetition)`` (the last partial step is dropped),
    but 1 when ``0 < num_samples`` is below one step's images. CIFAR (50,000) at 64 rows and b = 2: 1,562.
    """
    num_samples = operator.index(num_samples)
    if num_samples < 0:
        raise ValueError(f"need num_samples >= 0, got {num_samples}")
    images = images_per_step(batch_size, batch_repetition)
    if num_samples == 0:
        return 0
    return max(1, num_samples // images)


def _resolve_device(generator: Optional[torch.Generator], device: Optional[DeviceLike]) -> torch.device:
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}: they must match")
    return device


def mimo_epoch_indices(
    num_samples: int,
    batch_size: int,
    num_subnets: int,
    batch_repetition: int = 1,
    input_repetition: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: Optional[DeviceLike] = None,
) -> torch.Tensor:
    """One epoch of MIMO indices, int64 ``[S, M, R]``: S steps, M members, R rows per step.

    ``batch_size`` counts rows, repetitions included, as in the official MixMo code: a step takes
    ``D = images_per_step(batch_size, batch_repetition)`` distinct images of one random permutation
    (``D = num_samples`` when that is smaller; steps never share an image) and repeats each
    ``batch_repetition`` times side by side, ``R = D * batch_repetition`` rows (``batch_size`` when b
    divides it). The first ``int(R * input_repetition)`` of those rows, in that order, are shared by
    every member; each member gets its own random permutation of the remaining rows.
    ``S = steps_per_epoch(num_samples, batch_size, batch_repetition)``. All draws use ``generator`` on
    ``device``; nothing syncs with the host.
    """
    num_samples = operator.index(num_samples)
    num_subnets, batch_repetition = operator.index(num_subnets), operator.index(batch_repetition)
    if num_subnets < 1 or batch_repetition < 1:
        raise ValueError(f"need num_subnets >= 1 and batch_repetition >= 1, got {num_subnets}, {batch_repetition}")
    input_repetition = float(input_repetition)
    if not 0.0 <= input_repetition <= 1.0:
        raise ValueError(f"input_repetition must lie in [0, 1], got {input_repetition}")
    steps = steps_per_epoch(num_samples, batch_size, batch_repetition)
    device = _resolve_device(generator, device)
    images = images_per_step(batch_size, batch_repetition)
    width = min(images, num_samples) if num_samples else images
    rows = width * batch_repetition
    if steps == 0:
        return torch.empty(0, num_subnets, rows, dtype=torch.long, device=device)
    shared = int(rows * input_repetition)

    perm = torch.randperm(num_samples, generator=generator, device=device)[: steps * width].view(steps, width)
    tiled = perm.repeat_interleave(batch_repetition, dim=1)  # [S, R]: each image b times side by side
    keys = torch.rand(steps, num_subnets, rows - shared, generator=generator, device=device, dtype=torch.float64)
    own = tiled[:, None, shared:].expand(-1, num_subnets, -1).gather(2, keys.argsort(dim=2, stable=True))
    prefix = tiled[:, None, :shared].expand(-1, num_subnets, -1)
    return torch.cat([prefix, own], dim=2)


def mimo_batches(*args, **kwargs) -> Iterator[torch.Tensor]:
    """One epoch's MIMO index matrices, int64 ``[M, R]`` each: :func:`mimo_epoch_indices` (same
    arguments) step by step. Row ``r`` of member ``i`` is the sample that subnetwork ``i`` sees at
    batch position ``r``; the whole epoch is drawn on the call, on the device."""
    return iter(mimo_epoch_indices(*args, **kwargs).unbind(0))


class MimoLoader:
    """Iterable over one epoch of ``(images [M, R, C, H, W], labels [M, R])`` of ``dataset``'s training split.

    ``batch_size`` counts rows (repetitions included); under DDP (``world_size > 1``) each rank
    yields its ``R / world_size`` rows of the batch all ranks draw alike. A batch whose distinct
    images outnumber the training split, or with fewer rows than ranks, raises ValueError. ``seed`` seeds the two
    device generators the loader owns (streams ``"batch_order"`` and ``"samples"`` of :mod:`mixshare.seeds`):
    ``order_generator`` for the batches (the same on every rank) and ``sample_generator`` for the per-sample
    draws of this rank: the augmentation here, and the mixing plans drawn for the batches
    (:func:`mixshare.methods.sample_plan`).
    """

    def __init__(
        self,
        dataset: data.ImageDataset,
        batch_size: int,
        num_subnets: int,
        batch_repetition: int = 1,
        input_repetition: float = 0.0,
        *,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        images = images_per_step(batch_size, batch_repetition)
        if images > dataset.num_train:
            raise ValueError(
                f"batch_size {batch_size} asks for {images} distinct images per step (batch_repetition "
                f"{batch_repetition}), more than the {dataset.num_train} training images; at most "
                f"{dataset.num_train * batch_repetition}")
        if images * batch_repetition < world_size:
            raise ValueError(f"batch_size {batch_size} gives {images * batch_repetition} rows per step, fewer than the "
                             f"{world_size} DDP ranks: every rank needs at least one row")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_subnets = num_subnets
        self.batch_repetition = batch_repetition
        self.input_repetition = input_repetition
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        device = dataset.train_images.device
        self.order_generator = torch.Generator(device).manual_seed(stream_seed(seed, "batch_order"))
        self.sample_generator = torch.Generator(device).manual_seed(stream_seed(seed, "samples", rank))

    def __len__(self) -> int:
        """Steps per epoch."""
        return steps_per_epoch(self.dataset.num_train, self.batch_size, self.batch_repetition)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset
        indices = mimo_batches(
            ds.num_train, self.batch_size, self.num_subnets, self.batch_repetition, self.input_repetition,
            self.order_generator, ds.train_images.device,
        )
        for index in indices:  # [M, R]
            if self.world_size > 1:
                share = index.shape[1] // self.world_size
                index = index[:, self.rank * share : (self.rank + 1) * share]
            m, r = index.shape
            if self.input_repetition == 1.0:
                # Every row is shared (the naive multihead baseline): one augmentation per image, the
                # same for all M members, so every member sees exactly the same pixels.
                images = data.augment(ds.train_images[index[0]], ds.hflip, self.sample_generator,
                                      fill=ds.pad_value).repeat(m, 1, 1, 1)
            else:  # each member's copy of a row augmented on its own (shared rows included)
                images = data.augment(ds.train_images[index.reshape(-1)], ds.hflip, self.sample_generator,
                                      fill=ds.pad_value)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images.view(m, r, *images.shape[1:]), ds.train_labels[index]

    def state_dict(self) -> dict:
        """The generators' states: a resumed run continues with the same batches."""
        return {"order": self.order_generator.get_state(), "samples": self.sample_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order_generator.set_state(state["order"].cpu())
        self.sample_generator.set_state(state["samples"].cpu())
