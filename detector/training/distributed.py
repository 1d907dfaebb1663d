"""torchrun support: one process per GPU (or per CPU worker with gloo), set up from the environment.

``torchrun --nproc_per_node N -m detector train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them training runs in a single process and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from detector.devices import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if torchrun launched us; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device == "auto" and torch.cuda.is_available() or device.startswith("cuda")
    if want_cuda:
        torch.cuda.set_device(local if device in ("auto", "cuda") else torch.device(device).index or 0)
        target = torch.device("cuda", torch.cuda.current_device())
    else:
        target = resolve_device(device)  # "auto" without a GPU is the CPU
    info = DistInfo(rank, world, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
        info.initialised_here = True
    return info, target


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
