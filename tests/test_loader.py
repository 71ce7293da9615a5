"""mixshare.loader.MimoLoader: the multihead preset's shared augmentation, and every other preset's
batches bit-identical to the loader before it (commit OLD_LOADER_COMMIT)."""

import hashlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

from mixshare import config as cfg
from mixshare import data
from mixshare.loader import MimoLoader

REPO = pathlib.Path(__file__).resolve().parent.parent
# The last commit whose mixshare/loader.py augmented every member's copy of every row on its own.
OLD_LOADER_COMMIT = "5fce686173d0839a5ce8494f531db033f0b04815"
EXISTING = ("cut-mixmo", "mixshare-fadeout")  # input repetition 0 and 0.1


def _dataset(n=40, size=8, hflip=True) -> data.ImageDataset:
    """Integer-valued images (no float draws), every pixel distinct: equal pixels mean the same crop and flip."""
    images = torch.arange(n * 3 * size * size, dtype=torch.float32).view(n, 3, size, size) / 7
    labels = torch.arange(n) % 5
    return data.ImageDataset(images, labels, images[:4], labels[:4], 5, hflip, "made", (0.5,) * 3, (0.25,) * 3)


def _loader(module, method, dataset, seed=3, **kwargs):
    c = cfg.apply(cfg.Config(batch_size=16), cfg.preset(method), method)
    return module.MimoLoader(dataset, c.batch_size, c.num_subnets, c.batch_repetition, c.input_repetition,
                             seed=seed, **kwargs)


def _batches(loader, epochs=2):
    return [(images.clone(), labels.clone()) for _ in range(epochs) for images, labels in loader]


def _old_loader_module():
    try:
        source = subprocess.run(["git", "show", f"{OLD_LOADER_COMMIT}:mixshare/loader.py"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the repository's history (commit {OLD_LOADER_COMMIT[:7]}) is not available")
    spec = importlib.util.spec_from_loader("old_mixshare_loader", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, "old_mixshare_loader.py", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("method", EXISTING)
def test_existing_presets_batches_are_bit_identical_to_the_old_loader(method, channels_last):
    old = _old_loader_module()
    dataset = _dataset()
    new_loader = _loader(sys.modules[MimoLoader.__module__], method, dataset, channels_last=channels_last)
    old_loader = _loader(old, method, dataset, channels_last=channels_last)
    new, before = _batches(new_loader), _batches(old_loader)
    assert len(new) == len(before) == 2 * len(new_loader) > 2
    for (images, labels), (old_images, old_labels) in zip(new, before):
        assert images.shape == old_images.shape and images.stride() == old_images.stride()
        assert torch.equal(images, old_images) and torch.equal(labels, old_labels)
    # the generators end in the same states: the plans drawn after the batches are the same too
    for key in ("order", "samples"):
        assert torch.equal(new_loader.state_dict()[key], old_loader.state_dict()[key])


# SHA-256 of the first epoch's images and labels bytes, recorded from the loader of OLD_LOADER_COMMIT
# with torch 2.13 (the CPU generator's streams): the same check where the history is not available.
RECORDED = {
    "cut-mixmo": "8dc23fcffca0e11e79eea02d9b4fd7deb685f9ef468c323a87f2fe7e8e78d5f2",
    "mixshare-fadeout": "c0723dab470ad29ddb81b31b5668f67731dbfca6ce0b4511c3a3187528043db2",
}


def _digest(batches) -> str:
    h = hashlib.sha256()
    for images, labels in batches:
        h.update(images.contiguous().numpy().tobytes())
        h.update(labels.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("method", EXISTING)
def test_existing_presets_batches_match_the_recorded_old_batches(method):
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) != (2, 13):
        pytest.skip("digests recorded with torch 2.13's CPU generator streams")
    assert _digest(_batches(_loader(sys.modules[MimoLoader.__module__], method, _dataset()), 1)) == RECORDED[method]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
def test_multihead_members_see_identical_images_and_labels(world_size, channels_last):
    dataset = _dataset(hflip=True)
    for rank in range(world_size):
        loader = _loader(sys.modules[MimoLoader.__module__], "multihead", dataset, rank=rank, world_size=world_size,
                         channels_last=channels_last)
        batches = _batches(loader)
        assert len(batches) == 2 * len(loader) > 2
        for images, labels in batches:
            assert images.shape == (2, 16 // world_size, 3, 8, 8) and labels.shape == (2, 16 // world_size)
            assert torch.equal(images[0], images[1]) and torch.equal(labels[0], labels[1])
            assert labels.unique().numel() > 1  # the rows are distinct images ...
            assert images[0].flatten(1).unique(dim=0).shape[0] == images.shape[1]  # ... none repeated (b = 1)


def test_multihead_still_augments_each_image():
    """One crop and flip per image, shared by the members, but drawn per image: not the plain image."""
    dataset = _dataset()
    images, labels = next(iter(_loader(sys.modules[MimoLoader.__module__], "multihead", dataset)))
    plain = dataset.train_images[(dataset.train_images.view(40, -1)[:, None] == images[0].reshape(16, -1)[None])
                                 .all(-1).any(-1)]
    assert plain.shape[0] < 16  # most rows are cropped or flipped


def test_other_presets_still_augment_each_members_copy_on_its_own():
    """Input repetition 0.1: the shared rows hold the same image for every member, each copy augmented apart."""
    dataset = _dataset(n=80)
    loader = MimoLoader(dataset, 64, 2, 2, 0.1, seed=0)  # 6 shared rows
    differs = 0
    for images, labels in loader:
        assert torch.equal(labels[0, :6], labels[1, :6])
        differs += int(not torch.equal(images[0, :6], images[1, :6]))
    assert differs > 0


def test_multihead_preset():
    c = cfg.apply(cfg.Config(), cfg.preset("multihead"), "multihead")
    cfg.validate(c)
    assert (c.num_subnets, c.mixing, c.input_repetition, c.batch_repetition, c.loss_root, c.unmix) == (
        2, "sum", 1.0, 1, 1.0, False)
    assert c.lr_value() == cfg.apply(cfg.Config(), cfg.preset("single"), "single").lr_value()
