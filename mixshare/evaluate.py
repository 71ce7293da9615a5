"""Test-time evaluation and the end-of-run report (metrics, share rates, plots)."""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch

from mixshare import analysis, metrics, plots
from mixshare.config import Config
from mixshare.runtime import bf16_autocast
from mixshare.seeds import stream_seed

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
            with bf16_autocast(bf16, batch.device):
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
    with the papers' numbers like for like. With ``config.shift_eval``, the keys
    of :func:`shift_report` too (corruptions, OOD detection, ms_per_example).
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
    if getattr(config, "shift_eval", False):
        report.update(shift_report(model, dataset, config, logits=logits, progress=True))
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


# --------------------------------------------------------------------------- under shift (corruptions, OOD, cost)

#: The images of the OOD stand-in: the two photographs scikit-learn ships (``load_sample_images``).
OOD_PHOTOGRAPHS = "scikit-learn sample photographs"
#: Test images per corrupted set by default: a seeded subset on the embedded datasets (CPU-sized:
#: 75 sets of the 450 digits would take ~30 s of a WRN-10-1 on 2 cores), every image otherwise.
SHIFT_IMAGES = {"digits": 150, "synthetic": 150}
#: Test images of the timed prediction (ms_per_example).
COST_IMAGES = 100


def pixel_space(dataset) -> tuple[torch.Tensor, tuple, tuple]:
    """The test images in pixel space, for :mod:`mixshare.corruptions`: ``(pixels [N, C, H, W] in
    [0, 1], mean, std)`` with ``(pixels - mean) / std`` per channel equal to ``dataset.test_images``.

    The images are stored normalised (``(x - dataset.mean) / dataset.std``, :mod:`mixshare.data`);
    ``x`` is recovered. Digits and CIFAR lie in [0, 1] (up to rounding, clamped). Images outside it
    (the synthetic data, Gaussian values) are mapped affinely onto [0, 1] by the smallest range
    ``[lo, hi]`` holding ``[0, 1]`` and every test value; the ``mean`` and ``std`` returned fold
    that map in (``(mean - lo) / (hi - lo)``, ``std / (hi - lo)``), so the model still sees its own
    input scale."""
    images = dataset.test_images
    shape = (1, -1, 1, 1)
    mean = torch.tensor(dataset.mean, dtype=torch.float32, device=images.device).view(shape)
    std = torch.tensor(dataset.std, dtype=torch.float32, device=images.device).view(shape)
    x = images.float() * std + mean
    lo, hi = float(x.min()), float(x.max())
    if lo >= -1e-4 and hi <= 1 + 1e-4:
        return x.clamp_(0.0, 1.0), tuple(dataset.mean), tuple(dataset.std)
    lo, hi = min(0.0, lo), max(1.0, hi)
    span = hi - lo
    return ((x - lo) / span).clamp_(0.0, 1.0), tuple((m - lo) / span for m in dataset.mean), \
        tuple(s / span for s in dataset.std)


def _is_gray(pixels: torch.Tensor) -> bool:
    """Whether ``pixels [N, C, H, W]`` has one channel, or C equal channels (the digits' grey replicated)."""
    return pixels.shape[1] == 1 or bool((pixels == pixels[:, :1]).all())


def photograph_patches(n: int, channels: int, size: tuple, seed: int = 0, gray: bool = False) -> torch.Tensor:
    """The OOD stand-in of the embedded datasets: ``n`` patches of ``size = (H, W)`` pixels cut at
    random (a CPU generator seeded ``seed``) from the two photographs ``sklearn.datasets.
    load_sample_images`` returns (china.jpg, flower.jpg, 427 x 640, no download), alternating between
    them. Float32 ``[n, channels, H, W]`` in [0, 1]; ``gray`` (or ``channels`` 1): the ITU-R 601 luma
    replicated to ``channels``."""
    from sklearn.datasets import load_sample_images

    h, w = int(size[0]), int(size[1])
    photos = [torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 for img in load_sample_images().images]
    if any(p.shape[1] < h or p.shape[2] < w for p in photos):
        raise ValueError(f"patches of {h} x {w} do not fit in the {tuple(photos[0].shape[1:])} photographs")
    gen = torch.Generator().manual_seed(int(seed))
    tops = torch.randint(0, photos[0].shape[1] - h + 1, (n,), generator=gen).tolist()
    lefts = torch.randint(0, photos[0].shape[2] - w + 1, (n,), generator=gen).tolist()
    patches = torch.stack([photos[i % len(photos)][:, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(tops, lefts))])
    if gray or channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        patches = (patches * luma).sum(1, keepdim=True).expand(-1, channels, -1, -1)
    elif channels != 3:
        raise ValueError(f"photograph patches have 1 or 3 channels, got channels={channels}")
    return patches.contiguous()


