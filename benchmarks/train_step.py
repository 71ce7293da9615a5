"""End-to-end training-step throughput: the single network, MixShare through
``mixshare_ops`` (each backend and the eager reference), and a MixMo-style
pipeline whose per-sample CutMix masks are built on the CPU in DataLoader
workers and shipped to the device as dense masks.

Every variant trains the same Wide-ResNet on CIFAR-shaped synthetic data with
R rows per step (R = batch * b for the MIMO variants: the core sees as many
samples per step as the single network's batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import statistics
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

import mixshare_ops
from mixshare import data
from mixshare.config import Config, apply, preset
from mixshare.loader import MimoLoader
from mixshare.methods import sample_plan
from mixshare.models import build_model
from mixshare.runtime import bf16_autocast, gpu_only
from mixshare.train import mimo_loss, training_step
from mixshare_ops.backends import ENV_VAR, available_backends

from benchmarks.timing import synchronize, time_sample


@dataclasses.dataclass(frozen=True)
class StepSetting:
    model: str
    rows: int  # samples through the core per step
    batch_repetition: int = 2
    image_size: int = 32
    num_classes: int = 100


def cuda_settings() -> list[StepSetting]:
    return [StepSetting("wrn-28-2", 128), StepSetting("wrn-28-10", 128)]


def cpu_settings() -> list[StepSetting]:
    return [StepSetting("wrn-16-1", 32)]


def quick_settings() -> list[StepSetting]:
    return [StepSetting("wrn-10-1", 8)]


def variants(device: torch.device) -> list[str]:
    """``single``, ``mixshare/<backend>`` for every fused backend and the reference, ``mixmo-dataloader``."""
    fused = [b for b in available_backends(device) if b != "reference" and (b != "triton" or device.type == "cuda")]
    return ["single"] + [f"mixshare/{b}" for b in fused] + ["mixshare/reference", "mixmo-dataloader"]


@contextlib.contextmanager
def forced_backend(name: Optional[str]) -> Iterator[None]:
    """Every mixshare_ops call inside uses backend ``name`` (through ``$MIXSHARE_OPS_BACKEND``)."""
    previous = os.environ.get(ENV_VAR)
    if name is not None:
        os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def _config(setting: StepSetting, method: str, device: torch.device) -> Config:
    """The method's preset with the benchmark's model, rows per step and device."""
    b = 1 if method == "single" else setting.batch_repetition
    config = apply(Config(), preset(method), f"preset {method}")
    return apply(
        config,
        {"model": setting.model, "batch_size": setting.rows, "batch_repetition": b, "epochs": 300,
         "device": device.type},
        "the benchmark",
    )


def _dataset(setting: StepSetting, num_train: int, device: Optional[torch.device]) -> data.ImageDataset:
    dataset = data.synthetic_dataset(
        num_train, 16, setting.num_classes, size=setting.image_size, seed=0
    )
    return dataset.to(device) if device is not None else dataset


def _forever(loader) -> Iterator:
    """The loader's batches, epoch after epoch (each epoch a new pass, reshuffled as the loader does)."""
    while True:
        batches = 0
        for batches, batch in enumerate(loader, 1):
            yield batch
        if batches == 0:
            raise ValueError("the loader gives no batch: the benchmark set is smaller than one batch")


# ------------------------------------------------------------ fused pipeline


