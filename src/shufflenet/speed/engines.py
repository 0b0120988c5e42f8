"""The bench engines: :data:`ENGINES` maps each name to how it runs a model and how it is timed.

An *engine* turns a model into something that runs a batch: ``eager`` PyTorch,
``channels_last`` (NHWC memory format), ``compile`` (``torch.compile``), ``optimized``
(:func:`shufflenet.deploy.optimize`) (:class:`TorchEngine`, timed in this process); or a file
converted for a runtime and run there (:class:`RuntimeEngine`): ``onnxruntime`` (the model's ONNX
export run by ONNX Runtime with all graph optimisations on and the thread count set, as a user
would run it), ``openvino`` when that package is installed, and one engine per runtime of a
fixed-batch export format (:data:`~shufflenet.export.RUNTIMES`: LiteRT, ...), converted as their
exports convert ours, at the fixed batch timed. The ``*_fast`` engines and the fixed-batch ones
run our shuffle-free graph (:func:`shufflenet.deploy.fastpath.fast_model`) in that runtime's
layout. ``auto`` (:func:`resolve_engine`) is the fastest engine installed for the device
(:data:`AUTO_ORDER`). Compiling engines compile for an input shape when bound to it, untimed.

Each engine times itself (:meth:`EngineSpec.time`). Before it is timed, every runner's output is
checked against the model in eager PyTorch (:mod:`shufflenet.speed.checks`). The models timed
with one engine are interleaved (:func:`shufflenet.timer.measure`); a runtime that asks for a
process of its own (ONNX Runtime and the edge runtimes, on the CPU) is timed in one, one per
engine (:mod:`shufflenet.speed.worker`).

To add an engine, write a function that binds a model and returns a :data:`Binder`, and add its
``TorchEngine(run=...)`` row to :data:`ENGINES`; an engine of another kind is an
:class:`EngineSpec` subclass with its own ``bind`` (and ``time``, if it is not timed in this
process). A runtime-backed export format brings its engine with its runtime.
"""

from __future__ import annotations

import abc
import copy
import functools
import importlib.metadata
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ..deploy import optimize
from ..deploy.fastpath import ONNXRUNTIME, OPENVINO, FastPathOptions
from ..device import resolve_device
from ..export.formats import RUNTIMES
from ..export.onnx_format import ONNXRUNTIME_RUNTIME, OPENVINO_RUNTIME
from ..export.runtime import OpenedModel, Runtime
from ..timer import TimedRun, Timing, measure
from .checks import check_output, runner_label
from .worker import measure_in_process

__all__ = [
    "AUTO",
    "AUTO_ORDER",
    "ENGINES",
    "SCRATCH_PREFIX",
    "Binder",
    "EngineSpec",
    "RuntimeEngine",
    "Task",
    "TorchEngine",
    "available_engines",
    "engine_spec",
    "engine_version",
    "make_engine",
    "resolve_engine",
    "runtime_engine",
    "scratch_folder",
    "time_engine",
]

K = TypeVar("K")
Binder = Callable[[Tensor], TimedRun]  # binds an input batch
Workdir = str | os.PathLike[str] | None  # where temporary folders go; None: the system's
SCRATCH_PREFIX = "shufflenet-bench-"  # the temporary folders of exported files


@contextmanager
def scratch_folder(workdir: Workdir = None) -> Iterator[Path]:
    """A fresh temporary folder in ``workdir``, removed with its files however the block ends."""
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=workdir) as folder:
        yield Path(folder)


@dataclass(frozen=True)
class Task(Generic[K]):
    """What :func:`time_engine` asks an engine to time: ``models`` (each exported at its
    ``examples`` input), the ``jobs`` (key -> input batch) and each job's ``expected`` outputs
    (eager PyTorch's), on ``device`` with ``threads``, ``runs`` timed after ``warmup``; files go
    into ``workdir``, removed afterwards."""

    engine: str
    models: Mapping[K, nn.Module]
    examples: Mapping[K, Tensor]
    jobs: Sequence[Mapping[K, Tensor]]
    expected: Sequence[Mapping[K, np.ndarray]]
    device: torch.device
    threads: int | None
    runs: int
    warmup: int
    workdir: Path


