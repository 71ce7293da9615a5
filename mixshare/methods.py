"""The per-batch mixing plan a method implies.

:func:`sample_plan` draws one batch's :class:`MixPlan` (boxes, weights, scale,
grid, loss weights and, for MixShare, the :class:`UnmixPlan`) on the device,
with no host sync, from the config (the method's fields, filled by a preset of
:mod:`mixshare.config`) and the training progress; :func:`draw_plan` does the
same from a method's name and a model, its settings validated as a config
file's, drawing from the default generators unless given others. A plan is
immutable (:mod:`mixshare_ops.plan`); ``box_mix``, ``cutmix_unmix(_pool)``
and ``mixshare.train.mimo_loss`` take it as it is and refuse one changed in
place since.

The fadeout ratio on its way from the config to the kernel:
``Config.fade_epochs`` / ``fade_fraction`` -> :func:`unmix_ratio` (this
epoch's r) -> ``UnmixPlan.ratio`` -> ``cutmix_unmix_pool(ratio=)`` in the
model -> the operator's ``ratio``.
"""

from __future__ import annotations

import math
import random
from typing import Optional

import torch

import mixshare_ops
from mixshare.config import Config, ConfigError, apply, preset, validate
from mixshare.protocol import MimoModel
from mixshare.vit import MimoViT
from mixshare_ops.plan import MixPlan, UnmixPlan

__all__ = ["MixPlan", "UnmixPlan", "cut_probability", "draw_plan", "fade_span", "loss_weights", "sample_plan",
           "unmix_ratio"]


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


def fade_span(config: Config) -> Optional[float]:
    """Epochs over which unmixing fades out (``fade_epochs``, else ``fade_fraction * epochs``), or None."""
    if config.fade_epochs is not None:
        return float(config.fade_epochs)
    if config.fade_fraction is not None:
        return config.fade_fraction * config.epochs
    return None


def unmix_ratio(config: Config, epoch: float) -> float:
    """Fadeout r = min(1, epoch / fade span); 0 without fadeout (full unmixing)."""
    span = fade_span(config)
    if span is None:
        return 0.0
    if span <= 0:
        return 1.0
    return min(1.0, epoch / span)


def loss_weights(ratios: torch.Tensor, root: float) -> torch.Tensor:
    """MixMo reweighting ``M * r_i^(1/root) / sum_j r_j^(1/root)``; ratios [B, M] (>= 0, each row with a
    positive entry) -> [B, M].

    Computed in log space, ``M * softmax(log(r) / root)``, so that no power underflows for a small
    root (0.01 with M = 3 gives r^100); ``root = 1`` keeps the mixing ratios (``M * r_i``).
    """
    if isinstance(root, bool) or not isinstance(root, (int, float)) or not (0 < root < math.inf):
        raise ValueError(f"root must be a finite float > 0, got {root!r}")
    return ratios.shape[1] * torch.softmax(ratios.clamp_min(0).log() / root, dim=1)


def sample_plan(
    config: Config,
    batch: int,
    grid: tuple[int, int],
    epoch: float,
    generator: Optional[torch.Generator],
    host_rng,
    num_channels: int,
    *,
    scale: Optional[float] = None,
    device=None,
) -> MixPlan:
    """One batch's mixing plan for ``batch`` rows, on the generator's device (or ``device``).

    ``grid``: the mixing grid (the model's ``mixing_grid``: the image for the
    CNNs, the patch grid for the ViTs). ``epoch``: the 0-based epoch (fractional
    allowed), for the cut probability and the fadeout. ``num_channels``: the
    channels of the core's final map (``unmix_channels`` is a fraction of them).
    ``scale``: the ``box_mix`` scale, None for M (the model's ``mixing_scale``).
    Host-side decisions (cut or linear, which input owns the box) use
    ``host_rng`` (a ``random.Random``, or the ``random`` module); everything per
    sample uses ``generator`` on the device (None: torch's default generator of
    ``device``, which continues one stream across calls).
    """
    if generator is not None:
        device = generator.device
    elif device is None:
        raise ValueError("sample_plan needs a generator or, to draw from torch's default generator, a device")
    m = config.num_subnets
    grid = (int(grid[0]), int(grid[1]))
    scale = float(m) if scale is None else float(scale)
    no_box = torch.zeros(batch, 4, dtype=torch.int32, device=device)
    if config.mixing == "none":
        ones = torch.ones(batch, 1, device=device)
        return MixPlan(no_box, ones, ones, 1.0, grid, ones)
    if config.mixing == "sum":  # MIMO: equal linear weights, encodings summed
        weights = torch.full((batch, m), 1.0 / m, device=device)
        return MixPlan(no_box, weights, weights, scale, grid, loss_weights(weights, config.loss_root))
    lam = torch._sample_dirichlet(torch.full((batch, m), float(config.alpha), device=device), generator=generator)
    cut = config.mixing == "cut" and host_rng.random() < cut_probability(config, epoch)
    if not cut:  # linear MixMo
        return MixPlan(no_box, lam, lam, scale, grid, loss_weights(lam, config.loss_root))
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
    unmix = None
    if config.unmix:
        unmix = UnmixPlan(unmix_ratio(config, epoch), round(config.unmix_channels * num_channels),
                          config.unmix_normalize)
    return MixPlan(boxes, inside.contiguous(), outside, scale, grid, loss_weights(ratios, config.loss_root), unmix)


