"""Evaluation under distribution shift: corrupted test sets (made on the device by
:mod:`mixshare.corruptions`, or the released CIFAR-10-C / CIFAR-100-C files), their metrics as MIMO's
tables report them (cAcc, cNLL, cECE; mCE against a baseline) and the SVHN test set as an
out-of-distribution set.

Shapes: images ``[N, C, H, W]``; logits ``[M, N, K]`` (M subnetworks); labels int64 ``[N]``.
Results of :func:`corruption_metrics` are keyed ``"<corruption>/<severity>"``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from mixshare import corruptions, metrics

__all__ = [
    "CIFAR_C_EXTRA",
    "read_cifar_c",
    "read_cifar_c_labels",
    "read_svhn_mat",
    "set_metrics",
    "corruption_metrics",
    "shift_summary",
    "mean_corruption_error",
    "mean_corruption_error_of_means",
    "to_model_input",
    "evaluate_corruptions",
    "evaluate_cifar_c",
]

PathLike = Union[str, Path]

#: The four extra corruptions released with CIFAR-10-C / CIFAR-100-C (not in the benchmark's mean).
CIFAR_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


# --------------------------------------------------------------------------- readers


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (CIFAR-C folders hold <corruption>.npy and labels.npy)")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:  # object arrays, or not an .npy file at all
        raise ValueError(f"{path}: malformed .npy file ({exc})") from exc


def read_cifar_c_labels(directory: PathLike, num_classes: Optional[int] = None) -> torch.Tensor:
    """``labels.npy`` of a CIFAR-C folder: int64 ``[n]``, the test labels (the file repeats them for
    each of the 5 severities: ``[5 n]`` integers, the same n labels 5 times; checked)."""
    path = Path(directory) / "labels.npy"
    raw = _load_npy(path)
    if raw.ndim != 1 or raw.shape[0] == 0 or raw.shape[0] % 5:
        raise ValueError(f"{path}: expected [5 n] labels (5 severities), got shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"{path}: expected integer labels, got dtype {raw.dtype}")
    blocks = np.asarray(raw).astype(np.int64).reshape(5, -1)
    if not (blocks == blocks[0]).all():
        raise ValueError(f"{path}: the 5 severity blocks hold different labels")
    if blocks.min() < 0 or (num_classes is not None and blocks.max() >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{path}: labels must lie in {bound}, got values in [{blocks.min()}, {blocks.max()}]")
    return torch.from_numpy(blocks[0].copy())


def read_cifar_c(directory: PathLike, corruption: str, severities: Sequence[int] = corruptions.SEVERITIES,
                 num_classes: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One corruption of a released CIFAR-10-C / CIFAR-100-C folder.

    ``<corruption>.npy``: uint8 ``[5 n, H, W, 3]`` (n = 10,000 as released, severities 1..5 in that
    order) read with ``np.load(allow_pickle=False)``. Returns ``images`` uint8
    ``[len(severities), n, 3, H, W]`` and ``labels`` int64 ``[n]`` (:func:`read_cifar_c_labels`).
    Raises FileNotFoundError / ValueError naming the missing or malformed file.
    """
    known = tuple(corruptions.CORRUPTIONS) + CIFAR_C_EXTRA
    if corruption not in known:
        raise ValueError(f"unknown corruption {corruption!r}; CIFAR-C has: {', '.join(known)}")
    severities = [corruptions._check_severity(s) for s in severities]
    labels = read_cifar_c_labels(directory, num_classes)
    n = labels.shape[0]
    path = Path(directory) / f"{corruption}.npy"
    raw = _load_npy(path)
    if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 [5 n, H, W, 3] images, got {raw.dtype} {raw.shape}")
    if raw.shape[0] != 5 * n:
        raise ValueError(f"{path}: expected {5 * n} images (5 severities x {n} labels in labels.npy), "
                         f"got {raw.shape[0]}")
    blocks = [np.asarray(raw[(s - 1) * n: s * n]) for s in severities]
    images = torch.from_numpy(np.stack(blocks)).permute(0, 1, 4, 2, 3).contiguous()
    return images, labels


