"""Measured time per layer and per op category, next to FLOPs and MAC (V2's Figure 2).

The model runs eagerly under a dispatch mode that times every ATen op and charges it to the same
row that :func:`shufflenet.complexity.profile` uses: the leaf module that runs it, or
``module:op`` for ops a module calls itself (a V2 unit's concat and shuffle, a V1 unit's add).
On the CPU each op is timed with ``time.perf_counter`` (kernels are synchronous); on CUDA with a
pair of CUDA events per op, read after the pass.

Each pass also measures its own wall time (:class:`shufflenet.timer.TimedRun`). The time
the op timers cannot see (Python, module hooks and dispatch between kernels) is ``overhead_ms``;
per pass it is wall time minus the sum of op times, so it is never negative. Passes outside the
interquartile range of wall time are dropped and the rest averaged, so per-layer times, category
totals and the overhead add up exactly to ``total_ms``. ``plain_ms`` is the median latency of
the same model without any instrumentation, for comparison.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..complexity import _Counter, _track_modules, module_category, op_category, profile
from ..device import resolve_device, torch_threads
from ..io import atomic_path
from ..limits import check_batch, check_timing
from ..timer import TimedRun, measure

__all__ = ["LayerTime", "TimingProfile", "plot_timing", "time_layers"]


@dataclass
class LayerTime:
    """One row: measured time next to FLOPs and MAC per image (0 for rows that move no data)."""

    name: str
    kind: str
    category: str
    time_ms: float
    flops: int = 0
    mac: int = 0


@dataclass
class TimingProfile:
    """Per-layer times of one model on one input; all times are per batch, in milliseconds."""

    input_size: tuple[int, int, int]
    batch_size: int
    device: str
    threads: int
    runs: int
    total_ms: float  # wall time of an instrumented pass
    plain_ms: float  # median latency without instrumentation
    layers: list[LayerTime] = field(default_factory=list)

    @property
    def layers_ms(self) -> float:
        return sum(layer.time_ms for layer in self.layers)

    @property
    def overhead_ms(self) -> float:
        """Time between the ops that no op timer saw (Python, hooks, dispatch)."""
        return self.total_ms - self.layers_ms

    def by_category(self) -> dict[str, dict[str, float]]:
        """Time, FLOPs, MAC and row count summed per op category."""
        totals: dict[str, dict[str, float]] = {}
        for layer in self.layers:
            t = totals.setdefault(
                layer.category, {"layers": 0, "time_ms": 0.0, "flops": 0, "mac": 0}
            )
            t["layers"] += 1
            t["time_ms"] += layer.time_ms
            t["flops"] += layer.flops
            t["mac"] += layer.mac
        return totals

    def by_block(self) -> dict[str, dict[str, float]]:
        """Time per top-level block (``conv1``, ``stage2``, ...) split by category."""
        blocks: dict[str, dict[str, float]] = {}
        for layer in self.layers:
            block = layer.name.split(":")[0].split(".")[0]
            cats = blocks.setdefault(block, {})
            cats[layer.category] = cats.get(layer.category, 0.0) + layer.time_ms
        return blocks

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers_ms"] = self.layers_ms
        data["overhead_ms"] = self.overhead_ms
        data["categories"] = self.by_category()
        data["blocks"] = self.by_block()
        return data


class _OpTimer(_Counter):
    """Times each ATen op into the row ``complexity.profile`` would charge it to."""

    def __init__(self, cuda: bool) -> None:
        super().__init__()
        self.cuda = cuda
        self.row_kinds: dict[str, tuple[str, str]] = {}
        self.times: dict[str, float] = defaultdict(float)
        self.events: list[tuple[str, Any, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if not self.stack:
            return func(*args, **(kwargs or {}))
        key = self._row(func.overloadpacket.__name__)
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = func(*args, **(kwargs or {}))
            end.record()
            self.events.append((key, start, end))
            return out
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.times[key] += (time.perf_counter() - t0) * 1e3
        return out

    def _row(self, op: str) -> str:
        path = self.stack[-1]
        if path in self.leaves:
            key, module = path, self.modules[path]
            kind = (type(module).__name__, module_category(module))
        else:
            key, kind = f"{path}:{op}", (op, op_category(op))
        self.row_kinds.setdefault(key, kind)
        return key

    def collect(self) -> dict[str, float]:
        """This pass's time per row (reads the CUDA events), then reset for the next pass."""
        if self.cuda:
            torch.cuda.synchronize()
            for key, start, end in self.events:
                self.times[key] += float(start.elapsed_time(end))
        times, self.times, self.events = dict(self.times), defaultdict(float), []
        return times


