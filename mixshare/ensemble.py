"""The Deep Ensemble of independently trained runs (MIMO's reference row).

Each run is a ``checkpoint.pt`` of ``mixshare train`` (any method, any M). A run's prediction is its
own ensemble (its M subnetworks combined by its config's ``ensemble`` rule), written as logits
``[N, K]``: the mean logits (rule ``logits``) or the log of the mean softmax (rule ``probs``; its
softmax is that mean). The R runs' logits stacked ``[R, N, K]`` are the ensemble's members for
:func:`mixshare.metrics.evaluate_logits`, so ``subnetwork_accuracy``, ``disagreement``, ``kl_diversity``
and ``ratio_of_errors`` are between runs, and the ensemble is combined across runs by ``ensemble``
(default ``probs``: the mean of the runs' softmaxes, as Deep Ensembles and MIMO's tables average).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
import torch.nn as nn

from mixshare import config as cfg
from mixshare import cost, files, metrics

#: Config keys that, with ``dataset``, define a synthetic run's test set (the images are drawn from ``seed``).
SYNTHETIC_DATA_KEYS = ("seed", "synthetic_train", "synthetic_test", "synthetic_classes", "synthetic_size")


class DeepEnsemble(nn.Module):
    """R networks run one after another: ``predict(images [B, C, H, W])`` -> their logits
    concatenated ``[sum of their M, B, K]``; ``forward_passes`` = R."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("members must hold at least one network")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module) or not callable(getattr(member, "predict", None)):
                raise TypeError(f"members[{i}] must be an nn.Module with predict(images), got {type(member).__name__}")
        self.members = nn.ModuleList(members)
        self.num_subnets = sum(int(getattr(m, "num_subnets", 1)) for m in members)
        self.forward_passes = sum(cost.forward_passes(m) for m in members)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> logits [sum of the members' M, B, K]."""
        return torch.cat([member.predict(images) for member in self.members], dim=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The same as :meth:`predict`."""
        return self.predict(images)


def run_logits(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """One run's prediction as logits: ``logits [M, N, K]`` -> ``[N, K]`` float64 whose softmax is
    ``metrics.ensemble_probs(logits, rule)`` (mean logits; or log of the mean softmax, in the log domain)."""
    metrics.ensemble_probs(logits[:, :1], rule)  # checks the shape and the rule
    z = logits.detach().double()
    if rule == "logits":
        return z.mean(0)
    return torch.logsumexp(torch.log_softmax(z, dim=-1), dim=0) - math.log(z.shape[0])


def checkpoint_path(path: str) -> str:
    """``path`` itself when it is a file, ``path/checkpoint.pt`` for a run folder; FileNotFoundError otherwise."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        inside = os.path.join(path, files.CHECKPOINT)
        if os.path.isfile(inside):
            return inside
        raise FileNotFoundError(f"{path} holds no {files.CHECKPOINT}: not a mixshare run folder")
    raise FileNotFoundError(f"no run folder or checkpoint at {path}")


def _check_same_data(paths: list, states: list, configs: list) -> None:
    """All runs of one dataset, class count and (synthetic) test set; the first differing run is named."""
    first, first_config = states[0], configs[0]
    for path, state, config in zip(paths[1:], states[1:], configs[1:]):
        if config.dataset != first_config.dataset:
            raise ValueError(f"{path} is a run on {config.dataset}, {paths[0]} one on {first_config.dataset}: "
                             f"an ensemble's runs must share the dataset")
        if int(state["num_classes"]) != int(first["num_classes"]):
            raise ValueError(f"{path} has {int(state['num_classes'])} classes, {paths[0]} "
                             f"{int(first['num_classes'])}: an ensemble's runs must share the classes")
        if config.dataset == "synthetic":
            differing = [k for k in SYNTHETIC_DATA_KEYS if getattr(config, k) != getattr(first_config, k)]
            if differing:
                values = ", ".join(f"{k} {getattr(config, k)!r} vs {getattr(first_config, k)!r}" for k in differing)
                raise ValueError(f"{path} is a run on another synthetic test set than {paths[0]} ({values}); "
                                 f"the synthetic images are drawn from {', '.join(SYNTHETIC_DATA_KEYS)}")


def load_runs(paths: Sequence[str], device=None) -> tuple[list, list, list, torch.device]:
    """The runs at ``paths`` (run folders or checkpoints; at least 2, distinct), checked to share
    their data: ``(checkpoint paths, models in eval mode on the device, configs, device)``."""
    from mixshare.models import model_from_config
    from mixshare.runtime import resolve_device

    if isinstance(paths, (str, bytes)) or len(paths) < 2:
        raise ValueError(f"paths must name at least 2 runs, got {paths!r}")
    found = [checkpoint_path(str(p)) for p in paths]
    seen = {}
    for original, path in zip(paths, found):
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"{original} and {seen[real]} are the same run: an ensemble's runs are distinct")
        seen[real] = original
    states = [files.load_checkpoint(p) for p in found]
    configs = [cfg.apply(cfg.Config(), s["config"], p) for s, p in zip(states, found)]
    _check_same_data(found, states, configs)
    device = resolve_device(device or "auto")
    models = []
    for path, state, config in zip(found, states, configs):
        model = model_from_config(config, int(state["num_classes"]))
        files.load_weights(model, state["model"], path)
        models.append(model.to(device).eval())
    return found, models, configs, device


def evaluate_ensemble(paths: Sequence[str], device=None, data_dir: Optional[str] = None, ensemble: str = "probs",
                      timing_repeats: int = 10, timing_batch: int = 100, shift: bool = False,
                      progress: bool = False) -> dict:
    """The Deep Ensemble of the runs at ``paths`` on their dataset's test split.

    Returns the keys of :func:`mixshare.metrics.evaluate_logits` of the runs' logits ``[R, N, K]``
    (:func:`run_logits`) combined by ``ensemble``; ``ensemble``, ``dataset``, ``num_classes``,
    ``test_images``; ``runs`` (per run: ``checkpoint``, ``method``, ``model``, ``seed``, ``num_subnets``);
    and the cost (:mod:`mixshare.cost`) of the R networks run one after another: ``parameters`` and
    ``flops_per_example`` summed, ``forward_passes`` (R), ``ms_per_example`` (median of
    ``timing_repeats`` on the first ``timing_batch`` test images; None when ``timing_repeats`` is 0),
    ``timing_batch_size``. ``shift``: also the keys of :func:`mixshare.evaluate.shift_report` of the
    ensemble (every member's heads combined by ``ensemble``; the first run's seed draws the corrupted
    sets), ``progress`` a line per corruption.
    """
    from mixshare.data import load_data
    from mixshare.evaluate import collect_logits

    if ensemble not in metrics.ENSEMBLE_MODES:
        raise ValueError(f"ensemble must be one of {', '.join(metrics.ENSEMBLE_MODES)}, got {ensemble!r}")
    for name, value, least in (("timing_repeats", timing_repeats, 0), ("timing_batch", timing_batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    found, models, configs, device = load_runs(paths, device)
    data_config = cfg.apply(configs[0], {"data_dir": data_dir}, "data_dir") if data_dir else configs[0]
    dataset = load_data(data_config).to(device)
    raw = [collect_logits(model, dataset.test_images, config.eval_batch_size, config.bf16) for model, config in
           zip(models, configs)]  # each run's [M_r, N, K]
    stacked = torch.stack([run_logits(z, config.ensemble) for z, config in zip(raw, configs)])  # [R, N, K]
    report = metrics.evaluate_logits(stacked, dataset.test_labels, ensemble=ensemble)
    report.update(
        ensemble=ensemble, dataset=configs[0].dataset, num_classes=int(stacked.shape[2]),
        test_images=int(stacked.shape[1]),
        runs=[{"checkpoint": path, "method": c.method, "model": c.model, "seed": c.seed, "num_subnets": c.num_subnets}
              for path, c in zip(found, configs)],
    )
    deep = DeepEnsemble(models)
    if shift:  # shift_report also measures the cost (parameters, FLOPs, passes, ms per example)
        from mixshare.evaluate import shift_report

        shifted = shift_report(deep, dataset, cfg.apply(data_config, {"ensemble": ensemble}, "ensemble"),
                               logits=torch.cat(raw), progress=progress, cost_repeats=max(1, timing_repeats))
        report.update({k: v for k, v in shifted.items() if k not in report})
        report["timing_batch_size"] = shifted["cost_batch_size"]
    else:
        batch = dataset.test_images[:timing_batch]
        report.update(parameters=cost.count_parameters(deep), flops_per_example=cost.flops_per_example(deep, batch),
                      forward_passes=cost.forward_passes(deep), timing_batch_size=int(batch.shape[0]),
                      ms_per_example=None)
        if timing_repeats:
            report["ms_per_example"] = cost.prediction_cost(deep, batch, repeats=timing_repeats)["ms_per_example"]
    report["device"] = str(device)
    return report
