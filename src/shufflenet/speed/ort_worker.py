"""ONNX Runtime on the CPU, timed in a process of its own: ``python -m`` this module.

The process's sessions share one intra-op thread pool, as in an application that loads several
models: with a pool per session, the idle pools keep spinning while another session runs and
slow it by an amount that depends on its position. A process can size that pool only once,
before its first session, hence a fresh process per measurement. The parent sends a JSON spec
on stdin and reads each runner's samples as JSON on stdout.
"""

from __future__ import annotations

import functools
import json
import operator
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..runtimes import ort_session
from ..timer import TimedRun, Timing, measure
from .checks import WrongOutputs, check_output, runner_label

__all__ = ["WRONG_OUTPUTS_EXIT", "OrtJob", "measure_onnxruntime_cpu"]

K = TypeVar("K")
OrtJob = Mapping[K, tuple[str, np.ndarray]]  # runner key -> (ONNX file, input batch)

WRONG_OUTPUTS_EXIT = 3  # the timing process's exit status for a wrong output


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
            run = functools.partial(session.run, None, feed)
            runners[i] = TimedRun(run, to_numpy=operator.itemgetter(0))  # the only output
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

    A job maps runner keys to (file, input); its runners are interleaved as in
    :func:`~shufflenet.timer.measure`. All sessions share one pool of ``threads``
    intra-op threads (``None``: ONNX Runtime's default). With ``expected`` (per job, key ->
    PyTorch's output), each runner's output is checked first and a wrong one raises
    :class:`~shufflenet.speed.checks.WrongOutputs`. A runner that fails (say, on an input shape
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
        raise RuntimeError(f"ONNX Runtime timing failed: {lines[-1].removeprefix('error: ')}")
    samples = json.loads(proc.stdout)
    return [
        {key: Timing(tuple(s)) for key, s in zip(job, job_samples, strict=True)}
        for job, job_samples in zip(jobs, samples, strict=True)
    ]


if __name__ == "__main__":  # the timing process of measure_onnxruntime_cpu
    try:
        print(json.dumps(_onnxruntime_worker(json.load(sys.stdin))))
    except WrongOutputs as e:
        print(e, file=sys.stderr)
        sys.exit(WRONG_OUTPUTS_EXIT)
    except Exception as e:  # one line for the parent's RuntimeError
        sys.exit(f"error: {' '.join(str(e).split())}")
