"""Data: image datasets held whole on the device, MIMO batch indices and augmentation drawn there.

Datasets are small enough (CIFAR: 50,000 x 3 x 32 x 32) to live on the GPU as one normalised
float32 tensor, so a training step is an index gather plus a vectorised crop/flip: no loader
workers, no host round trip. Loaders:

* ``load_digits``: scikit-learn's bundled 8x8 handwritten digits (no download), upsampled;
* ``load_cifar``: the python-pickle releases of CIFAR-10/100, read with a restricted unpickler;
* ``synthetic_dataset``: learnable random images of CIFAR shape for benchmarks and smoke runs.

``mimo_batches`` yields MIMO index matrices with batch repetition and input repetition as the
official MixMo sampler forms them (``batch_size`` counts rows, repetitions included); ``augment`` is
the usual random crop of the image padded by 4 black pixels plus optional horizontal flip.
"""

from __future__ import annotations

import builtins
import codecs
import dataclasses
import math
import operator
import pickle
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

# The dataset names live in mixshare.config, which the command line reads without importing torch.
from mixshare.config import DATASETS, TRAINING_DATASETS

__all__ = [
    "DATASETS",
    "TRAINING_DATASETS",
    "DatasetError",
    "ForbiddenGlobalError",
    "ImageDataset",
    "SafeUnpickler",
    "augment",
    "images_per_step",
    "load_cifar",
    "load_data",
    "load_dataset",
    "load_digits",
    "hold_out",
    "mimo_batches",
    "mimo_epoch_indices",
    "safe_pickle_load",
    "steps_per_epoch",
    "synthetic_dataset",
]


PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device]


class DatasetError(ValueError):
    """A dataset is missing or its files do not have the expected layout or content."""


# --------------------------------------------------------------------------- the dataset


@dataclasses.dataclass
class ImageDataset:
    """A classification dataset held as whole tensors.

    Images are float32 ``[N, C, H, W]``, normalised per channel with the train split's ``mean`` and
    ``std`` (given in the [0, 1] pixel scale); labels are int64 ``[N]`` in ``[0, num_classes)``.
    ``hflip`` says whether horizontal flips are a label-preserving augmentation.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    hflip: bool
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Training images withheld from training to fit a temperature (see :func:`hold_out`); None: none withheld.
    calibration_images: Optional[torch.Tensor] = None
    calibration_labels: Optional[torch.Tensor] = None

    def to(self, device: DeviceLike, non_blocking: bool = False) -> "ImageDataset":
        """A copy with the tensors on ``device`` (the same object's tensors if already there)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(
            self,
            train_images=move(self.train_images),
            train_labels=move(self.train_labels),
            test_images=move(self.test_images),
            test_labels=move(self.test_labels),
            calibration_images=move(self.calibration_images),
            calibration_labels=move(self.calibration_labels),
        )

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]

    @property
    def num_test(self) -> int:
        return self.test_images.shape[0]

    @property
    def pad_value(self) -> tuple[float, ...]:
        """Black (pixel value 0) after normalisation, per channel: ``-mean / std``."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train_images.shape[1:])


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """In place: ``(images - mean) / std`` per channel of a float ``[N, C, H, W]`` tensor."""
    shape = (1, len(mean), 1, 1)
    images.sub_(torch.tensor(mean, dtype=images.dtype).view(shape))
    images.div_(torch.tensor(std, dtype=images.dtype).view(shape))
    return images


def _float_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``[N, C, H, W]`` (Welford, one channel at a time)."""
    means, stds = [], []
    for c in range(images.shape[1]):
        var, mean = torch.var_mean(images[:, c], correction=0)
        means.append(mean.item())
        stds.append(max(math.sqrt(var.item()), 1e-12))
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------- digits


