"""The bench engines: :data:`ENGINES` maps each name to how it runs a model.

An *engine* turns a model into something that runs a batch: ``eager`` PyTorch,
``channels_last`` (NHWC memory format), ``compile`` (``torch.compile``), ``optimized``
(:func:`shufflenet.deploy.optimize`), ``onnxruntime`` (the model's ONNX export run by ONNX
Runtime with all graph optimisations on and the thread count set, as a user would run it) and
``openvino`` when that package is installed; the ``*_fast`` engines run our shuffle-free graph
(:func:`shufflenet.deploy.fastpath.fast_model`) in that runtime's layout. ``litert``,
``executorch`` and ``mnn`` (:class:`EdgeEngine`, where their packages are installed) run a file
converted as the edge exports convert ours, at the fixed batch timed. ``auto``
(:func:`resolve_engine`) is the fastest engine installed for the device (:data:`AUTO_ORDER`).
Compiling engines compile for an input shape when bound to it, untimed.

Before it is timed, every runner's output is checked against the model in eager PyTorch
(:mod:`shufflenet.speed.checks`). The models timed with one engine are interleaved
(:func:`shufflenet.timer.measure`); ONNX Runtime on the CPU and the edge runtimes run in a
process of their own, one per engine (:mod:`shufflenet.speed.ort_worker`).

To add an engine, write a function that binds a model (:class:`TorchEngine`) or an ONNX file
(:class:`OnnxEngine`) and returns a :data:`Binder`, and add its row to :data:`ENGINES`.
"""

from __future__ import annotations

import abc
import copy
import functools
import importlib.metadata
import importlib.util
import operator
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ..deploy import optimize
from ..deploy.fastpath import ONNXRUNTIME, OPENVINO, FastPathOptions, fast_model, fastpath_support
from ..device import resolve_device
from ..export.edge import EDGE_LAYOUT
from ..export.mnn import MNN_LAYOUT
from ..export.onnx import plain_graph, to_onnx
from ..models.base import ShuffleNetBase
from ..runtimes import openvino_model, ort_session
from ..timer import TimedRun, Timing, measure
from .checks import check_output, runner_label
from .ort_worker import OPENERS, measure_in_process

__all__ = [
    "AUTO",
    "AUTO_ORDER",
    "ENGINES",
    "SCRATCH_PREFIX",
    "Binder",
    "EdgeEngine",
    "EngineSpec",
    "OnnxEngine",
    "TorchEngine",
    "available_engines",
    "engine_spec",
    "engine_version",
    "make_engine",
    "resolve_engine",
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
    :func:`~shufflenet.speed.ort_worker.measure_in_process`.
    """

    run: Callable[[Path, torch.device, int | None], Binder]
    layout: FastPathOptions | None = None
    ort_worker: bool = False

    def export(self, model: nn.Module, example: Tensor, folder: str | os.PathLike[str]) -> Path:
        """The ONNX file this engine runs, traced on ``example``, in a sub-folder of ``folder``."""
        if self.layout is not None and fastpath_support(model) is None:
            model = fast_model(model, self.layout)
        path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=folder)) / "model.onnx"
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
        # the runtimes read the whole file when they open it: it is removed at once
        with scratch_folder(workdir) as folder:
            return self.run(self.export(model, example, folder), device, threads)


@dataclass(frozen=True, kw_only=True)
class EdgeEngine(EngineSpec):
    """An engine that runs a file converted for an edge runtime (``runtime``, one of
    :data:`~shufflenet.speed.ort_worker.OPENERS`), on the CPU.

    Our models are converted as their edge export converts them: the shuffle-free graph in
    ``layout`` (the plain BN-folded one for models without a fast path), then ``rewrite`` (the
    runtime's rewrites that keep the graph in XNNPACK); any other model (torchvision's) by
    ``convert`` alone. The file's batch is the input's, fixed.
    """

    runtime: str
    convert: Callable[[nn.Module, Tensor, Path], Path]  # writes the file at the Path given
    rewrite: Callable[[nn.Module, Tensor], nn.Module] | None = None
    layout: FastPathOptions = EDGE_LAYOUT
    devices: tuple[str, ...] = ("cpu",)
    shuffle_free: bool = True

    def graph(self, model: nn.Module, example: Tensor) -> nn.Module:
        """The module this engine converts for ``example``'s shape (the input of ``convert``,
        and of an int8 converter)."""
        module = model.eval()
        if isinstance(model, ShuffleNetBase):
            if fastpath_support(model) is None:
                module = fast_model(model, self.layout).eval()
            else:
                module = plain_graph(model, (example.shape[2], example.shape[3]))
            if self.rewrite is not None:
                module = self.rewrite(module, example)
        return module

    def export(self, model: nn.Module, example: Tensor, folder: str | os.PathLike[str]) -> Path:
        """The file this engine runs, for ``example``'s shape, in a sub-folder of ``folder``."""
        example = example.detach().cpu()
        fresh = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=folder))
        return self.convert(self.graph(model, example), example, fresh)

    def bind(
        self,
        model: nn.Module,
        example: Tensor,
        device: torch.device,
        threads: int | None,
        workdir: Workdir,
    ) -> Binder:
        opened: dict[tuple[int, ...], Callable[[np.ndarray], Callable[[], object]]] = {}
        # the files live as long as the binder (a runtime may map its file)
        scratch = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=workdir)

        def bind(x: Tensor) -> TimedRun:
            shape = tuple(x.shape)  # a file per input shape: its batch is fixed
            if shape not in opened:
                path = self.export(model, x, scratch.name)
                opened[shape] = OPENERS[self.runtime](str(path), threads)
            return TimedRun(opened[shape](x.detach().cpu().numpy()))

        return bind


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


