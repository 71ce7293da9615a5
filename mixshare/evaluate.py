"""Test-time evaluation and the end-of-run report (metrics, share rates, plots)."""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from mixshare import analysis, metrics, plots
from mixshare.config import Config

#: metrics.json's format: 2 holds every rate in percent (ECE too; format 1, unmarked, had ECE as a fraction).
METRICS_FORMAT = 2


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


def evaluate_model(model, images, labels, config: Config, logits: Optional[torch.Tensor] = None) -> dict:
    """Accuracy, calibration and diversity of the ensemble and its subnetworks
    (:func:`mixshare.metrics.evaluate_logits`); ``logits``: the model's logits on ``images`` if already at hand."""
    if logits is None:
        logits = collect_logits(model, images, config.eval_batch_size, config.bf16)
    return metrics.evaluate_logits(logits, labels, ensemble=config.ensemble)


def history_metrics(test: dict) -> dict:
    """The test columns of a history row from :func:`evaluate_model`'s result: ``test_accuracy``,
    ``test_nll`` (the ensemble's), then ``test_accuracy_sub<i>`` and ``test_nll_sub<i>`` per subnetwork."""
    row = {"test_accuracy": test["ensemble_accuracy"], "test_nll": test["nll"]}
    row.update({f"test_accuracy_sub{i}": v for i, v in enumerate(test["subnetwork_accuracy"])})
    row.update({f"test_nll_sub{i}": v for i, v in enumerate(test["subnetwork_nll"])})
    return row