def draw_plan(
    method: str,
    model,
    images: torch.Tensor,
    *,
    epoch: float = 0.0,
    epochs: int = 300,
    generator: Optional[torch.Generator] = None,
    host_rng=None,
    **settings,
) -> MixPlan:
    """One batch's plan for ``model`` (a :class:`mixshare.protocol.MimoModel`) by method ``method``.

    ``images`` [M, R, C, H, W]: the batch (its R, image size and device). ``method``: a preset of
    :mod:`mixshare.config` (``"mixshare-fadeout"``, ``"cut-mixmo"``, ...), its fields overridden by
    ``settings`` (e.g. ``unmix_normalize="masked"``), validated as a config file's are; M is the
    model's. ``epoch`` (0-based, fractional allowed, in [0, epochs)) of ``epochs`` drives the cut
    probability and the fadeout. Per-sample draws use ``generator`` (default: torch's default
    generator of the images' device), per-batch ones ``host_rng`` (default: Python's ``random``),
    so consecutive calls continue one stream; ``torch.manual_seed`` and ``random.seed`` (or the
    two generators) reproduce them.
    """
    m = _check_model(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 5 or images.shape[0] != m:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [M={m}, R, C, H, W] tensor (M from the model), got {got}")
    if "num_subnets" in settings:
        raise ValueError(f"num_subnets is the model's (M = {m}); leave it out of draw_plan's settings")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != images.device.type:
            raise ValueError(f"generator is on {generator.device}, images on {images.device}: "
                             f"the plan is drawn on the images' device")
    if host_rng is None:
        host_rng = random
    elif not (callable(getattr(host_rng, "random", None)) and callable(getattr(host_rng, "randrange", None))):
        raise TypeError(f"host_rng must be a random.Random, got {type(host_rng).__name__}")
    config = _method_config(method, model, epochs, settings)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not 0 <= epoch < config.epochs:
        raise ValueError(f"epoch must be a number in [0, epochs) = [0, {config.epochs}) (0-based), got {epoch!r}")
    grid = model.mixing_grid(tuple(images.shape[-2:]))
    return sample_plan(config, images.shape[1], grid, epoch, generator, host_rng, model.num_features,
                       scale=model.mixing_scale, device=images.device)


def _check_model(model) -> int:
    """M of ``model``, which must implement :class:`mixshare.protocol.MimoModel`."""
    if not isinstance(model, MimoModel):
        raise TypeError(f"model must be a mixshare.protocol.MimoModel (e.g. a MimoBackbone), "
                        f"got {type(model).__name__}")
    return model.num_subnets


def _method_config(method: str, model, epochs, settings: dict) -> Config:
    """The config of ``method`` with ``settings`` for ``model``, validated as a config file's
    (:func:`mixshare.config.validate`); errors name the call."""
    source = f"draw_plan({method!r})"
    try:
        # The model's family stands for the model name a config file would give.
        family = {"model": "vit-tiny"} if isinstance(model, MimoViT) else {}
        values = {**preset(method), **family, "num_subnets": model.num_subnets, "epochs": epochs, **settings}
        config = apply(Config(), values, source)
        validate(config)
    except ConfigError as exc:
        message = str(exc).replace(f" in {source}", "")  # apply's own mention of the source
        raise ConfigError(f"{source}: {message}") from None
    return config
