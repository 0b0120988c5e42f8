"""LiteRT (TensorFlow Lite): a ``.tflite`` file converted by litert-torch from the shuffle-free
graph, its metadata inside the file, run in LiteRT's interpreter (:data:`LITERT_RUNTIME`, the one
place that imports it); int8 by PyTorch 2 export quantization (full-integer: int8 weights,
activations, input and output; the calibration method, per-tensor weights and layers kept in float
as :class:`~shufflenet.export.Int8Options` chooses).

The file takes NHWC float32 images (the layout of Android bitmaps and of every TFLite image
model; the graph is NHWC inside, so the layout costs nothing), a fixed batch, and records the
model's metadata (:func:`~shufflenet.export.model_metadata`) as the JSON of a flatbuffer
``metadata`` entry named ``shufflenet`` (:func:`read_tflite_metadata`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ..limits import MAX_BATCH_ELEMENTS
from ..runtimes import Extra, probe, require, stdout_to_stderr
from ..weights import error_reason
from .edge import (
    EDGE_LAYOUT,
    EdgeGraph,
    bytes_converter,
    check_edge_metadata,
    edge_format,
    edge_verifier,
    graph_export,
    graph_int8,
    pt2e_calibrated,
)
from .int8_options import Int8Options
from .int8_pt2e import FloatLayers, pt2e_config
from .runtime import OpenedModel, Runtime, private_copy, read_model_file
from .xnnpack import strided_splits_as_slices

__all__ = [
    "LITERT",
    "LITERT_EXTRA",
    "LITERT_INT8",
    "LITERT_RUNTIME",
    "TFLITE_METADATA",
    "dequantize_output",
    "export_litert",
    "load_litert",
    "open_litert",
    "quantize_input",
    "read_tflite_metadata",
    "to_tflite",
    "to_tflite_int8",
    "to_tflite_pt2e",
    "verify_litert",
]

LITERT_EXTRA = Extra(
    "litert", "litert-torch and ai-edge-litert", "ai_edge_litert.interpreter", "litert_torch"
)
TFLITE_METADATA = "shufflenet"  # the name of our entry in the flatbuffer's metadata
# Opens argv[1] and runs it once on zeros; exit 3 if an input holds more than argv[2] values
# (:func:`~shufflenet.runtimes.probe`).
PROBE = """
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
"""


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
    litert_torch = require(LITERT_EXTRA, "LiteRT export", "litert_torch")
    if nhwc:
        module, example = _FromNHWC(module), example.permute(0, 2, 3, 1).contiguous()
    with _quiet():
        converted = litert_torch.convert(module, (example,), **convert)
        data = bytes(converted.model_content())
    return data if metadata is None else _with_metadata(data, metadata)


def _with_metadata(model: bytes, metadata: dict[str, Any]) -> bytes:
    """The flatbuffer ``model`` with a ``shufflenet`` metadata entry holding ``metadata``."""
    utils = require(LITERT_EXTRA, "LiteRT export", "ai_edge_litert.tools.flatbuffer_utils")
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
    schema = require(LITERT_EXTRA, "reading a .tflite file", "ai_edge_litert.schema_py_generated")
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


def _load(
    data: bytes, path: str | os.PathLike[str], threads: int | None
) -> tuple[OpenedModel, Sequence[int], Sequence[int]]:
    """``.tflite`` bytes in LiteRT's interpreter (its default XNNPACK delegate runs the float and
    int8 operators; ``threads`` None: LiteRT's default), and its input and output shapes. An
    int8 file's input and output are quantized and dequantized with their own scales, so that
    ``run`` takes and returns float32 like an fp32 file's."""
    lite = require(LITERT_EXTRA, "running a .tflite file")
    try:
        with stdout_to_stderr():
            interpreter = lite.Interpreter(model_content=data, num_threads=threads)
            interpreter.allocate_tensors()
    except Exception as e:  # LiteRT raises its own types for files it cannot load
        raise ValueError(f"{path}: LiteRT cannot load it ({error_reason(e)})") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path} must have one input and one output")
    source, sink = inputs[0], outputs[0]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], quantize_input(x, source))
        interpreter.invoke()
        return dequantize_output(interpreter.get_tensor(sink["index"]), sink)

    batch = int(source["shape"][0])
    opened = OpenedModel("litert", Path(path), run, "NHWC", batch, runtime=(interpreter, data))
    return opened, source["shape"], sink["shape"]


