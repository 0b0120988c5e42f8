"""Direct speed measurement: latency of models across engines, batch sizes and devices.

An *engine* turns a model into something that runs a batch: ``eager`` PyTorch, ``channels_last``
(NHWC memory format), ``compile`` (``torch.compile``), ``onnxruntime`` (an ONNX export run by ONNX
Runtime with all graph optimisations on and the thread count set, as a user would run it) and
``openvino`` when that package is installed. Compiling engines (``compile``, ``optimized``)
compile for an input shape when they are bound to it, untimed. Every runner is warmed up, then
timed ``runs`` times: with ``time.perf_counter`` on the CPU, with CUDA events after a
synchronisation on the GPU.
The models measured with one engine are interleaved in a few rounds (each round re-warms a
runner with one untimed call) so that ratios between them are taken under the same machine load;
engines run one after the other, so that one runtime's thread pool never competes with another's.
ONNX Runtime on the CPU runs in a process of its own whose sessions share one thread pool, as in
an application that loads several models: with a pool per session, the idle pools keep spinning
while another session runs and slow it by an amount that depends on its position.
Statistics are the median and the interquartile range.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ..complexity import profile
from ..cpu import cpu_name, simd_features
from ..runtimes import has_openvino, openvino_model, ort_session
from ..verification import FP32_TOLERANCE, compare_outputs
from .baselines import (
    BASELINES,
    build_model,
    build_torchvision_counterpart,
    expand_model_names,
    model_card,
)

__all__ = [
    "ENGINES",
    "BenchConfig",
    "BenchRecord",
    "BenchResult",
    "Timing",
    "available_engines",
    "check_device",
    "export_onnx",
    "machine_info",
    "make_engine",
    "measure",
    "measure_onnxruntime_cpu",
    "run_bench",
    "time_engine",
    "torch_threads",
]

ENGINES = (
    "eager",
    "channels_last",
    "compile",
    "optimized",  # shufflenet.deploy.optimize: shuffle-free, BN folded, channels_last, compiled
    "onnxruntime",
    "onnxruntime_fast",  # our shuffle-free ONNX graph (shufflenet.deploy.fastpath), ORT layout
    "openvino",
    "openvino_fast",  # the same in OpenVINO's layout (fp32)
)
K = TypeVar("K")
# Engines are checked against PyTorch (eager, fp32, CPU) before they are timed. On a GPU,
# cuDNN's convolutions run in TF32 by default: 10-bit mantissas, about 1e-3 relative error.
TOLERANCE = {"cpu": FP32_TOLERANCE, "cuda": 1e-2}


class TimedRun:
    """A model bound to an input: calling it runs the model once and returns milliseconds;
    :meth:`output` runs it once and returns the output as a float32 NumPy array."""

    def __init__(
        self, run: Callable[[], object], cuda_events: bool, to_numpy: Callable[[Any], Any]
    ) -> None:
        self.run, self.cuda_events, self.to_numpy = run, cuda_events, to_numpy
        if cuda_events:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self) -> float:
        if self.cuda_events:
            torch.cuda.synchronize()
            self.start.record()
            self.run()
            self.end.record()
            self.end.synchronize()
            return float(self.start.elapsed_time(self.end))
        t0 = time.perf_counter()
        self.run()
        return (time.perf_counter() - t0) * 1e3

    def output(self) -> np.ndarray:
        return np.asarray(self.to_numpy(self.run()), dtype=np.float32)


Engine = Callable[[Tensor], TimedRun]  # binds an input batch


def _torch_output(out: Tensor) -> np.ndarray:
    return out.detach().float().cpu().numpy()


def _first_output(outputs: Any) -> Any:
    return outputs[0]  # ONNX Runtime's list, OpenVINO's result dict: the only output


def available_engines() -> tuple[str, ...]:
    """The engines this installation can run (``openvino`` only when it is importable)."""
    if has_openvino():
        return ENGINES
    return tuple(e for e in ENGINES if not e.startswith("openvino"))


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


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Set PyTorch's intra-op thread count for the block (``None``: leave it); yields it."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def measure(
    runs_by_key: Mapping[K, TimedRun], *, runs: int, warmup: int, rounds: int = 5
) -> dict[K, Timing]:
    """Warm up every runner, then time each ``runs`` times in interleaved rounds.

    Call it under ``torch.inference_mode()`` for PyTorch engines.
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


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example: Tensor) -> Path:
    """Write the ONNX file that the ``onnxruntime`` and ``openvino`` engines run.

    Opset 17, one input ``input`` and one output ``output``, dynamic batch axis.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    return Path(path)


def _torch_engine(model: nn.Module, engine: str, device: str) -> Engine:
    memory_format = torch.channels_last if engine == "channels_last" else torch.contiguous_format
    if engine == "channels_last" or device != "cpu":  # ``Module.to`` works in place: copy first
        model = copy.deepcopy(model).to(device).to(memory_format=memory_format)
    model.eval()
    fn = torch.compile(model, dynamic=False) if engine == "compile" else model

    def bind(x: Tensor) -> TimedRun:
        x = x.to(device).contiguous(memory_format=memory_format)
        if engine == "compile":
            _compile_for(fn, x)
        return TimedRun(lambda: fn(x), device == "cuda", _torch_output)

    return bind


def _compile_for(fn: Callable[[Tensor], object], x: Tensor) -> None:
    """Run a compiled model once on ``x``, so that its compilation for this shape is not timed."""
    with torch.inference_mode():
        fn(x)


def _onnxruntime_engine(onnx_file: Path, device: str, threads: int | None) -> Engine:
    session = ort_session(onnx_file, threads, device=device)
    input_name = session.get_inputs()[0].name

    def bind(x: Tensor) -> TimedRun:
        feed = {input_name: x.detach().cpu().numpy()}
        return TimedRun(lambda: session.run(None, feed), False, _first_output)

    return bind


OrtJob = Mapping[K, tuple[str, np.ndarray]]  # runner key -> (ONNX file, input batch)


WRONG_OUTPUTS_EXIT = 3  # the ONNX Runtime timing process's exit status for a wrong output


class WrongOutputs(ValueError):
    """An engine computed a model wrong: it is not timed, and nothing is reported for it."""


def _label(key: object) -> str:
    """A runner key for messages: ("shufflenet_v2_x1_0", "torchvision") reads as words."""
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def check_output(
    engine: str, label: str, got: np.ndarray, expected: np.ndarray, device: str = "cpu"
) -> None:
    """Raise :class:`WrongOutputs` unless ``got`` matches PyTorch's ``expected`` output."""
    check = compare_outputs(engine, [(got, expected)], (len(expected),), TOLERANCE[device])
    if not check.passed:
        raise WrongOutputs(f"{engine} computes {label} wrong, not timing it: {check.summary()}")


