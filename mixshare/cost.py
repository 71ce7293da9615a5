"""The cost of a prediction: parameters, FLOPs, forward passes and measured time per example.

For any model with ``predict(images [B, C, H, W]) -> logits [M, B, K]`` (a
:class:`mixshare.protocol.MimoModel`, or a :class:`mixshare.ensemble.DeepEnsemble` of them):

* ``parameters``: the number of distinct parameter elements (a tensor shared by two modules counts once);
* ``flops_per_example``: :class:`torch.utils.flop_counter.FlopCounterMode` on one ``predict`` of a batch,
  divided by the batch size. Convention: a multiply-add counts as 2 FLOPs (a ``[B, I] x [I, O]`` matmul
  is ``2 * B * I * O``). FlopCounterMode counts the ops it has formulas for (matmuls, convolutions,
  attention); element-wise ops (norms, activations, additions, the mixing kernels) count 0;
* ``forward_passes``: network passes per prediction: 1 for a MIMO model (its M subnetworks run in
  one pass), the number of member networks for a Deep Ensemble (``model.forward_passes``);
* ``ms_per_example``: wall-clock time of ``predict`` on one batch in eval mode under ``torch.no_grad``
  (CUDA synchronised before and after), after ``warmup`` untimed calls: the median of ``repeats``
  timed calls, divided by the batch size, in milliseconds.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from mixshare.tensor_checks import check_float_tensor


def _check_model(model, name: str = "model") -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "predict", None)):
        raise TypeError(f"{name} must be an nn.Module with predict(images) -> logits [M, B, K] "
                        f"(a mixshare.protocol.MimoModel), got {type(model).__name__}")


def _check_images(images, name: str = "images") -> None:
    check_float_tensor(images, name, "[B, C, H, W] (one batch)")


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements of ``model`` (each distinct tensor once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def forward_passes(model) -> int:
    """Network passes per prediction: ``model.forward_passes`` when the model says (a Deep Ensemble of
    R networks: R), else 1 (a MIMO model's M subnetworks run in one pass)."""
    _check_model(model)
    passes = getattr(model, "forward_passes", 1)
    return _check_count(passes, "model.forward_passes", 1)


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module):
    """Eval mode and no autograd for the block; the model's training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def flops_per_example(model, images: torch.Tensor) -> float:
    """FLOPs of one ``model.predict(images)`` (``images [B, C, H, W]``) divided by B; a multiply-add
    counts 2 (FlopCounterMode's convention; element-wise ops count 0)."""
    _check_model(model)
    _check_images(images)
    counter = FlopCounterMode(display=False)
    with _eval_no_grad(model), counter:
        model.predict(images)
    return counter.get_total_flops() / images.shape[0]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer(model, images: torch.Tensor):
    """A function timing one ``model.predict(images)`` in seconds (CUDA synchronised before and after)."""
    device = images.device

    def timed() -> float:
        _synchronize(device)
        started = time.perf_counter()
        model.predict(images)
        _synchronize(device)
        return time.perf_counter() - started

    return timed


def _time_side_by_side(models: dict, images: torch.Tensor, repeats: int, warmup: int) -> dict:
    """``{name: [seconds of each of the repeats]}``, the models' calls interleaved (repeat r of every
    model before repeat r + 1 of any), so that a change of the machine's load falls on all alike."""
    timers = {name: _timer(model, images) for name, model in models.items()}
    seconds = {name: [] for name in models}
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(_eval_no_grad(model))
        for _ in range(warmup):
            for timed in timers.values():
                timed()
        for _ in range(repeats):
            for name, timed in timers.items():
                seconds[name].append(timed())
    return seconds


def _summary(model, images: torch.Tensor, seconds: list, warmup: int) -> dict:
    batch = images.shape[0]
    median = statistics.median(seconds)
    return {
        "parameters": count_parameters(model),
        "flops_per_example": flops_per_example(model, images),
        "forward_passes": forward_passes(model),
        "ms_per_example": 1000.0 * median / batch,
        "ms_per_batch": 1000.0 * median,
        "batch_size": batch,
        "repeats": len(seconds),
        "warmup": warmup,
        "device": str(images.device),
    }


def prediction_cost(model, images: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """The cost of predicting ``images [B, C, H, W]`` (one batch, on the model's device) with ``model``.

    Returns ``parameters``, ``flops_per_example`` (2 per multiply-add), ``forward_passes``,
    ``ms_per_example`` (median of ``repeats`` timed calls after ``warmup`` untimed ones, / B),
    ``ms_per_batch`` (that median), ``batch_size``, ``repeats``, ``warmup`` and ``device``.
    """
    _check_model(model)
    return side_by_side({"model": model}, images, repeats, warmup)["model"]


def compare_costs(single, mimo, images: torch.Tensor, ensemble_size: Optional[int] = None,
                  repeats: int = 20, warmup: int = 3) -> dict:
    """Single network vs MIMO vs Deep Ensemble, measured side by side on ``images [B, C, H, W]``.

    ``single``: a network of one subnetwork (``num_subnets == 1``); ``mimo``: a MIMO model (M
    subnetworks in one pass); the Deep Ensemble is ``ensemble_size`` (default: ``mimo.num_subnets``)
    copies of ``single`` run one after another (its cost does not depend on the weights' values).
    Returns ``{"single": cost, "mimo": cost, "deep_ensemble": cost}``, each as :func:`prediction_cost`,
    with the three models' timed calls interleaved.
    """
    from mixshare.ensemble import DeepEnsemble

    _check_model(single, "single")
    _check_model(mimo, "mimo")
    if getattr(single, "num_subnets", None) != 1:
        raise ValueError(f"single must have num_subnets == 1, got {getattr(single, 'num_subnets', None)!r}")
    size = ensemble_size if ensemble_size is not None else getattr(mimo, "num_subnets", None)
    size = _check_count(size, "ensemble_size", 1)
    ensemble = DeepEnsemble([copy.deepcopy(single) for _ in range(size)])
    return side_by_side({"single": single, "mimo": mimo, "deep_ensemble": ensemble}, images, repeats, warmup)


def side_by_side(models: dict, images: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """The cost of each of ``models`` (``{name: model}``, each with ``predict``) on ``images [B, C, H, W]``,
    their timed calls interleaved (repeat r of every model before repeat r + 1 of any), so that a change
    of the machine's load falls on all alike. Returns ``{name: cost}``, each as :func:`prediction_cost`."""
    if not isinstance(models, dict) or not models:
        raise ValueError(f"models must be a non-empty dict {{name: model}}, got {models!r}")
    for name, model in models.items():
        _check_model(model, f"models[{name!r}]")
    _check_images(images)
    repeats, warmup = _check_count(repeats, "repeats", 1), _check_count(warmup, "warmup", 0)
    seconds = _time_side_by_side(models, images, repeats, warmup)
    return {name: _summary(model, images, seconds[name], warmup) for name, model in models.items()}