@dataclass(frozen=True, kw_only=True)
class EngineSpec(abc.ABC):
    """What every engine states (the device types it runs on, a package it needs that may be
    missing, whether it runs our shuffle-free graph) and does: bind a model, time models."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    package: str | None = None
    shuffle_free: bool = False

    @abc.abstractmethod
    def bind(
        self,
        model: nn.Module,
        example: Tensor,
        device: torch.device,
        threads: int | None,
        workdir: Workdir,
    ) -> Binder:
        """``model`` prepared for this engine on ``device`` (see :func:`make_engine`)."""

    def time(self, task: Task[K]) -> list[dict[K, Timing]]:
        """``task`` timed here, in this process: each model bound once, each runner's output
        checked, the runners of a job interleaved."""
        binders = {
            key: self.bind(m, task.examples[key], task.device, task.threads, task.workdir)
            for key, m in task.models.items()
        }
        results = []
        for job, wanted in zip(task.jobs, task.expected, strict=True):
            with torch.inference_mode():
                runners = {key: binders[key](x) for key, x in job.items()}
                for key, runner in runners.items():
                    label = runner_label(key)
                    check_output(task.engine, label, runner.output(), wanted[key], task.device.type)
                results.append(measure(runners, runs=task.runs, warmup=task.warmup))
        return results


@dataclass(frozen=True, kw_only=True)
class TorchEngine(EngineSpec):
    """An engine that runs the PyTorch model: ``run(model, example, device)``."""

    run: Callable[[nn.Module, Tensor, torch.device], Binder]

    def bind(
        self,
        model: nn.Module,
        example: Tensor,
        device: torch.device,
        threads: int | None,
        workdir: Workdir,
    ) -> Binder:
        return self.run(model, example, device)


@dataclass(frozen=True, kw_only=True)
class RuntimeEngine(EngineSpec):
    """An engine that runs a file converted for ``runtime``, opened with its ``load``: our
    models as their exports convert them (:meth:`~shufflenet.export.runtime.Runtime.graph`:
    shuffle-free in ``layout``, or the plain BN-folded graph for ``layout`` None or a model
    without a fast path), any other model (torchvision's) as it is. A fixed-batch runtime gets
    a file per input shape. On the CPU, a runtime that asks for a process of its own is timed
    in one (:func:`~shufflenet.speed.worker.measure_in_process`), which opens the files with
    the same runtime: :func:`runtime_engine` makes one.
    """

    runtime: Runtime
    layout: FastPathOptions | None = None

    def graph(self, model: nn.Module, example: Tensor) -> nn.Module:
        """The module this engine converts for ``example``'s shape (the input of the runtime's
        ``convert``, and of an int8 converter)."""
        return self.runtime.graph(model, example, self.layout)[0]

    def export(self, model: nn.Module, example: Tensor, folder: str | os.PathLike[str]) -> Path:
        """The file this engine runs, for ``example``'s shape, in a sub-folder of ``folder``."""
        example = example.detach().cpu()
        fresh = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=folder))
        return self.runtime.convert(self.graph(model, example), example, fresh)

    def bind(
        self,
        model: nn.Module,
        example: Tensor,
        device: torch.device,
        threads: int | None,
        workdir: Workdir,
    ) -> Binder:
        opened: dict[tuple[int, ...], OpenedModel] = {}

        def bind(x: Tensor) -> TimedRun:
            shape = tuple(x.shape) if self.runtime.fixed_batch else ()
            if shape not in opened:
                # a runtime reads the whole file when it loads it: it is removed at once
                with scratch_folder(workdir) as folder:
                    path = self.export(model, x if shape else example, folder)
                    opened[shape] = self.runtime.load(path, threads, str(device))
            feed = opened[shape].inputs(x.detach().cpu())
            return TimedRun(functools.partial(opened[shape].run, feed))

        return bind

    def time(self, task: Task[K]) -> list[dict[K, Timing]]:
        """In this process, or on the CPU in the runtime's own process where it asks for one:
        a file per model (and input shape, for a fixed batch), each input saved once."""
        if not (self.runtime.own_process and task.device.type == "cpu"):
            return super().time(task)

        def shape(x: Tensor) -> tuple[int, ...]:  # a file per input shape for a fixed batch
            return tuple(x.shape) if self.runtime.fixed_batch else ()

        files: dict[tuple[K, tuple[int, ...]], str] = {}
        arrays: dict[int, np.ndarray] = {}  # one array per tensor
        for job in task.jobs:
            for key, x in job.items():
                if (key, shape(x)) not in files:
                    source = x if shape(x) else task.examples[key]
                    files[key, shape(x)] = str(self.export(task.models[key], source, task.workdir))
                arrays.setdefault(id(x), x.numpy())
        file_jobs = [
            {key: (files[key, shape(x)], arrays[id(x)]) for key, x in job.items()}
            for job in task.jobs
        ]
        return measure_in_process(
            self.runtime.name,
            file_jobs,
            threads=task.threads,
            runs=task.runs,
            warmup=task.warmup,
            expected=task.expected,
        )


