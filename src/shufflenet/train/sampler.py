"""Repeated augmentation: a sampler that draws each image several times per epoch.

Each copy of an image goes through the augmentation anew. An epoch keeps its length (the
training set's size, shared over the processes), so it covers about ``1 / repeats`` of the
images, each ``repeats`` times: consecutive copies go to consecutive processes (under DDP, a
batch step sees one image augmented differently on several GPUs; in one process, the copies
share a batch). The order is a function of (seed, epoch), like ``DistributedSampler``'s, and
:meth:`RepeatSampler.state_dict` is all a checkpoint needs to continue it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["RepeatSampler"]


class RepeatSampler(Sampler[int]):
    """Indices ``0..size-1``, each ``repeats`` times in a shuffled order, of which process
    ``rank`` of ``num_replicas`` takes every ``num_replicas``-th: ``size // num_replicas``
    indices per process and epoch (:meth:`set_epoch` picks the epoch)."""

    def __init__(
        self, size: int, repeats: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if size < 1 or repeats < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need size >= 1, repeats >= 1 and 0 <= rank < num_replicas, got size {size}, "
                f"repeats {repeats}, rank {rank}, num_replicas {num_replicas}"
            )
        self.size, self.repeats = size, repeats
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.size // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).repeat_interleave(self.repeats)
        return iter(order[self.rank :: self.num_replicas][: len(self)].tolist())

    def state_dict(self) -> dict[str, Any]:
        """What the order depends on besides the data: the epoch, the seed, the repeats."""
        return {"epoch": self.epoch, "seed": self.seed, "repeats": self.repeats}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (``ValueError`` for another seed or repeats)."""
        seed, repeats, epoch = (state.get(k) for k in ("seed", "repeats", "epoch"))
        if (seed, repeats) != (self.seed, self.repeats) or not isinstance(epoch, int):
            raise ValueError(
                f"the saved sampler drew with seed {seed} and {repeats} repeats (epoch "
                f"{epoch!r}), not seed {self.seed} and {self.repeats}"
            )
        self.epoch = epoch
