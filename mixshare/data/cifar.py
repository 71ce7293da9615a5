"""CIFAR-10 / CIFAR-100 from their python-pickle releases, read with :class:`mixshare.data.unpickle.SafeUnpickler`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mixshare.data.dataset import DatasetError, ImageDataset, PathLike, _normalise
from mixshare.data.unpickle import ForbiddenGlobalError, safe_pickle_load

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "load_cifar", "read_cifar_test"]


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



def _spec(name: str) -> dict:
    """The release's layout of CIFAR ``name`` (``"cifar10"`` or ``"cifar100"``)."""
    if name not in _CIFAR:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {', '.join(_CIFAR)}")
    return _CIFAR[name]

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



def read_cifar_test(data_dir: PathLike, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of CIFAR ``name`` under ``data_dir`` as stored: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``.

    Raises ``DatasetError`` where the files are missing or malformed, as :func:`load_cifar`."""
    spec = _spec(name)
    return _read_cifar_split(_cifar_folder(data_dir, spec), spec["test"], spec)

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
    spec = _spec(name)
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
