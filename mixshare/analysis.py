"""How MIMO subnetworks use the shared network's features (MixShare section 2, appendix D).

Written against a small model interface only:

* ``model.num_subnets``: M;
* ``model.encoders``: ``nn.ModuleList`` of M ``nn.Conv2d`` (3 -> C_enc, e.g. 16 in a WRN);
* ``model.heads``: ``nn.ModuleList`` of M ``nn.Linear(C_final, K)``;
* ``model.stage_features(x)``: ``x [M, B, 3, H, W]`` (one batch per encoder, the
  encodings summed as at test time) -> list of ``[B, C_s, H_s, W_s]``, the
  feature maps at the end of each core stage.

Models without per-subnetwork encoders (the ViTs of :mod:`mixshare.vit`, one
patch embedding shared by every subnetwork) have no input-block profile:
:func:`share_rates` and :func:`feature_sharing_report` give ``None`` with a
reason there; :func:`conditional_variance` then takes M from
``model.num_subnets`` and the device and dtype from the first parameter, and
:func:`source_attention` measures how the attributed class tokens of a MixViT
read their own input's tokens.

Feature *profiles* are ``[M, F]`` non-negative importances of F features to
each subnetwork: the L1 norm of each encoder's kernel per output channel
(input block) and of each head's weight column per input feature (output
block). The *share rate* compares them (MixShare section 2, Table 1), on the
raw profiles h_i:

    share rate = 100 * sum_f min_i h_i(f) / sum_f max_i h_i(f)

0% when every feature is used by one subnetwork only, 100% when all
subnetworks weigh all features exactly alike. This literal rate is what
:func:`share_rate`, :func:`encoder_share_rate`, :func:`classifier_share_rate`
and the ``encoder_share_rate`` / ``classifier_share_rate`` keys report. It
is sensitive to an overall scale difference between subnetworks (a head whose
weights are all 1.5x larger lowers it); :func:`normalized_share_rate` (keys
``*_share_rate_normalized``) first divides each subnetwork's profile by its
own maximum, so it compares only the *shapes* of the profiles.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.nn as nn

from mixshare.tensor_checks import check_float_tensor

__all__ = [
    "encoder_profiles",
    "classifier_profiles",
    "share_rate",
    "normalized_share_rate",
    "encoder_share_rate",
    "classifier_share_rate",
    "conditional_variance",
    "feature_sharing_report",
    "has_input_encoders",
    "share_rates",
    "source_attention",
]

NO_ENCODER_NOTE = (
    "no per-subnetwork input encoders: the subnetworks share one patch embedding, so there is no input-block "
    "profile to compare (the share rate would be 100% by construction)"
)


def has_input_encoders(model: nn.Module) -> bool:
    """Whether ``model`` has M per-subnetwork input encoders (the CNNs) to profile."""
    return hasattr(model, "encoders")


def _subnet_modules(model: nn.Module, attr: str, kind: type) -> list:
    modules = list(getattr(model, attr))
    m = int(model.num_subnets)
    if len(modules) != m:
        raise ValueError(f"model.{attr} has {len(modules)} modules but model.num_subnets is {m}")
    for i, module in enumerate(modules):
        if not isinstance(module, kind):
            raise TypeError(f"model.{attr}[{i}] must be an nn.{kind.__name__}, got {type(module).__name__}")
    return modules


# --------------------------------------------------------------------------- profiles


def encoder_profiles(model: nn.Module) -> torch.Tensor:
    """``[M, C_enc]``: per output channel, the L1 norm of each encoder's kernel.

    Entry (i, c) = sum of |w| over the input channels and the kernel window of
    ``model.encoders[i].weight[c]`` (weights ``[C_enc, 3, kh, kw]``). Detached,
    on the weights' device and dtype.
    """
    encoders = _subnet_modules(model, "encoders", nn.Conv2d)
    return torch.stack([enc.weight.detach().abs().sum(dim=tuple(range(1, enc.weight.dim()))) for enc in encoders])


def classifier_profiles(model: nn.Module) -> torch.Tensor:
    """``[M, C_final]``: per input feature, the L1 norm of each head's weight column.

    Entry (i, c) = sum over classes of |``model.heads[i].weight[:, c]``| (weights
    ``[K, C_final]``; biases are ignored). Detached, on the weights' device and dtype.
    """
    heads = _subnet_modules(model, "heads", nn.Linear)
    return torch.stack([head.weight.detach().abs().sum(0) for head in heads])


def _checked_profiles(profiles) -> torch.Tensor:
    """``profiles`` as a float64 ``[M, F]`` tensor, after checking shape, finiteness and sign."""
    if not isinstance(profiles, torch.Tensor):
        profiles = torch.as_tensor(profiles)
    if profiles.dim() != 2 or profiles.shape[0] < 1 or profiles.shape[1] < 1:
        raise ValueError(f"profiles must be [M, F] with M, F >= 1, got shape {tuple(profiles.shape)}")
    h = profiles.detach().double()
    if not bool(torch.isfinite(h).all()):
        raise ValueError("profiles must be finite")
    if bool((h < 0).any()):
        raise ValueError("profiles must be non-negative (they are L1 norms or variances)")
    return h


def _min_over_max(h: torch.Tensor) -> float:
    """``100 * sum_f min_i h[i, f] / sum_f max_i h[i, f]``; nan when the denominator is 0."""
    denominator = h.amax(0).sum()
    if float(denominator) == 0.0:
        return math.nan
    return 100.0 * (h.amin(0).sum() / denominator).item()


def share_rate(profiles: torch.Tensor) -> float:
    """Feature sharing rate in percent of the raw ``profiles [M, F]`` (MixShare section 2, Table 1).

        share rate = 100 * sum_f min_i h_i(f) / sum_f max_i h_i(f)

    on the profiles exactly as given (no per-subnetwork normalisation): the
    definition of the MixShare paper and of its Table 1's share rates. 0 when
    no feature has a non-zero weight in two subnetworks (also when one
    subnetwork's profile is all zero and another's is not), 100 when all
    profiles are identical (100.0 for M = 1). A common scale factor of all
    profiles cancels, but a scale difference between subnetworks does not:
    profiles [1, 1] and [1.5, 1.5] give 66.7 (see :func:`normalized_share_rate`).

    Convention: nan when every profile is all zero (sum of max is 0: no
    subnetwork uses any feature), for any M. Profiles must be finite and >= 0;
    they are computed in float64.
    """
    return _min_over_max(_checked_profiles(profiles))


def normalized_share_rate(profiles: torch.Tensor) -> float:
    """Share rate (%) of ``profiles [M, F]`` after dividing each subnetwork's profile by its own maximum.

        h'_i = h_i / max_f h_i(f);   rate = 100 * sum_f min_i h'_i(f) / sum_f max_i h'_i(f)

    Not the paper's definition (Table 1 uses the literal :func:`share_rate`).
    Useful beside it because it ignores an overall scale difference between
    subnetworks (e.g. one head whose weights are all larger, which the literal
    rate counts as a difference in feature use) and compares only which
    features each subnetwork relies on, relative to its own strongest one:
    colinear profiles give 100. 100.0 for M = 1.

    Convention: nan when any subnetwork's profile is all zero (it cannot be
    normalised; such a subnetwork uses no feature at all). Profiles must be
    finite and >= 0.
    """
    h = _checked_profiles(profiles)
    peak = h.amax(dim=1, keepdim=True)
    if bool((peak == 0).any()):
        return math.nan
    return _min_over_max(h / peak)


def encoder_share_rate(model: nn.Module) -> float:
    """Share rate (%) of the input block: :func:`share_rate` (literal) of :func:`encoder_profiles`."""
    return share_rate(encoder_profiles(model))


def classifier_share_rate(model: nn.Module) -> float:
    """Share rate (%) of the output block: :func:`share_rate` (literal) of :func:`classifier_profiles`.

    The "classifier share rate" of MixShare's Table 1.
    """
    return share_rate(classifier_profiles(model))


def share_rates(model: nn.Module) -> dict:
    """The share rates (%) of any project model, as they go into ``metrics.json``.

    ``encoder_share_rate`` and ``classifier_share_rate``: the literal
    :func:`share_rate` (the paper's); ``encoder_share_rate_normalized`` and
    ``classifier_share_rate_normalized``: :func:`normalized_share_rate`.
    Without per-subnetwork encoders (a ViT) both encoder keys are None and
    ``encoder_share_rate_note`` says why.
    """
    cls = classifier_profiles(model)
    out = {"classifier_share_rate": share_rate(cls), "classifier_share_rate_normalized": normalized_share_rate(cls)}
    if has_input_encoders(model):
        enc = encoder_profiles(model)
        out["encoder_share_rate"] = share_rate(enc)
        out["encoder_share_rate_normalized"] = normalized_share_rate(enc)
    else:
        out["encoder_share_rate"] = None
        out["encoder_share_rate_normalized"] = None
        out["encoder_share_rate_note"] = NO_ENCODER_NOTE
    return out


def feature_sharing_report(model: nn.Module) -> dict:
    """Share rates and profiles of the input and output blocks, as plain Python values.

    Keys: ``num_subnets``; the keys of :func:`share_rates` (``encoder_share_rate``,
    ``classifier_share_rate``: literal, %; ``*_share_rate_normalized``: %; nan
    as documented there); ``encoder_profiles`` (M lists of C_enc floats),
    ``classifier_profiles`` (M lists of C_final floats), the raw profiles the
    rates are computed from. Without per-subnetwork encoders the encoder
    entries are None and ``encoder_share_rate_note`` says why.
    """
    report = {"num_subnets": int(model.num_subnets)}
    report.update(share_rates(model))
    report["classifier_profiles"] = classifier_profiles(model).double().cpu().tolist()
    report["encoder_profiles"] = (
        encoder_profiles(model).double().cpu().tolist() if has_input_encoders(model) else None)
    return report


# --------------------------------------------------------------------------- conditional variance


class _RunningMoments:
    """Per-position mean and sum of squared deviations over a stream of batches.

    Batches are merged with Chan et al.'s pairwise update in float64, which does
    not lose the variance to cancellation the way sum(x^2) - n*mean^2 can when
    |mean| >> std.
    """

    def __init__(self):
        self.count = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def update(self, batch: torch.Tensor) -> None:
        x = batch.double()
        nb = x.shape[0]
        mean_b = x.mean(0)
        m2_b = (x - mean_b).pow(2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = nb, mean_b, m2_b
            return
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"feature shape changed between batches: {tuple(self.mean.shape)} vs {tuple(mean_b.shape)}")
        na = self.count
        n = na + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (na * nb / n)
        self.count = n

    def variance(self) -> torch.Tensor:
        """Unbiased (correction = 1, like ``torch.var``'s default) variance."""
        return self.m2 / (self.count - 1)


def _channel_mean(variance: torch.Tensor) -> torch.Tensor:
    """[C, *spatial] -> [C]: the mean over every dim after the channel dim."""
    return variance.reshape(variance.shape[0], -1).mean(1)


def conditional_variance(
    model: nn.Module,
    images: torch.Tensor,
    fixed_index: int = 0,
    subnet: Optional[int] = None,
    batch_size: int = 256,
) -> list[torch.Tensor]:
    """Variance of each core feature map w.r.t. each input, the others held fixed (MixShare appendix D).

    For subnetwork i, encoder i gets the N ``images [N, 3, H, W]`` while every
    other encoder gets ``images[fixed_index]``; for each stage s the features
    ``M_int [N, C_s, H_s, W_s]`` give the importance of channel c to subnetwork i

        Mean(Var(M_int, dim=0), dim=(1, 2))[c]

    (the variance over the N samples, unbiased like ``torch.var``, then the mean
    over the spatial positions; any number of trailing dims is averaged, so a
    stage may also return ``[B, C_s]``). A channel that does not depend on input
    i has variance 0 for subnetwork i (up to the model's own rounding: kernels
    may round differently for different batch sizes). Requires N >= 2.

    Returns a list over stages of float64 CPU tensors ``[M, C_s]`` (row i =
    subnetwork i), or of ``[C_s]`` when ``subnet`` is an int (only that
    subnetwork is computed). Runs under ``torch.no_grad`` with the model in eval
    mode (batch-norm running statistics, no dropout); every submodule's
    training flag is restored afterwards. Images are processed ``batch_size``
    at a time on the device (and in the dtype) of ``model.encoders[0].weight``
    (of the first parameter for a model without encoders, e.g. a ViT, whose
    ``stage_features`` mixes the M inputs on its patch grid).
    """
    if has_input_encoders(model):
        encoders = _subnet_modules(model, "encoders", nn.Conv2d)
        m = len(encoders)
        weight = encoders[0].weight
    else:
        m = int(model.num_subnets)
        weight = next(model.parameters())
    check_float_tensor(images, "images", "[N, C, H, W]")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images to compute a variance, got {n}")
    if not -n <= fixed_index < n:
        raise IndexError(f"fixed_index {fixed_index} out of range for {n} images")
    if subnet is None:
        subnets = list(range(m))
    else:
        try:
            index = operator.index(subnet) if not isinstance(subnet, bool) else None
        except TypeError:
            index = None
        if index is None or not 0 <= index < m:
            raise ValueError(f"subnet must be None or an int in [0, {m}), got {subnet!r}")
        subnets = [index]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    dtype = weight.dtype if weight.is_floating_point() else images.dtype
    fixed = images[fixed_index].to(device=weight.device, dtype=dtype)

    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            per_subnet = []
            for i in subnets:
                moments: Optional[list] = None
                for start in range(0, n, batch_size):
                    batch = images[start:start + batch_size].to(device=weight.device, dtype=dtype)
                    inputs = fixed.expand(m, batch.shape[0], *fixed.shape).clone()
                    inputs[i] = batch
                    features = list(model.stage_features(inputs))
                    if moments is None:
                        moments = [_RunningMoments() for _ in features]
                    if len(features) != len(moments):
                        raise ValueError(
                            f"model.stage_features returned {len(features)} stages, earlier {len(moments)}")
                    for s, (acc, feat) in enumerate(zip(moments, features)):
                        if feat.dim() < 2 or feat.shape[0] != batch.shape[0]:
                            raise ValueError(
                                f"stage {s} features must be [B={batch.shape[0]}, C, ...], got {tuple(feat.shape)}")
                        acc.update(feat)
                per_subnet.append([_channel_mean(acc.variance()).cpu() for acc in moments])
    finally:
        for module, flag in flags:
            module.training = flag

    num_stages = len(per_subnet[0])
    if subnet is not None:
        return per_subnet[0]
    return [torch.stack([per_subnet[i][s] for i in range(m)]) for s in range(num_stages)]


# --------------------------------------------------------------------------- source attribution (ViT)


def source_attention(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """How much each attributed class token attends to its own input's tokens: float64 CPU ``[k, M]``.

    ``model.source_attention(x)`` (a :class:`mixshare.vit.MimoViT`) on
    ``x [M, B, 3, H, W]``: input i gets ``images`` rolled by i (so the M inputs
    differ), the M inputs fill M vertical bands of the patch grid, and entry
    (j, i) is the share of class token i's patch attention in attributed block
    j that falls on input i's band. Chance level about 1 / M; 1 means the
    subnetwork reads only its own input. Eval mode and no grad, flags restored;
    batches of ``batch_size`` are weighted by their size.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty tensor [N, C, H, W], got {getattr(images, 'shape', images)}")
    m = int(model.num_subnets)
    param = next(model.parameters())
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    total, count = None, 0
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start:start + batch_size].to(device=param.device, dtype=param.dtype)
                inputs = torch.stack([batch.roll(i, dims=0) for i in range(m)])
                shares = model.source_attention(inputs).double().cpu() * batch.shape[0]
                total = shares if total is None else total + shares
                count += batch.shape[0]
    finally:
        for module, flag in flags:
            module.training = flag
    return total / count
