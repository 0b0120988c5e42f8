"""int8 ONNX: ONNX Runtime's post-training static quantization (QDQ, per-channel weights),
calibrated on digits or an image folder, and what it costs next to fp32.

:func:`export_int8` is the whole run: calibration images, the quantized file beside the fp32
one, agreement, sizes and latency (:func:`compare_int8`), and how well each activation keeps
on its int8 grid (:func:`~shufflenet.export.int8_layer_errors`). The fp32 graph it quantizes is
the plain BatchNorm-folded one, exported once per run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import platform
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from .. import cpu
from ..deploy.fastpath import FastPathOptions
from ..io import atomic_path
from ..models.base import ShuffleNetBase
from ..runtimes import ort_session
from ..timer import TimedRun, measure
from .calibration import calibration_reader, image_batches, model_calibration_data
from .int8_errors import graph_layer_errors
from .int8_options import Int8Options, layer_of_scope, pick_layers, resolve_float_layers
from .int8_report import Int8Report, Int8Result, output_error
from .metadata import read_onnx_metadata, write_onnx_metadata
from .onnx import DEFAULT_OPSET, onnx_bytes

__all__ = [
    "INT8_WEIGHTS",
    "VNNI_FLAGS",
    "compare_int8",
    "default_int8_weights",
    "export_int8",
    "int8_path",
    "int8_types",
    "pt2e_onnx",
    "quantize_int8",
    "quantize_onnx",
]

# The ``weights`` choices of :func:`quantize_int8` and :func:`export_int8`.
INT8_WEIGHTS = ("auto", "int8", "uint8")
RUNTIME = "onnxruntime"  # this quantizer's row of CALIB_METHODS
# Our calibration methods as ONNX Runtime's CalibrationMethod and its calibrator's options.
# Entropy with ONNX Runtime's defaults (128 histogram bins and 128 quantized bins) has one
# candidate range, the whole one: it is min/max. 256 bins give it 65 to choose from.
ORT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "minmax": ("MinMax", {}),
    "percentile": ("Percentile", {"percentile": 99.999, "num_bins": 2048}),
    "entropy": ("Entropy", {"num_bins": 256, "num_quantized_bins": 128}),
}
# ONNX op types that compute a layer (:func:`float_nodes`), and what they are.
LAYER_OPS = {"Conv": "conv", "Gemm": "linear", "MatMul": "linear"}
# x86 CPU flags of the instructions that multiply uint8 by int8 into 32-bit sums without saturating.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


# -- quantization -------------------------------------------------------------------------------
def default_int8_weights(
    machine: str | None = None, cpu_flags: frozenset[str] | None = None
) -> str:
    """The int8 weight type that keeps ONNX Runtime exact on this CPU: ``int8`` or ``uint8``.

    uint8 activations times int8 weights (U8S8) is ONNX Runtime's fast pairing, but on x86 CPUs
    without VNNI its AVX2/AVX-512 kernels add pairs of products in 16 bits (``vpmaddubsw``), which
    saturate; ONNX Runtime's quantization guide recommends U8U8 there. ``int8`` on ARM and on
    x86 with VNNI (or AMX); ``uint8`` on other x86 CPUs, and where the flags cannot be read.
    Arguments default to this machine.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "int8"
    flags = cpu.cpu_flags() if cpu_flags is None else cpu_flags
    return "int8" if flags is not None and flags & VNNI_FLAGS else "uint8"


def int8_types(opset: int, activations: str, weights: str) -> tuple[str, str]:
    """Checked (activations, weights) types, ``auto`` weights resolved for this CPU."""
    if opset < 13:
        raise ValueError(f"per-channel int8 needs opset >= 13, got {opset}")
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be uint8 or int8, got {activations!r}")
    if weights not in INT8_WEIGHTS:
        raise ValueError(f"weights must be auto, int8 or uint8, got {weights!r}")
    return activations, default_int8_weights() if weights == "auto" else weights


