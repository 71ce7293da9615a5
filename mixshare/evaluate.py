"""Test-time evaluation and the end-of-run report (metrics, share rates, plots)."""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from mixshare import analysis, metrics, plots
from mixshare.config import Config


@torch.no_grad()
def collect_logits(model, images: torch.Tensor, batch_size: int = 500, bf16: bool = False) -> torch.Tensor:
    """Test-time logits [M, N, K] (every encoder sees the same image; eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and batch.is_cuda):
                out.append(model.predict(batch).float())
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1)


def evaluate_model(model, images, labels, config: Config) -> dict:
    """Accuracy, calibration and diversity of the ensemble and its subnetworks."""
    logits = collect_logits(model, images, config.eval_batch_size, config.bf16)
    return metrics.evaluate_logits(logits, labels, ensemble=config.ensemble)


def best_test_epoch(history: list) -> dict:
    """The epoch with the highest test accuracy in ``history``, as the official MixMo code reports it.

    ``history``: rows with ``epoch`` and ``test_accuracy`` (%, the ensemble's,
    as :func:`mixshare.train.train` records them after each epoch). Returns
    ``{"best_test_epoch": int, "best_test_accuracy": float}``: the maximum of
    ``test_accuracy`` and its epoch, a tie going to the LATER epoch (the
    official code keeps a new best when ``accuracy >= best``). Rows whose
    ``test_accuracy`` is missing, None or nan are skipped; both values are
    None when no row is left (e.g. an empty history).

    This selects on the test set, so it is an optimistic figure, given only to
    compare with the papers' numbers like for like; the project's headline
    ``ensemble_accuracy`` is that of the last epoch.
    """
    best_epoch, best_accuracy = None, None
    for row in history:
        accuracy = row.get("test_accuracy")
        if accuracy is None or math.isnan(float(accuracy)):
            continue
        if best_accuracy is None or float(accuracy) >= best_accuracy:
            best_epoch, best_accuracy = int(row["epoch"]), float(accuracy)
    return {"best_test_epoch": best_epoch, "best_test_accuracy": best_accuracy}


def final_report(model, dataset, config: Config, history: list, out_dir: Optional[str]) -> dict:
    """metrics.json content; writes the plots into ``out_dir`` when given.

    Keys: those of :func:`mixshare.metrics.evaluate_logits` on the test set
    with the model as it is after the LAST epoch (``ensemble_accuracy`` is the
    headline figure: no selection on the test set), those of
    :func:`mixshare.analysis.share_rates`, ``source_attention`` (MixViT only),
    the run's ``method``, ``model``, ``dataset``, ``seed``, ``epochs`` and
    ``num_subnets``, and, from ``history`` (rows with ``epoch``, ``lr``,
    ``train_loss``, ``train_accuracy``, ``test_accuracy``, ``test_nll``,
    ``seconds``), ``best_test_epoch`` and ``best_test_accuracy``
    (:func:`best_test_epoch`): the epoch of highest test ensemble accuracy,
    ties to the later epoch, and that accuracy (%). This is selection on the
    test set, the official MixMo code's convention, reported beside the
    last-epoch figure only to compare with the papers' numbers like for like.
    """
    report = evaluate_model(model, dataset.test_images, dataset.test_labels, config)
    report.update(best_test_epoch(history))
    report.update(analysis.share_rates(model))
    if model.has_source_attention and model.num_subnets > 1:
        report["source_attention"] = analysis.source_attention(model, dataset.test_images[:256]).tolist()
    report.update(
        method=config.method, model=config.model, dataset=config.dataset, seed=config.seed, epochs=config.epochs,
        num_subnets=config.num_subnets,
    )
    if out_dir is not None and config.plots:
        write_plots(model, dataset, history, out_dir)
    return report


def write_plots(model, dataset, history: list, out_dir: str, num_images: int = 256) -> list[str]:
    """Feature-sharing profiles, conditional variance and training curves (PNG).

    CNNs: encoder and classifier profiles, conditional variance per stage.
    ViTs (no per-subnetwork encoders): classifier profiles (the heads' use of
    the D class-token features) and conditional variance per token channel at
    the end of the model's selected blocks, the class tokens coloured by
    subnetwork.
    """
    paths = []
    if history:
        paths.append(plots.plot_training_curves(history, os.path.join(out_dir, "training_curves.png")))
    if model.num_subnets > 1:
        if analysis.has_input_encoders(model):
            paths.append(plots.plot_feature_profiles(
                analysis.encoder_profiles(model), os.path.join(out_dir, "encoder_profiles.png"), "encoder kernels"))
        paths.append(plots.plot_feature_profiles(
            analysis.classifier_profiles(model), os.path.join(out_dir, "classifier_profiles.png"), "classifier columns"))
        variances = analysis.conditional_variance(model, dataset.test_images[:num_images])
        names = model.stage_names()
        # A ViT's attributed blocks give the M class tokens side by side: one colour per subnetwork.
        groups = [v.shape[1] // model.num_features if v.shape[1] > model.num_features else 1 for v in variances]
        paths.append(plots.plot_conditional_variance(
            variances, os.path.join(out_dir, "conditional_variance.png"), stage_names=names,
            channel_groups=groups if names else None))
    return paths