def open_litert(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> OpenedModel:
    """A ``.tflite`` export in LiteRT's interpreter (XNNPACK), its metadata checked against
    the graph; ``run`` takes and returns float32, an int8 file's included.

    The file is read once; its bytes are opened and run in a child process first
    (:func:`~shufflenet.runtimes.probe`; ``first_in_child=False`` skips that for a file just
    exported), then loaded here."""
    require(LITERT_EXTRA, "running a .tflite file")
    data = read_model_file(path, "LiteRT")
    metadata = _tflite_metadata(data, path)
    if first_in_child:
        with private_copy(data, ".tflite") as copy:
            probe("litert", PROBE, copy, path, MAX_BATCH_ELEMENTS)
    opened, inputs, outputs = _load(data, path, threads)
    opened.metadata = check_edge_metadata(metadata, path, inputs, outputs)
    return opened


def load_litert(
    path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu"
) -> OpenedModel:
    """Any ``.tflite`` file taking one NHWC batch (as :func:`to_tflite` writes them) in LiteRT's
    interpreter, on the CPU."""
    return _load(read_model_file(path, "LiteRT"), path, threads)[0]


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


# The quantizer the int8 file's metadata names.
LITERT_INT8 = "PT2E (litert-torch PT2EQuantizer), full-integer"


def to_tflite_int8(
    module: nn.Module,
    example: Tensor,
    calibration: Tensor,
    metadata: dict[str, Any] | None = None,
    int8: Int8Options | None = None,
    float_layers: Sequence[str] = (),
    model: nn.Module | None = None,
) -> bytes:
    """Any ``module`` that takes NCHW images as full-integer int8 ``.tflite`` bytes: litert-torch's
    PT2E quantizer (int8 weights symmetric per output channel, int8 activations calibrated on
    the NCHW ``calibration`` images), lowered at ``example``'s shape to int8 kernels with NHWC
    int8 input and output; ``metadata`` as in :func:`to_tflite`. ``int8`` chooses the
    calibration method (default: histogram) and per-tensor weights; ``float_layers`` (names of
    ``model``'s layers, resolved: see :func:`~shufflenet.export.int8_options.pick_layers`)
    stay float."""
    pt2e = require(LITERT_EXTRA, "LiteRT int8 export", "litert_torch.quantize.pt2e_quantizer")
    config = require(LITERT_EXTRA, "LiteRT int8 export", "litert_torch.quantize.quant_config")
    int8 = (int8 or Int8Options()).checked("litert")
    nhwc = EdgeGraph(_FromNHWC(module), example.permute(0, 2, 3, 1), metadata or {})
    quantizer = pt2e.PT2EQuantizer().set_global(
        pt2e_config(pt2e.get_symmetric_quantization_config, int8)
    )
    annotator = FloatLayers(quantizer, model or module, float_layers, prefix="model.")
    converted = pt2e_calibrated(
        nhwc, annotator, calibration.permute(0, 2, 3, 1), fold_quantize=False
    )
    converted.training = False  # in eval form already; litert-torch warns on the flag alone
    quant_config = config.QuantConfig(pt2e_quantizer=quantizer)
    return to_tflite(converted, nhwc.example, metadata, nhwc=False, quant_config=quant_config)


def to_tflite_pt2e(
    graph: nn.Module, example: Tensor, metadata: dict[str, Any] | None = None
) -> bytes:
    """A graph PyTorch 2 export quantization already converted (``convert_pt2e(...,
    fold_quantize=False)``, as QAT's) as full-integer int8 ``.tflite`` bytes with its own
    scales, at ``example``'s (NCHW) shape, taking NHWC images; ``metadata`` as in
    :func:`to_tflite`."""
    pt2e = require(LITERT_EXTRA, "LiteRT int8 export", "litert_torch.quantize.pt2e_quantizer")
    config = require(LITERT_EXTRA, "LiteRT int8 export", "litert_torch.quantize.quant_config")
    quantizer = pt2e.PT2EQuantizer().set_global(  # tells the converter: static int8
        pt2e.get_symmetric_quantization_config(is_per_channel=True)
    )
    quant_config = config.QuantConfig(pt2e_quantizer=quantizer)
    return to_tflite(graph, example, metadata, quant_config=quant_config)


LITERT_RUNTIME = Runtime(
    name="litert",
    package="litert_torch",
    open=open_litert,
    load=load_litert,
    convert=bytes_converter(to_tflite, "model.tflite"),
    extra=LITERT_EXTRA,
    input_layout="NHWC",
    layout=EDGE_LAYOUT,
    # Megvii's even/odd splits as contiguous slices: LiteRT's XNNPACK delegate takes strided
    # slices only with stride 1
    rewrite=strided_splits_as_slices,
)
export_litert = graph_export(LITERT_RUNTIME, to_tflite)
verify_litert = edge_verifier(LITERT_RUNTIME)
LITERT = edge_format(
    "LiteRT .tflite via litert-torch (NHWC input, fixed batch), checked in LiteRT",
    LITERT_RUNTIME,
    export_litert,
    quantize=graph_int8(LITERT_RUNTIME, to_tflite_int8, LITERT_INT8),
    suffixes=(".tflite",),
)
