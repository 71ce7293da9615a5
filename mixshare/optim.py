"""The optimiser and learning-rate schedule of a run: SGD (the CNN papers) or AdamW (the ViT recipe)."""

from __future__ import annotations

import math

import torch

from mixshare.config import Config
from mixshare.protocol import MimoModel


def warmup_steps(config: Config, num_images: int) -> int:
    """Steps of linear warmup: ``warmup_epochs`` epochs of ``ceil(num_images / batch_size) * batch_repetition``
    steps each, rounded down.

    That epoch length is the official MixMo code's warmup period for one epoch, 782 * b for CIFAR's
    50,000 images in batches of 64 (1,564 at b = 2, 3,128 at b = 4), slightly longer than the
    steps a pass over the images takes here (1,562 and 3,125).
    """
    epoch = -(-num_images // config.batch_size) * config.batch_repetition
    return math.floor(config.warmup_epochs * epoch + 1e-9)


def decays_passed(config: Config, epoch: int) -> int:
    """How many ``lr_milestones`` apply in 0-based ``epoch``: milestone fraction f lowers the lr from
    the 1-based epoch ``f * epochs`` on (the first one at or after it), as the official MixMo
    scheduler (stepped once at set-up) applies its milestone m from 1-based epoch m."""
    return sum(epoch + 1 >= round(f * config.epochs, 9) for f in config.lr_milestones)


def lr_factor(config: Config, step: int, steps_per_epoch: int, num_images: int) -> float:
    """The lr factor of 0-based ``step`` for a training set of ``num_images`` images: linear warmup,
    ``k / warmup_steps`` at the k-th step (counted from 1), then ``schedule``: step (x``lr_decay`` per
    milestone passed, by whole epochs: :func:`decays_passed`) or cosine (from 1 after the warmup to 0
    at the end of training)."""
    warmup = warmup_steps(config, num_images)
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if config.schedule == "cosine":
        if step < warmup:
            return factor
        total = config.epochs * steps_per_epoch
        done = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return factor * config.lr_decay ** decays_passed(config, step // steps_per_epoch)


def make_optimizer(model: MimoModel, config: Config) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum and L2 (the CNN papers), or AdamW (the ViT recipe).

    AdamW decays only the weight matrices and kernels: biases, norm weights and
    the parameters the model lists in ``no_weight_decay()`` (class token,
    source embeddings) are not decayed.
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr_value(), momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=2 * config.l2,
        )
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.dim() <= 1 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr_value())


def make_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int, num_images: int):
    """:func:`lr_factor` as a per-step ``LambdaLR`` (stepped after every optimisation step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch, num_images))
