"""Which layer to keep in float: the error each layer adds when it alone is quantized, and how
each calibration choice does in a format's own runtime (:func:`int8_sensitivity`).

Each layer's row comes from ONNX Runtime on the plain BatchNorm-folded graph, whose nodes carry
the model's layer names: the layer's node alone quantized (its input, weights and output on
their int8 grids, every other node float), the logits compared with fp32's on the evaluation
images. The calibrated ranges are computed once and reused for every layer. A layer whose row
shows a large error is the one to name in ``float_layers``, in any runtime.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..deploy.fastpath import ONNXRUNTIME, FastPathOptions
from ..models.base import ShuffleNetBase
from ..runtimes import ort_session
from .calibration import image_batches, model_calibration_data
from .int8 import LAYER_OPS, RUNTIME, int8_types, quantize_onnx
from .int8_errors import producer_kinds
from .int8_options import CALIB_METHODS, FIRST, LAST, Int8Options, layer_of_scope
from .int8_report import output_error
from .onnx import DEFAULT_OPSET, onnx_bytes
from .spec import ExportFormat, ExportOptions

__all__ = ["LayerSensitivity", "MethodResult", "SensitivityReport", "int8_sensitivity"]

EVAL_IMAGES = 512  # at most this many evaluation images per layer run


@dataclass
class LayerSensitivity:
    """One layer quantized alone: its name, what it is, the relative L2 error of the logits
    and their top-1 agreement with fp32."""

    layer: str
    kind: str
    output_error: float
    agreement: float


@dataclass
class MethodResult:
    """One calibration choice in a runtime: all layers quantized but ``float_layers``."""

    method: str
    float_layers: list[str]
    agreement: float
    output_error: float | None
    fp32_top1: float | None
    int8_top1: float | None
    speed_ratio: float  # fp32 time over int8 time at batch 1 (above 1: int8 is faster)


@dataclass
class SensitivityReport:
    """Layers worst first (ONNX Runtime), then each calibration choice in ``runtime``."""

    runtime: str
    images: int
    layers: list[LayerSensitivity]
    methods: list[MethodResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _logits(model: Any, chunks: list[np.ndarray]) -> np.ndarray:
    """An ONNX model's (bytes or proto) outputs on ``chunks``, in ONNX Runtime."""
    session = ort_session(model if isinstance(model, bytes) else model.SerializeToString(), 1)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: c})[0] for c in chunks])


def layer_sensitivity(
    model: ShuffleNetBase,
    calibration: Tensor,
    images: Tensor,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    opset: int = DEFAULT_OPSET,
    input_size: Sequence[int] | None = None,
    layers: Sequence[str] | None = None,
) -> list[LayerSensitivity]:
    """Each layer (or those named in ``layers``) quantized alone by ONNX Runtime, ranges by
    ``method`` on ``calibration``, compared with fp32 on ``images``: worst first."""
    import onnx

    _, weights = int8_types(opset, "uint8", "auto")
    fp32 = onnx_bytes(model, opset=opset, input_size=input_size, fastpath=None)
    proto = onnx.load_from_string(fp32)
    kinds = producer_kinds(proto)
    chunks = image_batches(images[:EVAL_IMAGES], 32, fixed=False)
    reference = _logits(fp32, chunks)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "ranges.json")
        for node in proto.graph.node:
            name = layer_of_scope(node.name)
            if node.op_type not in LAYER_OPS or name is None:
                continue
            if layers is not None and name not in layers:
                continue
            quantized = quantize_onnx(
                fp32,
                calibration,
                weights=weights,
                method=method,
                per_channel=per_channel,
                only=[node.name],
                cache=cache,
            )
            out = _logits(quantized, chunks)
            kind = kinds.get(node.output[0], LAYER_OPS[node.op_type])
            agreement = float((out.argmax(1) == reference.argmax(1)).mean())
            rows.append(LayerSensitivity(name, kind, output_error(reference, out), agreement))
    return sorted(rows, key=lambda row: -row.output_error)


def int8_sensitivity(
    model: ShuffleNetBase,
    calib: str,
    format: str = "onnx",
    *,
    int8: Int8Options | None = None,
    methods: Sequence[str] | None = None,
    float_layers: Sequence[Sequence[str]] = ((), (FIRST, LAST)),
    input_size: Sequence[int] | None = None,
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    fastpath: FastPathOptions | None = ONNXRUNTIME,
) -> SensitivityReport:
    """The per-layer report of ``model`` calibrated on ``calib`` (``digits`` or a folder), and
    each calibration ``methods`` (default: all of the runtime's) with each ``float_layers``
    choice, quantized by ``format``'s own int8 export in a temporary folder and compared with
    its fp32 file there. ``int8`` gives the number of calibration images and per-channel
    weights; its ``method`` is the one the per-layer rows use (in ONNX Runtime; a method
    ONNX Runtime lacks falls back to its default); ``input_size``, ``batch``, ``opset`` and
    ``fastpath`` are the export's (:func:`~shufflenet.export.export_model`)."""
    from .formats import FORMATS, check_suffix

    spec: ExportFormat | None = FORMATS.get(format)
    if spec is None or spec.quantize is None or spec.runtime is None:
        raise ValueError(f"format {format!r} has no int8 export")
    runtime = spec.runtime.name
    chosen = (int8 or Int8Options()).checked(runtime)
    names = list(CALIB_METHODS[runtime]) if methods is None else list(methods)
    for name in names:
        dataclasses.replace(chosen, method=name).checked(runtime)
    data = model_calibration_data(model, calib, input_size, chosen.calib_images)
    calibration, images, _ = data
    ort_method = chosen.method if chosen.method in CALIB_METHODS[RUNTIME] else "auto"
    ort_method = Int8Options(ort_method).checked(RUNTIME).method
    layers = layer_sensitivity(
        model,
        calibration,
        images,
        method=ort_method,
        per_channel=chosen.per_channel,
        opset=opset,
        input_size=input_size,
    )
    rows = []
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = check_suffix(Path(tmp, f"model{spec.suffixes[0]}"), format)
        base = ExportOptions(opset, batch, input_size, fastpath, "auto")
        spec.export(model, path, base)
        for name in names:
            for kept in float_layers:
                options = dataclasses.replace(
                    base, int8=dataclasses.replace(chosen, method=name, float_layers=tuple(kept))
                )
                result = spec.quantize(model, path, calib, options, data)
                report = result.report
                rows.append(
                    MethodResult(
                        name,
                        list(kept),
                        report.agreement,
                        report.output_error,
                        report.fp32_top1,
                        report.int8_top1,
                        report.fp32_ms / report.int8_ms,
                    )
                )
                _remove(spec.int8_files(path))
    return SensitivityReport(runtime, len(images), layers, rows)


def _remove(paths: Sequence[str | os.PathLike[str]]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
