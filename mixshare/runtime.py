"""Where a run executes: its device and, under ``torchrun``, its DistributedDataParallel process group."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re

import torch
import torch.distributed as dist

DEVICE_NAMES = ("auto", "cpu", "cuda")  # and cuda:<index>
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DEVICE_ALIASES = {"gpu": "cuda"}


def check_device_name(name) -> None:
    """Raises ValueError unless ``name`` is auto, cpu, cuda or cuda:<index>, suggesting the nearest."""
    if isinstance(name, str) and _DEVICE.match(name):
        return
    text = str(name).strip().lower()
    base, _, index = text.partition(":")
    numbered = re.match(r"^cuda(\d+)$", base)
    if text in _DEVICE_ALIASES or _DEVICE.match(text):
        near = _DEVICE_ALIASES.get(text, text)
    elif numbered:
        near = f"cuda:{numbered.group(1)}"
    else:
        close = difflib.get_close_matches(base, DEVICE_NAMES, n=1, cutoff=0.5)
        near = close[0] if close else None
        if near == "cuda" and index.isdigit():
            near = f"cuda:{index}"
    hint = f"did you mean {near!r}? " if near else ""
    raise ValueError(f"device {name!r} is not a device name; {hint}valid: auto, cpu, cuda, cuda:<index>")


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA if available, else CPU; ``cpu``, ``cuda``, ``cuda:<index>`` checked to exist here
    (ValueError naming what there is otherwise)."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device is usable here (torch.cuda.is_available() is False); "
                             f"use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def gpu_only(wanted: bool, device) -> bool:
    """Whether a GPU-only speed setting (bfloat16 autocast, channels_last memory) applies: asked for
    (``wanted``) and on a CUDA device. Elsewhere both stay off, whatever the config says."""
    return bool(wanted) and torch.device(device).type == "cuda"


def bf16_autocast(wanted: bool, device):
    """The forward's bfloat16 autocast on ``device`` where :func:`gpu_only` lets it apply; else a
    context that changes nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu_only(wanted, device))


def launch_rank() -> int:
    """This process's rank as torchrun's environment states it (0 outside torchrun), readable before
    the process group exists."""
    return int(os.environ.get("RANK", "0"))


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Joins the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU.

    Returns the rank's place and its device (``cuda:LOCAL_RANK`` for a CUDA run).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    ddp = Distributed(dist.get_rank(), dist.get_world_size())
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", ddp.rank)))
        torch.cuda.set_device(device)
    return ddp, device
