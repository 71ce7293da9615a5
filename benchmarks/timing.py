"""Timing, memory and copy-bandwidth measurement on CPU and CUDA.

A *sample* times ``inner`` back-to-back calls between two synchronisations
(CUDA events on the GPU, ``perf_counter`` on the CPU) and divides by
``inner``: what a training loop sees, launch overhead included, and the
device's queue never runs dry between calls. ``measure`` takes ``repeat``
samples after ``warmup`` calls and reports the median and the quartiles.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional

import torch


@dataclasses.dataclass
class Timing:
    """Seconds per call: median and quartiles over the samples."""

    median: float
    q25: float
    q75: float
    samples: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q75 - self.q25) / self.median if self.median > 0 else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[1], q[0], q[2]


def time_sample(fn: Callable[[], object], device: torch.device, inner: int) -> float:
    """Seconds per call of ``inner`` consecutive calls."""
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    start_s = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start_s) / inner


def calibrate_inner(fn: Callable[[], object], device: torch.device, target_s: float) -> int:
    """Calls per sample so that a sample lasts about ``target_s`` (at least 1)."""
    once = time_sample(fn, device, 1)
    return max(1, min(1000, int(target_s / max(once, 1e-7))))


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    repeat: int = 10,
    sample_s: float = 0.02,
) -> Timing:
    """Median and quartiles of the seconds per call of ``fn``."""
    for _ in range(warmup):
        fn()
    inner = calibrate_inner(fn, device, sample_s)
    samples = [time_sample(fn, device, inner) for _ in range(repeat)]
    median, q25, q75 = _quartiles(samples)
    return Timing(median, q25, q75, len(samples))


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes allocated by one call of ``fn`` above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def page_faults_per_call(fn: Callable[[], object], device: torch.device, calls: int = 3) -> Optional[float]:
    """Minor page faults of this process per call of ``fn`` (CPU on Linux/macOS only).

    A host allocation above glibc's mmap threshold (at most 32 MiB) is a fresh
    mmap: each 4 KiB page faults and is zeroed by the kernel on first write,
    whichever provider allocates it.
    """
    if device.type != "cpu":
        return None
    try:
        import resource
    except ImportError:  # Windows
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def saved_for_backward(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` builds its graph.

    Views of the inputs count: a backward that keeps an input alive keeps its
    memory too. Storages are counted once.
    """
    seen: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        seen[key] = max(seen.get(key, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


def copy_bandwidth(device: torch.device, nbytes: int, *, repeat: int = 10) -> tuple[float, Timing]:
    """Device-to-device copy bandwidth (bytes read + written per second) of an ``nbytes`` buffer."""
    numel = nbytes // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, warmup=3, repeat=repeat, sample_s=0.05)
    return 2 * numel * 4 / timing.median, timing