def load_digits(test_fraction: float = 0.25, seed: int = 0, size: int = 32) -> ImageDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits as a 10-class dataset of ``[N, 3, size, size]`` images.

    Split stratified and deterministic (``train_test_split(random_state=seed, stratify=labels)``),
    pixels scaled to [0, 1], upsampled bilinearly, replicated to 3 channels and normalised with the
    train split's statistics. ``hflip`` is False: digits are not mirror-invariant.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    size = operator.index(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn (pip install scikit-learn)") from exc

    bunch = sklearn_digits()
    pixels = np.asarray(bunch.images, dtype=np.float32) / 16.0  # [N, 8, 8], values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]), test_size=float(test_fraction), random_state=seed, stratify=labels
    )
    images = torch.from_numpy(pixels).unsqueeze(1)  # [N, 1, 8, 8]
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    train_idx_t = torch.from_numpy(np.asarray(train_idx, dtype=np.int64))
    test_idx_t = torch.from_numpy(np.asarray(test_idx, dtype=np.int64))
    train_images = images[train_idx_t].contiguous()
    test_images = images[test_idx_t].contiguous()
    mean, std = _float_stats(train_images)
    labels_t = torch.from_numpy(labels)
    return ImageDataset(
        train_images=_normalise(train_images, mean, std),
        train_labels=labels_t[train_idx_t].clone(),
        test_images=_normalise(test_images, mean, std),
        test_labels=labels_t[test_idx_t].clone(),
        num_classes=10,
        hflip=False,
        name="digits",
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------- safe unpickling


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referred to a global that ``SafeUnpickler`` does not admit."""


_SAFE_ENCODINGS = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "utf-8", "utf8", "ascii"})


def _codecs_encode(obj, encoding: str = "utf-8", errors: str = "strict"):
    """``_codecs.encode`` as protocol-2 pickles of bytes use it, limited to plain text codecs."""
    if not isinstance(obj, str) or encoding not in _SAFE_ENCODINGS or errors != "strict":
        raise ForbiddenGlobalError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding)


def _safe_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray, numeric
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = multiarray._reconstruct
        table[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = numeric._frombuffer
    plain = ("bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict",
             "set", "frozenset", "slice", "range")
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
        for name in plain:
            table[(module, name)] = getattr(builtins, name)
    return table


_SAFE_GLOBALS: Optional[dict[tuple[str, str], object]] = None


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays/dtypes/scalars and plain builtin data.

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``ForbiddenGlobalError``, a
    ``pickle.UnpicklingError``, before anything is called.
    """

    def find_class(self, module: str, name: str):
        global _SAFE_GLOBALS
        if _SAFE_GLOBALS is None:
            _SAFE_GLOBALS = _safe_globals()
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"refusing to unpickle global {module}.{name}: dataset files may hold only numpy arrays "
                "and plain builtin data"
            ) from None

    def persistent_load(self, pid):
        raise ForbiddenGlobalError("refusing a pickle with persistent ids")


def safe_pickle_load(file, encoding: str = "bytes"):
    """``pickle.load`` through ``SafeUnpickler`` (``encoding="bytes"``: Python 2 strings stay bytes)."""
    return SafeUnpickler(file, encoding=encoding).load()


# --------------------------------------------------------------------------- CIFAR


_CIFAR = {
    "cifar10": dict(
        title="CIFAR-10 (python version)",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": dict(
        title="CIFAR-100 (python version)",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        label_key=b"fine_labels",
        num_classes=100,
    ),
}
_CIFAR_PIXELS = 3 * 32 * 32


def _cifar_layout(spec: dict) -> str:
    files = ", ".join(spec["train"] + spec["test"])
    return (
        f"a folder {spec['folder']!r} holding {files} (pickled dicts with keys b'data': uint8 "
        f"[N, {_CIFAR_PIXELS}] and {spec['label_key']!r}: N labels in [0, {spec['num_classes']}))"
    )


def _cifar_folder(data_dir: PathLike, spec: dict) -> Path:
    root = Path(data_dir)
    files = spec["train"] + spec["test"]
    nested = root / spec["folder"]
    if nested.is_dir():
        folder = nested
    elif root.is_dir() and (root.name == spec["folder"] or any((root / f).exists() for f in files)):
        folder = root
    else:
        where = "does not exist" if not root.exists() else "has no such folder"
        raise DatasetError(
            f"{spec['title']} not found: {str(root)!r} {where}. Expected data_dir to contain "
            f"{_cifar_layout(spec)}, or data_dir to be that folder itself."
        )
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{spec['title']}: {str(folder)!r} lacks {', '.join(missing)}; expected {_cifar_layout(spec)}"
        )
    return folder


