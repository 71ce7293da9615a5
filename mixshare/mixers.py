"""Mixers: one object per mixing mode, called on each batch for its :class:`MixPlan`.

A mixer holds its method's settings (checked at construction against the
config's ranges, :data:`mixshare.config.RANGES`), its schedule and its
generators; ``mixer(images, epoch)`` returns the batch's plan for
``images [M, R, C, H, W]``, drawn on the images' device with no host sync::

    mixer = CutMixMo(model, epochs=300)          # the model gives M, the grid, the features, the scale
    for epoch in range(300):
        for images, labels in loader:            # [M, R, C, H, W], [M, R]
            plan = mixer(images, epoch)
            loss, logits = training_step(model, images, labels, plan, optimizer)

- :class:`NoMixing` (``mixing: none``): one input (M = 1), weights 1, no box;
- :class:`MimoSum` (``sum``): MIMO, weights 1/M everywhere (the encodings summed);
- :class:`LinearMixMo` (``linear``): Dirichlet(alpha) ratios everywhere;
- :class:`CutMixMo` (``cut``): a CutMix box with probability :meth:`CutMixMo.cut_probability`, else linear;
- :class:`MixShare` (``cut`` and ``unmix: true``): Cut-MixMo on every batch plus unmixing (full, partial, fadeout);
- :class:`MixViT` (``cut``, a ViT model): Cut-MixMo's plan on the patch grid.

MixViT's token mixing is Cut-MixMo's plan: the same draws, with the box on the
patch grid (the ViT's ``mixing_grid``) and scale 1 (its ``mixing_scale``);
:class:`MixViT` is :class:`CutMixMo` with the ``mixvit`` preset's settings as
defaults, for a ViT model only.

Each class's unset settings are those of its preset (``CutMixMo.preset`` is
``"cut-mixmo"``; the presets are :data:`mixshare.config.ALL_PRESETS`);
:func:`create_mixer` builds a preset's mixer by name, :func:`from_config` a
run config's. Per-sample draws use ``generator`` (default: torch's default
generator of the images' device), per-batch ones ``host_rng`` (default:
Python's ``random``), in this order: the Dirichlet ratios, then (Cut-MixMo)
cut or linear and the box's owner on the host, then the box centres.
"""

from __future__ import annotations

import math
import random
from typing import ClassVar, Optional

import torch

import mixshare_ops
from mixshare import config as cfg
from mixshare.config import ConfigError
from mixshare.protocol import MimoModel
from mixshare.vit import MimoViT
from mixshare_ops.plan import MixPlan, UnmixPlan

__all__ = ["CutMixMo", "LinearMixMo", "MIXERS", "MIXINGS", "MimoSum", "MixShare", "MixViT", "Mixer", "NoMixing",
           "create_mixer", "cut_probability", "cut_weights", "fade_ratio", "fade_span", "from_config",
           "loss_weights"]

UNMIX_NEEDS_CUT = cfg.UNMIX_NEEDS_CUT


# ------------------------------------------------------------------------------------------- the rules


def cut_probability(epoch: float, epochs: int, cut_prob: float, cut_decay_start: float) -> float:
    """CutMix probability in epoch ``epoch`` (0-based) of ``epochs``, as the official MixMo code schedules it.

    With the training progress ``t = (epoch + 1) / epochs`` (epochs counted from 1): ``cut_prob`` while
    ``t < cut_decay_start``, then ``cut_prob * (1 - t) / (1 - cut_decay_start)``, so 0 in the last epoch.
    """
    progress = (epoch + 1) / epochs
    if progress < cut_decay_start or cut_decay_start >= 1.0:
        return cut_prob
    return cut_prob * max(0.0, (1.0 - progress) / (1.0 - cut_decay_start))


def fade_span(epochs: int, fade_epochs: Optional[float], fade_fraction: Optional[float]) -> Optional[float]:
    """Epochs over which unmixing fades out (``fade_epochs``, else ``fade_fraction * epochs``), or None."""
    if fade_epochs is not None:
        return float(fade_epochs)
    if fade_fraction is not None:
        return fade_fraction * epochs
    return None


def fade_ratio(epoch: float, span: Optional[float]) -> float:
    """MixShare's fadeout r in epoch ``epoch`` = min(1, epoch / span); 0 without fadeout (span None)."""
    if span is None:
        return 0.0
    if span <= 0:
        return 1.0
    return min(1.0, epoch / span)


