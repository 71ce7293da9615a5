"""MIMO, MixMo and MixShare around your own CNN.

:class:`MimoBackbone` turns a network into M subnetworks that share its core:
M copies of its input encoder, the mixing of the M encodings (``box_mix``), the
shared core, per-subnetwork pooling (``cutmix_unmix_pool`` for MixShare) and M
copies of its head. It implements :class:`mixshare.protocol.MimoModel`, so
``mixshare.train.training_step``, :func:`mixshare.methods.sample_plan`,
evaluation and the share-rate analysis (over the encoders' first convolutions
and the heads) work on it unchanged. Two ways to build one::

    # from three parts
    model = MimoBackbone(encoder=lambda: nn.Conv2d(3, 64, 3, padding=1),
                         core=my_core, head=lambda: nn.Linear(512, 10), num_features=512)

    # from a torchvision- or timm-style CNN whose forward runs its children in order
    # (the encoder, pool and head found by name and type; model.cnn_parts says which)
    model = MimoBackbone.from_cnn(lambda: torchvision.models.resnet18(num_classes=10))

:func:`torchvision_model` and :func:`timm_model` are the registry's builders of
``torchvision-<arch>`` and ``timm-<name>``; :func:`adapt_stem` gives an ImageNet ResNet the
small-input stem.

The M encoders and heads must be separate: parts that are one module object or share a
parameter or buffer are refused (the "ensemble" would be one network), and ``num_features``
is checked against the core's output on the first :meth:`MimoBackbone.mixing_grid` probe.
"""

from __future__ import annotations

import collections
import copy
import operator
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from mixshare import registry
from mixshare.config import check_model_arguments
from mixshare.models import MimoCNN, align_encoders

ModuleOrFactory = Union[nn.Module, Callable[[], nn.Module], Sequence[nn.Module]]


def _instances(part: ModuleOrFactory, count: int, name: str) -> list[nn.Module]:
    """``count`` modules: the ``count`` given, calls of a factory (each drawn by its own init), or one
    module and deep copies."""
    if isinstance(part, nn.Module):
        return [part] + [copy.deepcopy(part) for _ in range(count - 1)]
    if isinstance(part, (list, tuple)):
        if len(part) != count or not all(isinstance(m, nn.Module) for m in part):
            raise TypeError(f"{name} as a sequence must hold {count} nn.Modules, got {len(part)} items")
        return list(part)
    if not callable(part):
        raise TypeError(f"{name} must be an nn.Module or a function returning one, got {type(part).__name__}")
    modules = [part() for _ in range(count)]
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}() must return an nn.Module, got {type(module).__name__}")
    return modules


def _check_separate(parts: list[tuple[str, nn.Module]]) -> None:
    """Refuses parts (the M encoders, the core, the M heads) that are one module object or share a
    parameter or buffer (the same tensor, or overlapping memory): the M subnetworks would be one network."""
    seen: dict = {}  # storage -> [(first element, end, part, tensor name)]
    for i, (name, module) in enumerate(parts):
        for other, earlier in parts[:i]:
            if module is earlier:
                raise ValueError(f"{name} and {other} are the same module object: MIMO needs M separate encoders "
                                 f"and heads (pass M modules, a module to copy, or a function building a new one)")
        for tensor_name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.numel() == 0 or t.device.type == "meta":
                continue
            start = t.storage_offset()
            end = start + 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
            spans = seen.setdefault((t.device, t.untyped_storage().data_ptr()), [])
            for first, last, part, earlier_name in spans:
                if part != name and start < last and first < end:
                    raise ValueError(f"{name} shares its tensor {tensor_name!r} with {part} ({earlier_name!r}): "
                                     f"MIMO needs M separate encoders and heads")
            spans.append((start, end, name, tensor_name))


def _first_conv(module: nn.Module) -> Optional[nn.Conv2d]:
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


