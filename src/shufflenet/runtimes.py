"""The inference runtimes that run exported files: one place that opens a file in each.

* :func:`ort_session`: an ONNX Runtime CPU (or CUDA) session with all graph optimisations on.
* :func:`openvino_model`: a model compiled by OpenVINO's CPU plugin in fp32 (by default OpenVINO
  would run bf16 on CPUs with AMX), through the process's one :func:`openvino_core`.
* :func:`litert_interpreter`, :func:`executorch_program`, :func:`mnn_module`: a ``.tflite``
  file in LiteRT's interpreter (XNNPACK delegate), a ``.pte`` file in ExecuTorch's runtime, an
  ``.mnn`` file in MNN's CPU backend. Each runtime is an optional package; a missing one is a
  ``ValueError`` naming the pip extra that installs it (:data:`EXTRAS`).
* :func:`probe`: a file opened and run once in one of these three runtimes in a child process
  first. Their native loaders trust the file: a damaged or crafted one can crash or abort the
  process, which no ``try`` catches; in a child, that is one clear ``ValueError``.
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
from collections.abc import Iterator
from typing import Any

__all__ = [
    "EXTRAS",
    "executorch_program",
    "has_openvino",
    "has_runtime",
    "litert_interpreter",
    "mnn_module",
    "openvino_core",
    "openvino_model",
    "ort_options",
    "ort_session",
    "probe",
    "require",
    "stdout_to_stderr",
]

# runtime -> (the pip extra of shufflenet that installs it, its packages, the module to import)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "litert": ("litert", "litert-torch and ai-edge-litert", "ai_edge_litert.interpreter"),
    "executorch": ("executorch", "executorch", "executorch.runtime"),
    "mnn": ("mnn", "MNN", "MNN"),
}

Source = str | os.PathLike[str] | bytes  # a file or its bytes


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
    """An ONNX Runtime session for a file or model bytes, on ``device`` ("cpu" or "cuda")."""
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
    return ort.InferenceSession(source, ort_options(threads, shared_pool), providers=providers)


def has_openvino() -> bool:
    """Whether the ``openvino`` package is importable."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept for its lifetime.

    One Core serves every model, and the CPU plugin is never unloaded: unloading it with the
    last Core was seen to crash the test suite later, in a signal handler (SIGCHLD from a
    DataLoader worker) running on the alternate signal stack the plugin had installed and freed.
    """
    import openvino as ov

    return ov.Core()


def openvino_model(model: Source, threads: int | None = None, latency: bool = False) -> Any:
    """An ONNX file (or its bytes) compiled for OpenVINO's CPU plugin, computing in fp32."""
    if not has_openvino():
        raise ValueError("OpenVINO is not installed: pip install openvino")
    core = openvino_core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if latency:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if isinstance(model, bytes):
        return core.compile_model(core.read_model(model, b""), "CPU", config)
    return core.compile_model(core.read_model(str(model)), "CPU", config)


# -- edge runtimes: LiteRT, ExecuTorch, MNN ----------------------------------------------------
def require(runtime: str, what: str | None = None, module: str | None = None) -> Any:
    """Import ``module`` (default: ``runtime``'s own) of an optional runtime; if it is missing,
    a ``ValueError`` that names ``what`` needs it and the pip extra to install."""
    extra, packages, default = EXTRAS[runtime]
    try:
        # MNN prints its CPU features to standard output on import; ExecuTorch warns that its
        # runtime API is experimental.
        with stdout_to_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module or default)
    except ImportError as e:
        needs = what or f"the {runtime} runtime"
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in (
            (module or default).split(".")[0],
            default.split(".")[0],
        )
        broken = "" if missing else f" (importing it failed: {e})"
        raise ValueError(
            f"{needs} needs {packages}: pip install 'shufflenet[{extra}]'{broken}"
        ) from None


def has_runtime(runtime: str) -> bool:
    """Whether ``runtime``'s package (one of :data:`EXTRAS`) is importable."""
    try:
        require(runtime)
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