def loss_weights(mixing_ratios: torch.Tensor, root: float) -> torch.Tensor:
    """MixMo reweighting ``M * r_i^(1/root) / sum_j r_j^(1/root)``; mixing ratios [R, M] (>= 0, each row
    with a positive entry) -> [R, M].

    Computed in log space, ``M * softmax(log(r) / root)``, so that no power underflows for a small
    root (0.01 with M = 3 gives r^100); ``root = 1`` keeps the mixing ratios (``M * r_i``).
    """
    if isinstance(root, bool) or not isinstance(root, (int, float)) or not (0 < root < math.inf):
        raise ValueError(f"root must be a finite float > 0, got {root!r}")
    return mixing_ratios.shape[1] * torch.softmax(mixing_ratios.clamp_min(0).log() / root, dim=1)


def cut_weights(lam: torch.Tensor, owner: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut-MixMo's ``box_mix`` weights for mixing ratios ``lam`` [R, M]: (inside [R, M], outside [R, M]).

    Input ``owner`` fills the box (inside: its one-hot); outside it the other inputs mix linearly by
    their ratios (M > 2), or the other input alone (M = 2).
    """
    onehot = torch.zeros(lam.shape[1], device=lam.device)
    onehot[owner] = 1.0
    others = lam * (1 - onehot)
    outside = others / others.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return onehot.expand_as(lam).contiguous(), outside


# ------------------------------------------------------------------------------------------- the mixers


class Mixer:
    """A mixing mode: settings, schedule, generators; ``mixer(images, epoch)`` -> :class:`MixPlan`.

    ``model``: the :class:`mixshare.protocol.MimoModel` being trained (its M, ``mixing_grid``,
    ``num_features`` and ``mixing_scale``); ``num_subnets`` instead builds a mixer without one, for
    :meth:`draw` alone. ``epochs``: the length of training (the schedules'; an epoch given to a
    call must lie in [0, epochs)). ``generator``: a ``torch.Generator`` for the per-sample draws
    (None: torch's default generator of the images' device, one stream across calls);
    ``host_rng``: a ``random.Random`` for the per-batch ones (None: Python's ``random``).
    """

    mixing: ClassVar[str]  # the config's ``mixing`` value of this mode
    unmix: ClassVar[bool] = False  # the config's ``unmix``
    preset: ClassVar[str]  # the method whose settings are the defaults
    settings: ClassVar[tuple[str, ...]] = ()  # the config keys the mixer takes

    def __init__(self, model: Optional[MimoModel] = None, *, epochs: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, host_rng=None, num_subnets: Optional[int] = None):
        if model is not None:
            if not isinstance(model, MimoModel):
                raise TypeError(f"model must be a mixshare.protocol.MimoModel (e.g. a MimoBackbone), "
                                f"got {type(model).__name__}")
            if num_subnets is not None and num_subnets != model.num_subnets:
                raise ValueError(f"num_subnets is the model's (M = {model.num_subnets}), got {num_subnets!r}")
            num_subnets = model.num_subnets
        elif num_subnets is None:
            raise TypeError(f"{type(self).__name__} needs the model (or, to call draw() alone, num_subnets)")
        self.model = model
        self.num_subnets = cfg.check_value("num_subnets", num_subnets)
        cfg.check_mixing(self.mixing, self.num_subnets)
        self.epochs = None if epochs is None else cfg.check_value("epochs", epochs)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if host_rng is None:
            host_rng = random
        elif not (callable(getattr(host_rng, "random", None)) and callable(getattr(host_rng, "randrange", None))):
            raise TypeError(f"host_rng must be a random.Random, got {type(host_rng).__name__}")
        self.generator = generator
        self.host_rng = host_rng

    def _setting(self, key: str, value):
        """``value`` checked as config key ``key`` is; None: the preset's value (else the config's default)."""
        if value is None:
            value = cfg.preset(self.preset).get(key, cfg.FIELDS[key].default)
        return cfg.check_value(key, value)

    def __repr__(self) -> str:
        values = ", ".join(f"{key}={getattr(self, key)!r}" for key in ("num_subnets", "epochs", *self.settings))
        return f"{type(self).__name__}({values})"

    def __call__(self, images: torch.Tensor, epoch: float) -> MixPlan:
        """The plan of one batch ``images [M, R, C, H, W]`` in epoch ``epoch`` (0-based, fractional
        allowed, in [0, epochs)), on the images' device."""
        m = self.num_subnets
        if self.model is None:
            raise TypeError(f"this {type(self).__name__} was built without a model: build it with the model "
                            f"to call it on images, or call draw()")
        if not isinstance(images, torch.Tensor) or images.dim() != 5 or images.shape[0] != m:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a [M={m}, R, C, H, W] tensor (M from the model), got {got}")
        if self.generator is not None and self.generator.device.type != images.device.type:
            raise ValueError(f"generator is on {self.generator.device}, images on {images.device}: "
                             f"the plan is drawn on the images' device")
        end = math.inf if self.epochs is None else self.epochs
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not 0 <= epoch < end:
            where = f"in [0, epochs) = [0, {self.epochs})" if self.epochs is not None else ">= 0"
            raise ValueError(f"epoch must be a number {where} (0-based), got {epoch!r}")
        grid = self.model.mixing_grid(tuple(images.shape[-2:]))
        return self.draw(images.shape[1], grid, epoch, num_features=self.model.num_features,
                         scale=self.model.mixing_scale, device=images.device)

    def draw(self, rows: int, grid: tuple[int, int], epoch: float, *, num_features: int,
             scale: Optional[float] = None, device=None) -> MixPlan:
        """The plan for ``rows`` rows on the mixing ``grid`` (h, w), without a model.

        ``num_features``: the channels of the core's final map (MixShare unmixes a fraction of
        them); ``scale``: the ``box_mix`` scale (None: M). The plan lives on the generator's
        device, else on ``device``.
        """
        if self.generator is not None:
            device = self.generator.device
        elif device is None:
            raise ValueError("a plan needs a generator or, to draw from torch's default generator, a device")
        grid = (int(grid[0]), int(grid[1]))
        scale = float(self.num_subnets) if scale is None else float(scale)
        no_box = torch.zeros(rows, 4, dtype=torch.int32, device=device)
        return self._plan(rows, grid, epoch, num_features, scale, device, no_box)

    def _plan(self, rows, grid, epoch, num_features, scale, device, no_box) -> MixPlan:
        raise NotImplementedError


class NoMixing(Mixer):
    """One network (M = 1): its input as it is, weights 1, no box, loss weights 1."""

    mixing = "none"
    preset = "single"

    def _plan(self, rows, grid, epoch, num_features, scale, device, no_box) -> MixPlan:
        ones = torch.ones(rows, 1, device=device)
        return MixPlan(no_box, ones, ones, 1.0, grid, ones)


class MimoSum(Mixer):
    """MIMO: the M encodings summed (weights 1/M everywhere, times the scale); loss weights by ``loss_root``."""

    mixing = "sum"
    preset = "mimo"
    settings = ("loss_root",)

    def __init__(self, model: Optional[MimoModel] = None, *, epochs: Optional[int] = None,
                 loss_root: Optional[float] = None, generator: Optional[torch.Generator] = None, host_rng=None,
                 num_subnets: Optional[int] = None):
        super().__init__(model, epochs=epochs, generator=generator, host_rng=host_rng, num_subnets=num_subnets)
        self.loss_root = self._setting("loss_root", loss_root)

    def _plan(self, rows, grid, epoch, num_features, scale, device, no_box) -> MixPlan:
        weights = torch.full((rows, self.num_subnets), 1.0 / self.num_subnets, device=device)
        return MixPlan(no_box, weights, weights, scale, grid, loss_weights(weights, self.loss_root))


class LinearMixMo(Mixer):
    """Linear MixMo: Dirichlet(``alpha``) mixing ratios for each row, the same at every position; MixMo's
    loss weights with ``loss_root``."""

    mixing = "linear"
    preset = "linear-mixmo"
    settings = ("alpha", "loss_root")

    def __init__(self, model: Optional[MimoModel] = None, *, epochs: Optional[int] = None,
                 alpha: Optional[float] = None, loss_root: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, host_rng=None, num_subnets: Optional[int] = None):
        super().__init__(model, epochs=epochs, generator=generator, host_rng=host_rng, num_subnets=num_subnets)
        self.alpha = self._setting("alpha", alpha)
        self.loss_root = self._setting("loss_root", loss_root)

    def _mixing_ratios(self, rows, device) -> torch.Tensor:
        """Dirichlet(alpha) ratios [R, M] (Beta(alpha, alpha) for M = 2) from the generator."""
        return torch._sample_dirichlet(torch.full((rows, self.num_subnets), float(self.alpha), device=device),
                                       generator=self.generator)

    def _linear(self, lam, grid, scale, no_box) -> MixPlan:
        return MixPlan(no_box, lam, lam, scale, grid, loss_weights(lam, self.loss_root))

    def _plan(self, rows, grid, epoch, num_features, scale, device, no_box) -> MixPlan:
        return self._linear(self._mixing_ratios(rows, device), grid, scale, no_box)


class CutMixMo(LinearMixMo):
    """Cut-MixMo: per batch, with probability :meth:`cut_probability` (``cut_prob``, decaying after the
    fraction ``cut_decay_start`` of training), a CutMix box of area ~ the owner's ratio filled by one
    input (the owner, drawn per batch), the others mixed linearly outside it (:func:`cut_weights`);
    else linear MixMo. Loss weights from the realised areas, by ``loss_root``. Needs ``epochs``."""

    mixing = "cut"
    preset = "cut-mixmo"
    settings = ("alpha", "loss_root", "cut_prob", "cut_decay_start")

    def __init__(self, model: Optional[MimoModel] = None, *, epochs: int, alpha: Optional[float] = None,
                 loss_root: Optional[float] = None, cut_prob: Optional[float] = None,
                 cut_decay_start: Optional[float] = None, generator: Optional[torch.Generator] = None, host_rng=None,
                 num_subnets: Optional[int] = None):
        if epochs is None:
            raise TypeError(f"{type(self).__name__} needs epochs (its schedules count training in epochs)")
        super().__init__(model, epochs=epochs, alpha=alpha, loss_root=loss_root, generator=generator,
                         host_rng=host_rng, num_subnets=num_subnets)
        self.cut_prob = self._setting("cut_prob", cut_prob)
        self.cut_decay_start = self._setting("cut_decay_start", cut_decay_start)

    def cut_probability(self, epoch: float) -> float:
        """The probability of a CutMix batch in epoch ``epoch`` (0-based): :func:`cut_probability`."""
        return cut_probability(epoch, self.epochs, self.cut_prob, self.cut_decay_start)

    def _unmix_plan(self, epoch, num_features) -> Optional[UnmixPlan]:
        return None

    def _plan(self, rows, grid, epoch, num_features, scale, device, no_box) -> MixPlan:
        lam = self._mixing_ratios(rows, device)
        if not self.host_rng.random() < self.cut_probability(epoch):
            return self._linear(lam, grid, scale, no_box)
        owner = self.host_rng.randrange(self.num_subnets)  # the input filling the box: shuffled per batch
        center = torch.rand(rows, 2, device=device, generator=self.generator)
        boxes, area = mixshare_ops.cutmix_boxes(lam[:, owner], center, grid[0], grid[1], check_values=False)
        inside, outside = cut_weights(lam, owner)
        mixing_ratios = area[:, None] * inside + (1 - area[:, None]) * outside  # the realised ones
        return MixPlan(boxes, inside, outside, scale, grid, loss_weights(mixing_ratios, self.loss_root),
                       self._unmix_plan(epoch, num_features))


class MixShare(CutMixMo):
    """MixShare: Cut-MixMo on every batch (``cut_prob`` 1) whose plan also unmixes the core's final map.

    Each subnetwork pools the part of the first ``unmix_channels`` (a fraction) of the final channels
    its input filled, pooled by ``unmix_normalize``; with ``fade_epochs`` (or ``fade_fraction`` of
    training) the unmixing fades out, r = :meth:`fade_ratio`. Full unmixing: the defaults (the
    ``unmix`` preset); partial: ``unmix_channels=0.25``; fadeout: ``fade_fraction=1 / 3``. The plan of a
    batch the decaying schedule (``cut_decay_start`` < 1) leaves linear does not unmix.
    """

    unmix = True
    preset = "unmix"
    settings = CutMixMo.settings + ("unmix_channels", "unmix_normalize", "fade_epochs", "fade_fraction")

    def __init__(self, model: Optional[MimoModel] = None, *, epochs: int, alpha: Optional[float] = None,
                 loss_root: Optional[float] = None, cut_prob: Optional[float] = None,
                 cut_decay_start: Optional[float] = None, unmix_channels: Optional[float] = None,
                 unmix_normalize: Optional[str] = None, fade_epochs: Optional[float] = None,
                 fade_fraction: Optional[float] = None, generator: Optional[torch.Generator] = None, host_rng=None,
                 num_subnets: Optional[int] = None):
        if isinstance(model, MimoViT):
            raise ValueError("MixShare unmixes a CNN's final map; a MimoViT separates its subnetworks by source "
                             "attribution: use MixViT")
        super().__init__(model, epochs=epochs, alpha=alpha, loss_root=loss_root, cut_prob=cut_prob,
                         cut_decay_start=cut_decay_start, generator=generator, host_rng=host_rng,
                         num_subnets=num_subnets)
        cfg.check_mixing(self.mixing, self.num_subnets, True, self.cut_prob)
        self.unmix_channels = self._setting("unmix_channels", unmix_channels)
        self.unmix_normalize = self._setting("unmix_normalize", unmix_normalize)
        self.fade_epochs = self._setting("fade_epochs", fade_epochs)
        self.fade_fraction = self._setting("fade_fraction", fade_fraction)

    def fade_ratio(self, epoch: float) -> float:
        """The fadeout r in epoch ``epoch`` (0-based): 0 unmixes fully, 1 not at all (:func:`fade_ratio`)."""
        return fade_ratio(epoch, fade_span(self.epochs, self.fade_epochs, self.fade_fraction))

    def _unmix_plan(self, epoch, num_features) -> UnmixPlan:
        return UnmixPlan(self.fade_ratio(epoch), round(self.unmix_channels * num_features), self.unmix_normalize)


class MixViT(CutMixMo):
    """MixViT's token mixing: :class:`CutMixMo`'s plan on a :class:`~mixshare.vit.MimoViT`'s patch grid
    (scale 1: each token copied from its input), with the ``mixvit`` preset's settings as defaults (a box
    on every batch, CutMix's area-proportional loss weights)."""

    preset = "mixvit"

    def __init__(self, model: Optional[MimoModel] = None, *, epochs: int, alpha: Optional[float] = None,
                 loss_root: Optional[float] = None, cut_prob: Optional[float] = None,
                 cut_decay_start: Optional[float] = None, generator: Optional[torch.Generator] = None, host_rng=None,
                 num_subnets: Optional[int] = None):
        if model is not None and not isinstance(model, MimoViT):
            raise TypeError(f"MixViT mixes a MimoViT's tokens, got {type(model).__name__} (CutMixMo mixes a CNN's "
                            f"encodings)")
        super().__init__(model, epochs=epochs, alpha=alpha, loss_root=loss_root, cut_prob=cut_prob,
                         cut_decay_start=cut_decay_start, generator=generator, host_rng=host_rng,
                         num_subnets=num_subnets)


#: The mixing modes by the config's ``mixing`` value (``unmix: true`` makes ``cut`` MixShare).
MIXERS: dict[str, type[Mixer]] = {"none": NoMixing, "sum": MimoSum, "linear": LinearMixMo, "cut": CutMixMo}
MIXINGS = tuple(MIXERS)


def from_config(config: cfg.Config, model: Optional[MimoModel] = None, *,
                generator: Optional[torch.Generator] = None, host_rng=None) -> Mixer:
    """The mixer of a run config (its ``mixing``, ``unmix`` and their settings; M is ``num_subnets``).

    With a :class:`~mixshare.vit.MimoViT` model, ``mixing: cut`` gives :class:`MixViT`. Raises
    ConfigError for settings the mode refuses (these are the mixing checks of
    :func:`mixshare.config.validate`).
    """
    cfg.check_mixing(config.mixing, config.num_subnets, config.unmix, config.cut_prob)
    cls = MIXERS[config.mixing]
    if config.unmix:
        cls = MixShare
    elif cls is CutMixMo and isinstance(model, MimoViT):
        cls = MixViT
    settings = {key: getattr(config, key) for key in cls.settings}
    return cls(model, epochs=config.epochs, generator=generator, host_rng=host_rng,
               num_subnets=config.num_subnets, **settings)


def create_mixer(method: str, model: MimoModel, *, epochs: int, generator: Optional[torch.Generator] = None,
                 host_rng=None, source: Optional[str] = None, **settings) -> Mixer:
    """The mixer of preset ``method`` (``"mixshare-fadeout"``, ``"cut-mixmo"``, ...) for ``model``.

    ``settings`` override the preset's config keys (e.g. ``unmix_normalize="masked"``); the whole is
    validated as a config file's (unknown keys, types, ranges, a CNN preset with a ViT model), and M
    is the model's. Errors name ``source`` (default ``create_mixer('<method>')``).
    """
    source = source or f"create_mixer({method!r})"
    if not isinstance(model, MimoModel):
        raise TypeError(f"model must be a mixshare.protocol.MimoModel (e.g. a MimoBackbone), "
                        f"got {type(model).__name__}")
    if "num_subnets" in settings:
        raise ValueError(f"num_subnets is the model's (M = {model.num_subnets}); leave it out of {source}'s settings")
    try:
        # The model's family stands for the model name a config file would give.
        family = {"model": "vit-tiny"} if isinstance(model, MimoViT) else {}
        values = {**cfg.preset(method), **family, "num_subnets": model.num_subnets, "epochs": epochs, **settings}
        config = cfg.apply(cfg.Config(), values, source)
        cfg.validate(config)
    except ConfigError as exc:
        message = str(exc).replace(f" in {source}", "")  # apply's own mention of the source
        raise ConfigError(f"{source}: {message}") from None
    return from_config(config, model, generator=generator, host_rng=host_rng)
