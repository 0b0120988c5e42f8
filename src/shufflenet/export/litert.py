"""LiteRT (TensorFlow Lite) export: a ``.tflite`` file converted by litert-torch from the
shuffle-free graph, its metadata inside the file, verified in LiteRT's interpreter; int8 by
PyTorch 2 export quantization (full-integer: int8 weights, activations, input and output).

The file takes NHWC float32 images (the layout of Android bitmaps and of every TFLite image
model; the graph is NHWC inside, so the layout costs nothing), a fixed batch, and records the
model's metadata (:func:`~shufflenet.export.model_metadata`) as the JSON of a flatbuffer
``metadata`` entry named ``shufflenet`` (:func:`read_tflite_metadata`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ..io import atomic_path
from ..models.base import ShuffleNetBase
from ..runtimes import litert_interpreter, require, stdout_to_stderr
from ..verification import FP32_TOLERANCE, Verification
from .calibration import calibration_data
from .edge import (
    EdgeGraph,
    EdgeModel,
    check_edge_metadata,
    compare_edge_int8,
    edge_graph,
    edge_int8_path,
    pt2e_calibrated,
    verify_edge,
)
from .int8 import Int8Result
from .spec import ExportFormat, ExportOptions
from .xnnpack import strided_splits_as_slices

__all__ = [
    "LITERT",
    "TFLITE_METADATA",
    "export_litert",
    "export_litert_int8",
    "open_litert",
    "read_tflite_metadata",
    "to_tflite",
    "verify_litert",
]

TFLITE_METADATA = "shufflenet"  # the name of our entry in the flatbuffer's metadata


class _FromNHWC(nn.Module):
    """``model`` on NHWC images: the converter cancels this permute against its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = False  # eval mode without ``eval()``, which exported graphs refuse

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.permute(0, 3, 1, 2))  # type: ignore[no-any-return]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch without its progress lines on standard output."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        with stdout_to_stderr():
            yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def to_tflite(
    module: nn.Module,
    example: Tensor,
    metadata: dict[str, Any] | None = None,
    *,
    nhwc: bool = True,
    **convert: Any,
) -> bytes:
    """Any ``module`` that takes NCHW images, converted by litert-torch at ``example``'s shape
    (NCHW) into ``.tflite`` bytes that take NHWC images (``nhwc=False``: ``module`` and
    ``example`` are already NHWC); ``metadata``, if given, in a ``shufflenet`` metadata entry.
    ``convert``: more keywords of ``litert_torch.convert`` (``quant_config``). For converting
    any model the same way, as ``bench --compare`` does for torchvision's."""
    litert_torch = require("litert", "LiteRT export", "litert_torch")
    if nhwc:
        module, example = _FromNHWC(module), example.permute(0, 2, 3, 1).contiguous()
    with _quiet():
        converted = litert_torch.convert(module, (example,), **convert)
        data = bytes(converted.model_content())
    return data if metadata is None else _with_metadata(data, metadata)


def _with_metadata(model: bytes, metadata: dict[str, Any]) -> bytes:
    """The flatbuffer ``model`` with a ``shufflenet`` metadata entry holding ``metadata``."""
    utils = require("litert", "LiteRT export", "ai_edge_litert.tools.flatbuffer_utils")
    proto = utils.read_model_from_bytearray(bytearray(model))
    buffer = utils.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    proto.buffers.append(buffer)
    entry = utils.schema_fb.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA, len(proto.buffers) - 1
    others = [m for m in proto.metadata or [] if m.name != TFLITE_METADATA.encode()]
    proto.metadata = [*others, entry]
    return bytes(utils.convert_object_to_bytearray(proto))


def read_tflite_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``shufflenet`` metadata entry of a ``.tflite`` file, decoded; the file is not run.

    Checked as a whole with the file's shapes by :func:`open_litert`."""
    schema = require("litert", "reading a .tflite file", "ai_edge_litert.schema_py_generated")
    data = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() != TFLITE_METADATA.encode():
                continue
            buffer = model.Buffers(entry.Buffer())
            offset, size = buffer.Offset(), buffer.Size()
            raw = data[offset : offset + size] if offset > 1 else buffer.DataAsNumpy().tobytes()
            return dict(json.loads(raw.decode()))
    except Exception:  # flatbuffers raises struct, index or decode errors on foreign bytes
        raise ValueError(f"{path} is not a readable .tflite file (damaged or foreign)") from None
    raise ValueError(
        f"{path} has no shufflenet metadata (preprocessing, class names): export it with "
        "`shufflenet export --format litert`"
    )


