"""The optimiser and learning-rate schedule of a run: SGD (the CNN papers) or AdamW (the ViT recipe)."""

from __future__ import annotations

import math

import torch

from mixshare.config import Config
from mixshare.protocol import MimoModel


def lr_factor(config: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warmup over ``warmup_epochs``, then ``schedule``: step (x``lr_decay`` at each
    milestone) or cosine (from 1 after the warmup to 0 at the end of training)."""
    warmup = config.warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        if step < warmup:
            return factor
        done = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    progress = step / total
    passed = sum(progress >= m for m in config.lr_milestones)
    return factor * config.lr_decay**passed


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


def make_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int):
    """:func:`lr_factor` as a per-step ``LambdaLR``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, steps_per_epoch))
