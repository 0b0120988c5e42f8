"""Files timed in a process of their own: ``python -m`` this module.

A runtime whose ``own_process`` is set (:class:`~shufflenet.export.runtime.Runtime`) is timed
on the CPU in a fresh process, one per measurement, so that no runtime's threads compete with
another's and a process-wide thread pool is sized before the first file opens (ONNX Runtime's
sessions there share one intra-op pool, as in an application that loads several models: with a
pool per session, the idle pools keep spinning while another session runs and slow it by an
amount that depends on its position). The process opens each file with its runtime's ``load``,
the same code that ``predict`` and verification run. The parent sends a JSON spec on stdin and
reads each runner's samples as JSON on stdout (the runtimes' own prints go to stderr).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..export.formats import RUNTIMES
from ..export.runtime import OpenedModel
from ..runtimes import stdout_to_stderr
from ..timer import TimedRun, Timing, measure
from .checks import WrongOutputs, check_output, runner_label

__all__ = ["WRONG_OUTPUTS_EXIT", "FileJob", "measure_in_process"]

K = TypeVar("K")
FileJob = Mapping[K, tuple[str, np.ndarray]]  # runner key -> (file, NCHW input batch)

WRONG_OUTPUTS_EXIT = 3  # the timing process's exit status for a wrong output


def _worker(spec: dict[str, Any]) -> list[list[list[float]]]:
    """In a fresh process: the files of ``spec["runtime"]`` opened once each, :func:`measure`
    per job.

    ``spec`` holds the settings and, per job, a list of [file, .npy input, .npy expected
    output or "", label] entries; the result holds, per job, each runner's samples in
    milliseconds. A runner whose output differs from the expected one is not timed: the process
    exits with :data:`WRONG_OUTPUTS_EXIT` and says why on stderr.
    """
    runtime, threads = RUNTIMES[spec["runtime"]], spec["threads"]
    if runtime.share_threads is not None:
        runtime.share_threads(threads)
    opened: dict[str, OpenedModel] = {}
    arrays: dict[str, np.ndarray] = {}
    results = []
    for job in spec["jobs"]:
        runners = {}
        for i, (path, npy, expected, label) in enumerate(job):
            if path not in opened:
                opened[path] = runtime.load(path, threads, "cpu")
            for name in (npy, expected):
                if name and name not in arrays:
                    arrays[name] = np.load(name, allow_pickle=False)
            feed = opened[path].inputs(arrays[npy])
            runners[i] = TimedRun(functools.partial(opened[path].run, feed))
            if expected:
                check_output(runtime.name, label, runners[i].output(), arrays[expected], "cpu")
        timings = measure(runners, runs=spec["runs"], warmup=spec["warmup"], rounds=spec["rounds"])
        results.append([list(timings[i].samples_ms) for i in range(len(job))])
    return results


def measure_in_process(
    runtime: str,
    jobs: Sequence[FileJob[K]],
    *,
    threads: int | None,
    runs: int,
    warmup: int,
    rounds: int = 5,
    expected: Sequence[Mapping[K, np.ndarray]] | None = None,
) -> list[dict[K, Timing]]:
    """Time files in ``runtime`` (a key of :data:`~shufflenet.export.RUNTIMES`) on the CPU, in
    a process of its own; a result per job.

    A job maps runner keys to (file, NCHW input); its runners are interleaved as in
    :func:`~shufflenet.timer.measure`. ``threads``: the runtime's threads (one pool for the
    process where it has one: ONNX Runtime's shared intra-op pool, ExecuTorch's; ``None``: the
    runtime's default). With ``expected`` (per job, key -> PyTorch's output), each runner's
    output is checked first and a wrong one raises
    :class:`~shufflenet.speed.checks.WrongOutputs`. A runner that fails (say, on an input shape
    its file does not take) raises ``RuntimeError``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    with tempfile.TemporaryDirectory(prefix="shufflenet-worker-") as tmp:
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
            "runtime": runtime,
            "jobs": spec_jobs,
            "threads": threads,
            "runs": runs,
            "warmup": warmup,
            "rounds": rounds,
        }
        proc = subprocess.run(
            [sys.executable, "-m", __name__],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
        )
    if proc.returncode == WRONG_OUTPUTS_EXIT:
        raise WrongOutputs(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise RuntimeError(f"{runtime} timing failed: {lines[-1].removeprefix('error: ')}")
    samples = json.loads(proc.stdout)
    return [
        {key: Timing(tuple(s)) for key, s in zip(job, job_samples, strict=True)}
        for job, job_samples in zip(jobs, samples, strict=True)
    ]


if __name__ == "__main__":  # the timing process of measure_in_process
    try:
        with stdout_to_stderr():  # standard output carries the result only
            samples = _worker(json.load(sys.stdin))
        sys.stdout.write(json.dumps(samples) + "\n")  # the answer to the parent process
    except WrongOutputs as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(WRONG_OUTPUTS_EXIT)
    except Exception as e:  # one line for the parent's RuntimeError
        sys.exit(f"error: {' '.join(str(e).split())}")