def read_svhn_mat(path: PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN's ``test_32x32.mat`` (or train / extra): ``X`` uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]``
    in 1..10 (10 is the digit 0). Returns images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]``
    in 0..9. Needs scipy."""
    path = Path(path)
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading SVHN .mat files needs scipy (pip install scipy)") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (SVHN's test_32x32.mat)")
    try:
        mat = loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: MATLAB v7.3 files are not supported, expected SVHN's v5 .mat ({exc})") from exc
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .mat file ({exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected variables X and y, got {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(f"{path}: X must be uint8 [H, W, 3, N], got {x.dtype} {x.shape}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[3] or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{path}: y must be [N, 1] labels with N = {x.shape[3]}, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 1 or y.max() > 10 or not np.all(y == np.round(y))):
        raise ValueError(f"{path}: y must hold labels 1..10 (10 for the digit 0), got values in [{y.min()}, {y.max()}]")
    labels = torch.from_numpy(y.astype(np.int64) % 10)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images, labels


# --------------------------------------------------------------------------- metrics under shift


def set_metrics(logits: torch.Tensor, labels: torch.Tensor, ensemble: str = "logits") -> dict:
    """One test set's ``accuracy`` (%), ``nll`` (nats), ``ece`` (%) of the ensemble and, as lists
    of M, ``subnetwork_accuracy``, ``subnetwork_nll``, ``subnetwork_ece``. ``logits [M, N, K]``."""
    probs = metrics.ensemble_probs(logits, ensemble)
    return {
        "accuracy": metrics.accuracy(probs, labels),
        "nll": metrics.nll(probs, labels),
        "ece": metrics.ece(probs, labels),
        "subnetwork_accuracy": metrics.subnetwork_accuracy(logits, labels),
        "subnetwork_nll": metrics.subnetwork_nll(logits, labels),
        "subnetwork_ece": metrics.subnetwork_ece(logits, labels),
    }


def _key(corruption: str, severity: int) -> str:
    return f"{corruption}/{severity}"


def corruption_metrics(logits_by_set: dict, labels: torch.Tensor, ensemble: str = "logits") -> dict:
    """:func:`set_metrics` per corrupted set: ``{(corruption, severity): logits [M, N, K]}`` ->
    ``{"corruption/severity": metrics}``."""
    return {_key(c, s): set_metrics(z, labels, ensemble) for (c, s), z in logits_by_set.items()}


def _split(key: str) -> tuple[str, int]:
    name, _, severity = key.rpartition("/")
    if not name or not severity.isdigit():
        raise ValueError(f"result keys must be 'corruption/severity', got {key!r}")
    return name, int(severity)


def shift_summary(results: dict) -> dict:
    """MIMO's columns from :func:`corruption_metrics`' results: ``cAcc`` (%), ``cNLL``, ``cECE``, the
    means over every corruption and severity (each set weighs the same), the same per subnetwork
    (``subnetwork_cAcc`` ... lists of M), and ``by_severity`` / ``by_corruption`` means of the three."""
    if not results:
        raise ValueError("results must hold at least one corrupted set")
    rows = list(results.values())

    def mean(key, rows=rows):
        return sum(r[key] for r in rows) / len(rows)

    def mean_list(key):
        return [sum(v) / len(rows) for v in zip(*(r[key] for r in rows))]

    def grouped(index):
        groups: dict = {}
        for key, row in results.items():
            groups.setdefault(_split(key)[index], []).append(row)
        return {g: {"accuracy": mean("accuracy", rs), "nll": mean("nll", rs), "ece": mean("ece", rs)}
                for g, rs in sorted(groups.items())}

    return {
        "cAcc": mean("accuracy"), "cNLL": mean("nll"), "cECE": mean("ece"),
        "subnetwork_cAcc": mean_list("subnetwork_accuracy"),
        "subnetwork_cNLL": mean_list("subnetwork_nll"),
        "subnetwork_cECE": mean_list("subnetwork_ece"),
        "by_severity": grouped(1),
        "by_corruption": grouped(0),
    }


def _mce(errors: dict) -> dict:
    """``{corruption: [(E, E_base), ...]}`` (% errors) -> ``{"mCE", "CE": {c: 100 * sum E / sum E_base}}``."""
    if not errors:
        raise ValueError("results must hold at least one corrupted set")
    ce = {}
    for c, pairs in sorted(errors.items()):
        base = sum(b for _, b in pairs)
        if base <= 0:
            raise ValueError(f"baseline makes no error on {c}: its corruption error is undefined")
        ce[c] = 100.0 * sum(e for e, _ in pairs) / base
    return {"mCE": sum(ce.values()) / len(ce), "CE": ce}


def mean_corruption_error(results: dict, baseline: dict) -> dict:
    """Hendrycks & Dietterich's mCE: per corruption c, ``CE_c = sum_s E(c, s) / sum_s E_base(c, s)``
    with E = 100 - accuracy (% error) over the severities both hold; ``mCE`` = mean over corruptions,
    both in percent as the paper reports them (100 = the baseline's errors). ``results``, ``baseline``:
    :func:`corruption_metrics`' ``{"corruption/severity": metrics}``. Returns ``{"mCE", "CE": {c: CE_c}}``."""
    ours: dict = {}
    for key, row in results.items():
        c, s = _split(key)
        if key not in baseline:
            raise ValueError(f"baseline has no result for {key!r}")
        ours.setdefault(c, []).append((100.0 - row["accuracy"], 100.0 - baseline[key]["accuracy"]))
    return _mce(ours)


def mean_corruption_error_of_means(by_corruption: dict, baseline: dict) -> dict:
    """:func:`mean_corruption_error` from each corruption's accuracy averaged over the same severities
    (``shift_by_corruption`` of metrics.json: ``{corruption: {"accuracy": %, ...}}``), for which
    ``sum_s E / sum_s E_base`` is the ratio of the mean errors."""
    ours = {}
    for c, row in by_corruption.items():
        if c not in baseline:
            raise ValueError(f"baseline has no result for {c!r}")
        ours[c] = [(100.0 - row["accuracy"], 100.0 - baseline[c]["accuracy"])]
    return _mce(ours)


# --------------------------------------------------------------------------- evaluating a model


def to_model_input(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[N, C, H, W]`` pixels (uint8, or float in [0, 1]) -> float32 ``(x - mean) / std`` per channel."""
    x = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"mean and std must have one value per channel ({x.shape[1]}), got {len(mean)}, {len(std)}")
    shape = (1, -1, 1, 1)
    return (x - torch.tensor(mean, device=x.device).view(shape)) / torch.tensor(std, device=x.device).view(shape)


def _report(progress, done: int, total: int, key: str, row: dict) -> None:
    if progress is True:
        print(f"[{done}/{total}] {key}: accuracy {row['accuracy']:.2f}%  nll {row['nll']:.4f}  "
              f"ece {row['ece']:.2f}%", file=sys.stderr, flush=True)
    elif callable(progress):
        progress(done, total, key, row)


def evaluate_corruptions(model, pixels: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                         std: Sequence[float], names: Iterable[str] = tuple(corruptions.CORRUPTIONS),
                         severities: Iterable[int] = corruptions.SEVERITIES, seed: int = 0,
                         batch_size: int = 500, ensemble: str = "logits",
                         progress: Union[bool, Callable, None] = False, keep_logits: bool = False) -> dict:
    """A :class:`mixshare.protocol.MimoModel` on the test set corrupted on its device.

    ``pixels``: the clean test images ``[N, C, H, W]`` in [0, 1] (before normalisation), on the
    model's device; each (corruption, severity) set is made by :func:`mixshare.corruptions.corrupt`
    with a generator seeded ``seed`` (so every model sees the same corrupted images), normalised by
    ``mean``/``std`` and run through :func:`mixshare.evaluate.collect_logits`. ``progress``: True
    prints one line per set to stderr, a callable gets ``(done, total, key, metrics)``.

    Returns ``{"sets": corruption_metrics(...), **shift_summary(...)}`` (plus ``"logits"``, a dict of
    ``[M, N, K]`` per set, when ``keep_logits``).
    """
    from mixshare.evaluate import collect_logits

    plan = [(c, corruptions._check_severity(s)) for c in names for s in severities]
    for c, _ in plan:
        if c not in corruptions.CORRUPTIONS:
            raise ValueError(f"unknown corruption {c!r}; valid: {', '.join(corruptions.CORRUPTIONS)}")
    sets, kept = {}, {}
    for done, (c, s) in enumerate(plan, 1):
        generator = torch.Generator(device=pixels.device).manual_seed(seed)
        corrupted = corruptions.corrupt(pixels, c, s, generator=generator)
        logits = collect_logits(model, to_model_input(corrupted, mean, std), batch_size)
        key = _key(c, s)
        sets[key] = set_metrics(logits, labels, ensemble)
        if keep_logits:
            kept[(c, s)] = logits
        _report(progress, done, len(plan), key, sets[key])
    out = {"sets": sets, **shift_summary(sets)}
    if keep_logits:
        out["logits"] = kept
    return out


def evaluate_cifar_c(model, directory: PathLike, mean: Sequence[float], std: Sequence[float],
                     names: Iterable[str] = tuple(corruptions.CORRUPTIONS),
                     severities: Iterable[int] = corruptions.SEVERITIES, num_classes: Optional[int] = None,
                     batch_size: int = 500, ensemble: str = "logits", device=None,
                     progress: Union[bool, Callable, None] = False) -> dict:
    """A model on the released CIFAR-10-C / CIFAR-100-C files in ``directory`` (:func:`read_cifar_c`),
    one corruption file at a time. Returns ``{"sets": ..., **shift_summary(...)}`` as
    :func:`evaluate_corruptions`."""
    from mixshare.evaluate import collect_logits

    if device is None:
        device = next(iter(model.parameters())).device
    names, severities = list(names), list(severities)
    total, done, sets = len(names) * len(severities), 0, {}
    for c in names:
        images, labels = read_cifar_c(directory, c, severities, num_classes)
        for s, block in zip(severities, images):
            logits = collect_logits(model, to_model_input(block.to(device), mean, std), batch_size)
            key = _key(c, s)
            sets[key] = set_metrics(logits, labels.to(device), ensemble)
            done += 1
            _report(progress, done, total, key, sets[key])
    return {"sets": sets, **shift_summary(sets)}
