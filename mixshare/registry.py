"""The model registry: every model family's names, help, capabilities and builder, in one table.

:func:`create_model` builds a model from its name and :func:`list_models` lists the names, as
timm's ``create_model`` / ``list_models`` do. A family is registered once, by
:func:`register_model`, with its builder named as ``"module:function"`` and imported only when a
model is built: this module imports neither torch nor the model modules, so the command line's
help and the config's checks read it at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import importlib.util
import re
import sys
from typing import Mapping, Optional

#: The initial kernels of a CNN's M encoders (MixShare's kernel alignment: ``identical``, ``colinear``).
ENCODER_INITS = ("independent", "identical", "colinear")

#: The first layers of an ImageNet ResNet (torchvision's, timm's): ``small`` is the CIFAR adaptation
#: (a 3x3 stride-1 first convolution, no max-pool), ``imagenet`` the 7x7 stride-2 convolution and
#: max-pool, ``auto`` the small one for images of at most :data:`SMALL_INPUT_SIZE` pixels.
INPUT_STEMS = ("auto", "small", "imagenet")
SMALL_INPUT_SIZE = 64

#: The keywords of :func:`create_model` a family may take besides ``num_classes`` and ``num_subnets``.
MODEL_OPTIONS = ("encoder_init", "input_stem", "image_size", "attribution_depth", "drop_path")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One registered family of models.

    ``pattern``: its names as users write them (``wrn-<depth>-<width>``); ``regex``: the full match
    of a name, whose named groups (digits read as ints) go to the builder with ``fixed``;
    ``builder``: ``"module:function"`` called with ``num_classes``, ``num_subnets``, the groups and
    the ``options`` (keywords of :data:`MODEL_OPTIONS`) it takes; ``kind``: ``cnn`` or ``vit``
    (the method presets each kind trains with); ``unmix``: MixShare's per-subnetwork pooling of the
    final map applies; ``source_attention``: the subnetworks attend to their own input's tokens;
    ``requires``: the package it needs (None: none besides torch).
    """

    pattern: str
    regex: str
    help: str
    builder: str
    kind: str
    options: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    unmix: bool = False
    source_attention: bool = False
    requires: Optional[str] = None
    fixed: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @property
    def available(self) -> bool:
        """Whether its package (``requires``) is installed; found without importing it."""
        return self.requires is None or installed(self.requires)

    def describe(self) -> str:
        """One line: the pattern, the help and, for a family whose package is missing, how to install it."""
        line = f"{self.pattern}: {self.help}"
        if not self.available:
            line += f" ({_install_hint(self.requires)})"
        return line


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (found without importing it)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _install_hint(package: str) -> str:
    return f"needs {package}, not installed: pip install {package}, matching your torch"


def require(package: str, model: str):
    """The module ``package`` that model ``model`` needs; ValueError saying to install it when it is missing."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ValueError(f"model {model} {_install_hint(package)} ({error})") from None


_FAMILIES: list[ModelFamily] = []


def register_model(family: ModelFamily) -> ModelFamily:
    """Adds ``family`` to the registry; a pattern registered twice, an unknown option or kind is refused."""
    if family.kind not in ("cnn", "vit"):
        raise ValueError(f"kind must be cnn or vit, got {family.kind!r}")
    unknown = [o for o in family.options if o not in MODEL_OPTIONS]
    if unknown:
        raise ValueError(f"options must be among {', '.join(MODEL_OPTIONS)}, got {', '.join(unknown)}")
    if ":" not in family.builder:
        raise ValueError(f"builder must be 'module:function', got {family.builder!r}")
    if any(f.pattern == family.pattern for f in _FAMILIES):
        raise ValueError(f"a model family {family.pattern!r} is registered already")
    _FAMILIES.append(family)
    return family


def families(kind: Optional[str] = None) -> list[ModelFamily]:
    """The registered families in registration order (only those of ``kind`` when given)."""
    return [f for f in _FAMILIES if kind is None or f.kind == kind]


def patterns(kind: Optional[str] = None) -> str:
    """The families' patterns (of ``kind`` when given), comma-separated: what a model name may be."""
    return ", ".join(f.pattern for f in families(kind))


def _match(name: str) -> tuple[Optional[ModelFamily], dict]:
    for family in _FAMILIES:
        match = re.fullmatch(family.regex, name)
        if match:
            groups = {k: int(v) if v.isdigit() else v for k, v in match.groupdict().items() if v is not None}
            return family, {**family.fixed, **groups}
    return None, {}


def nearest_model(name: str) -> Optional[str]:
    """The listed model name (:func:`list_models`) closest to ``name``, or None if none is close."""
    names = [n for family in _FAMILIES for n in family.examples]  # registration order
    ending = [n for n in names if n.endswith("-" + name)]  # resnet50 -> torchvision-resnet50
    if ending:
        return ending[0]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return close[0] if close else None


