"""The model protocol: what training, evaluation and analysis use of a MIMO network.

A MIMO network has M subnetworks that share a core: ``forward(images, plan)``
takes ``images [M, B, C, H, W]`` (one batch per subnetwork) and returns logits
``[M, B, K]``. Training mixes the M inputs by a :class:`mixshare.methods.MixPlan`
whose boxes live on :meth:`MimoModel.mixing_grid`; test time gives every
subnetwork the same images (:meth:`MimoModel.predict`). The CNNs
(:class:`mixshare.models.MimoResNet`) and the ViTs (:class:`mixshare.vit.MimoViT`)
implement it; so does any network that is to run through ``mixshare.train``,
``mixshare.evaluate`` and the CLI.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class MimoModel(nn.Module):
    """Base class of the MIMO networks. A subclass sets ``num_subnets`` and ``num_features`` and
    implements :meth:`forward`, :meth:`mixing_grid` and :meth:`stage_features`."""

    num_subnets: int
    #: Channels (or features) of the core's final representation; MixShare unmixes a fraction of them.
    num_features: int
    #: The ``box_mix`` scale of the training mix; None: M (the M encodings are summed at test time).
    mixing_scale: Optional[float] = None
    #: Whether :meth:`source_attention` measures how each subnetwork attends to its own input.
    has_source_attention: bool = False

    def forward(self, images: torch.Tensor, plan=None) -> torch.Tensor:
        """images [M, B, C, H, W] -> logits [M, B, K]; mixed by ``plan`` in training, summed without one."""
        raise NotImplementedError

    def mixing_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The grid (h, w) the plan's boxes live on, for images of ``image_size`` (H, W)."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Test time: the same images [B, C, H, W] to every subnetwork -> logits [M, B, K]."""
        return self(images.unsqueeze(0).expand(self.num_subnets, *images.shape))

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps [B, C_s, ...] along the core under the test-time mix of ``images`` [M, B, C, H, W]."""
        raise NotImplementedError

    def stage_names(self) -> Optional[list[str]]:
        """Labels of :meth:`stage_features`' outputs for plots; None: "stage 1", "stage 2", ..."""
        return None

    def source_attention(self, images: torch.Tensor) -> torch.Tensor:
        """Share of each subnetwork's attention on its own input, [k, M] (see ``has_source_attention``)."""
        raise NotImplementedError(f"{type(self).__name__} has no source attention")

    def no_weight_decay(self) -> set[str]:
        """Names of parameters AdamW leaves undecayed besides biases and norm weights."""
        return set()

    def compile_core(self) -> None:
        """Compiles the heavy part in place with ``torch.compile`` (state_dict keys unchanged)."""
        raise NotImplementedError
