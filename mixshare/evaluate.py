"""Test-time evaluation and the end-of-run report (metrics, share rates, plots)."""

from __future__ import annotations

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


def final_report(model, dataset, config: Config, history: list, out_dir: Optional[str]) -> dict:
    """metrics.json content; writes the plots into ``out_dir`` when given."""
    report = evaluate_model(model, dataset.test_images, dataset.test_labels, config)
    report.update(analysis.share_rates(model))
    if hasattr(model, "source_attention") and model.num_subnets > 1:
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
        names = model.stage_names() if hasattr(model, "stage_names") else None
        # A ViT's attributed blocks give the M class tokens side by side: one colour per subnetwork.
        groups = [v.shape[1] // model.num_features if v.shape[1] > model.num_features else 1 for v in variances]
        paths.append(plots.plot_conditional_variance(
            variances, os.path.join(out_dir, "conditional_variance.png"), stage_names=names,
            channel_groups=groups if names else None))
    return paths