def find_family(name: str) -> ModelFamily:
    """The family whose names include ``name``; ValueError naming the nearest registered name otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"model must be a name (a string), got {name!r}")
    family, _ = _match(name)
    if family is None:
        near = nearest_model(name)
        hint = f"; did you mean {near!r}?" if near else ";"
        raise ValueError(f"unknown model {name!r}{hint} the registered models: {patterns()} "
                         f"(mixshare.registry.list_models() lists them)")
    return family


def list_models(filter: str = "*", kind: Optional[str] = None, available: bool = False) -> list[str]:
    """Model names matching the shell pattern ``filter``, sorted: each family's examples (its one name
    when the name has no parameter).

    ``kind``: only ``cnn`` or ``vit`` models; ``available``: only families whose package is installed.
    """
    names = set()
    for family in families(kind):
        if available and not family.available:
            continue
        names.update(family.examples)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, filter))


def create_model(name: str, num_classes: int, num_subnets: int = 2, **options):
    """The model ``name`` (e.g. ``wrn-28-2``, ``vit-6-128``, ``torchvision-resnet18``) with
    ``num_classes`` classes and M = ``num_subnets`` subnetworks: a
    :class:`mixshare.protocol.MimoModel` taking images ``[M, B, 3, H, W]`` to logits ``[M, B, K]``.

    ``options``: the keywords of :data:`MODEL_OPTIONS` the family takes (``encoder_init`` for the
    CNNs; ``input_stem`` and ``image_size`` (H, W) for torchvision's and timm's ResNets;
    ``attribution_depth`` and ``drop_path`` for the ViTs); another keyword is refused.
    """
    family = find_family(name)
    refused = [k for k in options if k not in family.options]
    if refused:
        takes = ", ".join(family.options) or "none"
        raise TypeError(f"model {name!r} ({family.pattern}) takes no option {', '.join(map(repr, refused))}; "
                        f"its options: {takes}")
    module, function = family.builder.split(":")
    builder = getattr(importlib.import_module(module), function)
    _, arguments = _match(name)
    return builder(num_classes=num_classes, num_subnets=num_subnets, **arguments, **options)


def resolve_input_stem(input_stem: str, image_size) -> str:
    """``small`` or ``imagenet`` for ``input_stem`` (one of :data:`INPUT_STEMS`): ``auto`` is ``small``
    when the images' larger side (``image_size`` (H, W) or an int) is at most :data:`SMALL_INPUT_SIZE`."""
    if input_stem not in INPUT_STEMS:
        raise ValueError(f"input_stem must be one of {', '.join(INPUT_STEMS)}, got {input_stem!r}")
    if input_stem != "auto":
        return input_stem
    if image_size is None:
        raise ValueError("input_stem='auto' chooses the stem by the image size: pass image_size=(H, W), "
                         "or input_stem='small' or 'imagenet'")
    side = max(image_size) if isinstance(image_size, (tuple, list)) else image_size
    return "small" if side <= SMALL_INPUT_SIZE else "imagenet"


_STEM_OPTIONS = ("encoder_init", "input_stem", "image_size")

register_model(ModelFamily(
    "wrn-<depth>-<width>", r"wrn-(?P<depth>\d+)-(?P<width>\d+)",
    "Wide ResNet (MixMo's WRN, depth = 6n + 4), e.g. wrn-28-2, wrn-16-2",
    "mixshare.models:wide_resnet", "cnn", ("encoder_init",), ("wrn-16-2", "wrn-28-2", "wrn-28-10"), unmix=True))
register_model(ModelFamily(
    "preact-resnet18", r"preact-resnet18", "PreActResNet-18 (MixMo's, for 64x64 inputs)",
    "mixshare.models:preact_resnet18", "cnn", ("encoder_init",), ("preact-resnet18",), unmix=True))
register_model(ModelFamily(
    "vit-tiny", r"vit-tiny", "MixViT at DeiT-Tiny width (depth 12, D 192, 3 heads)",
    "mixshare.vit:build_vit", "vit", ("attribution_depth", "drop_path"), ("vit-tiny",), source_attention=True,
    fixed={"depth": 12, "dim": 192, "heads": 3}))
register_model(ModelFamily(
    "vit-<depth>-<dim>[-<heads>]", r"vit-(?P<depth>\d+)-(?P<dim>\d+)(?:-(?P<heads>\d+))?",
    "MixViT of depth blocks of width dim (heads: dim // 64 unless given), e.g. vit-6-128",
    "mixshare.vit:build_vit", "vit", ("attribution_depth", "drop_path"), ("vit-6-128",), source_attention=True))
register_model(ModelFamily(
    "torchvision-<arch>", r"torchvision-(?P<arch>[A-Za-z][A-Za-z0-9_]*)",
    f"a torchvision ResNet, e.g. torchvision-resnet18, randomly initialised; input_stem picks its first layers "
    f"(default: the small-input stem for images of at most {SMALL_INPUT_SIZE} px)",
    "mixshare.backbone:torchvision_model", "cnn", _STEM_OPTIONS,
    tuple(f"torchvision-{a}" for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")),
    unmix=True, requires="torchvision"))
register_model(ModelFamily(
    "timm-<name>", r"timm-(?P<arch>[A-Za-z][A-Za-z0-9_.]*)",
    f"a timm ResNet, e.g. timm-resnet18, randomly initialised; input_stem picks its first layers "
    f"(default: the small-input stem for images of at most {SMALL_INPUT_SIZE} px)",
    "mixshare.backbone:timm_model", "cnn", _STEM_OPTIONS,
    tuple(f"timm-{a}" for a in ("resnet18", "resnet26", "resnet34", "resnet50")), unmix=True, requires="timm"))