def _onnxruntime_worker(spec: dict[str, Any]) -> list[list[list[float]]]:
    """In a fresh process: one shared intra-op pool, a session per file, :func:`measure` per job.

    ``spec`` holds the settings and, per job, a list of [ONNX file, .npy input, .npy expected
    output or "", label] entries; the result holds, per job, each runner's samples in
    milliseconds. A runner whose output differs from the expected one is not timed: the process
    exits with :data:`WRONG_OUTPUTS_EXIT` and says why on stderr.
    """
    import onnxruntime as ort

    ort.set_global_thread_pool_sizes(spec["threads"] or 0, 1)
    sessions: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    results = []
    for job in spec["jobs"]:
        runners = {}
        for i, (path, npy, expected, label) in enumerate(job):
            if path not in sessions:
                sessions[path] = ort_session(path, shared_pool=True)
            for name in (npy, expected):
                if name and name not in arrays:
                    arrays[name] = np.load(name, allow_pickle=False)
            session = sessions[path]
            feed = {session.get_inputs()[0].name: arrays[npy]}
            runners[i] = TimedRun(functools.partial(session.run, None, feed), False, _first_output)
            if expected:
                check_output("onnxruntime", label, runners[i].output(), arrays[expected], "cpu")
        timings = measure(runners, runs=spec["runs"], warmup=spec["warmup"], rounds=spec["rounds"])
        results.append([list(timings[i].samples_ms) for i in range(len(job))])
    return results


