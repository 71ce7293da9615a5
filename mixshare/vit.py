"""MixViT: a MIMO vision transformer with token mixing and source attribution (README, "MixViT").

Shapes: images ``[M, B, 3, H, W]`` (one batch per subnetwork), the token grid ``[M, B, D, h, w]``
(``h = H / patch``, ``w = W / patch``: 8 x 8 for 32 x 32 images and patch 4), tokens ``[B, N, D]``
with ``N = h * w`` in row-major order (token ``n = r * w + c`` is patch row ``r``, column ``c``),
logits ``[M, B, K]``. CaiT-style: a shared patch embedding and sine-cosine positions, L - k
self-attention blocks shared by the subnetworks, k class-attention blocks where patch token n carries
``sum_i a_i(n) e_i`` (input i's plan weight at n times its learned source embedding) on its attention
input and class token i carries ``e_i``, and head i reading class token i. Training mixes the token
grids with ``box_mix`` at scale 1; at test every patch token is attributed to each i in turn.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import mixshare_ops
from mixshare.config import check_model_arguments
from mixshare.protocol import MimoModel

__all__ = ["MimoViT", "build_vit", "source_weights", "band_sources", "sincos_position_embedding"]


def sincos_position_embedding(height: int, width: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``[h * w, D]`` (D divisible by 4).

    The first D/2 channels encode the row, the last D/2 the column, each as
    sines and cosines of D/4 frequencies ``1 / 10000^(j / (D/4))``.
    """
    if dim % 4:
        raise ValueError(f"the sine-cosine position embedding needs D divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)
    rows = torch.arange(height, device=device, dtype=torch.float64)[:, None].expand(height, width).reshape(-1)
    cols = torch.arange(width, device=device, dtype=torch.float64)[None, :].expand(height, width).reshape(-1)
    parts = []
    for pos in (rows, cols):
        angle = pos[:, None] * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).to(dtype)


def source_weights(boxes: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-token weight of each input under a mixing plan: ``[B, N, M]``.

    ``boxes`` int32 ``[B, 4]`` on the ``grid`` (h, w); ``inside`` / ``outside``
    ``[B, M]``. Token n of sample b gets ``inside[b]`` if its patch lies in
    box b, else ``outside[b]``: exactly the weights ``box_mix`` applies to it.
    """
    h, w = grid
    mask = mixshare_ops.cutmix_mask(boxes, h, w, dtype=inside.dtype).reshape(boxes.shape[0], h * w, 1)
    return mask * inside[:, None, :] + (1 - mask) * outside[:, None, :]


def band_sources(num_subnets: int, grid: tuple[int, int], device=None) -> torch.Tensor:
    """One-hot ``[N, M]``: the grid cut into M vertical bands, band i owned by input i.

    Column c belongs to input ``floor(c * M / w)``. A fixed, symmetric mix of
    M inputs on the patch grid, used by the analyses.
    """
    h, w = grid
    owner = (torch.arange(w, device=device) * num_subnets) // w  # [w]
    owner = owner[None, :].expand(h, w).reshape(-1)
    return F.one_hot(owner, num_subnets).float()


class DropPath(nn.Module):
    """Stochastic depth: zeroes a residual branch per sample with probability ``rate`` (training only)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear D -> hidden, GELU, Linear hidden -> D."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, d_head]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block on the patch tokens: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClassAttention(nn.Module):
    """CaiT class attention for Q independent class tokens.

    ``cls [B, Q, D]`` and ``patches [B, N, D]`` (both normalised) ->
    ``[B, Q, D]``. Class token q attends to the N patch tokens and to its own
    key only (never to another class token), so the Q tokens do not interact.
    With ``return_weights`` also returns the attention weights on the patch
    tokens ``[B, heads, Q, N]`` (the rest of each row is on the token itself).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, return_weights: bool = False):
        b, q_len, d = cls.shape
        n = patches.shape[1]
        hd = d // self.heads
        q = self.q(cls).view(b, q_len, self.heads, hd).transpose(1, 2)  # [B, H, Q, hd]
        k_p, v_p = self.kv(patches).view(b, n, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # [B, H, N, hd]
        k_c, v_c = self.kv(cls).view(b, q_len, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # [B, H, Q, hd]
        scale = hd**-0.5
        logits = torch.cat([q @ k_p.transpose(-2, -1), (q * k_c).sum(-1, keepdim=True)], dim=-1) * scale
        weights = logits.softmax(dim=-1)  # [B, H, Q, N + 1]
        out = weights[..., :n] @ v_p + weights[..., n:] * v_c
        out = self.proj(out.transpose(1, 2).reshape(b, q_len, d))
        return (out, weights[..., :n]) if return_weights else out


class ClassAttentionBlock(nn.Module):
    """CaiT class-attention block with source attribution: updates the class tokens, leaves the patches as they are.

    ``cls [B, Q, D]``, ``patches [B, N, D]``; ``cls_source [B or 1, Q, D]`` and
    ``patch_source [B, N, D]``: the source embeddings added to the attention
    inputs (after ``norm1``) of the class and patch tokens.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, cls, patches, cls_source, patch_source, return_weights: bool = False):
        out = self.attn(self.norm1(cls) + cls_source, self.norm1(patches) + patch_source, return_weights)
        attended, weights = out if return_weights else (out, None)
        cls = cls + self.drop_path(attended)
        cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        return (cls, weights) if return_weights else cls


