"""ONNX files in their runtimes: ONNX Runtime (:data:`ONNXRUNTIME_RUNTIME`, the format's own)
and OpenVINO's CPU plugin (:data:`OPENVINO_RUNTIME`), each opening an export with its metadata
checked first (:func:`~shufflenet.export.read_onnx_metadata`); and :data:`ONNX`, the format's
entry in :data:`~shufflenet.export.FORMATS`, verified in both and quantized by
:func:`~shufflenet.export.export_int8`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..deploy.fastpath import ONNXRUNTIME, OPENVINO
from ..models.base import ShuffleNetBase
from ..runtimes import OPENVINO as OPENVINO_EXTRA
from ..runtimes import has_openvino, openvino_model, ort_session, share_ort_threads
from ..verification import FP32_TOLERANCE, Verification
from ..weights import error_reason
from .check import verify_opened
from .int8 import Int8Result, export_int8, int8_path, int8_types
from .metadata import read_onnx_metadata
from .onnx import export_onnx, onnx_bytes, to_onnx
from .runtime import OpenedModel, Runtime
from .spec import ExportFormat, ExportOptions

__all__ = [
    "ONNX",
    "ONNXRUNTIME_RUNTIME",
    "OPENVINO_RUNTIME",
    "load_onnx",
    "load_openvino",
    "open_onnx",
    "open_openvino",
    "verify_onnx",
    "verify_openvino",
]


# -- ONNX Runtime ------------------------------------------------------------------------------
def _session_model(
    session: Any, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> OpenedModel:
    source = session.get_inputs()[0]
    batch = source.shape[0] if isinstance(source.shape[0], int) else None

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {source.name: x})[0]  # type: ignore[no-any-return]

    return OpenedModel(
        "onnxruntime", Path(path), run, batch=batch, metadata=metadata or {}, runtime=session
    )


def open_onnx(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> OpenedModel:
    """An ONNX export in ONNX Runtime, its metadata and graph checked before the runtime reads
    it (ONNX Runtime's loader raises errors rather than crashing: ``first_in_child`` has
    nothing to add)."""
    metadata = read_onnx_metadata(path)
    try:
        session = ort_session(path, threads)
    except Exception as e:  # ONNX Runtime raises its own types for graphs it cannot load
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({error_reason(e)})") from None
    return _session_model(session, path, metadata)


def load_onnx(
    path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu"
) -> OpenedModel:
    """Any ONNX file in ONNX Runtime on ``device`` (``cpu``, ``cuda`` or ``cuda:0``: its CUDA
    provider runs on the first GPU)."""
    where = torch.device(device)
    if where.index:
        raise ValueError(f"ONNX Runtime runs on cpu or cuda:0, got device {device}")
    return _session_model(ort_session(path, threads, device=where.type), path)


def _open_weights(model: ShuffleNetBase, path: Path) -> OpenedModel:
    """Our weights (loaded from ``path``) in ONNX Runtime through an in-memory export."""
    return _session_model(ort_session(onnx_bytes(model)), path, model.weights_metadata)


def _onnx_file(module: nn.Module, example: Tensor, folder: Path) -> Path:
    """``module`` as ONNX (a dynamic batch axis) in ``folder``."""
    path = folder / "model.onnx"
    path.write_bytes(to_onnx(module, example))
    return path


ONNXRUNTIME_RUNTIME = Runtime(
    name="onnxruntime",
    package="onnxruntime",
    open=open_onnx,
    load=load_onnx,
    convert=_onnx_file,
    devices=("cpu", "cuda"),
    fixed_batch=False,
    layout=ONNXRUNTIME,
    share_threads=share_ort_threads,
    open_model=_open_weights,
)


# -- OpenVINO ----------------------------------------------------------------------------------
def _compiled_model(
    compiled: Any, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> OpenedModel:
    request = compiled.create_infer_request()
    first = compiled.input(0).get_partial_shape()[0]
    batch = first.get_length() if first.is_static else None

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x}, share_inputs=True)[0]  # type: ignore[no-any-return]

    return OpenedModel(
        "openvino", Path(path), run, batch=batch, metadata=metadata or {}, runtime=compiled
    )


def load_openvino(
    path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu"
) -> OpenedModel:
    """Any ONNX file compiled by OpenVINO's CPU plugin for latency, in fp32."""
    return _compiled_model(openvino_model(path, threads, latency=True), path)


def open_openvino(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> OpenedModel:
    """An ONNX export in OpenVINO's CPU plugin (fp32), its metadata and graph checked first."""
    metadata = read_onnx_metadata(path)
    return _compiled_model(openvino_model(path, threads, latency=True), path, metadata)


OPENVINO_RUNTIME = Runtime(
    name="openvino",
    package="openvino",
    open=open_openvino,
    load=load_openvino,
    convert=_onnx_file,
    extra=OPENVINO_EXTRA,
    fixed_batch=False,
    layout=OPENVINO,
    own_process=False,
)


# -- the format ----------------------------------------------------------------------------------
def verify_onnx(
    path: str | os.PathLike[str],
    model: ShuffleNetBase,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch on the same inputs."""
    return verify_opened(open_onnx(path), model, tolerance, batch_sizes)


def verify_openvino(
    path: str | os.PathLike[str],
    model: ShuffleNetBase,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Run ``path`` in OpenVINO's CPU plugin (fp32) and ``model`` in PyTorch on the same inputs.

    Worth running beside :func:`verify_onnx`: runtimes rewrite graphs differently, and a file
    that one computes right another may not (``tests/test_export.py`` pins such a graph).
    """
    return verify_opened(open_openvino(path), model, tolerance, batch_sizes)


def _export(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
    return [
        export_onnx(
            model,
            path,
            opset=options.opset,
            batch=options.batch,
            input_size=options.input_size,
            fastpath=options.fastpath,
        )
    ]


def _verify(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
    checks = [verify_onnx(path, model, options.batch_sizes)]
    if has_openvino():
        checks.append(verify_openvino(path, model, options.batch_sizes))
    return checks


def _check_int8(options: ExportOptions) -> None:
    int8_types(options.opset, "uint8", options.int8_weights)


def _quantize(
    model: ShuffleNetBase,
    path: Path,
    calib: str,
    options: ExportOptions,
    data: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Int8Result:
    """:func:`~shufflenet.export.export_int8` of the file just written at ``path``, which is
    the plain graph it quantizes where ``options.fastpath`` is None."""
    return export_int8(
        model,
        path,
        calib,
        opset=options.opset,
        batch=options.batch,
        input_size=options.input_size,
        weights=options.int8_weights,
        plain=path.read_bytes() if options.fastpath is None else None,
        data=data,
        int8=options.int8,
    )


ONNX = ExportFormat(
    "ONNX, checked in ONNX Runtime and OpenVINO (if installed)",
    _export,
    _verify,
    quantize=_quantize,
    check_int8=_check_int8,
    int8_files=lambda path: [int8_path(path)],
    suffixes=(".onnx",),
    runtime=ONNXRUNTIME_RUNTIME,
)