def _subset(n_total: int, n: int, seed: int) -> Optional[torch.Tensor]:
    if n >= n_total:
        return None
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def ood_set(dataset, config: Config, pixels: Optional[torch.Tensor] = None) -> tuple[str, torch.Tensor]:
    """``(name, pixels [N_out, C, H, W] in [0, 1])``: the out-of-distribution set of ``dataset``, as many
    images as its test set (fewer when the OOD set has fewer), on its device.

    CIFAR-100: CIFAR-10's test images when ``config.data_dir`` holds them, else SVHN's
    ``test_32x32.mat`` there (:func:`mixshare.shift.read_svhn_mat`); CIFAR-10: CIFAR-100's test
    images, else SVHN. Otherwise (and for the digits and the synthetic data) patches of the
    scikit-learn photographs (:func:`photograph_patches`, grey when the dataset is grey). Subsets and
    patches are drawn from ``stream_seed(config.seed, "ood")`` (:mod:`mixshare.seeds`)."""
    from pathlib import Path

    from mixshare import data as mdata, shift

    if pixels is None:
        pixels = pixel_space(dataset)[0]
    n, (c, h, w) = pixels.shape[0], pixels.shape[1:]
    seed = stream_seed(int(config.seed), "ood")
    name, images = None, None
    if dataset.name in ("cifar10", "cifar100") and config.data_dir:
        other = "cifar10" if dataset.name == "cifar100" else "cifar100"
        svhn = Path(config.data_dir) / "test_32x32.mat"
        try:
            raw, _ = mdata.read_cifar_test(config.data_dir, other)
            name, images = f"{other} test", raw
        except (mdata.DatasetError, OSError):
            if svhn.is_file():
                name, images = "svhn test", shift.read_svhn_mat(svhn)[0]
    if images is None:
        return (OOD_PHOTOGRAPHS, photograph_patches(n, c, (h, w), seed, gray=_is_gray(pixels)).to(pixels.device))
    keep = _subset(images.shape[0], n, seed)
    if keep is not None:
        images = images[keep]
    return name, (images.float() / 255).to(pixels.device)


def _percent(values: dict) -> dict:
    return {k: 100.0 * v for k, v in values.items()}


def _corruption_progress(names: list, severities: list):
    """A progress callable for :func:`mixshare.shift.evaluate_corruptions`: one stderr line per
    corruption, once its last severity is done."""
    import sys

    rows: list = []

    def report(done, total, key, row):
        rows.append(row["accuracy"])
        if len(rows) == len(severities):
            corruption = key.rpartition("/")[0]
            index = names.index(corruption) + 1
            accuracies = " ".join(f"{a:.1f}" for a in rows)
            print(f"[shift {index}/{len(names)}] {corruption}: accuracy (%) by severity {accuracies}",
                  file=sys.stderr, flush=True)
            rows.clear()

    return report


def released_shift_report(model, dataset, config: Config, directory: str, *, severities=None, corruptions=None,
                          progress: bool = False, logits: Optional[torch.Tensor] = None) -> dict:
    """:func:`shift_report`'s corruption keys (``cAcc``, ``cNLL``, ``cECE``, their per-subnetwork lists,
    ``shift_by_severity``, ``shift_by_corruption``, ``shift_corruptions``, ``shift_severities``,
    ``shift_images``) from the released CIFAR-10-C / CIFAR-100-C files in ``directory``
    (:func:`mixshare.shift.evaluate_cifar_c`) instead of sets corrupted here; ``shift_source`` names the
    folder. Severity "0" is the clean test set (``logits``: the model's clean test logits if already
    at hand). Only for a cifar10 / cifar100 run."""
    from mixshare import corruptions as mcorruptions, shift

    if config.dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"the released corrupted sets are CIFAR-10-C / CIFAR-100-C; this is a {config.dataset} run")
    names = list(mcorruptions.CORRUPTIONS if corruptions is None else corruptions)
    severities = [int(s) for s in (mcorruptions.SEVERITIES if severities is None else severities)]
    _, mean, std = pixel_space(dataset)
    result = shift.evaluate_cifar_c(model, directory, mean, std, names=names, severities=severities,
                                    num_classes=dataset.num_classes, batch_size=config.eval_batch_size,
                                    ensemble=config.ensemble, progress=progress)
    if logits is None:
        logits = collect_logits(model, dataset.test_images, config.eval_batch_size, config.bf16)
    clean = shift.set_metrics(logits, dataset.test_labels, config.ensemble)
    report = {k: result[k] for k in ("cAcc", "cNLL", "cECE", "subnetwork_cAcc", "subnetwork_cNLL", "subnetwork_cECE")}
    report["shift_by_severity"] = {"0": {k: clean[k] for k in ("accuracy", "nll", "ece")},
                                   **{str(s): row for s, row in result["by_severity"].items()}}
    report.update(shift_by_corruption=result["by_corruption"], shift_corruptions=names, shift_severities=severities,
                  shift_images=int(shift.read_cifar_c_labels(directory).shape[0]), shift_source=str(directory))
    return report


