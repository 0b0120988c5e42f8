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

from ..io import write_bytes
from ..limits import MAX_BATCH_ELEMENTS
from ..models.base import ShuffleNetBase
from ..runtimes import litert_interpreter, probe, require, stdout_to_stderr
from ..verification import FP32_TOLERANCE, Verification
from .edge import (
    EdgeGraph,
    EdgeModel,
    check_edge_metadata,
    edge_format,
    edge_graph,
    private_copy,
    pt2e_calibrated,
    read_model_file,
    verify_edge,
)
from .spec import ExportOptions
from .xnnpack import strided_splits_as_slices

__all__ = [
    "LITERT",
    "LITERT_INT8",
    "TFLITE_METADATA",
    "dequantize_output",
    "export_litert",
    "open_litert",
    "quantize_input",
    "read_tflite_metadata",
    "to_tflite",
    "to_tflite_int8",
    "verify_litert",
    "write_litert_int8",
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
    return _tflite_metadata(read_model_file(path, "LiteRT"), path)


def _tflite_metadata(data: bytes, path: str | os.PathLike[str]) -> dict[str, Any]:
    schema = require("litert", "reading a .tflite file", "ai_edge_litert.schema_py_generated")
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
    except Exception:  # flatbuffers' struct/index errors on foreign bytes; JSON's, recursion
        raise ValueError(f"{path} is not a readable .tflite file (damaged or foreign)") from None
    raise ValueError(
        f"{path} has no shufflenet metadata (preprocessing, class names): export it with "
        "`shufflenet export --format litert`"
    )


def export_litert(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> Path:
    """Convert ``model`` to a ``.tflite`` file at ``path`` with litert-torch: the shuffle-free
    graph (the plain one where ``options.fastpath`` is None or the model has none; see
    :func:`~shufflenet.export.edge.edge_graph`), NHWC input, ``options.batch`` fixed (1 if
    None), fp32 weights."""
    graph = _graph(model, options)
    return write_bytes(path, to_tflite(graph.module, graph.example, graph.metadata))


def _graph(model: ShuffleNetBase, options: ExportOptions) -> EdgeGraph:
    """The edge graph, Megvii's even/odd splits as contiguous slices: LiteRT's XNNPACK delegate
    takes strided slices only with stride 1 (:func:`~shufflenet.export.xnnpack.
    strided_splits_as_slices`)."""
    graph = edge_graph(model, options, "NHWC")
    graph.module = strided_splits_as_slices(graph.module, graph.example)
    return graph


def open_litert(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> EdgeModel:
    """A ``.tflite`` export in LiteRT's interpreter (XNNPACK), its metadata checked against
    the graph. An int8 file's input and output are quantized and dequantized here with their
    own scales, so ``run`` takes and returns float32 like an fp32 file's.

    The file is read once; its bytes are opened and run in a child process first
    (:func:`~shufflenet.runtimes.probe`; ``first_in_child=False`` skips that for a file just
    exported), then loaded here."""
    require("litert", "running a .tflite file")
    data = read_model_file(path, "LiteRT")
    metadata = _tflite_metadata(data, path)
    if first_in_child:
        with private_copy(data, ".tflite") as copy:
            probe("litert", copy, path, MAX_BATCH_ELEMENTS)
    try:
        interpreter = litert_interpreter(data, threads)
    except Exception as e:  # LiteRT raises its own types for files it cannot load
        raise ValueError(f"{path}: LiteRT cannot load it ({_first_line(e)})") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path} must have one input and one output")
    source, sink = inputs[0], outputs[0]
    metadata = check_edge_metadata(metadata, path, source["shape"], sink["shape"])

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], quantize_input(x, source))
        interpreter.invoke()
        return dequantize_output(interpreter.get_tensor(sink["index"]), sink)

    return EdgeModel("litert", Path(path), metadata, run, runtime=(interpreter, data))


def quantize_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """``x`` as the input tensor ``detail`` (an interpreter's input details) takes it: float32
    as it is, int8 quantized with the tensor's scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output tensor (``detail``: its output details) as float32, a copy."""
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


# What the int8 file's metadata says of its quantization.
LITERT_INT8 = {
    "method": "PT2E (litert-torch PT2EQuantizer), full-integer",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 per-tensor, histogram calibration",
}


def to_tflite_int8(
    module: nn.Module,
    example: Tensor,
    calibration: Tensor,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    """Any ``module`` that takes NCHW images as full-integer int8 ``.tflite`` bytes: litert-torch's
    PT2E quantizer (int8 weights symmetric per output channel, int8 activations from histogram
    calibration on the NCHW ``calibration`` images), lowered at ``example``'s shape to int8
    kernels with NHWC int8 input and output; ``metadata`` as in :func:`to_tflite`."""
    pt2e = require("litert", "LiteRT int8 export", "litert_torch.quantize.pt2e_quantizer")
    config = require("litert", "LiteRT int8 export", "litert_torch.quantize.quant_config")
    nhwc = EdgeGraph(_FromNHWC(module), example.permute(0, 2, 3, 1), metadata or {})
    quantizer = pt2e.PT2EQuantizer().set_global(
        pt2e.get_symmetric_quantization_config(is_per_channel=True)
    )
    converted = pt2e_calibrated(
        nhwc, quantizer, calibration.permute(0, 2, 3, 1), fold_quantize=False
    )
    converted.training = False  # in eval form already; litert-torch warns on the flag alone
    quant_config = config.QuantConfig(pt2e_quantizer=quantizer)
    return to_tflite(converted, nhwc.example, metadata, nhwc=False, quant_config=quant_config)


def write_litert_int8(
    model: ShuffleNetBase, path: Path, target: Path, options: ExportOptions, calibration: Tensor
) -> dict[str, Any]:
    """The full-integer int8 ``.tflite`` ``target``: :func:`to_tflite_int8` of the graph
    :func:`export_litert` converts, calibrated on ``calibration``; returns its ``quantization``
    record."""
    graph = _graph(model, options)
    graph.metadata["quantization"] = {**LITERT_INT8, "calibration_images": len(calibration)}
    write_bytes(target, to_tflite_int8(graph.module, graph.example, calibration, graph.metadata))
    return graph.metadata["quantization"]


LITERT = edge_format(
    "LiteRT .tflite via litert-torch (NHWC input, fixed batch), checked in LiteRT",
    export_litert,
    open_litert,
    quantize=write_litert_int8,
    suffixes=(".tflite",),
)
