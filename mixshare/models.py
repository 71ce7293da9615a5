"""MIMO networks: M input encoders, mixing, a shared core, M heads.

Shapes: images ``[M, B, 3, H, W]`` (one batch per subnetwork), logits
``[M, B, K]``. Training mixes the M encodings with ``mixshare_ops.box_mix``
and, for the unmixing methods, pools the final map per subnetwork with
``mixshare_ops.cutmix_unmix_pool``; test time sums the encodings (MixMo).

:func:`mixshare.registry.create_model` is the one entry point by name (:func:`build_model` and
:func:`model_from_config` lead to it), for the CNNs here, the MixViT transformers of
:mod:`mixshare.vit` and torchvision's and timm's ResNets (:mod:`mixshare.backbone`); every model
implements :class:`mixshare.protocol.MimoModel`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import mixshare_ops
from mixshare import registry
from mixshare.config import check_model_arguments
from mixshare.protocol import MimoModel
from mixshare.registry import ENCODER_INITS  # noqa: F401  (re-exported)
from mixshare.vit import MimoViT  # noqa: F401  (re-exported)


class WideBlock(nn.Module):
    """The WRN block of the official MixMo ``wrn.py``: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (+ shortcut).

    A downsampling block strides its *second* conv, as a zero pad of (0 left, 1 right, 0 top,
    1 bottom) then a padding-0 conv; a block whose shape changes adds a 1x1 conv of its raw input
    ``x`` (not of the pre-activation), otherwise ``x`` itself.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1 if stride == 1 else 0, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn2(self.conv1(F.relu(self.bn1(x)))))
        if self.stride != 1:
            out = F.pad(out, (0, 1, 0, 1))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.conv2(out) + skip


