"""A runtime on the CPU, timed in a process of its own: ``python -m`` this module.

ONNX Runtime's sessions in that process share one intra-op thread pool, as in an application
that loads several models: with a pool per session, the idle pools keep spinning while another
session runs and slow it by an amount that depends on its position. A process can size that
pool only once, before its first session, hence a fresh process per measurement. The edge
runtimes (LiteRT, ExecuTorch, MNN: :data:`OPENERS`) run there too, one process per engine, so
that no runtime's threads compete with another's. The parent sends a JSON spec on stdin and
reads each runner's samples as JSON on stdout (the runtimes' own prints go to stderr).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..runtimes import (
    executorch_program,
    litert_interpreter,
    mnn_module,
    ort_session,
    require,
    stdout_to_stderr,
)
from ..timer import TimedRun, Timing, measure
from .checks import WrongOutputs, check_output, runner_label

__all__ = [
    "OPENERS",
    "WRONG_OUTPUTS_EXIT",
    "OrtJob",
    "Runner",
    "measure_in_process",
]

K = TypeVar("K")
OrtJob = Mapping[K, tuple[str, np.ndarray]]  # runner key -> (ONNX file, input batch)

WRONG_OUTPUTS_EXIT = 3  # the timing process's exit status for a wrong output


# An opened file: binds an NCHW float32 batch (untimed) and returns the call to time.
Runner = Callable[[np.ndarray], Callable[[], Any]]


def _open_onnxruntime(path: str, threads: int | None) -> Runner:
    # the process's one pool, sized by _worker before the first session
    session = ort_session(path, shared_pool=True)
    name = session.get_inputs()[0].name

    def bind(x: np.ndarray) -> Callable[[], Any]:
        return lambda: session.run(None, {name: x})[0]  # the only output

    return bind


def _open_litert(path: str, threads: int | None) -> Runner:
    """A ``.tflite`` file taking one NHWC batch (as :func:`~shufflenet.export.to_tflite`
    writes them), in LiteRT's interpreter with its XNNPACK delegate; an int8 file's input is
    quantized when bound, its output dequantized when run (as an app would)."""
    from ..export.litert import dequantize_output, quantize_input

    interpreter = litert_interpreter(path, threads)
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def bind(x: np.ndarray) -> Callable[[], Any]:
        nhwc = quantize_input(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), source)

        def run() -> np.ndarray:
            interpreter.set_tensor(source["index"], nhwc)
            interpreter.invoke()
            return dequantize_output(interpreter.get_tensor(sink["index"]), sink)

        return run

    return bind


def _open_executorch(path: str, threads: int | None) -> Runner:
    """A ``.pte`` program's ``forward`` in ExecuTorch (XNNPACK); ``threads`` sizes the
    process's one pool."""
    import torch

    program = executorch_program(path, threads)
    with stdout_to_stderr():
        forward = program.load_method("forward")

    def bind(x: np.ndarray) -> Callable[[], Any]:
        inputs = [torch.from_numpy(x)]

        def run() -> np.ndarray:
            (out,) = forward.execute(inputs)
            _ = program  # a method runs from its program's memory: keep it alive
            return out.numpy()  # type: ignore[no-any-return]

        return run

    return bind


def _open_mnn(path: str, threads: int | None) -> Runner:
    """An ``.mnn`` file in MNN on the CPU, ``threads`` threads (default 1)."""
    mnn = require("mnn", "running an .mnn file")
    module = mnn_module(path, threads)

    def bind(x: np.ndarray) -> Callable[[], Any]:
        def run() -> np.ndarray:
            var = mnn.expr.const(x, list(x.shape), mnn.expr.NCHW)
            (out,) = module.onForward([var])
            if out.data_format == mnn.expr.NC4HW4:
                out = mnn.expr.convert(out, mnn.expr.NCHW)
            return np.array(out.read(), dtype=np.float32)

        return run

    return bind


# engine -> how the timing process opens a file of it: open(path, threads) -> Runner
OPENERS: dict[str, Callable[[str, int | None], Runner]] = {
    "onnxruntime": _open_onnxruntime,
    "litert": _open_litert,
    "executorch": _open_executorch,
    "mnn": _open_mnn,
}