def time_layers(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    *,
    batch_size: int = 1,
    runs: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    threads: int | None = None,
) -> TimingProfile:
    """Measure the time of every layer of ``model`` (eager PyTorch, eval mode, no grad)."""
    check_timing(runs, warmup, threads)
    dev = resolve_device(device)
    stats = profile(model, input_size)  # validates input_size; FLOPs and MAC per image
    check_batch(batch_size, input_size)
    model = model.eval().to(dev)
    x = torch.randn(batch_size, *input_size, device=dev)
    cuda = dev.type == "cuda"
    timer = _OpTimer(cuda)

    def instrumented() -> None:
        with timer:
            model(x)

    walls: list[float] = []
    passes: list[dict[str, float]] = []
    on_gpu = torch.cuda.device(dev) if cuda else nullcontext()  # the op timers' CUDA events
    with torch_threads(threads) as n_threads, torch.inference_mode(), on_gpu:
        plain = measure({0: TimedRun(lambda: model(x), dev)}, runs=runs, warmup=warmup)
        timed_pass = TimedRun(instrumented, dev)
        with _track_modules(model, timer):
            for i in range(warmup + runs):
                wall = timed_pass()
                if i >= warmup:
                    walls.append(wall)
                    passes.append(timer.collect())
                else:
                    timer.collect()
    lo, hi = np.percentile(walls, [25, 75])
    kept = [i for i, w in enumerate(walls) if lo <= w <= hi] or list(range(len(walls)))
    flops = {row.name: (row.flops, row.mac) for row in stats.layers}
    layers = []
    for key, (kind, category) in timer.row_kinds.items():
        ms = sum(passes[i].get(key, 0.0) for i in kept) / len(kept)
        layers.append(LayerTime(key, kind, category, ms, *flops.get(key, (0, 0))))
    return TimingProfile(
        input_size=tuple(input_size),  # type: ignore[arg-type]
        batch_size=batch_size,
        device=dev.type,
        threads=n_threads,
        runs=runs,
        total_ms=sum(walls[i] for i in kept) / len(kept),
        plain_ms=plain[0].median_ms,
        layers=layers,
    )


def plot_timing(result: TimingProfile, path: str | Path, title: str = "") -> Path:
    """Bar charts: share of time, FLOPs and MAC per category; time per block by category."""
    from matplotlib.figure import Figure

    cats = result.by_category()
    names = sorted(cats, key=lambda c: -cats[c]["time_ms"])
    total_t = max(result.layers_ms, 1e-12)
    total_f = max(sum(c["flops"] for c in cats.values()), 1)
    total_m = max(sum(c["mac"] for c in cats.values()), 1)
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    y = np.arange(len(names))
    for offset, label, values in (
        (-0.27, "time", [100 * cats[n]["time_ms"] / total_t for n in names]),
        (0.0, "FLOPs", [100 * cats[n]["flops"] / total_f for n in names]),
        (0.27, "MAC", [100 * cats[n]["mac"] / total_m for n in names]),
    ):
        ax1.barh(y + offset, values, height=0.27, label=label)
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    ax1.set_xlabel("share of the model's total (%)")
    ax1.set_title("per op category")
    ax1.legend()
    blocks = result.by_block()
    left = np.zeros(len(blocks))  # stacked bars: where each category starts
    for name in names:
        widths = np.array([blocks[b].get(name, 0.0) for b in blocks])
        ax2.barh(list(blocks), widths, left=left, label=name)
        left += widths
    ax2.invert_yaxis()
    ax2.set_xlabel("measured time (ms)")
    ax2.set_title("per block, by category")
    ax2.legend(fontsize="small")
    fig.suptitle(
        f"{title} batch {result.batch_size}, {result.device}, {result.threads} threads: "
        f"{result.total_ms:.2f} ms instrumented ({result.overhead_ms:.2f} ms overhead), "
        f"{result.plain_ms:.2f} ms plain"
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