def _lookup(batch: dict, key: bytes):
    """``batch[key]``, also accepting the str key of a pickle re-written under Python 3."""
    if key in batch:
        return batch[key]
    return batch.get(key.decode("ascii"))


def _read_cifar_file(path: Path, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (uint8 [N, 3072], int64 [N])."""
    label_key = spec["label_key"]
    expected = f"expected a dict with keys b'data' (uint8 [N, {_CIFAR_PIXELS}]) and {label_key!r} (N ints)"
    try:
        with open(path, "rb") as fh:
            batch = safe_pickle_load(fh)
    except ForbiddenGlobalError:
        raise
    except Exception as exc:  # truncated or corrupt file: anything but a refused global
        raise DatasetError(f"{str(path)!r} is not a readable CIFAR pickle ({exc}); {expected}") from exc

    if not isinstance(batch, dict):
        raise DatasetError(f"{str(path)!r}: {expected}, got {type(batch).__name__}")
    data, labels = _lookup(batch, b"data"), _lookup(batch, label_key)
    if data is None or labels is None:
        absent = [repr(k) for k, v in ((b"data", data), (label_key, labels)) if v is None]
        found = ", ".join(sorted(repr(k) for k in batch)) or "none"
        raise DatasetError(f"{str(path)!r}: missing key(s) {', '.join(absent)}; {expected}; found keys: {found}")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        shape = tuple(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{str(path)!r}: b'data' must be a uint8 array [N, {_CIFAR_PIXELS}], got {shape}")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetError(f"{str(path)!r}: b'data' must hold uint8 pixels 0..255, got dtype {data.dtype}")
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(labels)
    except Exception as exc:
        raise DatasetError(f"{str(path)!r}: {label_key!r} is not a list of ints ({exc})") from exc
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and labels.dtype.kind not in "iu"):
        raise DatasetError(
            f"{str(path)!r}: {label_key!r} must hold {data.shape[0]} integer labels (one per row of b'data'), "
            f"got shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= spec["num_classes"]):
        raise DatasetError(
            f"{str(path)!r}: {label_key!r} must lie in [0, {spec['num_classes']}), "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    return np.ascontiguousarray(data), labels


def _read_cifar_split(folder: Path, names: Sequence[str], spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_cifar_file(folder / name, spec) for name in names]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return torch.from_numpy(data).view(-1, 3, 32, 32), torch.from_numpy(labels)


# The official MixMo code normalises CIFAR-10 and CIFAR-100 alike with these constants (in the [0, 1]
# pixel scale); the std is not the dataset's (about 0.25), so inputs have a standard deviation near 1.2.
CIFAR_MEAN = (0.4913725490196078, 0.4823529411764706, 0.4466666666666667)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _to_normalised(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``(x / 255 - mean) / std``."""
    out = images.to(torch.float32)
    return _normalise(out, [255.0 * m for m in mean], [255.0 * s for s in std])


def load_cifar(data_dir: PathLike, name: str = "cifar10") -> ImageDataset:
    """CIFAR-10 or CIFAR-100 (``name``) from the python-pickle release, images ``[N, 3, 32, 32]``.

    ``data_dir`` holds ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``) or
    ``cifar-100-python/`` (``train``, ``test``; fine labels), or is that folder. Files are read with
    ``SafeUnpickler``; a missing or malformed file raises ``DatasetError``. Normalised with the
    official MixMo code's ``CIFAR_MEAN`` / ``CIFAR_STD``; ``hflip`` is True.
    """
    if name not in _CIFAR:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {', '.join(_CIFAR)}")
    spec = _CIFAR[name]
    folder = _cifar_folder(data_dir, spec)
    train_raw, train_labels = _read_cifar_split(folder, spec["train"], spec)
    test_raw, test_labels = _read_cifar_split(folder, spec["test"], spec)
    if train_raw.shape[0] == 0:
        raise DatasetError(f"{spec['title']}: {str(folder)!r} holds no training images")
    mean, std = CIFAR_MEAN, CIFAR_STD
    return ImageDataset(
        train_images=_to_normalised(train_raw, mean, std),
        train_labels=train_labels,
        test_images=_to_normalised(test_raw, mean, std),
        test_labels=test_labels,
        num_classes=spec["num_classes"],
        hflip=True,
        name=name,
        mean=mean,
        std=std,
    )


def load_dataset(name: str, data_dir: Optional[PathLike] = None) -> ImageDataset:
    """``"digits"`` (bundled with scikit-learn), ``"cifar10"`` or ``"cifar100"`` (need ``data_dir``)."""
    if name == "digits":
        return load_digits()
    if name in _CIFAR:
        if data_dir is None:
            raise DatasetError(
                f"{name} needs data_dir: the folder that holds {_CIFAR[name]['folder']!r} "
                f"(the python version of {_CIFAR[name]['title'].split(' ')[0]}), or that folder itself"
            )
        return load_cifar(data_dir, name)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def load_data(config) -> ImageDataset:
    """The dataset a run's config names (``dataset``, ``data_dir``, the ``synthetic_*`` sizes, ``seed``),
    with ``config.calibration_split`` of its training images withheld by :func:`hold_out` when it is > 0."""
    if config.dataset == "synthetic":
        dataset = synthetic_dataset(
            config.synthetic_train, config.synthetic_test, config.synthetic_classes, size=config.synthetic_size,
            seed=config.seed,
        )
    else:
        dataset = load_dataset(config.dataset, config.data_dir)
    fraction = getattr(config, "calibration_split", 0.0)
    return hold_out(dataset, fraction, config.seed) if fraction else dataset


#: Offset of the calibration split's generator from the run's seed (the loader uses seed + 1 and seed + 2,
#: the mixing plans seed + 3).
CALIBRATION_SEED_OFFSET = 5


def hold_out(dataset: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """``dataset`` with ``fraction`` of its training images moved to ``calibration_images`` / ``_labels``.

    Stratified: from each class, ``round(fraction * count)`` images, picked by a permutation drawn on
    a CPU generator seeded with ``seed + CALIBRATION_SEED_OFFSET`` (no global random state is used).
    Both parts keep the dataset's order. The normalisation (``mean``, ``std``) stays that of the whole
    training split (pixel statistics, no labels). Raises ValueError unless both parts are non-empty
    and every class keeps a training image.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"calibration_split must lie in (0, 1) to withhold images, got {fraction}")
    labels = dataset.train_labels.cpu()
    gen = torch.Generator().manual_seed(int(seed) + CALIBRATION_SEED_OFFSET)
    order = torch.randperm(labels.shape[0], generator=gen)
    held = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        held[members[: int(round(float(fraction) * members.numel()))]] = True
    kept = int((~held).sum())
    if not held.any() or kept == 0:
        raise ValueError(
            f"calibration_split {fraction} of {labels.shape[0]} training images withholds {int(held.sum())} and "
            f"keeps {kept}; both must be at least 1")
    emptied = [c for c in torch.unique(labels).tolist() if not bool((~held)[labels == c].any())]
    if emptied:
        raise ValueError(
            f"calibration_split {fraction} withholds every training image of class(es) "
            f"{', '.join(map(str, emptied[:10]))}{' ...' if len(emptied) > 10 else ''}; lower it so that each "
            f"class keeps a training image")
    held = held.to(dataset.train_labels.device)
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[~held],
        train_labels=dataset.train_labels[~held],
        calibration_images=dataset.train_images[held],
        calibration_labels=dataset.train_labels[held],
    )


# --------------------------------------------------------------------------- synthetic


def synthetic_dataset(
    num_train: int,
    num_test: int,
    num_classes: int,
    size: int = 32,
    seed: int = 0,
    noise: float = 1.0,
) -> ImageDataset:
    """Learnable random images ``[N, 3, size, size]``: a smooth per-class template plus Gaussian noise.

    Templates are mirror-symmetric, so ``hflip`` is True as for CIFAR; labels are balanced
    (``i % num_classes``, shuffled). Deterministic for a given ``seed`` (drawn on the CPU).
    """
    num_train, num_test, num_classes, size = map(operator.index, (num_train, num_test, num_classes, size))
    if num_train < 1 or num_test < 0 or num_classes < 1 or size < 1:
        raise ValueError(
            f"need num_train >= 1, num_test >= 0, num_classes >= 1, size >= 1; got {num_train}, {num_test}, "
            f"{num_classes}, {size}"
        )
    gen = torch.Generator().manual_seed(seed)
    coarse = max(1, size // 4)
    templates = torch.randn(num_classes, 3, coarse, coarse, generator=gen)
    templates = F.interpolate(templates, size=(size, size), mode="bilinear", align_corners=False)
    templates = 0.5 * (templates + templates.flip(-1))
    templates /= templates.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        images = torch.randn(n, 3, size, size, generator=gen).mul_(noise)
        return images.add_(templates[labels]), labels

    train_images, train_labels = split(num_train)
    test_images, test_labels = split(num_test)
    mean, std = _float_stats(train_images)
    return ImageDataset(
        train_images=_normalise(train_images, mean, std),
        train_labels=train_labels,
        test_images=_normalise(test_images, mean, std),
        test_labels=test_labels,
        num_classes=num_classes,
        hflip=True,
        name="synthetic",
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------- MIMO batches


def images_per_step(batch_size: int, batch_repetition: int = 1) -> int:
    """Distinct images in a step of ``batch_size`` rows, each repeated ``batch_repetition`` times.

    ``ceil(batch_size / batch_repetition)``: a step holds that many images times ``batch_repetition``
    rows, ``batch_size`` rounded up to a multiple of ``batch_repetition`` (as the official MixMo
    sampler, which adds b copies of an image until the batch has at least ``batch_size`` rows).
    """
    batch_size, batch_repetition = operator.index(batch_size), operator.index(batch_repetition)
    if batch_size < 1 or batch_repetition < 1:
        raise ValueError(f"need batch_size >= 1 and batch_repetition >= 1, got {batch_size}, {batch_repetition}")
    return -(-batch_size // batch_repetition)


def steps_per_epoch(num_samples: int, batch_size: int, batch_repetition: int = 1) -> int:
    """Steps in one pass over ``num_samples`` images at ``batch_size`` rows per step, repetitions included.

    ``num_samples // images_per_step(batch_size, batch_repetition)`` (the last partial step is dropped),
    but 1 when ``0 < num_samples`` is below one step's images. CIFAR (50,000) at 64 rows and b = 2: 1,562.
    """
    num_samples = operator.index(num_samples)
    if num_samples < 0:
        raise ValueError(f"need num_samples >= 0, got {num_samples}")
    images = images_per_step(batch_size, batch_repetition)
    if num_samples == 0:
        return 0
    return max(1, num_samples // images)


def _resolve_device(generator: Optional[torch.Generator], device: Optional[DeviceLike]) -> torch.device:
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}: they must match")
    return device


def mimo_epoch_indices(
    num_samples: int,
    batch_size: int,
    num_subnets: int,
    batch_repetition: int = 1,
    input_repetition: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: Optional[DeviceLike] = None,
) -> torch.Tensor:
    """One epoch of MIMO indices, int64 ``[S, M, R]``: S steps, M members, R rows per step.

    ``batch_size`` counts rows, repetitions included, as in the official MixMo code: a step takes
    ``D = images_per_step(batch_size, batch_repetition)`` distinct images of one random permutation
    (``D = num_samples`` when that is smaller; steps never share an image) and repeats each
    ``batch_repetition`` times side by side, ``R = D * batch_repetition`` rows (``batch_size`` when b
    divides it). The first ``int(R * input_repetition)`` of those rows, in that order, are shared by
    every member; each member gets its own random permutation of the remaining rows.
    ``S = steps_per_epoch(num_samples, batch_size, batch_repetition)``. All draws use ``generator`` on
    ``device``; nothing syncs with the host.
    """
    num_samples = operator.index(num_samples)
    num_subnets, batch_repetition = operator.index(num_subnets), operator.index(batch_repetition)
    if num_subnets < 1 or batch_repetition < 1:
        raise ValueError(f"need num_subnets >= 1 and batch_repetition >= 1, got {num_subnets}, {batch_repetition}")
    input_repetition = float(input_repetition)
    if not 0.0 <= input_repetition <= 1.0:
        raise ValueError(f"input_repetition must lie in [0, 1], got {input_repetition}")
    steps = steps_per_epoch(num_samples, batch_size, batch_repetition)
    device = _resolve_device(generator, device)
    images = images_per_step(batch_size, batch_repetition)
    width = min(images, num_samples) if num_samples else images
    rows = width * batch_repetition
    if steps == 0:
        return torch.empty(0, num_subnets, rows, dtype=torch.long, device=device)
    shared = int(rows * input_repetition)

    perm = torch.randperm(num_samples, generator=generator, device=device)[: steps * width].view(steps, width)
    tiled = perm.repeat_interleave(batch_repetition, dim=1)  # [S, R]: each image b times side by side
    keys = torch.rand(steps, num_subnets, rows - shared, generator=generator, device=device, dtype=torch.float64)
    own = tiled[:, None, shared:].expand(-1, num_subnets, -1).gather(2, keys.argsort(dim=2, stable=True))
    prefix = tiled[:, None, :shared].expand(-1, num_subnets, -1)
    return torch.cat([prefix, own], dim=2)


def mimo_batches(*args, **kwargs) -> Iterator[torch.Tensor]:
    """One epoch's MIMO index matrices, int64 ``[M, R]`` each: :func:`mimo_epoch_indices` (same
    arguments) step by step. Row ``r`` of member ``i`` is the sample that subnetwork ``i`` sees at
    batch position ``r``; the whole epoch is drawn on the call, on the device."""
    return iter(mimo_epoch_indices(*args, **kwargs).unbind(0))


# --------------------------------------------------------------------------- augmentation


def augment(
    images: torch.Tensor,
    hflip: bool,
    generator: Optional[torch.Generator] = None,
    padding: int = 4,
    fill: Union[float, Sequence[float], torch.Tensor] = 0.0,
) -> torch.Tensor:
    """Per-sample random crop of the ``padding``-padded image and, if ``hflip``, random horizontal flip (p = 0.5).

    ``images``: ``[N, C, H, W]`` -> a new ``[N, C, H, W]`` tensor of the same dtype and device. Each
    sample is the ``H x W`` window at a random offset in ``[0, 2 * padding]`` of its copy padded with
    ``fill`` (a scalar or one value per channel; ``ImageDataset.pad_value`` is black, as the official
    ``RandomCrop(32, padding=4)`` on pixels). Vectorised, one gather: draws (top, left, flip) from
    ``generator`` on the images' device, no host sync.
    """
    if images.dim() != 4:
        raise ValueError(f"augment expects images [N, C, H, W], got shape {tuple(images.shape)}")
    padding = operator.index(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    device = images.device
    fill = torch.as_tensor(fill, dtype=images.dtype, device=device)
    if fill.dim() > 1 or fill.numel() not in (1, c):
        raise ValueError(f"fill must be a scalar or one value per channel ({c}), got shape {tuple(fill.shape)}")
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    rows = top + torch.arange(h, device=device) - padding  # [N, H] rows of the image, out of range in the padding
    cols = left + torch.arange(w, device=device) - padding  # [N, W]
    if hflip:
        flip = torch.rand(n, 1, generator=generator, device=device) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    batch_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan_idx = torch.arange(c, device=device).view(1, c, 1, 1)
    gathered = images[batch_idx, chan_idx, rows.clamp(0, h - 1).view(n, 1, h, 1), cols.clamp(0, w - 1).view(n, 1, 1, w)]
    if padding == 0:
        return gathered
    return torch.where(inside, gathered, fill.view(1, -1, 1, 1))