class PreActBlock(nn.Module):
    """The pre-activation block of the official MixMo ``resnet.py`` (PreActResNet-18).

    BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3; a block whose shape changes adds a 1x1 conv of the
    pre-activation ``relu(bn1(x))``, otherwise ``x`` itself.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


# Standard deviation of a unit normal truncated to [-2, 2].
TRUNCATED_NORMAL_STD = 0.87962566103423978


def kaiming_truncated_(weight: torch.Tensor) -> torch.Tensor:
    """In place: the official MixMo init of every conv and linear weight (``torchutils``).

    A normal truncated at +-2 of its scale, scaled so that its standard deviation is Kaiming's
    ``sqrt(2 / fan_in)`` (the truncated unit normal has standard deviation 0.8796).
    """
    fan_in = weight[0].numel()
    scale = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, 0.0, scale, -2.0 * scale, 2.0 * scale)


def align_encoders(encoders, encoder_init: str) -> None:
    """In place: encoders 2..M start as encoder 1's weights (``identical``, MixShare's kernel
    alignment) or a random positive multiple of them (``colinear``, MixShare appendix C);
    ``independent`` leaves them as drawn."""
    check_model_arguments(len(encoders), encoder_init)
    first = list(encoders[0].parameters())
    with torch.no_grad():
        for encoder in encoders[1:]:
            factor = torch.empty(()).uniform_(0.5, 2.0) if encoder_init == "colinear" else None
            for param, ref in zip(encoder.parameters(), first):
                if encoder_init == "identical":
                    param.copy_(ref)
                elif encoder_init == "colinear" and param.dim() > 1:  # the kernels, not biases
                    param.copy_(ref * factor)


class MimoCNN(MimoModel):
    """The MIMO forward of every CNN (the base of :class:`MimoResNet` and of
    :class:`mixshare.backbone.MimoBackbone`, a user's CNN): M input encoders, mixing right after
    them, a shared core, M heads.

    Subclasses hold ``encoders`` and ``heads`` (ModuleLists of M) and define :meth:`core` and
    :meth:`core_sequence`. Training mixes the encodings ``[M, B, D, h, w]`` with ``box_mix``
    on the encoders' output grid (:meth:`mixing_grid`) and pools the core's final map
    ``[B, C, h', w']`` per subnetwork (``cutmix_unmix_pool`` for MixShare, the mean otherwise);
    test time sums the encodings.
    """

    #: Channels of the images the encoders take.
    in_channels: int = 3

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [M, B, C, H, W] -> encodings [M, B, D, h, w]."""
        if images.dim() != 5 or images.shape[0] != self.num_subnets:
            raise ValueError(f"images must be [M={self.num_subnets}, B, C, H, W], got {tuple(images.shape)}")
        return torch.stack([enc(img) for enc, img in zip(self.encoders, images)])

    def core(self, mixed: torch.Tensor) -> torch.Tensor:
        """Mixed encodings [B, D, h, w] -> the final map [B, C, h', w'] (``num_features`` = C)."""
        raise NotImplementedError

    def core_sequence(self) -> list[nn.Module]:
        """The core's modules in the order they run (the stages of :meth:`stage_features`)."""
        raise NotImplementedError

    def mixing_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The encoders' output size (h, w) for images of ``image_size``."""
        raise NotImplementedError

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the core's modules that hold convolutions, encodings summed (test-time mixing)."""
        x = self.encode(images).sum(0)
        features = []
        for module in self.core_sequence():
            x = module(x)
            if any(isinstance(m, nn.Conv2d) for m in module.modules()):
                features.append(x)
        return features

    def forward(self, images: torch.Tensor, plan=None) -> torch.Tensor:
        """images [M, B, C, H, W] -> logits [M, B, K].

        ``plan`` (a :class:`mixshare.methods.MixPlan`): without one the M encodings
        are summed (MIMO / MixMo test time); with one they are mixed by ``box_mix``
        and, if the plan unmixes, the final map is unmixed and pooled per
        subnetwork (``cutmix_unmix_pool``).
        """
        encoded = self.encode(images)
        if plan is None or self.num_subnets == 1:
            mixed = encoded.sum(0)
        else:
            mixed = mixshare_ops.box_mix(encoded, plan=plan)
        features = self.core(mixed)
        if plan is not None and plan.unmix is not None and self.num_subnets > 1:
            pooled = mixshare_ops.cutmix_unmix_pool(features, plan=plan)  # [M, B, C]
        else:
            pooled = features.mean(dim=(2, 3)).expand(self.num_subnets, -1, -1)
        return torch.stack([head(p) for head, p in zip(self.heads, pooled)])

    def compile_core(self) -> None:
        for module in self.core_sequence():
            module.compile()


class MimoResNet(MimoCNN):
    """The project's pre-activation residual networks (MixMo's WRN-<depth>-<width> and PreActResNet-18):
    M encoders (3x3 conv, 3 -> ``stem``), a pre-activation core, BN-ReLU, M heads.

    ``stages``: list of (channels, blocks, stride). M = 1 is the plain network.
    """

    def __init__(self, stages, stem: int, num_classes: int, num_subnets: int = 2, encoder_init: str = "independent",
                 *, block=WideBlock, head_std: Optional[float] = None):
        super().__init__()
        check_model_arguments(num_subnets, encoder_init)
        self.num_subnets = num_subnets
        self.encoders = nn.ModuleList(nn.Conv2d(3, stem, 3, 1, 1, bias=False) for _ in range(num_subnets))
        self.stages = nn.ModuleList()
        channels = stem
        for width, blocks, stride in stages:
            layers = []
            for k in range(blocks):
                layers.append(block(channels, width, stride if k == 0 else 1))
                channels = width
            self.stages.append(nn.Sequential(*layers))
        self.final_bn = nn.BatchNorm2d(channels)
        self.num_features = channels
        self.heads = nn.ModuleList(nn.Linear(channels, num_classes) for _ in range(num_subnets))
        self._init_weights(encoder_init, head_std)

    def _init_weights(self, encoder_init: str, head_std: Optional[float]) -> None:
        """As the official MixMo code: convs (and heads, unless ``head_std`` gives a plain normal's
        standard deviation) by :func:`kaiming_truncated_`, zero biases, BatchNorm at identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kaiming_truncated_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                if head_std is None:
                    kaiming_truncated_(module.weight)
                else:
                    nn.init.normal_(module.weight, 0.0, head_std)
                nn.init.zeros_(module.bias)
        align_encoders(self.encoders, encoder_init)

    def mixing_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The image size (H, W): the 3x3 encoders keep it."""
        return tuple(image_size)

    def core(self, mixed: torch.Tensor) -> torch.Tensor:
        """Mixed encodings [B, stem, H, W] -> final activated map [B, C, h, w]."""
        for stage in self.stages:
            mixed = stage(mixed)
        return F.relu(self.final_bn(mixed))

    def core_sequence(self) -> list[nn.Module]:
        return list(self.stages)


#: Another name of MimoResNet, for code that imports it by that name.
MimoNet = MimoResNet


def wide_resnet(depth: int, width: int, num_classes: int, num_subnets: int = 2, encoder_init: str = "independent"):
    """WRN-depth-width (depth = 6n + 4): widths 16, 16w, 32w, 64w; n :class:`WideBlock` per stage."""
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    n = (depth - 4) // 6
    stages = [(16 * width, n, 1), (32 * width, n, 2), (64 * width, n, 2)]
    return MimoResNet(stages, 16, num_classes, num_subnets, encoder_init)


def preact_resnet18(num_classes: int, num_subnets: int = 2, encoder_init: str = "independent"):
    """PreActResNet-18 for 64x64 inputs: widths 64-512, two :class:`PreActBlock` per stage.

    Heads start from N(0, 0.01), as the official PreActResNet's.
    """
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return MimoResNet(stages, 64, num_classes, num_subnets, encoder_init, block=PreActBlock, head_std=0.01)


def model_family(name: str) -> str:
    """The kind of model ``name`` registers (``"cnn"`` or ``"vit"``); ValueError for an unknown name."""
    return registry.find_family(name).kind


def build_model(name: str, num_classes: int, num_subnets: int, encoder_init: str = "independent", **options):
    """:func:`mixshare.registry.create_model`, with ``encoder_init`` passed to the families that take it."""
    if "encoder_init" in registry.find_family(name).options:
        options["encoder_init"] = encoder_init
    elif encoder_init != "independent":
        raise ValueError(f"encoder_init applies to the CNNs' M encoders; model {name!r} has none "
                         f"(encoder_init must stay independent)")
    return registry.create_model(name, num_classes, num_subnets, **options)


def config_image_size(config) -> tuple[int, int]:
    """(H, W) of the images of ``config``'s dataset (:func:`mixshare.data.load_data`): ``synthetic_size``
    square for the synthetic set, 32 x 32 for the digits (upsampled) and CIFAR."""
    side = config.synthetic_size if config.dataset == "synthetic" else 32
    return side, side


def model_from_config(config, num_classes: int, image_size: Optional[tuple[int, int]] = None) -> nn.Module:
    """:func:`mixshare.registry.create_model` with the model keys of a :class:`mixshare.config.Config`
    that the model's family takes; ``image_size`` (H, W), default :func:`config_image_size`, picks
    ``input_stem: auto``'s stem."""
    family = registry.find_family(config.model)
    options = {key: getattr(config, key) for key in family.options if key != "image_size"}
    if "image_size" in family.options:
        options["image_size"] = tuple(image_size) if image_size is not None else config_image_size(config)
    return registry.create_model(config.model, num_classes, config.num_subnets, **options)
