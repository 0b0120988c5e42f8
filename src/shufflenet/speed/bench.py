"""The bench: latency of models across engines, batch sizes and devices, with the machine.

Every (model, engine, batch size) is timed with :func:`shufflenet.speed.engines.time_engine`:
warmed up, then timed ``runs`` times (:mod:`shufflenet.timer`). One engine runs at a time,
its models interleaved with each other only, so that ratios between them are taken under the
same machine load and one runtime's thread pool never competes with another's while being
timed. Statistics are the median and the interquartile range.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..complexity import profile
from ..cpu import cpu_name, simd_features
from ..device import resolve_device, torch_threads
from ..limits import check_batch, check_timing
from ..preprocessing import check_input_size
from .baselines import (
    BASELINES,
    build_model,
    build_torchvision_counterpart,
    expand_model_names,
    has_torchvision_counterpart,
    model_card,
)
from .engines import (
    AUTO,
    available_engines,
    engine_spec,
    engine_version,
    resolve_engine,
    time_engine,
)

__all__ = [
    "COMPARISONS",
    "BenchConfig",
    "BenchRecord",
    "BenchResult",
    "SpeedResult",
    "machine_info",
    "run_bench",
]

COMPARISONS = ("torchvision",)  # what ``compare`` can also time: torchvision's V2


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine and software a measurement came from."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "simd": simd_features(),  # which kernels the runtimes can pick
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for engine in available_engines():  # the runtimes the engines run on
        if (version := engine_version(engine)) is not None:
            info[version[0]] = version[1]
    # others' work competing for the CPU
    info["load_average_1min"] = round(os.getloadavg()[0], 2)
    dev = resolve_device(device)
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


@dataclass
class BenchConfig:
    """What to time: models (names or shell patterns, baselines included) x engines x batches.

    An engine ``auto`` is the fastest one installed for the device
    (:func:`~shufflenet.speed.engines.resolve_engine`); records name the engine it resolved to.
    """

    models: Sequence[str]
    engines: Sequence[str] = (AUTO,)  # auto: the fastest installed for the device
    batch_sizes: Sequence[int] = (1,)
    input_size: tuple[int, int] = (224, 224)
    threads: int | None = None
    device: str = "cpu"
    runs: int = 30
    warmup: int = 5
    compare: str | None = None  # one of COMPARISONS: also time torchvision's V2 in the same run
    pretrained: bool | str = False  # our models with their published weights (shufflenet.hub)

    def validate(self) -> None:
        """Raise ``ValueError`` with an actionable message for any bad setting."""
        if not self.models:
            raise ValueError("models is empty: give at least one model")
        resolve_device(self.device)
        if not self.engines:
            raise ValueError(f"engines is empty; choose from {', '.join(available_engines())}")
        for engine in self.engines:
            engine_spec(engine, self.device)
        h, w = check_input_size(self.input_size, "input_size")
        if not self.batch_sizes:
            raise ValueError("batch_sizes is empty: give at least one batch size")
        for batch in self.batch_sizes:
            check_batch(batch, (3, h, w))
        check_timing(self.runs, self.warmup, self.threads)
        if self.compare is not None and self.compare not in COMPARISONS:
            raise ValueError(
                f"compare must be None or one of {', '.join(COMPARISONS)}, got {self.compare!r}"
            )


@dataclass
class BenchRecord:
    """The latency of one (model, implementation, engine, batch size)."""

    model: str
    implementation: str  # "shufflenet" (this package) or "torchvision"
    engine: str
    batch_size: int
    input_size: tuple[int, int]
    device: str
    threads: int
    runs: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    iqr_ms: float
    images_per_s: float
    mflops: float  # multiply-adds per image, counted by ``shufflenet.profile``
    top1: float | None
    top1_source: str | None
    speedup_vs_torchvision: float | None = None  # torchvision's median / ours, same run


@dataclass
class SpeedResult:
    """Measurements with the machine (:func:`machine_info`) and the settings they came from;
    ``bench`` and ``guidelines`` add their rows."""

    machine: dict[str, Any]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult(SpeedResult):
    """The bench's records."""

    records: list[BenchRecord] = field(default_factory=list)


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time every (model, engine, batch size) of ``config`` on this machine."""
    config.validate()
    names = expand_model_names(list(config.models))
    note = progress or (lambda _msg: None)
    subjects: list[tuple[str, str, nn.Module]] = []
    for name in names:
        impl = "torchvision" if name in BASELINES else "shufflenet"
        subjects.append((name, impl, build_model(name, pretrained=config.pretrained)))
        if config.compare and impl == "shufflenet" and has_torchvision_counterpart(name):
            subjects.append((name, "torchvision", build_torchvision_counterpart(name)))
    if config.compare and len(subjects) == len(names):
        raise ValueError(
            f"compare={config.compare!r} needs one of torchvision's ShuffleNet V2 widths"
        )
    h, w = config.input_size
    kind = resolve_device(config.device).type  # records say "cpu" or "cuda"
    mflops = {(n, i): profile(m, (3, h, w)).flops / 1e6 for n, i, m in subjects}
    engines = list(dict.fromkeys(resolve_engine(e, config.device) for e in config.engines))
    result = BenchResult(machine_info(config.device), _config_dict(config, names, engines))
    with torch_threads(config.threads) as threads:
        example = torch.randn(1, 3, h, w)
        # One engine at a time: its runners are interleaved with each other only, so that one
        # runtime's spinning thread pool never competes with another's while being timed.
        models = {(name, impl): model for name, impl, model in subjects}
        inputs = [
            torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
            for batch in config.batch_sizes
        ]
        for engine in engines:
            note(f"{engine}: {len(models)} models, batch sizes {list(config.batch_sizes)}")
            try:
                by_batch = time_engine(
                    engine,
                    models,
                    dict.fromkeys(models, example),
                    [dict.fromkeys(models, x) for x in inputs],
                    device=config.device,
                    threads=config.threads,
                    runs=config.runs,
                    warmup=config.warmup,
                )
            except RuntimeError as e:
                raise ValueError(f"a model failed with {engine}, input {h}x{w}: {e}") from e
            for batch, timings in zip(config.batch_sizes, by_batch, strict=True):
                for (name, impl), t in timings.items():
                    card = model_card(name)
                    result.records.append(
                        BenchRecord(
                            model=name,
                            implementation=impl,
                            engine=engine,
                            batch_size=batch,
                            input_size=(h, w),
                            device=kind,
                            threads=config.threads or threads,
                            runs=config.runs,
                            median_ms=t.median_ms,
                            p25_ms=t.p25_ms,
                            p75_ms=t.p75_ms,
                            iqr_ms=t.iqr_ms,
                            images_per_s=t.images_per_s(batch),
                            mflops=mflops[name, impl],
                            top1=card.top1,
                            top1_source=card.top1_source,
                        )
                    )
    _add_speedups(result.records)
    return result


def _add_speedups(records: list[BenchRecord]) -> None:
    tv = {
        (r.model, r.engine, r.batch_size): r.median_ms
        for r in records
        if r.implementation == "torchvision" and r.model not in BASELINES
    }
    for r in records:
        key = (r.model, r.engine, r.batch_size)
        if r.implementation == "shufflenet" and key in tv:
            r.speedup_vs_torchvision = tv[key] / r.median_ms


def _config_dict(config: BenchConfig, names: list[str], engines: list[str]) -> dict[str, Any]:
    data = asdict(config)
    data["models"] = names
    data["engines"] = engines  # auto resolved
    data["device"] = resolve_device(config.device).type
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
