"""MimoLoader: training batches formed, augmented and laid out on the device.

One pass over the loader is one epoch. Each step yields ``images [M, R, C, H, W]``
(row r of member i is the image subnetwork i sees at batch position r) and
``labels [M, R]``, with the MIMO batch formation of the official MixMo sampler
(batch repetition b, input repetition rho, M shuffled views: see
:func:`mixshare.data.mimo_epoch_indices`), a random crop and flip per image,
channels_last if asked, and under DDP this rank's share of the rows. Nothing
syncs with the host. Each member's copy of an image is augmented on its own, except
at ``input_repetition == 1`` (every row shared, the ``multihead`` preset), where one
augmentation per image is drawn and every member sees the same pixels.
"""

from __future__ import annotations

from typing import Iterator

import torch

from mixshare import data


class MimoLoader:
    """Iterable over one epoch of ``(images [M, R, C, H, W], labels [M, R])`` of ``dataset``'s training split.

    ``batch_size`` counts rows (repetitions included); under DDP (``world_size > 1``) each rank
    yields its ``R / world_size`` rows of the batch all ranks draw alike. A batch whose distinct
    images outnumber the training split, or with fewer rows than ranks, raises ValueError. ``seed`` seeds the two
    device generators the loader owns: ``order_generator`` for the batches (the same on every
    rank) and ``sample_generator`` for the per-sample draws of this rank: the augmentation here,
    and the mixing plans drawn for the batches (:func:`mixshare.methods.sample_plan`).
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
        images = data.images_per_step(batch_size, batch_repetition)
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
        self.order_generator = torch.Generator(device).manual_seed(seed + 1)
        self.sample_generator = torch.Generator(device).manual_seed(seed + 2 + 1000 * rank)

    def __len__(self) -> int:
        """Steps per epoch."""
        return data.steps_per_epoch(self.dataset.num_train, self.batch_size, self.batch_repetition)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset
        indices = data.mimo_batches(
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
