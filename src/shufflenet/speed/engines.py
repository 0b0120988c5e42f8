"""The bench engines: :data:`ENGINES` maps each name to how it runs a model.

An *engine* turns a model into something that runs a batch: ``eager`` PyTorch,
``channels_last`` (NHWC memory format), ``compile`` (``torch.compile``), ``optimized``
(:func:`shufflenet.deploy.optimize`), ``onnxruntime`` (the model's ONNX export run by ONNX
Runtime with all graph optimisations on and the thread count set, as a user would run it) and
``openvino`` when that package is installed; the ``*_fast`` engines run our shuffle-free graph
(:func:`shufflenet.deploy.fastpath.fast_model`) in that runtime's layout. Compiling engines
compile for an input shape when they are bound to it, untimed.

Before it is timed, every runner's output is checked against the model in eager PyTorch
(:mod:`shufflenet.speed.checks`). The models timed with one engine are interleaved
(:func:`shufflenet.timer.measure`); ONNX Runtime on the CPU runs in a process of its own
(:mod:`shufflenet.speed.ort_worker`).

To add an engine, write a function that binds a model (:class:`TorchEngine`) or an ONNX file
(:class:`OnnxEngine`) and returns a :data:`Binder`, and add its row to :data:`ENGINES`.
"""

from __future__ import annotations

import abc
import copy
import functools
import importlib
import operator
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ..deploy import optimize
from ..deploy.fastpath import ONNXRUNTIME, OPENVINO, FastPathOptions, fast_model, fastpath_support
from ..device import resolve_device
from ..export.onnx import to_onnx
from ..runtimes import openvino_model, ort_session
from ..timer import TimedRun, Timing, measure
from .checks import check_output, runner_label
from .ort_worker import measure_onnxruntime_cpu

__all__ = [
    "ENGINES",
    "Binder",
    "EngineSpec",
    "OnnxEngine",
    "TorchEngine",
    "available_engines",
    "engine_spec",
    "make_engine",
    "time_engine",
]

K = TypeVar("K")
Binder = Callable[[Tensor], TimedRun]  # binds an input batch
Workdir = str | os.PathLike[str] | None


@dataclass(frozen=True, kw_only=True)
class EngineSpec(abc.ABC):
    """What every engine states: the device types it runs on, a package it needs that may be
    missing, whether it runs our shuffle-free graph."""

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
class OnnxEngine(EngineSpec):
    """An engine that runs the model's ONNX export: ``run(onnx_file, device, threads)``.

    With a ``layout``, V1 and V2 models are exported shuffle-free in it (other models as they
    are). ``ort_worker``: on the CPU, timed in the ONNX Runtime process of
    :func:`~shufflenet.speed.ort_worker.measure_onnxruntime_cpu`.
    """

    run: Callable[[Path, torch.device, int | None], Binder]
    layout: FastPathOptions | None = None
    ort_worker: bool = False

    def export(self, model: nn.Module, example: Tensor, workdir: Workdir) -> Path:
        """The ONNX file this engine runs, traced on ``example``, in a fresh folder of
        ``workdir``."""
        if self.layout is not None and fastpath_support(model) is None:
            model = fast_model(model, self.layout)
        path = Path(tempfile.mkdtemp(prefix="shufflenet-bench-", dir=workdir)) / "model.onnx"
        path.write_bytes(to_onnx(model.eval(), example))
        return path

    def bind(
        self,
        model: nn.Module,
        example: Tensor,
        device: torch.device,
        threads: int | None,
        workdir: Workdir,
    ) -> Binder:
        return self.run(self.export(model, example, workdir), device, threads)


def _torch_output(out: Tensor) -> np.ndarray:
    return out.detach().float().cpu().numpy()


_only_output = operator.itemgetter(0)  # of ONNX Runtime's list, of OpenVINO's result dict


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


def _onnxruntime(onnx_file: Path, device: torch.device, threads: int | None) -> Binder:
    if device.index:  # ONNX Runtime's CUDA provider runs on the first GPU
        raise ValueError(f"the onnxruntime engine runs on cpu or cuda:0, got device {device}")
    session = ort_session(onnx_file, threads, device=device.type)
    input_name = session.get_inputs()[0].name

    def bind(x: Tensor) -> TimedRun:
        feed = {input_name: x.detach().cpu().numpy()}
        return TimedRun(lambda: session.run(None, feed), to_numpy=_only_output)

    return bind


def _openvino(onnx_file: Path, device: torch.device, threads: int | None) -> Binder:
    request = openvino_model(onnx_file, threads, latency=True).create_infer_request()

    def bind(x: Tensor) -> TimedRun:
        data = x.detach().cpu().numpy()
        run = functools.partial(request.infer, {0: data}, share_inputs=True)
        return TimedRun(run, to_numpy=_only_output)

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
    "onnxruntime": OnnxEngine(run=_onnxruntime, package="onnxruntime", ort_worker=True),
    "onnxruntime_fast": OnnxEngine(
        run=_onnxruntime,
        layout=ONNXRUNTIME,
        package="onnxruntime",
        ort_worker=True,
        shuffle_free=True,
    ),
    "openvino": OnnxEngine(run=_openvino, devices=("cpu",), package="openvino"),
    "openvino_fast": OnnxEngine(  # fp32, in OpenVINO's layout
        run=_openvino, layout=OPENVINO, devices=("cpu",), package="openvino", shuffle_free=True
    ),
}


def _installed(package: str | None) -> bool:
    if package is None:
        return True
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def available_engines() -> tuple[str, ...]:
    """The engines this installation can run (``openvino*`` only when it is importable)."""
    return tuple(name for name, spec in ENGINES.items() if _installed(spec.package))


def engine_spec(engine: str, device: str = "cpu") -> EngineSpec:
    """The spec of ``engine``; ``ValueError`` unless it is installed and runs on ``device``."""
    spec = ENGINES.get(engine)
    if spec is None:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(available_engines())}")
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

    ``model`` stays unchanged on the CPU. ``example`` (on the CPU) fixes the input layout of an
    ONNX export, written into ``workdir`` (by default a fresh temporary folder, which the caller
    may remove once done).
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
    model that fails on its input raises ``RuntimeError``.
    """
    spec = engine_spec(engine, device)
    kind = resolve_device(device).type
    with torch.inference_mode():
        expected = [
            {key: _torch_output(models[key].eval()(x.cpu())) for key, x in job.items()}
            for job in jobs
        ]
    if isinstance(spec, OnnxEngine) and spec.ort_worker and kind == "cpu":
        files = {key: str(spec.export(m, examples[key], workdir)) for key, m in models.items()}
        arrays = {id(x): x.numpy() for job in jobs for x in job.values()}  # one per tensor
        ort_jobs = [{key: (files[key], arrays[id(x)]) for key, x in job.items()} for job in jobs]
        return measure_onnxruntime_cpu(
            ort_jobs, threads=threads, runs=runs, warmup=warmup, expected=expected
        )
    binders = {
        key: make_engine(
            m, engine, example=examples[key], device=device, threads=threads, workdir=workdir
        )
        for key, m in models.items()
    }
    results = []
    for job, wanted in zip(jobs, expected, strict=True):
        with torch.inference_mode():
            runners = {key: binders[key](x) for key, x in job.items()}
            for key, runner in runners.items():
                check_output(engine, runner_label(key), runner.output(), wanted[key], kind)
            results.append(measure(runners, runs=runs, warmup=warmup))
    return results
