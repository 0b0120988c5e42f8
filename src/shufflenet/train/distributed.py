"""torchrun support: the process group and the few collectives a run needs.

Under ``torchrun`` (``WORLD_SIZE`` > 1) a run joins the process group (gloo on CPU, nccl on
GPU), wraps the model in ``DistributedDataParallel`` and shards the data with a
``DistributedSampler``; ``batch_size`` stays the global batch, so the same command line trains
the same recipe with any number of processes. Only rank 0 logs and writes files. Without
torchrun every helper here is a no-op for the one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..device import resolve_device

__all__ = ["Dist", "all_sum", "broadcast", "distributed", "gather"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


@contextmanager
def distributed(device_name: str) -> Iterator[Dist]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (and leave it afterwards)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    ctx = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ctx
    finally:
        if owns:
            dist.destroy_process_group()


def all_sum(values: Tensor, ctx: Dist) -> Tensor:
    """``values`` summed over the processes, on the CPU."""
    if ctx.active:
        device = torch.device("cuda", ctx.local_rank) if dist.get_backend() == "nccl" else "cpu"
        values = values.to(device)
        dist.all_reduce(values)
    return values.cpu()


def broadcast(value: Any, ctx: Dist) -> Any:
    """Rank 0's ``value``, in every process."""
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ctx: Dist) -> list[Any]:
    """Every process's ``value``, by rank, in every process."""
    if not ctx.active:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out
