"""Where computation runs: one device vocabulary and one guard for PyTorch's CPU threads.

Devices are named ``auto`` (a CUDA GPU if PyTorch sees one, else the CPU), ``cpu``, ``cuda``
(this process's GPU: under torchrun, the one of its local rank) or ``cuda:N``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["DEVICES", "idle_threads", "resolve_device", "torch_threads"]

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``name`` (see the module docstring); ``ValueError`` if absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    index = name.removeprefix("cuda:") if name.startswith("cuda:") else None
    if name != "cuda" and not (index and index.isdigit()):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: PyTorch sees no CUDA GPU here; use device 'cpu'")
    device = torch.device("cuda", local_rank if index is None else int(index))
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    return device


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """PyTorch's intra-op CPU threads set to ``threads`` for the block (``None``: left as they
    are), restored after it; yields the count in force."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def idle_threads() -> int:
    """PyTorch's CPU threads, less the cores that other processes kept busy over the last minute.

    ShuffleNet is many small ops: an OpenMP thread that shares its core with another process
    stalls every op, so on a busy machine fewer threads than cores run faster.
    """
    threads = torch.get_num_threads()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, min(threads, (os.cpu_count() or threads) - busy))
