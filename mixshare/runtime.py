"""Where a run executes: its device and, under ``torchrun``, its DistributedDataParallel process group."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA if available, else CPU; any other name as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
