"""Seeding and the random state a checkpoint keeps, for exact resume.

Shuffling is a function of (seed, epoch) and the loader's worker seeds come from a generator
seeded the same way; augmentation in the main process and dropout draw from the global RNGs,
whose states the checkpoint stores. A run killed at any moment and resumed from its last
checkpoint therefore ends bitwise identical to an uninterrupted one (on CPU, same threads).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "seed_all", "seed_worker", "set_rng_state"]


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """A loader's ``worker_init_fn``: seed NumPy and Python from the worker's torch seed."""
    # torch seeds each worker from the loader's generator; derive numpy's and random's from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's global RNG states as plain tensors and containers."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": list(random.getstate()[1]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((3, tuple(state["python"]), None))