def runtime_engine(runtime: Runtime, layout: FastPathOptions | None = None) -> RuntimeEngine:
    """The engine that times ``runtime``'s files of our models converted in ``layout`` (None:
    the plain graph), on the devices it runs on, available where its package is installed. A
    runtime timed in a process of its own must be a row of :data:`~shufflenet.export.RUNTIMES`
    (the process finds it there)."""
    if runtime.own_process and RUNTIMES.get(runtime.name) is not runtime:
        raise ValueError(
            f"runtime {runtime.name!r} is timed in its own process: add it to RUNTIMES"
        )
    return RuntimeEngine(
        runtime=runtime,
        layout=layout,
        devices=runtime.devices,
        package=runtime.package,
        shuffle_free=layout is not None,
    )


def _torch_output(out: Tensor) -> np.ndarray:
    return out.detach().float().cpu().numpy()


def _compile_for(fn: Callable[[Tensor], object], x: Tensor) -> None:
    """Run a compiled model once on ``x``, so that its compilation for this shape is not timed."""
    with torch.inference_mode():
        fn(x)


def _pytorch(
    model: nn.Module,
    example: Tensor,
    device: torch.device,
    *,
    channels_last: bool = False,
    compile: bool = False,
) -> Binder:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last or device.type != "cpu":  # ``Module.to`` works in place: copy first
        model = copy.deepcopy(model).to(device).to(memory_format=memory_format)
    model.eval()
    fn = torch.compile(model, dynamic=False) if compile else model

    def bind(x: Tensor) -> TimedRun:
        x = x.to(device).contiguous(memory_format=memory_format)
        if compile:
            _compile_for(fn, x)
        return TimedRun(lambda: fn(x), device, _torch_output)

    return bind


def _optimized(
    model: nn.Module, example: Tensor, device: torch.device, backend: str = "auto"
) -> Binder:
    fast = optimize(model, example=example, backend=backend)

    def bind(x: Tensor) -> TimedRun:
        _compile_for(fast, x)
        return TimedRun(lambda: fast(x), device, _torch_output)

    return bind


ENGINES: dict[str, EngineSpec] = {
    "eager": TorchEngine(run=_pytorch),
    "channels_last": TorchEngine(run=functools.partial(_pytorch, channels_last=True)),
    "compile": TorchEngine(run=functools.partial(_pytorch, compile=True)),
    # shuffle-free, BN folded, channels_last, compiled (TorchInductor where a C++ compiler is
    # found, else TorchScript); optimized_jit: always TorchScript, ready in a second
    "optimized": TorchEngine(run=_optimized, devices=("cpu",), shuffle_free=True),
    "optimized_jit": TorchEngine(
        run=functools.partial(_optimized, backend="jit"), devices=("cpu",), shuffle_free=True
    ),
    "onnxruntime": runtime_engine(ONNXRUNTIME_RUNTIME),
    "onnxruntime_fast": runtime_engine(ONNXRUNTIME_RUNTIME, ONNXRUNTIME),
    "openvino": runtime_engine(OPENVINO_RUNTIME),
    "openvino_fast": runtime_engine(OPENVINO_RUNTIME, OPENVINO),  # fp32, in OpenVINO's layout
    # each fixed-batch export format's runtime, converting ours as its export does
    **{
        name: runtime_engine(runtime, runtime.layout)
        for name, runtime in RUNTIMES.items()
        if runtime.fixed_batch
    },
}