def _worker(spec: dict[str, Any]) -> list[list[list[float]]]:
    """In a fresh process: the files of ``spec["engine"]`` opened once each (ONNX Runtime's
    sessions sharing one intra-op pool), :func:`measure` per job.

    ``spec`` holds the settings and, per job, a list of [file, .npy input, .npy expected
    output or "", label] entries; the result holds, per job, each runner's samples in
    milliseconds. A runner whose output differs from the expected one is not timed: the process
    exits with :data:`WRONG_OUTPUTS_EXIT` and says why on stderr.
    """
    engine, threads = spec["engine"], spec["threads"]
    if engine == "onnxruntime":
        import onnxruntime as ort

        ort.set_global_thread_pool_sizes(threads or 0, 1)
    opened: dict[str, Runner] = {}
    arrays: dict[str, np.ndarray] = {}
    results = []
    for job in spec["jobs"]:
        runners = {}
        for i, (path, npy, expected, label) in enumerate(job):
            if path not in opened:
                opened[path] = OPENERS[engine](path, threads)
            for name in (npy, expected):
                if name and name not in arrays:
                    arrays[name] = np.load(name, allow_pickle=False)
            runners[i] = TimedRun(opened[path](arrays[npy]))
            if expected:
                check_output(engine, label, runners[i].output(), arrays[expected], "cpu")
        timings = measure(runners, runs=spec["runs"], warmup=spec["warmup"], rounds=spec["rounds"])
        results.append([list(timings[i].samples_ms) for i in range(len(job))])
    return results


def measure_in_process(
    engine: str,
    jobs: Sequence[OrtJob[K]],
    *,
    threads: int | None,
    runs: int,
    warmup: int,
    rounds: int = 5,
    expected: Sequence[Mapping[K, np.ndarray]] | None = None,
) -> list[dict[K, Timing]]:
    """Time files in ``engine``'s runtime (one of :data:`OPENERS`) on the CPU, in a process of
    its own; a result per job.

    A job maps runner keys to (file, NCHW input); its runners are interleaved as in
    :func:`~shufflenet.timer.measure`. ``threads``: ONNX Runtime's one shared intra-op pool,
    ExecuTorch's one pool, LiteRT's and MNN's threads per file (``None``: the runtime's
    default). With ``expected`` (per job, key ->
    PyTorch's output), each runner's output is checked first and a wrong one raises
    :class:`~shufflenet.speed.checks.WrongOutputs`. A runner that fails (say, on an input shape
    its file does not take) raises ``RuntimeError``.
    """
    if engine not in OPENERS:
        raise ValueError(f"engine must be one of {', '.join(OPENERS)}, got {engine!r}")
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
                    [
                        str(path),
                        npy(x),
                        npy(wanted[key]) if key in wanted else "",
                        runner_label(key),
                    ]
                    for key, (path, x) in job.items()
                ]
            )
        spec = {
            "engine": engine,
            "jobs": spec_jobs,
            "threads": threads,
            "runs": runs,
            "warmup": warmup,
            "rounds": rounds,
        }
        proc = subprocess.run(
            [sys.executable, "-m", "shufflenet.speed.ort_worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
        )
    if proc.returncode == WRONG_OUTPUTS_EXIT:
        raise WrongOutputs(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise RuntimeError(f"{engine} timing failed: {lines[-1].removeprefix('error: ')}")
    samples = json.loads(proc.stdout)
    return [
        {key: Timing(tuple(s)) for key, s in zip(job, job_samples, strict=True)}
        for job, job_samples in zip(jobs, samples, strict=True)
    ]


if __name__ == "__main__":  # the timing process of measure_in_process
    try:
        with stdout_to_stderr():  # standard output carries the result only
            samples = _worker(json.load(sys.stdin))
        print(json.dumps(samples))
    except WrongOutputs as e:
        print(e, file=sys.stderr)
        sys.exit(WRONG_OUTPUTS_EXIT)
    except Exception as e:  # one line for the parent's RuntimeError
        sys.exit(f"error: {' '.join(str(e).split())}")