class FusedStep:
    """One training step per call as ``mixshare.train`` runs it: the next batch of a
    :class:`~mixshare.loader.MimoLoader`, a plan from :func:`~mixshare.methods.sample_plan`,
    :func:`~mixshare.train.training_step`. Data, masks and augmentation stay on the device."""

    def __init__(self, setting: StepSetting, method: str, device: torch.device):
        self.config = c = _config(setting, method, device)
        dataset = _dataset(setting, 4 * setting.rows, device)
        self.model = build_model(setting.model, setting.num_classes, c.num_subnets, c.encoder_init).to(device)
        channels_last = gpu_only(c.channels_last, device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        self.loader = MimoLoader(dataset, c.batch_size, c.num_subnets, c.batch_repetition, c.input_repetition,
                                 seed=0, channels_last=channels_last)
        self.grid = self.model.mixing_grid(tuple(dataset.train_images.shape[-2:]))
        self.host_rng = random.Random(3)
        self.batches = _forever(self.loader)

    def __call__(self) -> None:
        images, labels = next(self.batches)
        # Epoch 50 of 300: inside MixShare's fadeout, cut probability 1.
        plan = sample_plan(self.config, labels.shape[1], self.grid, 50.0, self.loader.sample_generator,
                           self.host_rng, self.model.num_features, scale=self.model.mixing_scale)
        training_step(self.model, images, labels, plan, self.optimizer, bf16=self.config.bf16)


# ------------------------------------------------- MixMo-style CPU-mask pipeline


class PerSampleMixDataset(torch.utils.data.Dataset):
    """MixMo's loader: per sample, M augmented images and a dense CutMix mask, built with numpy.

    Item: images float32 [M, 3, H, W], labels int64 [M], mask float32 [1, H, W],
    area float32 (the box's share of the image).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_subnets: int = 2, alpha: float = 2.0):
        self.images = images.numpy()
        self.labels = labels.numpy()
        self.num_subnets = num_subnets
        self.alpha = alpha

    def __len__(self) -> int:
        return len(self.images)

    def _augment(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        _, h, w = image.shape
        padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
        top, left = rng.integers(0, 9, size=2)
        crop = padded[:, top : top + h, left : left + w]
        return crop[:, :, ::-1] if rng.random() < 0.5 else crop

    def __getitem__(self, index: int):
        rng = np.random.default_rng()
        picks = [index] + list(rng.integers(0, len(self.images), size=self.num_subnets - 1))
        images = np.stack([self._augment(rng, self.images[i]) for i in picks])
        _, _, h, w = images.shape
        lam = rng.beta(self.alpha, self.alpha)
        cut = np.sqrt(lam)
        cut_h, cut_w = int(h * cut), int(w * cut)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
        left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
        mask = np.zeros((1, h, w), dtype=np.float32)
        mask[:, top:bottom, left:right] = 1.0
        area = np.float32((bottom - top) * (right - left) / (h * w))
        return torch.from_numpy(images.copy()), torch.from_numpy(self.labels[picks]), torch.from_numpy(mask), area


def dense_mask_forward(model, images: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """MixMo/MixShare with dense masks: mix, core, unmix by masked pooling (M = 2).

    images [2, B, 3, H, W], mask [B, 1, H, W] -> logits [2, B, K].
    """
    encoded = model.encode(images)
    m = mask.to(encoded.dtype)
    mixed = 2 * (m * encoded[0] + (1 - m) * encoded[1])
    features = model.core(mixed)
    small = F.adaptive_avg_pool2d(m, features.shape[-2:])
    masks = (small + ratio * (1 - small), (1 - small) + ratio * small)
    pooled = [(features * mi).mean(dim=(2, 3)) for mi in masks]
    return torch.stack([head(p) for head, p in zip(model.heads, pooled)])


class DataLoaderStep:
    """A step of the MixMo-style pipeline: the next DataLoader batch to the device, then train."""

    def __init__(self, setting: StepSetting, device: torch.device, workers: Optional[int] = None):
        self.device = device
        self.channels_last = gpu_only(True, device)  # as bf16 autocast: on for every GPU run
        dataset = _dataset(setting, 4 * setting.rows, None)
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.loader = torch.utils.data.DataLoader(
            PerSampleMixDataset(dataset.train_images, dataset.train_labels),
            batch_size=setting.rows, shuffle=True, drop_last=True, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        )
        self.model = build_model(setting.model, setting.num_classes, 2).to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        self.batches = _forever(self.loader)

    def __call__(self) -> None:
        images, labels, mask, area = (t.to(self.device, non_blocking=True) for t in next(self.batches))
        images = images.transpose(0, 1)  # [M, B, 3, H, W]
        if self.channels_last:
            m, b = images.shape[:2]
            images = images.reshape(m * b, *images.shape[2:]).contiguous(memory_format=torch.channels_last)
            images = images.view(m, b, *images.shape[1:])
        weights = torch.stack([area, 1 - area], dim=1) * 2
        with bf16_autocast(True, self.device):
            logits = dense_mask_forward(self.model, images, mask, 0.5)
        loss = mimo_loss(logits, labels.t(), weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


# --------------------------------------------------------------------- timing


def make_step(variant: str, setting: StepSetting, device: torch.device):
    if variant == "single":
        return FusedStep(setting, "single", device), None
    if variant.startswith("mixshare/"):
        return FusedStep(setting, "mixshare-fadeout", device), variant.split("/", 1)[1]
    if variant == "mixmo-dataloader":
        return DataLoaderStep(setting, device), None
    raise ValueError(f"unknown variant {variant!r}: expected one of {', '.join(variants(device))}")


def step_throughput(
    variant: str, setting: StepSetting, device: torch.device, *, steps: int = 10, repeat: int = 3, warmup: int = 3
) -> dict:
    """Median seconds per step over ``repeat`` blocks of ``steps`` steps; images per second."""
    torch.manual_seed(0)
    step, backend = make_step(variant, setting, device)
    with forced_backend(backend), mixshare_ops.value_checks(False):
        for _ in range(warmup):
            step()
        synchronize(device)
        blocks = [time_sample(step, device, steps) for _ in range(repeat)]
    seconds = statistics.median(blocks)
    return {
        "model": setting.model,
        "rows": setting.rows,
        "variant": variant,
        "step_ms": 1e3 * seconds,
        "step_ms_min": 1e3 * min(blocks),
        "step_ms_max": 1e3 * max(blocks),
        "images_per_s": setting.rows / seconds,
    }
