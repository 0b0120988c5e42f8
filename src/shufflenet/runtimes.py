"""The inference runtimes that run ONNX files: one place that opens a session in each.

* :func:`ort_session`: an ONNX Runtime CPU (or CUDA) session with all graph optimisations on.
* :func:`openvino_model`: a model compiled by OpenVINO's CPU plugin in fp32 (by default OpenVINO
  would run bf16 on CPUs with AMX), through the process's one :func:`openvino_core`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["has_openvino", "openvino_core", "openvino_model", "ort_options", "ort_session"]

Source = str | os.PathLike[str] | bytes  # an ONNX file or its bytes


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