def fit_calibration(model, dataset, config: Config) -> dict:
    """The temperature fitted on the training images withheld for calibration (``dataset.calibration_images``,
    see :func:`mixshare.data.hold_out`): ``{"temperature": T, "calibration_images": n}``.

    Without withheld images (``calibration_split`` 0) both are None: the temperature is never fitted on the
    test set, nor on images the model was trained on.
    """
    images = getattr(dataset, "calibration_images", None)
    labels = getattr(dataset, "calibration_labels", None)
    if images is None or labels is None or images.shape[0] == 0:
        return {"temperature": None, "calibration_images": None}
    logits = collect_logits(model, images, config.eval_batch_size, config.bf16)
    temperature = metrics.fit_temperature(logits, labels, ensemble=config.ensemble)
    return {"temperature": temperature, "calibration_images": int(images.shape[0])}


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, calibration: dict, config: Config) -> dict:
    """metrics.json's calibration keys: ``calibration_split``, ``calibration_images`` and ``temperature``
    (:func:`fit_calibration`), and ``nll_ts``, ``ece_ts``, ``brier_ts`` of the test ``logits`` at that
    temperature (:func:`mixshare.metrics.calibrated_metrics`; None without a temperature)."""
    report = {"calibration_split": config.calibration_split, **calibration}
    if calibration.get("temperature") is None:
        report.update(nll_ts=None, ece_ts=None, brier_ts=None)
    else:
        report.update(metrics.calibrated_metrics(logits, labels, calibration["temperature"], config.ensemble))
    return report


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
    headline figure: no selection on the test set), the temperature-scaling keys
    of :func:`calibration_report` (``temperature`` fitted on the training images
    withheld by ``calibration_split``; ``nll_ts``, ``ece_ts``, ``brier_ts`` on
    the test set at that temperature; None when no image was withheld), those of
    :func:`mixshare.analysis.share_rates`, ``source_attention`` (MixViT only),
    the run's ``method``, ``model``, ``dataset``, ``seed``, ``epochs`` and
    ``num_subnets``, and, from ``history`` (rows with ``epoch``, ``lr``,
    ``train_loss``, ``train_accuracy``, ``test_accuracy``, ``test_nll``, the
    per-subnetwork columns of :func:`history_metrics` and ``seconds``),
    ``best_test_epoch`` and ``best_test_accuracy`` (:func:`best_test_epoch`):
    the epoch of highest test ensemble accuracy, ties to the later epoch, and
    that accuracy (%). This is selection on the test set, the official MixMo
    code's convention, reported beside the last-epoch figure only to compare
    with the papers' numbers like for like.
    """
    logits = collect_logits(model, dataset.test_images, config.eval_batch_size, config.bf16)
    report = evaluate_model(model, dataset.test_images, dataset.test_labels, config, logits=logits)
    calibration = fit_calibration(model, dataset, config)
    report.update(calibration_report(logits, dataset.test_labels, calibration, config))
    report.update(best_test_epoch(history))
    report.update(analysis.share_rates(model))
    if model.has_source_attention and model.num_subnets > 1:
        report["source_attention"] = analysis.source_attention(model, dataset.test_images[:256]).tolist()
    report.update(
        method=config.method, model=config.model, dataset=config.dataset, seed=config.seed, epochs=config.epochs,
        num_subnets=config.num_subnets, metrics_format=METRICS_FORMAT,
    )
    if out_dir is not None and config.plots:
        write_plots(model, dataset, history, out_dir, config=config, logits=logits,
                    temperature=calibration["temperature"])
    return report


def write_plots(model, dataset, history: list, out_dir: str, num_images: int = 256, config: Optional[Config] = None,
                logits: Optional[torch.Tensor] = None, temperature: Optional[float] = None) -> list[str]:
    """Training curves, reliability diagram, feature-sharing profiles and conditional variance (PNG).

    Every title starts with the run's method and seed (from ``config``). The
    reliability diagram (``reliability.png``) shows the test predictions
    (``logits``, collected when None) and, when a temperature is known
    (``temperature``, or fitted here on ``dataset``'s withheld calibration
    images), the temperature-scaled ones beside them.
    CNNs: encoder and classifier profiles, conditional variance per stage.
    ViTs (no per-subnetwork encoders): classifier profiles (the heads' use of
    the D class-token features) and conditional variance per token channel at
    the end of the model's selected blocks, the class tokens coloured by
    subnetwork.
    """
    config = config if config is not None else Config()
    label = plots.run_label(config.method, config.seed)

    def titled(text: str) -> str:
        return f"{label}: {text}" if label else text

    paths = []
    if history:
        paths.append(plots.plot_training_curves(history, os.path.join(out_dir, "training_curves.png"),
                                                title=titled("training curves")))
    if logits is None:
        logits = collect_logits(model, dataset.test_images, config.eval_batch_size, config.bf16)
    if temperature is None:
        temperature = fit_calibration(model, dataset, config)["temperature"]
    labels = dataset.test_labels
    probs = metrics.ensemble_probs(logits, config.ensemble)
    scaled = scaled_nll = None
    if temperature is not None:
        scaled_probs = metrics.ensemble_probs(logits, config.ensemble, temperature)
        scaled, scaled_nll = metrics.reliability_bins(scaled_probs, labels), metrics.nll(scaled_probs, labels)
    paths.append(plots.plot_reliability(
        metrics.reliability_bins(probs, labels), os.path.join(out_dir, "reliability.png"),
        title=titled("reliability on the test set"), scaled=scaled, temperature=temperature,
        nll=metrics.nll(probs, labels), scaled_nll=scaled_nll))
    if model.num_subnets > 1:
        if analysis.has_input_encoders(model):
            paths.append(plots.plot_feature_profiles(
                analysis.encoder_profiles(model), os.path.join(out_dir, "encoder_profiles.png"),
                titled("encoder kernels")))
        paths.append(plots.plot_feature_profiles(
            analysis.classifier_profiles(model), os.path.join(out_dir, "classifier_profiles.png"),
            titled("classifier columns")))
        variances = analysis.conditional_variance(model, dataset.test_images[:num_images])
        names = model.stage_names()
        # A ViT's attributed blocks give the M class tokens side by side: one colour per subnetwork.
        groups = [v.shape[1] // model.num_features if v.shape[1] > model.num_features else 1 for v in variances]
        paths.append(plots.plot_conditional_variance(
            variances, os.path.join(out_dir, "conditional_variance.png"), title=titled("conditional variance"),
            stage_names=names, channel_groups=groups if names else None))
    return paths