def quantize_int8(
    model: ShuffleNetBase,
    out_path: str | os.PathLike[str],
    calibration: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    batch_size: int = 16,
    fastpath: FastPathOptions | None = None,
    activations: str = "uint8",
    weights: str = "auto",
    int8: Int8Options | None = None,
) -> Path:
    """Post-training static int8 ONNX of ``model``: QDQ, 8-bit weights with one scale per output
    channel, uint8 (or int8) activations with ranges calibrated on ``calibration`` images
    (``int8``: the calibration method, per-tensor weights, layers kept in float).

    ``weights`` is ``int8``, ``uint8`` or ``auto`` (:func:`default_int8_weights` for this CPU:
    U8S8 where ONNX Runtime computes it without saturating, U8U8 elsewhere). ``fastpath`` picks
    the fp32 graph to quantize (see :func:`~shufflenet.export.onnx_bytes`); the default is the
    plain BN-folded one, whose tensors :func:`~shufflenet.export.int8_layer_errors` reports
    on, and which ran faster in int8 than the shuffle-free one (the README has the numbers).
    The file carries the model's metadata plus a ``quantization`` entry.
    """
    activations, weights = int8_types(opset, activations, weights)
    int8 = (int8 or Int8Options()).checked(RUNTIME)
    fp32 = onnx_bytes(model, opset=opset, batch=batch, input_size=input_size, fastpath=fastpath)
    _quantize(model, fp32, out_path, calibration, batch, batch_size, activations, weights, int8)
    return Path(out_path)


def float_nodes(proto: Any, model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The names of the nodes of the ONNX model ``proto`` that compute ``layers`` (resolved
    names of ``model``, see :func:`~shufflenet.export.int8_options.pick_layers`)."""
    nodes = [n for n in proto.graph.node if n.op_type in LAYER_OPS]
    described = [(layer_of_scope(n.name), LAYER_OPS[n.op_type]) for n in nodes]
    return [nodes[i].name for i in pick_layers(model, described, layers)]


def _quantize(
    model: nn.Module,
    fp32: bytes,
    out_path: str | os.PathLike[str],
    calibration: Tensor,
    batch: int | None,
    batch_size: int,
    activations: str,
    weights: str,
    int8: Int8Options,
) -> dict[str, Any]:
    """Quantize the ONNX model ``fp32`` of ``model`` into ``out_path`` (``int8`` checked);
    returns its ``quantization`` entry."""
    import onnx

    metadata = read_onnx_metadata(fp32)
    layers = resolve_float_layers(model, int8.float_layers or ())
    exclude = float_nodes(onnx.load_from_string(fp32), model, layers)
    proto = quantize_onnx(
        fp32,
        calibration,
        batch,
        batch_size,
        activations,
        weights,
        method=int8.method,
        per_channel=int8.per_channel,
        exclude=exclude,
    )
    scope = "per-channel" if int8.per_channel else "per-tensor"
    metadata["quantization"] = {
        "method": "onnxruntime static QDQ",
        "weights": f"{weights} {scope}",
        "activations": f"{activations} per-tensor, {int8.method} calibration",
        "calibration_images": len(calibration),
        **int8.record(RUNTIME, layers),
    }
    write_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    with atomic_path(out_path) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return metadata["quantization"]


def quantize_onnx(
    fp32: bytes,
    calibration: Tensor,
    batch: int | None = None,
    batch_size: int = 16,
    activations: str = "uint8",
    weights: str = "int8",
    *,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> Any:
    """Any ONNX model (bytes, one input named ``input``) quantized by ONNX Runtime's static
    QDQ quantizer: ``weights`` per channel (or per tensor), per-tensor ``activations`` with
    ranges by ``method`` (:data:`~shufflenet.export.int8_options.CALIB_METHODS`) over
    ``calibration`` (in batches of ``batch``, or ``batch_size`` for a free batch axis); the
    ``onnx.ModelProto``. The nodes named in ``exclude`` stay float; ``only``, if given, names
    the only nodes quantized. ``cache``: a file that keeps the calibrated ranges, reused while
    the model and method stay the same. :func:`export_int8` is this for our models, with
    metadata and report."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if method not in ORT_METHODS:
        raise ValueError(f"method must be one of {', '.join(ORT_METHODS)}, got {method!r}")
    chunks = image_batches(calibration, batch or batch_size, batch is not None)
    if not chunks:
        raise ValueError(f"{len(calibration)} calibration images make no batch of {batch}")
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp, f) for f in ("fp32", "prepared", "int8"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        ranges = Path(cache) if cache is not None else Path(tmp, "ranges.json")
        if not ranges.is_file():
            _calibrate(prepared, chunks, method, ranges, Path(tmp))
        quantize_static(
            str(prepared),
            str(quantized),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=types[activations],
            weight_type=types[weights],
            calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method][0]),
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=None if only is None else list(only),
            calibration_cache_path=ranges,
        )
        proto = onnx.load(str(quantized))
    _uniform_weight_zero_points(proto)
    return proto


