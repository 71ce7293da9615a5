"""A dataset by name (``load_dataset``) or from a run's config (``load_data``)."""

from __future__ import annotations

from typing import Optional

# The dataset names live in mixshare.config, which the command line reads without importing torch.
from mixshare.config import DATASETS
from mixshare.data.cifar import _CIFAR, load_cifar
from mixshare.data.dataset import DatasetError, ImageDataset, PathLike
from mixshare.data.digits import load_digits
from mixshare.data.split import hold_out
from mixshare.data.synthetic import synthetic_dataset

__all__ = ["load_data", "load_dataset"]


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