AUTO = "auto"
# What ``auto`` runs: per device type, the engines fastest first as measured
# (benchmarks/results/cpu_inference_1.json), the first installed one chosen; on CUDA eager
# PyTorch (cuDNN) is the engine that needs no compiling.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("onnxruntime", "eager"), "cuda": ("eager",)}


def _installed(package: str | None) -> bool:
    """Whether ``package`` is found (not imported: some take seconds or print on import)."""
    return package is None or importlib.util.find_spec(package) is not None


def available_engines() -> tuple[str, ...]:
    """The engines this installation can run (``openvino*`` only when it is installed, ...)."""
    return tuple(name for name, spec in ENGINES.items() if _installed(spec.package))


def engine_version(engine: str) -> tuple[str, str] | None:
    """(package, version) of the package ``engine`` needs; None for PyTorch's engines."""
    package = ENGINES[engine].package
    if package is None:
        return None
    try:
        return package, importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return package, str(getattr(importlib.import_module(package), "__version__", "unknown"))


def resolve_engine(engine: str, device: str = "cpu") -> str:
    """``engine``, or for ``auto`` the first installed engine of :data:`AUTO_ORDER` for
    ``device``'s type."""
    if engine != AUTO:
        return engine
    kind = resolve_device(device).type
    order = AUTO_ORDER.get(kind, ("eager",))
    return next((e for e in order if _installed(ENGINES[e].package)), "eager")


def engine_spec(engine: str, device: str = "cpu") -> EngineSpec:
    """The spec of ``engine`` (``auto``: see :func:`resolve_engine`); ``ValueError`` unless it
    is installed and runs on ``device``."""
    engine = resolve_engine(engine, device)
    spec = ENGINES.get(engine)
    if spec is None:
        raise ValueError(
            f"unknown engine {engine!r}; choose from {', '.join(available_engines())} or {AUTO}"
        )
    if not _installed(spec.package):
        raise ValueError(
            f"the {engine} engine needs the {spec.package} package: pip install {spec.package}"
        )
    kind = resolve_device(device).type
    if kind not in spec.devices:
        raise ValueError(
            f"the {engine} engine runs on {' or '.join(spec.devices)} only, got device {device!r}"
        )
    return spec


def make_engine(
    model: nn.Module,
    engine: str,
    *,
    example: Tensor,
    device: str = "cpu",
    threads: int | None = None,
    workdir: Workdir = None,
) -> Binder:
    """Prepare ``model`` for ``engine``; the result binds an input and returns a timed run.

    ``model`` stays unchanged on the CPU. ``example`` (on the CPU) fixes the input layout of a
    free-batch runtime's file (a fixed-batch runtime gets one per input shape bound), written
    into a temporary folder of ``workdir`` (default: the system's) and removed once the runtime
    has loaded it.
    """
    spec = engine_spec(engine, device)
    return spec.bind(model, example, resolve_device(device), threads, workdir)


def time_engine(
    engine: str,
    models: Mapping[K, nn.Module],
    examples: Mapping[K, Tensor],
    jobs: Sequence[Mapping[K, Tensor]],
    *,
    device: str = "cpu",
    threads: int | None = None,
    runs: int = 30,
    warmup: int = 5,
    workdir: Workdir = None,
) -> list[dict[K, Timing]]:
    """Time ``models`` with ``engine``: one result per job, a job mapping keys to input batches.

    ``examples`` fixes each model's export (see :func:`make_engine`). Before it is timed, each
    runner's output is checked against the model in eager PyTorch on the CPU; a wrong one raises
    :class:`~shufflenet.speed.checks.WrongOutputs`. Within a job the models are interleaved. A
    model that fails on its input raises ``RuntimeError``. Exported files go into a temporary
    folder of ``workdir`` (default: the system's), removed on return, error or interrupt.
    """
    engine = resolve_engine(engine, device)
    spec = engine_spec(engine, device)
    with torch.inference_mode():
        expected = [
            {key: _torch_output(models[key].eval()(x.cpu())) for key, x in job.items()}
            for job in jobs
        ]
    with scratch_folder(workdir) as folder:
        task = Task(
            engine,
            models,
            examples,
            jobs,
            expected,
            resolve_device(device),
            threads,
            runs,
            warmup,
            folder,
        )
        return spec.time(task)