def _export(graph: EdgeGraph, path: str | os.PathLike[str], module: nn.Module, **kw: Any) -> Path:
    data = to_tflite(module, graph.example, graph.metadata, **kw)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def export_litert(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> Path:
    """Convert ``model`` to a ``.tflite`` file at ``path`` with litert-torch: the shuffle-free
    graph (the plain one where ``options.fastpath`` is None or the model has none; see
    :func:`~shufflenet.export.edge.edge_graph`), NHWC input, ``options.batch`` fixed (1 if
    None), fp32 weights."""
    graph = _graph(model, options)
    return _export(graph, path, graph.module)


def _graph(model: ShuffleNetBase, options: ExportOptions) -> EdgeGraph:
    """The edge graph, Megvii's even/odd splits as contiguous slices: LiteRT's XNNPACK delegate
    takes strided slices only with stride 1 (:func:`~shufflenet.export.xnnpack.
    strided_splits_as_slices`)."""
    graph = edge_graph(model, options, "NHWC")
    graph.module = strided_splits_as_slices(graph.module, graph.example)
    return graph


def open_litert(path: str | os.PathLike[str], threads: int | None = None) -> EdgeModel:
    """A ``.tflite`` export in LiteRT's interpreter (XNNPACK), its metadata checked against
    the graph. An int8 file's input and output are quantized and dequantized here with their
    own scales, so ``run`` takes and returns float32 like an fp32 file's."""
    metadata = read_tflite_metadata(path)
    try:
        interpreter = litert_interpreter(path, threads)
    except ValueError:
        raise
    except Exception as e:  # LiteRT raises its own types for files it cannot load
        raise ValueError(f"{path}: LiteRT cannot load it ({_first_line(e)})") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path} must have one input and one output")
    source, sink = inputs[0], outputs[0]
    metadata = check_edge_metadata(metadata, path, source["shape"], sink["shape"])

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], _quantize(x, source))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(sink["index"]), sink)

    return EdgeModel("litert", Path(path), metadata, run, runtime=interpreter)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def verify_litert(
    path: str | os.PathLike[str], model: ShuffleNetBase, tolerance: float = FP32_TOLERANCE
) -> Verification:
    """Run ``path`` in LiteRT next to ``model`` at the file's batch size."""
    return verify_edge(open_litert(path), model, tolerance)


def export_litert_int8(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    calib: str,
    options: ExportOptions,
    data: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Int8Result:
    """Full-integer int8 ``FILE.int8.tflite`` beside the fp32 ``FILE.tflite`` at ``path``:
    litert-torch's PT2E quantizer (int8 weights symmetric per output channel, int8 activations
    from histogram calibration on ``calib``'s images), lowered by litert-torch to int8 kernels
    with int8 input and output; compared with the fp32 file on ``calib``'s evaluation images."""
    pt2e = require("litert", "LiteRT int8 export", "litert_torch.quantize.pt2e_quantizer")
    config = require("litert", "LiteRT int8 export", "litert_torch.quantize.quant_config")
    graph = _graph(model, options)
    if data is None:
        data = calibration_data(calib, graph.metadata["preprocessing"])
    calibration, images, labels = data
    nhwc = EdgeGraph(_FromNHWC(graph.module), graph.example.permute(0, 2, 3, 1), graph.metadata)
    quantizer = pt2e.PT2EQuantizer().set_global(
        pt2e.get_symmetric_quantization_config(is_per_channel=True)
    )
    converted = pt2e_calibrated(
        nhwc, quantizer, calibration.permute(0, 2, 3, 1), fold_quantize=False
    )
    graph.metadata["quantization"] = {
        "method": "PT2E (litert-torch PT2EQuantizer), full-integer",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 per-tensor, histogram calibration",
        "calibration_images": len(calibration),
    }
    quantized = edge_int8_path(path)
    quant_config = config.QuantConfig(pt2e_quantizer=quantizer)
    _export(nhwc, quantized, converted, nhwc=False, quant_config=quant_config)
    report = compare_edge_int8(open_litert(path, 1), open_litert(quantized, 1), images, labels)
    return Int8Result(quantized, calib, graph.metadata["quantization"]["weights"], report, [])


def _export_format(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
    return [export_litert(model, path, options)]


def _verify_format(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
    return [verify_litert(path, model)]


LITERT = ExportFormat(
    "LiteRT .tflite via litert-torch (NHWC input, fixed batch), checked in LiteRT",
    _export_format,
    _verify_format,
    int8=True,
    quantize=export_litert_int8,
    int8_files=lambda path: [edge_int8_path(path)],
)
