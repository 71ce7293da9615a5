"""Method presets and the per-batch mixing plan they imply.

A preset fills the method fields of :class:`mixshare.config.Config`; every
field can still be set on its own. :func:`sample_plan` draws one batch's
mixing (boxes, weights, realised ratios) on the device, with no host sync.

``PRESETS`` are the CNN methods (WRN / PreActResNet models), ``VIT_PRESETS``
the transformer ones (``vit-*`` models); :func:`preset` knows both, and
``mixshare.config.validate`` refuses a preset with the other kind of model.
"""

from __future__ import annotations

import random
from typing import Optional

import torch

import mixshare_ops
from mixshare.config import Config
from mixshare.models import MixPlan

_MIXMO = dict(num_subnets=2, encoder_init="independent", input_repetition=0.0, batch_repetition=2, unmix=False)
_UNMIX = dict(_MIXMO, mixing="cut", cut_prob=1.0, cut_decay_start=1.0, loss_root=1.0, unmix=True,
              unmix_channels=1.0, input_repetition=0.1, fade_epochs=None, fade_fraction=None)

PRESETS = {
    "single": dict(num_subnets=1, mixing="none", batch_repetition=1, unmix=False, encoder_init="independent",
                   input_repetition=0.0, loss_root=1.0),
    "mimo": dict(_MIXMO, mixing="sum", loss_root=1.0),
    "linear-mixmo": dict(_MIXMO, mixing="linear", loss_root=3.0),
    "cut-mixmo": dict(_MIXMO, mixing="cut", cut_prob=0.5, cut_decay_start=11 / 12, loss_root=3.0),
    "unmix": dict(_UNMIX),
    "unmix-align": dict(_UNMIX, encoder_init="identical"),
    "mixshare-partial": dict(_UNMIX, encoder_init="identical", unmix_channels=0.25),
    "mixshare-fadeout": dict(_UNMIX, encoder_init="identical", fade_fraction=1 / 3),
}


# The ViT recipe (DeiT / CaiT style, scaled to small data): AdamW (lr 1e-3 by
# default), weight decay 0.05, 5 epochs of linear warmup then cosine decay,
# stochastic depth 0.1.
_VIT_TRAINING = dict(optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup_epochs=5.0, drop_path=0.1,
                     encoder_init="independent", unmix=False, attribution_depth=2)

VIT_PRESETS = {
    # One CaiT-style ViT: M = 1, no mixing (its single source embedding is a learned offset).
    "single-vit": dict(_VIT_TRAINING, num_subnets=1, mixing="none", batch_repetition=1, input_repetition=0.0,
                       loss_root=1.0),
    # MixViT: M = 2, a binary CutMix box on the patch grid for every batch (each token has one source to be
    # attributed to), source attribution in the last k = 2 blocks, batch repetition 2 as in the MixMo
    # family, CutMix's area-proportional loss weights (root 1: no MixMo rebalancing).
    "mixvit": dict(_VIT_TRAINING, num_subnets=2, mixing="cut", cut_prob=1.0, cut_decay_start=1.0, batch_repetition=2,
                   input_repetition=0.0, loss_root=1.0),
}

ALL_PRESETS = {**PRESETS, **VIT_PRESETS}


def preset(name: str) -> dict:
    if name not in ALL_PRESETS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(ALL_PRESETS)}")
    return dict(ALL_PRESETS[name], method=name)


def cut_probability(config: Config, epoch: float) -> float:
    """CutMix probability in epoch ``epoch`` (0-based), as the official MixMo code schedules it.

    With the training ratio ``t = (epoch + 1) / epochs`` (epochs counted from 1): ``cut_prob`` while
    ``t < cut_decay_start``, then ``cut_prob * (1 - t) / (1 - cut_decay_start)``, so 0 in the last epoch.
    """
    start = config.cut_decay_start
    ratio = (epoch + 1) / config.epochs
    if ratio < start or start >= 1.0:
        return config.cut_prob
    return config.cut_prob * max(0.0, (1.0 - ratio) / (1.0 - start))


def fade_ratio(config: Config, epoch: float) -> float:
    """Fadeout r = min(1, epoch / fade span); 0 without fadeout (full unmixing)."""
    span = config.fade_span()
    if span is None:
        return 0.0
    if span <= 0:
        return 1.0
    return min(1.0, epoch / span)


def loss_weights(ratios: torch.Tensor, root: float) -> torch.Tensor:
    """MixMo reweighting ``M * r_i^(1/root) / sum_j r_j^(1/root)``; [B, M] -> [B, M].

    ``root = 1`` keeps the mixing ratios (``M * r_i``).
    """
    num = ratios.clamp_min(0) ** (1.0 / root)
    return ratios.shape[1] * num / num.sum(dim=1, keepdim=True).clamp_min(1e-12)


def sample_plan(
    config: Config,
    batch: int,
    grid: tuple[int, int],
    epoch: float,
    generator: torch.Generator,
    host_rng: random.Random,
    num_channels: int,
    *,
    scale: Optional[float] = None,
) -> tuple[Optional[MixPlan], torch.Tensor]:
    """One batch's mixing plan and the loss weights [B, M] (both on the device).

    ``grid``: the mixing grid (the model's ``mixing_grid``: the image for the
    CNNs, the patch grid for the ViTs). ``epoch``: the 0-based epoch (fractional
    allowed), for the cut probability and the fadeout. ``scale``: the ``box_mix`` scale, None
    for M (MixMo; the model's ``mixing_scale``). Host-side decisions (cut or
    linear, which input owns the box) use ``host_rng``; everything per sample
    uses ``generator`` on the device.
    """
    m = config.num_subnets
    scale = float(m) if scale is None else float(scale)
    device = generator.device
    if config.mixing == "none":
        return None, torch.ones(batch, 1, device=device)
    if config.mixing == "sum":  # MIMO: equal linear weights, encodings summed
        weights = torch.full((batch, m), 1.0 / m, device=device)
        boxes = torch.zeros(batch, 4, dtype=torch.int32, device=device)
        return MixPlan(boxes, weights, weights, scale), loss_weights(weights, config.loss_root)
    lam = torch._sample_dirichlet(torch.full((batch, m), float(config.alpha), device=device), generator=generator)
    cut = config.mixing == "cut" and host_rng.random() < cut_probability(config, epoch)
    if not cut:  # linear MixMo
        boxes = torch.zeros(batch, 4, dtype=torch.int32, device=device)
        return MixPlan(boxes, lam, lam, scale), loss_weights(lam, config.loss_root)
    owner = host_rng.randrange(m)  # input filling the box: shuffled per batch
    center = torch.rand(batch, 2, device=device, generator=generator)
    boxes, area = mixshare_ops.cutmix_boxes(lam[:, owner], center, grid[0], grid[1], check_values=False)
    onehot = torch.zeros(m, device=device)
    onehot[owner] = 1.0
    inside = onehot.expand(batch, m)
    # Outside the box the other inputs mix linearly by their ratios (M > 2),
    # or input 1 - owner alone (M = 2).
    others = lam * (1 - onehot)
    outside = others / others.sum(dim=1, keepdim=True).clamp_min(1e-12)
    ratios = area[:, None] * inside + (1 - area[:, None]) * outside
    plan = MixPlan(boxes, inside.contiguous(), outside, scale)
    if config.unmix:
        plan.unmix = True
        plan.unmix_ratio = fade_ratio(config, epoch)
        plan.unmix_channels = round(config.unmix_channels * num_channels)
        plan.unmix_normalize = config.unmix_normalize
    return plan, loss_weights(ratios, config.loss_root)