def measure_onnxruntime_cpu(
    jobs: Sequence[OrtJob[K]],
    *,
    threads: int | None,
    runs: int,
    warmup: int,
    rounds: int = 5,
    expected: Sequence[Mapping[K, np.ndarray]] | None = None,
) -> list[dict[K, Timing]]:
    """Time ONNX files in ONNX Runtime on the CPU, in a process of its own; a result per job.

    A job maps runner keys to (file, input); its runners are interleaved as in :func:`measure`.
    All sessions share one pool of ``threads`` intra-op threads (``None``: ONNX Runtime's
    default), which a process can set only once, before its first session: hence the process.
    With ``expected`` (per job, key -> PyTorch's output), each runner's output is checked first
    and a wrong one raises :class:`WrongOutputs`. A runner that fails (say, on an input shape
    its file does not take) raises ``RuntimeError``.
    """
    with tempfile.TemporaryDirectory(prefix="shufflenet-ort-") as tmp:
        saved: dict[int, str] = {}  # one .npy per distinct array

        def npy(array: np.ndarray) -> str:
            if id(array) not in saved:
                saved[id(array)] = str(Path(tmp, f"{len(saved)}.npy"))
                np.save(saved[id(array)], array, allow_pickle=False)
            return saved[id(array)]

        spec_jobs = []
        for j, job in enumerate(jobs):
            wanted = expected[j] if expected is not None else {}
            spec_jobs.append(
                [
                    [str(path), npy(x), npy(wanted[key]) if key in wanted else "", _label(key)]
                    for key, (path, x) in job.items()
                ]
            )
        spec = {
            "jobs": spec_jobs,
            "threads": threads,
            "runs": runs,
            "warmup": warmup,
            "rounds": rounds,
        }
        proc = subprocess.run(
            [sys.executable, "-m", "shufflenet.speed.bench"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
        )
    if proc.returncode == WRONG_OUTPUTS_EXIT:
        raise WrongOutputs(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise RuntimeError(f"ONNX Runtime timing failed: {lines[-1].removeprefix('error: ')}")
    samples = json.loads(proc.stdout)
    return [
        {key: Timing(tuple(s)) for key, s in zip(job, job_samples, strict=True)}
        for job, job_samples in zip(jobs, samples, strict=True)
    ]


def _openvino_engine(onnx_file: Path, device: str, threads: int | None) -> Engine:
    if device != "cpu":
        raise ValueError("the openvino engine runs on the CPU only; use --device cpu")
    request = openvino_model(onnx_file, threads, latency=True).create_infer_request()

    def bind(x: Tensor) -> TimedRun:
        data = x.detach().cpu().numpy()
        return TimedRun(lambda: request.infer({0: data}, share_inputs=True), False, _first_output)

    return bind


def make_engine(
    model: nn.Module,
    engine: str,
    *,
    example: Tensor,
    device: str = "cpu",
    threads: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> Engine:
    """Prepare ``model`` for ``engine``; the result binds an input and returns a timed run.

    ``model`` stays unchanged on the CPU. ``example`` (on the CPU) fixes the input layout of the
    ONNX export, written into ``workdir`` (by default a fresh temporary folder, which the caller
    may remove once done).
    """
    if engine not in available_engines():
        raise ValueError(_unknown_engine(engine))
    if engine in ("eager", "channels_last", "compile"):
        return _torch_engine(model, engine, device)
    if engine == "optimized":
        from ..deploy import optimize

        if device != "cpu":
            raise ValueError("the optimized engine runs on the CPU only; use --device cpu")
        fast = optimize(model, example=example)

        def bind_optimized(x: Tensor) -> TimedRun:
            _compile_for(fast, x)
            return TimedRun(lambda: fast(x), False, _torch_output)

        return bind_optimized
    onnx_file = _onnx_file(model, engine, example, workdir)
    if engine.startswith("onnxruntime"):
        return _onnxruntime_engine(onnx_file, device, threads)
    return _openvino_engine(onnx_file, device, threads)


def _onnx_file(
    model: nn.Module, engine: str, example: Tensor, workdir: str | os.PathLike[str] | None
) -> Path:
    """The ONNX export an ONNX Runtime or OpenVINO engine runs, in a fresh folder of ``workdir``."""
    onnx_file = Path(tempfile.mkdtemp(prefix="shufflenet-bench-", dir=workdir)) / "model.onnx"
    if engine.endswith("_fast"):  # models without a fast path export as they are
        from ..deploy.fastpath import ONNXRUNTIME, OPENVINO, fast_model, fastpath_support

        if fastpath_support(model) is None:
            model = fast_model(model, OPENVINO if engine == "openvino_fast" else ONNXRUNTIME)
    return export_onnx(model.eval(), onnx_file, example)


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
    workdir: str | os.PathLike[str] | None = None,
) -> list[dict[K, Timing]]:
    """Time ``models`` with ``engine``: one result per job, a job mapping keys to input batches.

    ``examples`` fixes each model's export (see :func:`make_engine`). Before it is timed, each
    runner's output is checked against the model in eager PyTorch on the CPU (tolerance
    :data:`TOLERANCE` of the device); a wrong one raises :class:`WrongOutputs`. Within a job the
    models are interleaved (:func:`measure`); ONNX Runtime on the CPU runs through
    :func:`measure_onnxruntime_cpu`. A model that fails on its input raises ``RuntimeError``.
    """
    if engine not in available_engines():
        raise ValueError(_unknown_engine(engine))
    with torch.inference_mode():
        expected = [
            {key: _torch_output(models[key].eval()(x.cpu())) for key, x in job.items()}
            for job in jobs
        ]
    if engine.startswith("onnxruntime") and device == "cpu":
        files = {
            key: str(_onnx_file(m, engine, examples[key], workdir)) for key, m in models.items()
        }
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
                check_output(engine, _label(key), runner.output(), wanted[key], device)
            results.append(measure(runners, runs=runs, warmup=warmup))
    return results


def _unknown_engine(engine: str) -> str:
    if engine.startswith("openvino"):
        return f"the {engine} engine needs the openvino package: pip install openvino"
    return f"unknown engine {engine!r}; choose from {', '.join(available_engines())}"


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` is ``cpu``, or ``cuda`` with a GPU present."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA GPU on this machine")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine and software a measurement came from."""
    import onnxruntime

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "simd": simd_features(),  # which kernels the runtimes can pick
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),  # others' work competing for the CPU
    }
    if "openvino" in available_engines():
        import openvino

        info["openvino"] = openvino.__version__
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


@dataclass
class BenchConfig:
    """What to time: models (names or shell patterns, baselines included) x engines x batches."""

    models: Sequence[str]
    engines: Sequence[str] = ("eager",)
    batch_sizes: Sequence[int] = (1,)
    input_size: tuple[int, int] = (224, 224)
    threads: int | None = None
    device: str = "cpu"
    runs: int = 30
    warmup: int = 5
    compare: str | None = None  # "torchvision": also time torchvision's V2 in the same run

    def validate(self) -> None:
        """Raise ``ValueError`` with an actionable message for any bad setting."""
        if not self.models:
            raise ValueError("give at least one model (see `shufflenet models`)")
        if not self.engines:
            raise ValueError(f"give at least one engine: {', '.join(available_engines())}")
        for engine in self.engines:
            if engine not in available_engines():
                raise ValueError(_unknown_engine(engine))
        if not self.batch_sizes or any(
            not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in self.batch_sizes
        ):
            raise ValueError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if len(self.input_size) != 2 or min(self.input_size) < 32:
            raise ValueError(f"input size must be at least 32x32, got {self.input_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        check_device(self.device)
        if self.runs < 1 or self.warmup < 0:
            raise ValueError(f"need runs >= 1 and warmup >= 0, got {self.runs}, {self.warmup}")
        if self.compare not in (None, "torchvision"):
            raise ValueError(f"--compare takes only 'torchvision', got {self.compare!r}")


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
class BenchResult:
    """Records plus the machine and settings they came from."""

    machine: dict[str, Any]
    config: dict[str, Any]
    records: list[BenchRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time every (model, engine, batch size) of ``config`` on this machine."""
    config.validate()
    names = expand_model_names(list(config.models))
    note = progress or (lambda _msg: None)
    subjects: list[tuple[str, str, nn.Module]] = []
    for name in names:
        impl = "torchvision" if name in BASELINES else "shufflenet"
        subjects.append((name, impl, build_model(name)))
        if config.compare and impl == "shufflenet" and model_card(name).family == "v2":
            subjects.append((name, "torchvision", build_torchvision_counterpart(name)))
    if config.compare and len(subjects) == len(names):
        raise ValueError("--compare torchvision needs at least one ShuffleNet V2 model")
    h, w = config.input_size
    mflops = {(n, i): profile(m, (3, h, w)).flops / 1e6 for n, i, m in subjects}
    result = BenchResult(machine_info(config.device), _config_dict(config, names))
    with ExitStack() as stack:
        threads = stack.enter_context(torch_threads(config.threads))
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="shufflenet-bench-"))
        example = torch.randn(1, 3, h, w)
        # One engine at a time: its runners are interleaved with each other only, so that one
        # runtime's spinning thread pool never competes with another's while being timed.
        models = {(name, impl): model for name, impl, model in subjects}
        inputs = [
            torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
            for batch in config.batch_sizes
        ]
        for engine in config.engines:
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
                    workdir=workdir,
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
                            device=config.device,
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


def _config_dict(config: BenchConfig, names: list[str]) -> dict[str, Any]:
    data = asdict(config)
    data["models"] = names
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


if __name__ == "__main__":  # the ONNX Runtime timing process of measure_onnxruntime_cpu
    try:
        print(json.dumps(_onnxruntime_worker(json.load(sys.stdin))))
    except WrongOutputs as e:
        print(e, file=sys.stderr)
        sys.exit(WRONG_OUTPUTS_EXIT)
    except Exception as e:  # one line for the parent's RuntimeError
        sys.exit(f"error: {' '.join(str(e).split())}")