def litert_interpreter(model: Source, threads: int | None = None) -> Any:
    """A ``.tflite`` file (or its bytes) in LiteRT's interpreter, tensors allocated; its default
    XNNPACK delegate runs the float and int8 operators. ``threads`` ``None``: LiteRT's default."""
    lite = require("litert", "running a .tflite file")
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    with stdout_to_stderr():
        interpreter = lite.Interpreter(**source, num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


def executorch_program(model: Source, threads: int | None = None) -> Any:
    """A ``.pte`` file (or its bytes) loaded by ExecuTorch's runtime (``Program``: methods
    ``forward`` and, for our files, ``shufflenet_metadata``), XNNPACK delegate included.

    Keep the program alive as long as a method loaded from it: a method does not hold it, and
    runs from its memory (once it is freed, the next run crashes the process). ``threads``
    resizes ExecuTorch's one thread pool (XNNPACK's threads), for the whole process; ``None``
    keeps it (ExecuTorch's default: one thread per core)."""
    runtime = require("executorch", "running a .pte file")
    source = model if isinstance(model, bytes) else str(model)
    with stdout_to_stderr():
        if threads:  # one pool per process, for every program: not while another one runs
            pybindings = require(
                "executorch", module="executorch.extension.pybindings.portable_lib"
            )
            pybindings._unsafe_reset_threadpool(threads)
        return runtime.Runtime.get().load_program(source)


def mnn_module(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ``.mnn`` file as an MNN ``Module`` on the CPU backend with ``threads`` threads (default
    1) and MNN's default precision (fp32 on CPUs; ``Low`` would allow fp16 on ARM)."""
    mnn = require("mnn", "running an .mnn file")
    with stdout_to_stderr():
        return mnn.nn.load_module_from_file(str(path), [], [], thread_num=threads or 1)


# -- a first open in a child process -----------------------------------------------------------
# Each opens the file argv[1] and runs it once on zeros, its inputs bounded by argv[2] values
# (exit 3 if larger); MNN's input shape (comma-separated) is argv[3], the others' are the file's.
_PROBES = {
    "mnn": """
import sys, numpy as np, MNN
shape = [int(s) for s in sys.argv[3].split(",")]
module = MNN.nn.load_module_from_file(sys.argv[1], [], [], thread_num=1)
x = MNN.expr.const(np.zeros(shape, np.float32), shape, MNN.expr.NCHW)
module.onForward([x])[0].read()
""",
    "litert": """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
details = interpreter.get_input_details()
if any(int(np.prod(d["shape"])) > int(sys.argv[2]) for d in details):
    sys.exit(3)
interpreter.allocate_tensors()
for d in details:
    interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
interpreter.invoke()
""",
    "executorch": """
import math, sys, torch
from executorch.runtime import Runtime
program = Runtime.get().load_program(sys.argv[1])
for name in program.method_names:
    method = program.load_method(name)
    meta = method.metadata
    shapes = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    if any(math.prod(s) > int(sys.argv[2]) for s in shapes):
        sys.exit(3)
    method.execute([torch.zeros(s) for s in shapes])
""",
}
_TOO_LARGE = 3


def probe(
    runtime: str,
    path: str | os.PathLike[str],
    label: str | os.PathLike[str],
    max_values: int,
    shape: list[int] | None = None,
    timeout: float = 600.0,
) -> None:
    """Open ``path`` in ``runtime`` (``mnn``, ``litert`` or ``executorch``) and run it once on
    zeros (every method of a ``.pte``; MNN on an input of ``shape``) in a child process, so
    that a file that crashes or aborts the runtime, or asks for an input of more than
    ``max_values`` values, is a ``ValueError`` naming ``label`` rather than the end of this
    process. Errors the runtime raises as exceptions are left to the caller's own open."""
    args = [str(path), str(max_values), ",".join(map(str, shape or []))]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBES[runtime], *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"{label}: {runtime} did not open it within {timeout:.0f} s") from None
    if proc.returncode == _TOO_LARGE:
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