class MimoViT(MimoModel):
    """A MIMO vision transformer with M subnetworks separated by source attribution (see the module doc).

    ``depth`` blocks in all: ``depth - attribution_depth`` shared self-attention
    blocks, then ``attribution_depth`` class-attention blocks with source
    attribution. M = 1 is a plain CaiT-style ViT (the single source embedding
    is then a learned offset).
    """

    mixing_scale = 1.0  # box_mix scale of the token mix: tokens are copied, not summed
    has_source_attention = True

    def __init__(
        self,
        num_classes: int,
        num_subnets: int = 2,
        depth: int = 12,
        dim: int = 192,
        heads: int = 3,
        patch: int = 4,
        attribution_depth: int = 2,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        check_model_arguments(num_subnets)
        if not 1 <= attribution_depth < depth:
            raise ValueError(
                f"attribution_depth must be in [1, depth - 1] = [1, {depth - 1}] (at least one shared and one "
                f"attributed block), got {attribution_depth}")
        if heads < 1 or dim % heads or dim % 4:
            raise ValueError(f"dim must be divisible by 4 and by heads, got dim {dim}, heads {heads}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.num_subnets = num_subnets
        self.num_features = dim
        self.depth = depth
        self.attribution_depth = attribution_depth
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # linearly increasing (DeiT)
        shared = depth - attribution_depth
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, rates[i]) for i in range(shared))
        self.class_blocks = nn.ModuleList(
            ClassAttentionBlock(dim, heads, mlp_ratio, rates[shared + i]) for i in range(attribution_depth))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.source_embed = nn.Parameter(torch.zeros(num_subnets, dim))
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_subnets))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        fan_in = self.patch_embed.weight[0].numel()
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # Source embeddings start at unit scale, like the LayerNorm outputs they are added to (see the
        # module doc for why). With M = 1 there is nothing to attribute: the one embedding starts at 0,
        # so single-vit starts as a plain CaiT-style ViT.
        if self.num_subnets > 1:
            nn.init.normal_(self.source_embed, std=1.0)
        else:
            nn.init.zeros_(self.source_embed)

    def compile_core(self) -> None:
        for block in [*self.blocks, *self.class_blocks]:
            block.compile()

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves undecayed besides biases and norms: the class token and source embeddings."""
        return {"cls_token", "source_embed"}

    # ------------------------------------------------------------ pieces

    def mixing_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid (h, w) of ``image_size`` (H, W): where the CutMix boxes live."""
        height, width = image_size
        if height % self.patch or width % self.patch:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch}")
        return height // self.patch, width // self.patch

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding: ``[..., 3, H, W] -> [..., D, h, w]`` (the token grid)."""
        lead = images.shape[:-3]
        grid = self.patch_embed(images.reshape(-1, *images.shape[-3:]))
        return grid.view(*lead, *grid.shape[1:])

    def tokens(self, grid: torch.Tensor) -> torch.Tensor:
        """Token grid ``[B, D, h, w]`` -> tokens ``[B, N, D]`` with the position embedding added."""
        b, d, h, w = grid.shape
        pos = sincos_position_embedding(h, w, d, grid.device, grid.dtype)
        return grid.flatten(2).transpose(1, 2) + pos

    def shared(self, tokens: torch.Tensor) -> torch.Tensor:
        """The shared blocks: ``[B, N, D] -> [B, N, D]``."""
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def patch_attribution(self, weights: torch.Tensor) -> torch.Tensor:
        """Source embedding of each patch token: ``weights [B, N, M] @ e [M, D] -> [B, N, D]``."""
        return weights.to(self.source_embed.dtype) @ self.source_embed

    def class_stream(self, patches: torch.Tensor, weights: torch.Tensor, class_sources: torch.Tensor,
                     return_weights: bool = False) -> list:
        """The attributed blocks' class tokens: a list over the k blocks of ``[B, Q, D]`` (before the last norm).

        ``patches [B, N, D]``: output of the shared blocks; ``weights [B, N, M]``:
        each token's weight per source (its attention inputs receive
        ``weights @ e``); ``class_sources``: long ``[Q]`` or ``[B, Q]``, the
        attribution of each class token. With ``return_weights`` the list holds
        ``(class tokens, attention on the patches [B, heads, Q, N])`` pairs.
        """
        patch_source = self.patch_attribution(weights).to(patches.dtype)
        cls_source = self.source_embed[class_sources].to(patches.dtype)
        if cls_source.dim() == 2:
            cls_source = cls_source.unsqueeze(0)
        cls = self.cls_token.to(patches.dtype).expand(patches.shape[0], cls_source.shape[1], -1)
        outputs = []
        for block in self.class_blocks:
            out = block(cls, patches, cls_source, patch_source, return_weights)
            cls = out[0] if return_weights else out
            outputs.append(out)
        return outputs

    def attributed(self, patches: torch.Tensor, weights: torch.Tensor, class_sources: torch.Tensor) -> torch.Tensor:
        """The attributed blocks: final class-token features ``[B, Q, D]`` (after the last norm).

        Arguments as for :meth:`class_stream`.
        """
        return self.norm(self.class_stream(patches, weights, class_sources)[-1])

    def _heads(self, features: torch.Tensor) -> torch.Tensor:
        """``[M, B, D] -> [M, B, K]``: head i on subnetwork i's class token."""
        return torch.stack([head(f) for head, f in zip(self.heads, features)])

    def per_subnet_passes(self, patches: torch.Tensor) -> torch.Tensor:
        """Test time: the attributed blocks once per subnetwork i, every token attributed to i.

        ``patches [B, N, D]`` (shared blocks' output, computed once) -> logits
        ``[M, B, K]``. The M passes are batched: ``[M * B, N, D]``.
        """
        m = self.num_subnets
        b, n, _ = patches.shape
        owner = torch.arange(m, device=patches.device)
        weights = F.one_hot(owner, m).to(patches.dtype)[:, None, None, :].expand(m, b, n, m)  # [M, B, N, M]
        stacked = patches.unsqueeze(0).expand(m, -1, -1, -1).reshape(m * b, n, -1)
        class_sources = owner.repeat_interleave(b)[:, None]  # [M * B, 1]
        features = self.attributed(stacked, weights.reshape(m * b, n, m), class_sources)
        return self._heads(features.view(m, b, -1))

    # ------------------------------------------------------------ MIMO interface

    def forward(self, images: torch.Tensor, plan=None) -> torch.Tensor:
        """images ``[M, B, 3, H, W]`` -> logits ``[M, B, K]``.

        With a plan (training) the M token grids are mixed by ``box_mix`` on the
        patch grid, the tokens attributed by the plan's weights, and the M
        class tokens run together. Without one (test time) the shared blocks
        see the mean of the M token grids (the image's own tokens when every
        subnetwork gets the same image) and the attributed blocks run once per
        subnetwork with every token attributed to it.
        """
        if images.dim() != 5 or images.shape[0] != self.num_subnets:
            raise ValueError(f"images must be [M={self.num_subnets}, B, 3, H, W], got {tuple(images.shape)}")
        grid = self.embed(images)  # [M, B, D, h, w]
        if plan is None or self.num_subnets == 1:
            return self.per_subnet_passes(self.shared(self.tokens(grid.mean(0))))
        mixed = mixshare_ops.box_mix(grid, plan=plan)  # [B, D, h, w]
        patches = self.shared(self.tokens(mixed))
        weights = source_weights(plan.boxes, plan.inside, plan.outside, tuple(grid.shape[-2:]))
        features = self.attributed(patches, weights, torch.arange(self.num_subnets, device=images.device))
        return self._heads(features.transpose(0, 1))  # [B, M, D] -> [M, B, K]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Test time: images ``[B, 3, H, W]`` -> logits ``[M, B, K]``; embedding and shared blocks run once."""
        return self.per_subnet_passes(self.shared(self.tokens(self.embed(images))))

    # ------------------------------------------------------------ analysis

    def stage_indices(self) -> list[int]:
        """Block indices (0-based) whose outputs :meth:`stage_features` returns.

        The first, middle and last shared blocks, then every attributed block.
        """
        shared = len(self.blocks)
        picked = sorted({0, (shared - 1) // 2, shared - 1})
        return picked + list(range(shared, self.depth))

    def stage_names(self) -> list[str]:
        """Labels of :meth:`stage_features`' outputs, for plots."""
        shared = len(self.blocks)
        return [
            f"block {i + 1} (patch tokens)" if i < shared else f"block {i + 1}, class attn. (class tokens)"
            for i in self.stage_indices()
        ]

    def band_mix(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The analyses' mix: ``[M, B, 3, H, W]`` -> tokens ``[B, N, D]`` and weights ``[B, N, M]``.

        Input i's tokens fill the i-th vertical band of the patch grid
        (:func:`band_sources`); the tokens are attributed accordingly.
        """
        grid = self.embed(images)  # [M, B, D, h, w]
        m, b, d, h, w = grid.shape
        onehot = band_sources(m, (h, w), grid.device).to(grid.dtype)  # [N, M]
        mixed = torch.einsum("mbdn,nm->bdn", grid.flatten(3), onehot).view(b, d, h, w)
        return self.tokens(mixed), onehot.expand(b, -1, -1)

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features at the end of the :meth:`stage_indices` blocks under the band mix.

        ``images [M, B, 3, H, W]`` -> for a shared block the patch tokens
        ``[B, D, N]`` (channels first, tokens last), for an attributed block the
        M class tokens ``[B, M * D]`` (class token i's D channels at
        ``i * D``). The interface ``mixshare.analysis.conditional_variance``
        uses: the variance of each channel with respect to each input.
        """
        tokens, weights = self.band_mix(images)
        wanted = set(self.stage_indices())
        features = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                features.append(tokens.transpose(1, 2))
        for cls in self.class_stream(tokens, weights, torch.arange(self.num_subnets, device=tokens.device)):
            features.append(cls.reshape(cls.shape[0], -1))
        return features

    def source_attention(self, images: torch.Tensor) -> torch.Tensor:
        """Share of each class token's patch attention on its own input's tokens: ``[k, M]``.

        ``images [M, B, 3, H, W]`` mixed by :meth:`band_mix`; entry (j, i) is the
        attention mass class token i puts on input i's band in attributed
        block j, divided by its mass on all patch tokens, averaged over heads
        and samples. Chance level: the band's share of the grid (about 1 / M).
        """
        tokens, weights = self.band_mix(images)
        stream = self.class_stream(self.shared(tokens), weights, torch.arange(self.num_subnets, device=tokens.device),
                                   return_weights=True)
        shares = []
        for _, attn in stream:  # attn [B, heads, M, N]
            own = torch.einsum("bhqn,bnq->bhq", attn, weights.to(attn.dtype))
            shares.append((own / attn.sum(-1)).mean(dim=(0, 1)))
        return torch.stack(shares)


def build_vit(num_classes: int, num_subnets: int, depth: int, dim: int, heads: Optional[int] = None,
              attribution_depth: int = 2, drop_path: float = 0.0) -> MimoViT:
    """The registry's builder of ``vit-tiny`` and ``vit-<depth>-<dim>[-<heads>]`` (heads default:
    dim // 64, at least 1)."""
    heads = max(1, dim // 64) if heads is None else heads
    return MimoViT(num_classes, num_subnets, depth=depth, dim=dim, heads=heads,
                   attribution_depth=attribution_depth, drop_path=drop_path)
