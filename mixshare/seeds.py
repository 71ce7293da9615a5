"""The random streams of a run: each is seeded from the run's seed by one offset of :data:`STREAMS`.

``stream_seed(seed, name, rank)`` is ``seed + offset`` for a stream drawn alike on every DDP rank and
``seed + offset + RANK_STRIDE * rank`` for a per-rank stream. The offsets differ from each other and
from 0 modulo ``RANK_STRIDE``, so the streams of one run never share a seed, whatever the rank.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

__all__ = ["RANK_STRIDE", "STREAMS", "Stream", "stream_seed"]


class Stream(NamedTuple):
    offset: int  # added to the run's seed
    per_rank: bool  # True: each DDP rank adds RANK_STRIDE * rank
    draws: str  # what the stream's generator draws


#: Seed distance between the per-rank streams of consecutive DDP ranks (above every offset).
RANK_STRIDE = 1000

STREAMS: dict[str, Stream] = {
    "run": Stream(0, False, "the run's seed itself: the global torch generator (model initialisation), "
                            "the synthetic data, the corruption sets"),
    "batch_order": Stream(1, False, "MimoLoader.order_generator: the epoch's MIMO index matrices, alike on every rank"),
    "samples": Stream(2, True, "MimoLoader.sample_generator: the augmentation and the plans' per-sample draws"),
    "plans": Stream(3, True, "training's host random.Random: the plans' per-batch draws"),
    "calibration": Stream(5, False, "hold_out's permutation of the training images"),
    "ood": Stream(11, False, "the OOD patches and the subsets of test images evaluated under shift"),
}


def stream_seed(seed: int, name: str, rank: int = 0) -> int:
    """The seed of stream ``name`` of a run seeded ``seed``, on DDP rank ``rank`` (0 for the streams
    drawn alike on every rank)."""
    try:
        stream = STREAMS[name]
    except KeyError:
        raise ValueError(f"unknown random stream {name!r}; expected one of {', '.join(STREAMS)}") from None
    try:
        seed, rank = operator.index(seed), operator.index(rank)
    except TypeError:
        raise TypeError(f"seed and rank must be integers, got {type(seed).__name__} and {type(rank).__name__}") \
            from None
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if rank and not stream.per_rank:
        raise ValueError(f"stream {name!r} is drawn alike on every rank: rank must be 0, got {rank}")
    return seed + stream.offset + RANK_STRIDE * rank