def shift_report(model, dataset, config: Config, *, severities=None, corruptions=None, seed: Optional[int] = None,
                 max_images: Optional[int] = -1, cost_repeats: int = 5, progress: bool = False,
                 logits: Optional[torch.Tensor] = None) -> dict:
    """metrics.json's keys under distribution shift, from the test set corrupted on the model's device,
    an OOD set and a timed prediction. Units as metrics.json's: rates in percent, NLL in nats.

    * ``cAcc`` (%), ``cNLL``, ``cECE`` (%): the ensemble's accuracy, NLL and ECE averaged over every
      corruption x severity set (each set weighs the same; MIMO's Tables 1-2), from
      :func:`mixshare.shift.evaluate_corruptions` on the test images in pixel space
      (:func:`pixel_space`), each set made with a generator seeded ``seed`` (default: the run's);
      ``subnetwork_cAcc`` ... (lists of M);
    * ``shift_by_severity``: ``{"0": clean, "1": ..., "5": ...}`` of ``{accuracy, nll, ece}`` (severity
      "0": the same test images uncorrupted; the others: means over the corruptions);
      ``shift_by_corruption`` likewise per corruption (mean over severities);
    * ``shift_corruptions``, ``shift_severities``, ``shift_images`` (test images per set: a subset of
      ``max_images`` drawn from ``stream_seed(seed, "ood")``; -1: :data:`SHIFT_IMAGES` of the dataset,
      all for CIFAR; None or 0: all), ``shift_seed``;
    * ``ood_dataset`` (:func:`ood_set`), ``ood_images``, and ``ood_auroc``, ``ood_aupr_in``,
      ``ood_aupr_out``, ``ood_fpr95`` (%) for the maximum-softmax score, ``ood_scores``: the four for
      every score of :func:`mixshare.metrics.uncertainty_scores` (msp, entropy, mutual_information);
    * ``ms_per_example``, ``parameters``, ``flops_per_example``, ``forward_passes`` of
      :func:`mixshare.cost.prediction_cost` on a batch of up to :data:`COST_IMAGES` test images
      (median of ``cost_repeats`` timed calls after 1 warm-up), ``cost_batch_size``.

    ``severities`` (default 1..5), ``corruptions`` (default all 15 of
    :data:`mixshare.corruptions.CORRUPTIONS`); ``progress``: one stderr line per corruption;
    ``logits``: the model's clean test logits if already at hand.
    """
    from mixshare import corruptions as mcorruptions, cost, shift

    names = list(mcorruptions.CORRUPTIONS if corruptions is None else corruptions)
    severities = [int(s) for s in (mcorruptions.SEVERITIES if severities is None else severities)]
    seed = int(config.seed if seed is None else seed)
    pixels, mean, std = pixel_space(dataset)
    labels = dataset.test_labels
    if logits is None:
        logits = collect_logits(model, dataset.test_images, config.eval_batch_size, config.bf16)
    if max_images == -1:
        max_images = SHIFT_IMAGES.get(dataset.name)
    keep = _subset(pixels.shape[0], int(max_images), stream_seed(seed, "ood")) if max_images else None
    shifted_pixels, shifted_labels, clean_logits = pixels, labels, logits
    if keep is not None:
        keep = keep.to(pixels.device)
        shifted_pixels, shifted_labels, clean_logits = pixels[keep], labels[keep], logits[:, keep]
    clean = shift.set_metrics(clean_logits, shifted_labels, config.ensemble)
    report: dict = {}
    if names and severities:
        result = shift.evaluate_corruptions(
            model, shifted_pixels, shifted_labels, mean, std, names=names, severities=severities, seed=seed,
            batch_size=config.eval_batch_size, ensemble=config.ensemble,
            progress=_corruption_progress(names, severities) if progress else False)
        report.update({k: result[k] for k in ("cAcc", "cNLL", "cECE", "subnetwork_cAcc", "subnetwork_cNLL",
                                              "subnetwork_cECE")})
        by_severity = {str(s): row for s, row in result["by_severity"].items()}
        by_corruption = result["by_corruption"]
    else:
        by_severity, by_corruption = {}, {}
    report["shift_by_severity"] = {"0": {k: clean[k] for k in ("accuracy", "nll", "ece")}, **by_severity}
    report["shift_by_corruption"] = by_corruption
    report.update(shift_corruptions=names, shift_severities=severities, shift_images=int(shifted_pixels.shape[0]),
                  shift_seed=seed)

    ood_name, ood_pixels = ood_set(dataset, config, pixels)
    ood_logits = collect_logits(model, shift.to_model_input(ood_pixels, mean, std), config.eval_batch_size,
                                config.bf16)
    scores = {name: _percent(values) for name, values in metrics.ood_metrics(logits, ood_logits,
                                                                            config.ensemble).items()}
    report.update(ood_dataset=ood_name, ood_images=int(ood_pixels.shape[0]),
                  **{f"ood_{k}": v for k, v in scores["msp"].items()}, ood_scores=scores)

    batch = dataset.test_images[:COST_IMAGES]
    measured = cost.prediction_cost(model, batch, repeats=max(1, int(cost_repeats)), warmup=1)
    report.update({k: measured[k] for k in ("ms_per_example", "parameters", "flops_per_example",
                                            "forward_passes")})
    report["cost_batch_size"] = measured["batch_size"]
    return report