def _calibrate(model: Path, chunks: list[np.ndarray], method: str, out: Path, folder: Path) -> None:
    """ONNX Runtime's calibrator for ``method`` on ``model`` over ``chunks``: the ranges of
    every tensor it would quantize, saved to ``out`` (what ``quantize_static`` reads)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    name, options = ORT_METHODS[method]
    calibrator = create_calibrator(
        model,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, name),
        extra_options=options,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators' progress
        calibrator.collect_data(calibration_reader(chunks))
        save_tensors_data(calibrator.compute_data(), out)


def _uniform_weight_zero_points(proto: Any) -> None:
    """Give the all-zero channels of per-channel uint8 weights the zero point of the others
    (where the others share one).

    Zero-padded channels (the shuffle-free graph has many) quantize to weights equal to their
    zero point 0 while the other channels get 128, and ONNX Runtime runs convolutions with
    mixed weight zero points on a much slower path. Such a channel dequantizes to zeros with
    any zero point, so moving it to the common one is exact.
    """
    from onnx import TensorProto, numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight, zero = inits.get(node.input[0]), inits.get(node.input[2])
        if weight is None or zero is None or zero.data_type != TensorProto.UINT8:
            continue
        zp = numpy_helper.to_array(zero).copy()
        if zp.size < 2 or (zp == zp[0]).all():
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        channels = np.moveaxis(numpy_helper.to_array(weight), axis, 0).copy()  # C order
        lanes = channels.reshape(len(zp), -1)  # a view: edits reach ``channels``
        zeros = (lanes == zp[:, None]).all(1)  # channels whose weights are all exactly zero
        used = np.unique(zp[~zeros])
        if len(used) != 1:
            continue
        lanes[zeros], zp[zeros] = used[0], used[0]
        q = np.moveaxis(channels, 0, axis)
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q), weight.name))
        zero.CopyFrom(numpy_helper.from_array(zp, zero.name))


def pt2e_onnx(graph: nn.Module, example: Tensor, metadata: dict[str, Any]) -> bytes:
    """A graph PyTorch 2 export quantization converted (``convert_pt2e``: quantize/dequantize
    pairs with its own scales, as QAT learns them) as QDQ ONNX bytes, through PyTorch's
    ``torch.export``-based ONNX exporter (its opset): input ``input`` with a free batch axis,
    output ``logits``, ``metadata`` in the file."""
    import onnx
    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 14)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress and advice
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto  # type: ignore[union-attr]
    write_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


# -- what it costs --------------------------------------------------------------------------------
def compare_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    images: Tensor,
    labels: Tensor | None = None,
    *,
    runs: int = 50,
    threads: int = 1,
) -> Int8Report:
    """Top-1 agreement of the two files on ``images``, their sizes and batch-1 latency.

    Latency is the median of ``runs`` single-image runs with ``threads`` intra-op threads,
    the two files timed in alternating rounds (:func:`shufflenet.timer.measure`).
    """
    sessions = [ort_session(fp32_path, threads), ort_session(int8_path, threads)]
    name = sessions[0].get_inputs()[0].name
    dim = sessions[0].get_inputs()[0].shape[0]
    size, fixed = (dim, True) if isinstance(dim, int) else (32, False)
    chunks = image_batches(images, size, fixed)
    logits = [np.concatenate([s.run(None, {name: b})[0] for b in chunks]) for s in sessions]
    preds = [out.argmax(1) for out in logits]
    n = len(preds[0])
    feed = {name: chunks[0][:size] if fixed else chunks[0][:1]}
    runners = {i: TimedRun(functools.partial(s.run, None, feed)) for i, s in enumerate(sessions)}
    timings = measure(runners, runs=runs, warmup=3, rounds=3)
    top1 = [None if labels is None else float((p == labels[:n].numpy()).mean()) for p in preds]
    return Int8Report(
        fp32_bytes=os.path.getsize(fp32_path),
        int8_bytes=os.path.getsize(int8_path),
        fp32_ms=timings[0].median_ms,
        int8_ms=timings[1].median_ms,
        images=n,
        agreement=float((preds[0] == preds[1]).mean()),
        fp32_top1=top1[0],
        int8_top1=top1[1],
        threads=threads,
        output_error=output_error(*logits),
    )


# -- the whole run ---------------------------------------------------------------------------------
def int8_path(fp32_path: str | os.PathLike[str]) -> Path:
    """Where :func:`export_int8` writes the int8 file of ``fp32_path``: ``FILE.int8.onnx``."""
    path = Path(fp32_path)
    return path.with_name(path.stem + ".int8.onnx")


def export_int8(
    model: ShuffleNetBase,
    fp32_path: str | os.PathLike[str],
    calib: str,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    weights: str = "auto",
    plain: bytes | None = None,
    data: tuple[Tensor, Tensor, Tensor] | None = None,
    int8: Int8Options | None = None,
) -> Int8Result:
    """Quantize ``model`` into ``FILE.int8.onnx`` beside its fp32 ONNX file ``fp32_path``
    (``FILE.onnx``), calibrated on ``calib`` (see
    :func:`~shufflenet.export.calibration_data`), and measure it.

    The report compares the two files on ``calib``'s evaluation images (:func:`compare_int8`),
    top-1 with their labels matched to the model's classes by name; the layer errors are
    :func:`~shufflenet.export.int8_layer_errors`. ``plain`` is the plain fp32 graph
    (:func:`~shufflenet.export.onnx_bytes` with ``fastpath=None`` and the same ``opset``,
    ``batch`` and ``input_size``) if the caller has it, as when ``fp32_path`` is that graph;
    otherwise it is exported here, once, for both quantization and layer errors. ``data``
    is :func:`~shufflenet.export.calibration.model_calibration_data` of ``calib`` at the
    export's input size, if already loaded. ``int8``: the calibration method, the number of
    calibration images, per-channel weights and the layers kept in float.
    """
    activations, weights = int8_types(opset, "uint8", weights)
    int8 = (int8 or Int8Options()).checked(RUNTIME)
    quantized = int8_path(fp32_path)
    if data is None:
        data = model_calibration_data(model, calib, input_size, int8.calib_images)
    calibration, images, labels = data
    if plain is None:
        plain = onnx_bytes(model, opset=opset, batch=batch, input_size=input_size, fastpath=None)
    scheme = _quantize(model, plain, quantized, calibration, batch, 16, activations, weights, int8)
    return Int8Result(
        path=quantized,
        calib=calib,
        weights=scheme["weights"],
        report=compare_int8(fp32_path, quantized, images, labels),
        layers=graph_layer_errors(plain, quantized, images, batch),
    )
