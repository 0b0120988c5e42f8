"""Bounds on what a run may ask for (timed runs, threads and loader processes, batch sizes),
checked before anything is built or allocated; image sizes and class counts are bounded in
:mod:`shufflenet.preprocessing`.

Each value out of bounds raises ``ValueError`` naming its parameter, so a mistyped ``runs`` or
``batch_size`` never starts a run that cannot finish or fill the machine's memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "MAX_BATCH_ELEMENTS",
    "MAX_RUNS",
    "MAX_THREADS",
    "check_batch",
    "check_timing",
    "check_workers",
]

MAX_RUNS = 100_000  # timed runs, and warm-up runs, of one subject
MAX_THREADS = 1024  # intra-op threads or loader processes (OpenMP crashes when asked for 10**5)
MAX_BATCH_ELEMENTS = 1 << 28  # values in one input batch: 1 GiB of float32


def _integer(value: object, name: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer within {low}..{high}, got {value!r}")


def check_workers(workers: int) -> None:
    """``workers`` (data loading processes) within 0..:data:`MAX_THREADS`."""
    _integer(workers, "workers", 0, MAX_THREADS)


def check_timing(
    runs: int | None = None, warmup: int | None = None, threads: int | None = None
) -> None:
    """``runs`` within 1..:data:`MAX_RUNS`, ``warmup`` within 0..:data:`MAX_RUNS` and
    ``threads`` within 1..:data:`MAX_THREADS`; ``None`` (the default) is not checked."""
    for name, value, low, high in (
        ("runs", runs, 1, MAX_RUNS),
        ("warmup", warmup, 0, MAX_RUNS),
        ("threads", threads, 1, MAX_THREADS),
    ):
        if value is not None:
            _integer(value, name, low, high)


def check_batch(batch_size: int, sample: Sequence[int]) -> None:
    """``batch_size`` a positive integer whose batch of ``sample``-shaped inputs (C, H, W) holds
    at most :data:`MAX_BATCH_ELEMENTS` values."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    values = batch_size * math.prod(sample)
    if values > MAX_BATCH_ELEMENTS:
        shape = "x".join(map(str, sample))
        raise ValueError(
            f"batch_size {batch_size} of {shape} inputs is {values} values, more than "
            f"{MAX_BATCH_ELEMENTS}: lower batch_size or the input size"
        )
