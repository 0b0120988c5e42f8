"""What every runtime needs, and the two that run ONNX files.

* :class:`Extra` and :func:`require`: an optional package imported through the pip extra of
  ours that installs it; a missing one is a ``ValueError`` naming that extra. Each format's
  module states its runtime's extra; OpenVINO's is :data:`OPENVINO`.
* :func:`probe`: a file opened and run once in a child process first. Native loaders trust the
  file: a damaged or crafted one can crash or abort the process, which no ``try`` catches; in a
  child, that is one clear ``ValueError``.
* :func:`stdout_to_stderr`: native chatter kept off standard output (``--json``).
* :func:`ort_session`: an ONNX Runtime CPU (or CUDA) session with all graph optimisations on;
  :func:`share_ort_threads` gives a process's sessions one intra-op pool.
* :func:`openvino_model`: a model compiled by OpenVINO's CPU plugin in fp32 (by default OpenVINO
  would run bf16 on CPUs with AMX), through the process's one :func:`openvino_core`.

This is the one module that imports ``onnxruntime`` (its inference API; the quantization tools
are ``export/int8.py``'s) and ``openvino``; each other runtime is imported by its format's
module only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OPENVINO",
    "Extra",
    "has_openvino",
    "installed",
    "openvino_core",
    "openvino_model",
    "ort_options",
    "ort_session",
    "probe",
    "require",
    "share_ort_threads",
    "stdout_to_stderr",
]

Source = str | os.PathLike[str] | bytes  # a file or its bytes


@dataclass(frozen=True)
class Extra:
    """An optional runtime: the pip extra of shufflenet that installs it (``pip install
    'shufflenet[NAME]'``), the packages that extra brings (for messages), the module that
    :func:`require` imports by default, and the package whose version identifies it."""

    name: str
    packages: str
    module: str
    package: str


OPENVINO = Extra("openvino", "openvino", "openvino", "openvino")


def require(extra: Extra, what: str | None = None, module: str | None = None) -> Any:
    """Import ``module`` (default: ``extra.module``) of an optional package; if it is missing,
    a ``ValueError`` that names ``what`` needs it and the pip extra to install."""
    name = module or extra.module
    try:
        # Some runtimes print their CPU features to standard output on import, or warn that
        # their API is experimental.
        with stdout_to_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError as e:
        needs = what or f"the {extra.name} runtime"
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in (
            name.split(".")[0],
            extra.module.split(".")[0],
        )
        broken = "" if missing else f" (importing it failed: {e})"
        raise ValueError(
            f"{needs} needs {extra.packages}: pip install 'shufflenet[{extra.name}]'{broken}"
        ) from None


def installed(extra: Extra) -> bool:
    """Whether ``extra``'s module imports."""
    try:
        require(extra)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Native code's writes to standard output go to standard error meanwhile.

    Converters and runtimes print progress and CPU features from C++ (``printf``), which would
    mix with the CLI's results (``--json``); C's buffers are flushed before the switch back.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


# -- a first open in a child process -------------------------------------------------------------
TOO_LARGE = 3  # a probe's exit status for an input of more values than allowed


def probe(
    runtime: str,
    code: str,
    path: str | os.PathLike[str],
    label: str | os.PathLike[str],
    max_values: int,
    args: Sequence[str] = (),
    timeout: float = 600.0,
) -> None:
    """Run ``code`` (a Python script: it opens ``sys.argv[1]`` in ``runtime`` and runs it once,
    exiting with :data:`TOO_LARGE` if an input would hold more than ``sys.argv[2]`` values;
    ``args`` follow) in a child process, so that a file that crashes or aborts the runtime, or
    asks for an input of more than ``max_values`` values, is a ``ValueError`` naming ``label``
    rather than the end of this process. Errors the runtime raises as exceptions are left to
    the caller's own open."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path), str(max_values), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"{label}: {runtime} did not open it within {timeout:.0f} s") from None
    if proc.returncode == TOO_LARGE:
        raise ValueError(f"{label}: its input holds more than {max_values} values: refused")
    if proc.returncode < 0:
        try:
            how = signal.Signals(-proc.returncode).name
        except ValueError:
            how = f"signal {-proc.returncode}"
        raise ValueError(
            f"{label}: {runtime} crashed opening or running it ({how}): the file is damaged "
            "or was not written by `shufflenet export`"
        )


# -- ONNX Runtime ----------------------------------------------------------------------------------
_shared_pool: list[bool] = []  # [True] once share_ort_threads made the process's pool


def share_ort_threads(threads: int | None) -> None:
    """Give this process one ONNX Runtime intra-op pool of ``threads`` threads (``None``: its
    default), which every session opened afterwards shares. Call it before the first session."""
    import onnxruntime as ort

    ort.set_global_thread_pool_sizes(threads or 0, 1)
    _shared_pool[:] = [True]


def ort_options(threads: int | None = None, shared_pool: bool = False) -> Any:
    """Session options: all graph optimisations; ``threads`` intra-op threads (``None`` or 0:
    ONNX Runtime's default), or the process's global pool with ``shared_pool``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if shared_pool:
        options.use_per_session_threads = False
    elif threads:
        options.intra_op_num_threads = threads
    return options


def ort_session(
    model: Source, threads: int | None = None, *, device: str = "cpu", shared_pool: bool = False
) -> Any:
    """An ONNX Runtime session for a file or model bytes, on ``device`` ("cpu" or "cuda"); on
    the process's one pool with ``shared_pool`` or after :func:`share_ort_threads`."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                "onnxruntime has no CUDAExecutionProvider here; install onnxruntime-gpu "
                "or run ONNX Runtime on the CPU"
            )
        providers.insert(0, "CUDAExecutionProvider")
    source = model if isinstance(model, bytes) else str(model)
    options = ort_options(threads, shared_pool or bool(_shared_pool))
    return ort.InferenceSession(source, options, providers=providers)


# -- OpenVINO ----------------------------------------------------------------------------------
def has_openvino() -> bool:
    """Whether the ``openvino`` package is importable."""
    return installed(OPENVINO)


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept for its lifetime: one Core serves every model,
    and the CPU plugin is never unloaded (unloading it frees the alternate signal stack it
    installed while its handler may still run on it)."""
    return require(OPENVINO, "OpenVINO").Core()


def openvino_model(model: Source, threads: int | None = None, latency: bool = False) -> Any:
    """An ONNX file (or its bytes) compiled for OpenVINO's CPU plugin, computing in fp32."""
    core = openvino_core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if latency:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if isinstance(model, bytes):
        return core.compile_model(core.read_model(model, b""), "CPU", config)
    return core.compile_model(core.read_model(str(model)), "CPU", config)
