"""A method's plan by the config or by the method's name: thin paths to :mod:`mixshare.mixers`.

:func:`sample_plan` draws one batch's :class:`MixPlan` from a run config and
the model's facts (grid, features, scale), :func:`draw_plan` from a method's
name and a model; both build the method's mixer
(:func:`mixshare.mixers.from_config`, :func:`mixshare.mixers.create_mixer`)
and draw from it, so their plans are the mixer's. A plan is immutable
(:mod:`mixshare_ops.plan`); ``box_mix``, ``cutmix_unmix(_pool)`` and
``mixshare.train.mimo_loss`` take it as it is and refuse one changed in place
since.

The fadeout ratio on its way from the config to the kernel:
``Config.fade_epochs`` / ``fade_fraction`` -> :meth:`mixshare.mixers.MixShare.fade_ratio`
(this epoch's r) -> ``UnmixPlan.ratio`` -> ``cutmix_unmix_pool(ratio=)`` in
the model -> the operator's ``ratio``.
"""

from __future__ import annotations

from typing import Optional

import torch

from mixshare import mixers
from mixshare.config import Config
from mixshare.mixers import loss_weights
from mixshare_ops.plan import MixPlan, UnmixPlan

__all__ = ["MixPlan", "UnmixPlan", "cut_probability", "draw_plan", "fade_span", "loss_weights", "sample_plan",
           "unmix_ratio"]


def cut_probability(config: Config, epoch: float) -> float:
    """The CutMix probability of ``config``'s schedule in epoch ``epoch`` (:func:`mixshare.mixers.cut_probability`)."""
    return mixers.cut_probability(epoch, config.epochs, config.cut_prob, config.cut_decay_start)


def fade_span(config: Config) -> Optional[float]:
    """Epochs over which ``config``'s unmixing fades out, or None (:func:`mixshare.mixers.fade_span`)."""
    return mixers.fade_span(config.epochs, config.fade_epochs, config.fade_fraction)


def unmix_ratio(config: Config, epoch: float) -> float:
    """``config``'s fadeout r in epoch ``epoch``: ``UnmixPlan.ratio`` (:func:`mixshare.mixers.fade_ratio`)."""
    return mixers.fade_ratio(epoch, fade_span(config))


def sample_plan(
    config: Config,
    rows: int,
    grid: tuple[int, int],
    epoch: float,
    generator: Optional[torch.Generator],
    host_rng,
    num_channels: int,
    *,
    scale: Optional[float] = None,
    device=None,
) -> MixPlan:
    """One batch's plan for ``rows`` rows by ``config``'s mixer (:meth:`mixshare.mixers.Mixer.draw`).

    ``grid``: the mixing grid (the model's ``mixing_grid``). ``epoch``: the 0-based epoch (fractional
    allowed). ``num_channels``: the channels of the core's final map. ``scale``: the ``box_mix`` scale,
    None for M. Per-batch draws use ``host_rng`` (a ``random.Random``, or None: the ``random``
    module), per-sample ones ``generator`` (None: torch's default generator of ``device``); the plan
    lives on the generator's device, else ``device``.
    """
    mixer = mixers.from_config(config, generator=generator, host_rng=host_rng)
    return mixer.draw(rows, grid, epoch, num_features=num_channels, scale=scale, device=device)


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
    """One batch's plan for ``model`` (a :class:`mixshare.protocol.MimoModel`) by method ``method``:
    ``create_mixer(method, model, epochs=epochs, ...)(images, epoch)``.

    ``images`` [M, R, C, H, W]; ``settings`` override the preset's config keys, validated as a config
    file's; M is the model's. Without ``generator`` / ``host_rng`` consecutive calls continue torch's
    default generator of the images' device and Python's ``random``.
    """
    mixer = mixers.create_mixer(method, model, epochs=epochs, generator=generator, host_rng=host_rng,
                                source=f"draw_plan({method!r})", **settings)
    return mixer(images, epoch)
