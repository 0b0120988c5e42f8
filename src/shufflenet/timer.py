"""The one latency timer: runners timed in interleaved rounds, median and interquartile range.

A *runner* is any zero-argument callable that runs something once and returns the milliseconds
it took; :class:`TimedRun` makes one from a function, timing it with ``time.perf_counter`` on
the CPU, or with CUDA events after a synchronisation on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["Runner", "TimedRun", "Timing", "measure"]

K = TypeVar("K")
Runner = Callable[[], float]  # runs once, returns milliseconds


@dataclass(frozen=True)
class Timing:
    """Latency samples of one runner, in milliseconds."""

    samples_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("a Timing needs at least one sample")

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.samples_ms))

    @property
    def p25_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 25))

    @property
    def p75_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 75))

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def images_per_s(self, batch_size: int) -> float:
        """Throughput at the median latency."""
        return 1000.0 * batch_size / self.median_ms


class TimedRun:
    """A runner around ``run``: calling it runs ``run`` once and returns milliseconds, timed
    with CUDA events on ``device`` when that is a CUDA device; :meth:`output` runs it once and
    returns ``to_numpy`` of its result as a float32 NumPy array."""

    def __init__(
        self,
        run: Callable[[], object],
        device: torch.device | str | None = None,
        to_numpy: Callable[[Any], Any] = np.asarray,
    ) -> None:
        self.run, self.to_numpy = run, to_numpy
        where = torch.device(device or "cpu")
        self.cuda = where if where.type == "cuda" else None
        if self.cuda is not None:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self) -> float:
        if self.cuda is not None:
            torch.cuda.synchronize(self.cuda)
            stream = torch.cuda.current_stream(self.cuda)
            self.start.record(stream)
            self.run()
            self.end.record(stream)
            self.end.synchronize()
            return float(self.start.elapsed_time(self.end))
        t0 = time.perf_counter()
        self.run()
        return (time.perf_counter() - t0) * 1e3

    def output(self) -> np.ndarray:
        return np.asarray(self.to_numpy(self.run()), dtype=np.float32)


def measure(
    runs_by_key: Mapping[K, Runner], *, runs: int, warmup: int, rounds: int = 5
) -> dict[K, Timing]:
    """Warm up every runner, then time each ``runs`` times in interleaved rounds.

    Each round re-warms a runner with one untimed call, so that ratios between runners are taken
    under the same machine load. Call it under ``torch.inference_mode()`` for PyTorch models.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for timed in runs_by_key.values():
        for _ in range(warmup):
            timed()
    rounds = max(1, min(rounds, runs))
    samples: dict[K, list[float]] = {key: [] for key in runs_by_key}
    for r in range(rounds):
        n = runs // rounds + (r < runs % rounds)
        for key, timed in runs_by_key.items():
            timed()  # re-warm caches after the other runners
            samples[key] += [timed() for _ in range(n)]
    return {key: Timing(tuple(s)) for key, s in samples.items()}
