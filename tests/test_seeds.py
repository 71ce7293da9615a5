"""mixshare.seeds: the run's random streams never share a seed, and every site seeds from the table."""

import pathlib
import re

import pytest
import torch

from mixshare import config as cfg
from mixshare import evaluate
from mixshare.data import ImageDataset, hold_out, synthetic_dataset
from mixshare.loader import MimoLoader
from mixshare.seeds import RANK_STRIDE, STREAMS, stream_seed

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _all_seeds(seed, ranks):
    """{(stream, rank): seed} of one run over ``ranks`` DDP ranks."""
    return {(name, rank): stream_seed(seed, name, rank)
            for name, stream in STREAMS.items() for rank in (range(ranks) if stream.per_rank else [0])}


@pytest.mark.parametrize("seed", [0, 1, 7, 999, 1000, 2**40])
@pytest.mark.parametrize("ranks", [1, 2, 8, 64])
def test_streams_of_a_run_never_share_a_seed(seed, ranks):
    table = _all_seeds(seed, ranks)
    assert len(set(table.values())) == len(table)


def test_stream_values():
    """seed + offset, plus RANK_STRIDE per rank for the per-rank streams (the values training has always used)."""
    expected = {"run": 0, "batch_order": 1, "samples": 2, "plans": 3, "calibration": 5, "ood": 11}
    assert {name: s.offset for name, s in STREAMS.items()} == expected
    assert RANK_STRIDE == 1000 and all(0 <= s.offset < RANK_STRIDE for s in STREAMS.values())
    assert stream_seed(10, "samples", 3) == 10 + 2 + 3000 and stream_seed(10, "plans", 1) == 1013
    assert stream_seed(10, "batch_order") == 11 and stream_seed(4, "calibration") == 9 and stream_seed(4, "ood") == 15


def test_stream_seed_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown random stream 'order'; expected one of run, batch_order"):
        stream_seed(0, "order")
    with pytest.raises(ValueError, match="'ood' is drawn alike on every rank: rank must be 0, got 1"):
        stream_seed(0, "ood", 1)
    with pytest.raises(ValueError, match="rank must be >= 0, got -1"):
        stream_seed(0, "samples", -1)
    with pytest.raises(TypeError, match="seed and rank must be integers, got float and int"):
        stream_seed(1.5, "samples")


def _offsets(monkeypatch, **offsets):
    """Moves streams in the table: a site that seeds from the table follows, one with its own number does not."""
    for name, offset in offsets.items():
        monkeypatch.setitem(STREAMS, name, STREAMS[name]._replace(offset=offset))


def _dataset(n=24):
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.float32).view(n, 3, 4, 4)
    labels = torch.arange(n) % 3
    return ImageDataset(images, labels, images[:6], labels[:6], 3, True, "made", (0.0,) * 3, (1.0,) * 3)


@pytest.mark.parametrize("rank", [0, 1])
def test_loader_generators_seed_from_the_table(monkeypatch, rank):
    _offsets(monkeypatch, batch_order=37, samples=41)
    loader = MimoLoader(_dataset(), 8, 2, seed=5, rank=rank, world_size=2)
    order = torch.Generator().manual_seed(5 + 37)
    samples = torch.Generator().manual_seed(5 + 41 + RANK_STRIDE * rank)
    assert torch.equal(loader.order_generator.get_state(), order.get_state())
    assert torch.equal(loader.sample_generator.get_state(), samples.get_state())


def test_hold_out_seeds_from_the_table(monkeypatch):
    dataset = synthetic_dataset(60, 6, 3, size=4, seed=2)
    default = hold_out(dataset, 0.25, seed=3)  # offset 5: generator seed 8
    _offsets(monkeypatch, calibration=0)
    moved = hold_out(dataset, 0.25, seed=8)  # offset 0: the same generator seed
    assert torch.equal(default.calibration_labels, moved.calibration_labels)
    assert torch.equal(default.calibration_images, moved.calibration_images)
    # the permutation hold_out documents, drawn here: class by class, the first round(0.25 * count) of it
    order = torch.randperm(60, generator=torch.Generator().manual_seed(8))
    labels = dataset.train_labels
    held = torch.cat([order[labels[order] == c][:5] for c in range(3)]).sort().values
    assert torch.equal(default.calibration_images, dataset.train_images[held])


def test_ood_patches_seed_from_the_table(monkeypatch):
    pytest.importorskip("sklearn")
    dataset = synthetic_dataset(12, 5, 3, size=8, seed=1)
    config = cfg.Config(seed=4)
    _offsets(monkeypatch, ood=23)
    name, patches = evaluate.ood_set(dataset, config)
    assert name == evaluate.OOD_PHOTOGRAPHS
    assert torch.equal(patches, evaluate.photograph_patches(5, 3, (8, 8), seed=4 + 23))


def test_no_seed_offset_is_written_outside_the_table():
    """No ``seed + <number>`` (nor a rank stride) in mixshare/ or benchmarks/ outside mixshare/seeds.py."""
    pattern = re.compile(r"seed\)?\s*\+\s*\d|\d+\s*\*\s*(ddp\.)?rank\b|SEED_OFFSET")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for folder in ("mixshare", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))
             if path != ROOT / "mixshare" / "seeds.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