def _tflite(module: nn.Module, example: Tensor, folder: Path) -> Path:
    from ..export.litert import to_tflite

    path = folder / "model.tflite"
    path.write_bytes(to_tflite(module, example))  # takes NHWC images
    return path


def _pte(module: nn.Module, example: Tensor, folder: Path) -> Path:
    from ..export.executorch import to_pte

    path = folder / "model.pte"
    path.write_bytes(to_pte(module, example))
    return path


def _mnn(module: nn.Module, example: Tensor, folder: Path) -> Path:
    from ..export.mnn import convert_onnx_to_mnn

    return convert_onnx_to_mnn(to_onnx(module, example, dynamic_batch=False), folder / "m.mnn")


def _strided_splits_as_slices(module: nn.Module, example: Tensor) -> nn.Module:
    from ..export.xnnpack import strided_splits_as_slices

    return strided_splits_as_slices(module, example)


def _xnnpack_graph(module: nn.Module, example: Tensor) -> nn.Module:
    from ..export.xnnpack import xnnpack_graph

    return xnnpack_graph(module, example)


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
    # the edge exports' converters and runtimes (export/litert.py, executorch.py, mnn.py)
    "litert": EdgeEngine(
        runtime="litert",
        convert=_tflite,
        rewrite=_strided_splits_as_slices,
        package="litert_torch",
    ),
    "executorch": EdgeEngine(
        runtime="executorch", convert=_pte, rewrite=_xnnpack_graph, package="executorch"
    ),
    "mnn": EdgeEngine(runtime="mnn", convert=_mnn, layout=MNN_LAYOUT, package="MNN"),
}

AUTO = "auto"
# What ``auto`` runs: per device type, the engines fastest first, the first installed one
# chosen. Measured (benchmarks/results/cpu_inference_1.json, V2 1x at 224 px, batch 1, 2 AVX2
# threads): ONNX Runtime on our export 5.6 ms, OpenVINO 6.4 ms, deploy.optimize 12.4 ms, eager
# torchvision 28 ms; on CUDA eager PyTorch (cuDNN) is the engine that needs no compiling.
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

    ``model`` stays unchanged on the CPU. ``example`` (on the CPU) fixes the input layout of an
    ONNX export, written into a temporary folder of ``workdir`` (default: the system's) and
    removed once the runtime has read it; the edge engines' files stay until the binder is
    garbage collected.
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
    with scratch_folder(workdir) as folder:
        return _time_engine(
            engine, spec, models, examples, jobs, device, threads, runs, warmup, folder
        )


def _time_engine(
    engine: str,
    spec: EngineSpec,
    models: Mapping[K, nn.Module],
    examples: Mapping[K, Tensor],
    jobs: Sequence[Mapping[K, Tensor]],
    device: str,
    threads: int | None,
    runs: int,
    warmup: int,
    workdir: Path,
) -> list[dict[K, Timing]]:
    kind = resolve_device(device).type
    with torch.inference_mode():
        expected = [
            {key: _torch_output(models[key].eval()(x.cpu())) for key, x in job.items()}
            for job in jobs
        ]
    if isinstance(spec, OnnxEngine | EdgeEngine) and kind == "cpu":  # one array per tensor
        arrays = {id(x): x.numpy() for job in jobs for x in job.values()}
    if isinstance(spec, OnnxEngine) and spec.ort_worker and kind == "cpu":
        files = {key: str(spec.export(m, examples[key], workdir)) for key, m in models.items()}
        ort_jobs = [{key: (files[key], arrays[id(x)]) for key, x in job.items()} for job in jobs]
        return measure_in_process(
            "onnxruntime", ort_jobs, threads=threads, runs=runs, warmup=warmup, expected=expected
        )
    if isinstance(spec, EdgeEngine):  # a file per model and input shape (its batch is fixed)
        edge_files: dict[tuple[K, tuple[int, ...]], str] = {}
        for job in jobs:
            for key, x in job.items():
                if (key, tuple(x.shape)) not in edge_files:
                    path = spec.export(models[key], x, workdir)
                    edge_files[key, tuple(x.shape)] = str(path)
        edge_jobs = [
            {key: (edge_files[key, tuple(x.shape)], arrays[id(x)]) for key, x in job.items()}
            for job in jobs
        ]
        return measure_in_process(
            spec.runtime, edge_jobs, threads=threads, runs=runs, warmup=warmup, expected=expected
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