class MimoBackbone(MimoCNN):
    """M subnetworks around a CNN: encoders, a shared core, pooling, heads.

    ``encoder``: images [B, C, H, W] -> encodings [B, D, h, w] (the mixing grid is h x w);
    ``core``: [B, D, h, w] -> final map [B, num_features, h', w']; ``head``: [B, num_features]
    -> logits [B, K]. ``encoder`` and ``head`` are modules (copied M times), functions
    returning a fresh one (called M times: independent draws) or sequences of M modules. ``encoder_init``:
    ``independent`` (as drawn), ``identical`` or ``colinear`` (MixShare's kernel alignment:
    encoders 2..M start from encoder 1). ``in_channels``: the images' channels (default: the
    encoder's first convolution's). M = 1 is the plain network.
    """

    def __init__(
        self,
        encoder: ModuleOrFactory,
        core: nn.Module,
        head: ModuleOrFactory,
        num_subnets: int = 2,
        *,
        num_features: int,
        encoder_init: str = "independent",
        in_channels: Optional[int] = None,
    ):
        super().__init__()
        check_model_arguments(num_subnets, encoder_init)
        if not isinstance(core, nn.Module):
            raise TypeError(f"core must be an nn.Module, got {type(core).__name__}")
        try:
            features = None if isinstance(num_features, bool) else operator.index(num_features)
        except TypeError:
            features = None
        if features is None or features < 1:
            raise ValueError(f"num_features must be an int >= 1 (the core's output channels), got {num_features!r}")
        self.num_subnets = num_subnets
        self.num_features = features
        encoders = _instances(encoder, num_subnets, "encoder")
        heads = _instances(head, num_subnets, "head")
        _check_separate([(f"encoder {i}", e) for i, e in enumerate(encoders)] + [("the core", core)]
                        + [(f"head {i}", h) for i, h in enumerate(heads)])
        self.encoders = nn.ModuleList(encoders)
        self.body = core
        self.heads = nn.ModuleList(heads)
        if in_channels is None:
            conv = _first_conv(self.encoders[0])
            if conv is None:
                raise ValueError("in_channels is needed: the encoder has no nn.Conv2d to read it from")
            in_channels = conv.in_channels
        self.in_channels = int(in_channels)
        align_encoders(self.encoders, encoder_init)

    @classmethod
    def from_cnn(
        cls,
        make_model: Callable[[], nn.Module],
        num_subnets: int = 2,
        *,
        encoder: Optional[str] = None,
        pool: Optional[str] = None,
        head: Optional[str] = None,
        encoder_init: str = "independent",
    ) -> "MimoBackbone":
        """From a CNN whose ``forward`` runs its children in order (torchvision's and timm's ResNets).

        ``make_model()`` builds a new CNN on each call (called M times: each subnetwork's encoder
        and head are its own draw; the core is the first model's; one instance returned twice is
        refused). Children up to and including ``encoder``
        form the encoder, those after it and before ``pool`` the shared core; ``pool`` (global
        pooling) is replaced by the MIMO pooling and ``head`` (an ``nn.Linear``, right after
        ``pool``) is copied per subnetwork. Each part left None is found (:func:`find_cnn_parts`):
        torchvision's ResNets give ``conv1``, ``avgpool``, ``fc``, timm's ``conv1``,
        ``global_pool``, ``fc``. The model's ``cnn_parts`` (also in its repr) names the three.
        """
        if not callable(make_model) or isinstance(make_model, nn.Module):
            raise TypeError(f"make_model must be a function building a new CNN on each call, "
                            f"got {type(make_model).__name__}")
        models = [make_model() for _ in range(num_subnets)]
        for i, model in enumerate(models):
            if not isinstance(model, nn.Module):
                raise TypeError(f"make_model() must return an nn.Module, got {type(model).__name__}")
            first = next((j for j in range(i) if models[j] is model), None)
            if first is not None:
                raise ValueError(f"make_model() returned the same module object on calls {first + 1} and {i + 1}: "
                                 f"each of the M = {num_subnets} subnetworks needs its own encoder and head, so "
                                 f"make_model must build a new model on each call (e.g. lambda: resnet18(), "
                                 f"not lambda: model)")
        parts = find_cnn_parts(models[0], encoder=encoder, pool=pool, head=head)
        names = [name for name, _ in models[0].named_children()]
        e, p = names.index(parts["encoder"]), names.index(parts["pool"])
        heads = [dict(m.named_children())[parts["head"]] for m in models]
        encoders = [_sequence(m, names[: e + 1]) for m in models]
        core = _sequence(models[0], names[e + 1 : p])
        backbone = cls(encoders, core, heads, num_subnets, num_features=heads[0].in_features,
                       encoder_init=encoder_init)
        backbone.cnn_parts = parts
        return backbone

    def extra_repr(self) -> str:
        """The parts :meth:`from_cnn` split the CNN into and the stem of a registry ResNet, when known."""
        notes = []
        if getattr(self, "cnn_parts", None):
            notes.append("cnn_parts: " + ", ".join(f"{k}={v}" for k, v in self.cnn_parts.items()))
        if getattr(self, "input_stem", None):
            notes.append(f"input_stem: {self.input_stem} ({STEM_DESCRIPTIONS[self.input_stem]})")
        return "\n".join(notes)

    def mixing_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The encoders' output size (h, w) for images of ``image_size`` (one probe per size, cached).

        The probe (two zero images through encoder 0 and the core) runs in eval mode under
        ``no_grad`` and restores every module's mode, so no buffer (BatchNorm running statistics)
        changes; it checks that the core's final map has ``num_features`` channels.
        """
        cache = self.__dict__.setdefault("_grid_cache", {})
        key = tuple(int(v) for v in image_size)
        if key not in cache:
            like = next(self.parameters(), None)
            probe = torch.zeros((2, self.in_channels) + key, device=like.device if like is not None else None,
                                dtype=like.dtype if like is not None else None)
            modes = [(m, m.training) for m in self.modules()]
            try:
                self.eval()
                with torch.no_grad():
                    encoded = self.encoders[0](probe)
                    final = self.body(encoded)
            finally:
                for module, training in modes:
                    module.training = training
            if final.dim() != 4 or final.shape[1] != self.num_features:
                raise ValueError(f"num_features = {self.num_features}, but the core's final map on {key} images "
                                 f"has shape {tuple(final.shape)}: expected [B, num_features, h, w]")
            cache[key] = tuple(encoded.shape[-2:])
        return cache[key]

    def core(self, mixed: torch.Tensor) -> torch.Tensor:
        return self.body(mixed)

    def core_sequence(self) -> list[nn.Module]:
        return list(self.body) if isinstance(self.body, nn.Sequential) else [self.body]


def find_cnn_parts(model: nn.Module, *, encoder: Optional[str] = None, pool: Optional[str] = None,
                   head: Optional[str] = None) -> dict[str, str]:
    """The names of ``model``'s children that :meth:`MimoBackbone.from_cnn` splits it at:
    ``{"encoder": ..., "pool": ..., "head": ...}``.

    A name given is checked; one left None is found: the head is the last child (an
    ``nn.Linear``), the pool the child right before it (a pooling module: ``avgpool`` in
    torchvision's ResNets, ``global_pool`` in timm's), the encoder the first child holding an
    ``nn.Conv2d`` (``conv1`` in both). ValueError / TypeError say what is missing.
    """
    children = list(model.named_children())
    names = [name for name, _ in children]
    if len(names) < 3:
        raise ValueError(f"the model needs at least an encoder, a pool and a head as children, got {names}")
    for part, name in (("encoder", encoder), ("pool", pool), ("head", head)):
        if name is not None and name not in names:
            raise ValueError(f"{part}={name!r} is not a child of the model; its children: {', '.join(names)}")
    modules = dict(children)
    if head is None:
        head = names[-1]
        if not isinstance(modules[head], nn.Linear):
            raise TypeError(f"no head found: the last child {head!r} is a {type(modules[head]).__name__}, not an "
                            f"nn.Linear; name the classifier with head=")
    if pool is None:
        pool = names[names.index(head) - 1] if names.index(head) > 0 else head
        if "pool" not in type(modules[pool]).__name__.lower():
            raise ValueError(f"no global pooling found right before the head {head!r}: {pool!r} is a "
                             f"{type(modules[pool]).__name__}; name it with pool=")
    if encoder is None:
        encoder = next((n for n, m in children if _first_conv(m) is not None), None)
        if encoder is None:
            raise ValueError("no encoder found: no child holds an nn.Conv2d; name it with encoder=")
    e, p, h = names.index(encoder), names.index(pool), names.index(head)
    if not e < p < h or h != p + 1:
        raise ValueError(f"expected the children in the order encoder < pool < head with the head right after "
                         f"the pool, got {encoder!r} at {e}, {pool!r} at {p}, {head!r} at {h} of {names}")
    if h != len(names) - 1:
        raise ValueError(f"the head {head!r} must be the last child; after it come {names[h + 1:]}")
    if not isinstance(modules[head], nn.Linear):
        raise TypeError(f"head={head!r} must be an nn.Linear, got {type(modules[head]).__name__}")
    return {"encoder": encoder, "pool": pool, "head": head}


def _sequence(model: nn.Module, names: list[str]) -> nn.Module:
    """The named children of ``model`` in order: the one child itself, or an nn.Sequential keeping their names."""
    children = dict(model.named_children())
    if len(names) == 1:
        return children[names[0]]
    return nn.Sequential(collections.OrderedDict((name, children[name]) for name in names))


STEM_DESCRIPTIONS = {"small": "3x3 stride-1 conv1, no max-pool", "imagenet": "7x7 stride-2 conv1 and max-pool"}


def adapt_stem(model: nn.Module) -> nn.Module:
    """In place, and returned: the CIFAR adaptation of an ImageNet ResNet (torchvision's or timm's
    layout): ``conv1`` becomes a 3x3 stride-1 convolution with the same channels (Kaiming-normal,
    fan-out, as both libraries draw their convolutions) and ``maxpool`` an ``nn.Identity``, so 32 x 32
    images leave a 4 x 4 final map instead of 1 x 1."""
    conv, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or maxpool is None:
        raise ValueError(f"input_stem 'small' needs a ResNet stem (conv1 an nn.Conv2d, and a maxpool); "
                         f"{type(model).__name__} has conv1 {type(conv).__name__}, maxpool "
                         f"{type(maxpool).__name__}: use input_stem 'imagenet'")
    small = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
    nn.init.kaiming_normal_(small.weight, mode="fan_out", nonlinearity="relu")
    if small.bias is not None:
        nn.init.zeros_(small.bias)
    model.conv1 = small.to(device=conv.weight.device, dtype=conv.weight.dtype)
    model.maxpool = nn.Identity()
    return model


def _resnet_backbone(make: Callable[[], nn.Module], num_subnets: int, encoder_init: str, input_stem: str,
                     image_size) -> MimoBackbone:
    """:meth:`MimoBackbone.from_cnn` of ``make()``, with the stem ``input_stem`` resolves to."""
    stem = registry.resolve_input_stem(input_stem, image_size)
    backbone = MimoBackbone.from_cnn((lambda: adapt_stem(make())) if stem == "small" else make, num_subnets,
                                     encoder_init=encoder_init)
    backbone.input_stem = stem
    return backbone


def torchvision_model(arch: str, num_classes: int, num_subnets: int = 2, encoder_init: str = "independent", *,
                      input_stem: str = "auto", image_size=None) -> MimoBackbone:
    """``torchvision.models.<arch>`` (a ResNet: conv1 ... avgpool, fc) as a MIMO model; the registry's
    ``torchvision-<arch>``.

    Randomly initialised (``weights=None``: nothing is downloaded). ``input_stem``: ``small``,
    ``imagenet`` or ``auto`` (by ``image_size`` (H, W), see :func:`mixshare.registry.resolve_input_stem`).
    """
    torchvision = registry.require("torchvision", f"torchvision-{arch}")
    factory = getattr(torchvision.models, arch, None)
    if not arch.isidentifier() or arch.startswith("_") or not callable(factory):
        raise ValueError(f"torchvision.models has no model {arch!r} (e.g. resnet18, resnet50)")
    return _resnet_backbone(lambda: factory(weights=None, num_classes=num_classes), num_subnets, encoder_init,
                            input_stem, image_size)


def timm_model(arch: str, num_classes: int, num_subnets: int = 2, encoder_init: str = "independent", *,
               input_stem: str = "auto", image_size=None) -> MimoBackbone:
    """``timm.create_model(arch)`` (a ResNet: conv1, bn1, act1, maxpool, layer1..4, global_pool, fc) as
    a MIMO model; the registry's ``timm-<name>``. Randomly initialised (``pretrained=False``);
    ``input_stem`` as for :func:`torchvision_model`."""
    timm = registry.require("timm", f"timm-{arch}")
    if not timm.is_model(arch):
        raise ValueError(f"timm has no model {arch!r} (e.g. resnet18, resnet50; timm.list_models() lists them)")
    return _resnet_backbone(lambda: timm.create_model(arch, pretrained=False, num_classes=num_classes), num_subnets,
                            encoder_init, input_stem, image_size)
