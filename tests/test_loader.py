"""mixshare.loader: the MIMO batch indices (mimo_epoch_indices, mimo_batches, steps_per_epoch) and
MimoLoader: the multihead preset's shared augmentation, and every other preset's batches bit-identical
to the loader before it (commit OLD_LOADER_COMMIT)."""

import hashlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

from mixshare import config as cfg
from mixshare import data
from mixshare.loader import MimoLoader, images_per_step, mimo_batches, mimo_epoch_indices, steps_per_epoch

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


# --------------------------------------------------------------------------- MIMO batch indices


def _gen(seed=0, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def test_steps_per_epoch():
    assert steps_per_epoch(100, 10) == 10
    assert steps_per_epoch(105, 10) == 10
    assert steps_per_epoch(7, 10) == 1
    assert steps_per_epoch(1, 10) == 1
    assert steps_per_epoch(0, 10) == 0
    # batch_size counts rows, repetitions included: 32 images a step at 64 rows and b = 2.
    assert steps_per_epoch(50_000, 64, 2) == 50_000 // 32 == 1562
    assert steps_per_epoch(50_000, 64, 4) == 3125
    assert steps_per_epoch(50_000, 64, 3) == 50_000 // 22  # ceil(64 / 3) images, 66 rows
    assert [images_per_step(64, b) for b in (1, 2, 3, 4)] == [64, 32, 22, 16]
    with pytest.raises(ValueError):
        steps_per_epoch(10, 0)
    with pytest.raises(ValueError, match="batch_repetition"):
        steps_per_epoch(10, 4, 0)


@pytest.mark.parametrize("m, b, rho", [(2, 1, 0.0), (3, 4, 0.25), (4, 2, 0.5), (2, 3, 1.0), (1, 2, 0.3)])
def test_mimo_batches_structure(m, b, rho):
    n, batch = 103, 24  # rows per step, repetitions included
    steps = list(mimo_batches(n, batch, m, b, rho, _gen(1), "cpu"))
    images = -(-batch // b)
    assert len(steps) == steps_per_epoch(n, batch, b) == n // images
    rows = images * b
    shared = int(rows * rho)
    seen = []
    for index in steps:
        assert index.shape == (m, rows) and index.dtype == torch.int64
        distinct = torch.unique(index[0])
        assert distinct.numel() == images
        for i in range(m):
            values, counts = torch.unique(index[i], return_counts=True)
            assert torch.equal(values, distinct) and (counts == b).all()
            assert torch.equal(index[i, :shared], index[0, :shared])
        seen.append(distinct)
    seen = torch.cat(seen)
    assert seen.numel() == torch.unique(seen).numel() == len(steps) * images  # no sample in two steps
    assert seen.min() >= 0 and seen.max() < n
    if m > 1 and shared < rows:
        tails = torch.stack(steps)[:, :, shared:]
        assert not (tails == tails[:, :1]).all()  # members differ outside the shared prefix


def test_mimo_batch_rows_are_batch_size_with_repetitions():
    """The official sampler: 64 rows at b = 2 are 32 images twice each."""
    index = next(mimo_batches(50_000, 64, 2, 2, 0.0, _gen(0)))
    assert index.shape == (2, 64)
    for member in index:
        values, counts = torch.unique(member, return_counts=True)
        assert values.numel() == 32 and (counts == 2).all()
    assert torch.equal(torch.unique(index[0]), torch.unique(index[1]))


@pytest.mark.parametrize("b", [2, 4])
def test_input_repetition_shares_the_first_rows_before_the_shuffles(b):
    """int(64 * 0.1) = 6 rows, the first of the repeated batch: 3 images x 2 copies at b = 2."""
    for index in mimo_batches(4096, 64, 3, b, 0.1, _gen(b)):
        prefix = index[0, :6]
        assert all(torch.equal(member[:6], prefix) for member in index)
        # side by side copies, as the batch is formed (each image b times) before any shuffle
        runs = [prefix[k : k + b] for k in range(0, 6, b)]
        assert all((run == run[0]).all() for run in runs)
        assert len({int(run[0]) for run in runs}) == len(runs)
        for member in index:  # each image still appears b times in the member's rows
            values, counts = torch.unique(member, return_counts=True)
            assert (counts == b).all() and values.numel() == 64 // b


def test_mimo_batches_input_repetition_edges():
    full = torch.stack(list(mimo_batches(64, 32, 3, 2, 1.0, _gen(2))))
    assert (full == full[:, :1]).all()  # every member sees the same image at every row
    none = torch.stack(list(mimo_batches(64, 32, 3, 2, 0.0, _gen(2))))
    assert (none == none[:, :1]).float().mean() < 0.5
    # int(32 * 0.1) = 3 shared rows
    index = next(mimo_batches(64, 32, 2, 2, 0.1, _gen(3)))
    assert torch.equal(index[0, :3], index[1, :3])


def test_mimo_batches_rows_shuffled():
    """Batch repetition copies are spread over the rows, not left side by side."""
    index = torch.stack(list(mimo_batches(4096, 256, 2, 4, 0.0, _gen(4))))
    adjacent_equal = (index[..., 1:] == index[..., :-1]).double().mean()
    assert adjacent_equal < 0.1  # ~3/255 for a uniform shuffle, 3/4 if left interleaved


def test_mimo_batches_deterministic():
    a = torch.stack(list(mimo_batches(50, 8, 3, 2, 0.25, _gen(5))))
    b = torch.stack(list(mimo_batches(50, 8, 3, 2, 0.25, _gen(5))))
    c = torch.stack(list(mimo_batches(50, 8, 3, 2, 0.25, _gen(6))))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = _gen(5)
    first = torch.stack(list(mimo_batches(50, 8, 3, 2, 0.25, gen)))
    second = torch.stack(list(mimo_batches(50, 8, 3, 2, 0.25, gen)))
    assert torch.equal(first, a) and not torch.equal(first, second)  # epochs differ
    epoch = mimo_epoch_indices(50, 8, 3, 2, 0.25, _gen(5), "cpu")
    assert torch.equal(epoch, a)


def test_mimo_batches_tiny_datasets():
    steps = list(mimo_batches(5, 24, 2, 3, 0.5, _gen(7)))  # 8 images wanted, 5 there
    assert len(steps) == 1 and steps[0].shape == (2, 15)
    values, counts = torch.unique(steps[0][1], return_counts=True)
    assert values.tolist() == list(range(5)) and (counts == 3).all()
    assert torch.equal(steps[0][0, :7], steps[0][1, :7])
    one = list(mimo_batches(1, 16, 3, 2, 0.0, _gen(7)))
    assert len(one) == 1 and (one[0] == 0).all() and one[0].shape == (3, 2)
    assert list(mimo_batches(0, 8, 2, 1, 0.0, _gen(7))) == []
    exact = list(mimo_batches(8, 8, 2, 1, 0.0, _gen(7)))
    assert len(exact) == 1 and sorted(exact[0][0].tolist()) == list(range(8))


def test_mimo_batches_rejects_bad_arguments():
    with pytest.raises(ValueError, match="input_repetition"):
        mimo_batches(10, 2, 2, 1, 1.5, _gen())
    with pytest.raises(ValueError, match="num_subnets"):
        mimo_batches(10, 2, 0, 1, 0.0, _gen())
    with pytest.raises(ValueError, match="batch_size"):
        mimo_batches(10, 0, 2, 1, 0.0, _gen())
    with pytest.raises(ValueError, match="must match"):
        mimo_batches(10, 2, 2, 1, 0.0, _gen(), "meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mimo_batches_and_augment_on_cuda():
    gen = _gen(0, "cuda")
    index = next(mimo_batches(1000, 256, 3, 4, 0.1, gen, "cuda"))
    assert index.is_cuda and index.shape == (3, 256)
    images = torch.randn(256, 3, 32, 32, device="cuda")
    out = data.augment(images, True, gen)
    assert out.is_cuda and out.shape == images.shape


def test_batch_formation_names_still_resolve_in_mixshare_data():
    """The loader owns the batch formation; mixshare.data.<name> is the same function (the old loader used it)."""
    from mixshare import loader

    for name in ("images_per_step", "steps_per_epoch", "mimo_epoch_indices", "mimo_batches"):
        assert getattr(data, name) is getattr(loader, name)
    with pytest.raises(AttributeError, match="no attribute 'mimo_batch'"):
        data.mimo_batch
