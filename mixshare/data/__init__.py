"""Data: image datasets held whole on the device, and their augmentation drawn there.

Datasets are small enough (CIFAR: 50,000 x 3 x 32 x 32) to live on the GPU as one normalised
float32 tensor, so a training step is an index gather plus a vectorised crop/flip: no loader
workers, no host round trip. One module per job:

* ``dataset``: ``ImageDataset`` (the container), ``DatasetError``, the per-channel normalisation;
* ``digits``: ``load_digits``, scikit-learn's bundled 8x8 handwritten digits (no download), upsampled;
* ``cifar``: ``load_cifar``, the python-pickle releases of CIFAR-10/100;
* ``unpickle``: ``SafeUnpickler``, the restricted unpickler the CIFAR reader uses;
* ``synthetic``: ``synthetic_dataset``, learnable random images of CIFAR shape for benchmarks and smoke runs;
* ``split``: ``hold_out``, the calibration split;
* ``load``: ``load_dataset`` (by name) and ``load_data`` (from a run's config);
* ``augmentation``: ``augment``, the random crop of the image padded by 4 black pixels plus optional
  horizontal flip.

The MIMO batch formation (``mimo_batches``, ``mimo_epoch_indices``, ``images_per_step``,
``steps_per_epoch``) lives in :mod:`mixshare.loader`; those names still resolve here.
"""

from __future__ import annotations

# The dataset names live in mixshare.config, which the command line reads without importing torch.
from mixshare.config import DATASETS, TRAINING_DATASETS
from mixshare.data.augmentation import augment
from mixshare.data.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar, read_cifar_test
from mixshare.data.dataset import DatasetError, ImageDataset
from mixshare.data.digits import load_digits
from mixshare.data.load import load_data, load_dataset
from mixshare.data.split import hold_out
from mixshare.data.synthetic import synthetic_dataset
from mixshare.data.unpickle import ForbiddenGlobalError, SafeUnpickler, safe_pickle_load

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "TRAINING_DATASETS",
    "DatasetError",
    "ForbiddenGlobalError",
    "ImageDataset",
    "SafeUnpickler",
    "augment",
    "hold_out",
    "load_cifar",
    "load_data",
    "load_dataset",
    "load_digits",
    "read_cifar_test",
    "safe_pickle_load",
    "synthetic_dataset",
]

#: Names of the batch formation, which mixshare.loader holds.
_IN_LOADER = frozenset({"images_per_step", "mimo_batches", "mimo_epoch_indices", "steps_per_epoch"})


def __getattr__(name: str):
    """``mixshare.data.mimo_batches`` and the other batch-formation names: those of :mod:`mixshare.loader`
    (imported on first use, so that importing the data does not import the loader)."""
    if name in _IN_LOADER:
        from mixshare import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
