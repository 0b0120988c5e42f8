"""The one adapter of the edge formats (a fixed batch, a runtime of their own, the metadata in
the file or beside it): the graph they convert, their metadata check, their verification, and
their int8 tail (PT2E calibration, the fp32-vs-int8 comparison and the report).

A format module states its :class:`~shufflenet.export.runtime.Runtime` and how it writes its
files; :func:`edge_format` makes its :class:`~shufflenet.export.ExportFormat`,
:func:`edge_verifier` its ``verify_NAME`` and, for a format that converts the graph to bytes,
:func:`graph_export` and :func:`graph_int8` its export and int8 writers and
:func:`bytes_converter` its runtime's ``convert``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..deploy.fastpath import FastPathOptions
from ..io import write_bytes
from ..limits import MAX_BATCH_ELEMENTS
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..timer import TimedRun, measure
from ..verification import FP32_TOLERANCE, Verification
from ..weights import validate_metadata
from .calibration import image_batches, model_calibration_data
from .check import verify_opened
from .int8_options import Int8Options, needs_plain_graph, resolve_float_layers
from .int8_report import Int8Report, Int8Result, output_error
from .metadata import model_metadata, sample_inputs
from .runtime import LAYOUTS, Converter, OpenedModel, Runtime
from .spec import ExportFormat, ExportOptions

__all__ = [
    "EDGE_LAYOUT",
    "EdgeGraph",
    "EdgeQuantize",
    "bytes_converter",
    "check_edge_metadata",
    "compare_edge_int8",
    "edge_format",
    "edge_graph",
    "edge_int8_path",
    "edge_verifier",
    "graph_export",
    "graph_int8",
    "int8_graph_options",
    "int8_record",
    "pt2e_calibrated",
]

# The shuffle-free layout the XNNPACK formats use: no padding (XNNPACK blocks channels its own
# way), and one conv per chunk rather than a conv and a split: ExecuTorch's XNNPACK partitioner
# leaves channel splits out of the delegate, cutting the graph into many pieces.
EDGE_LAYOUT = FastPathOptions(chunk_align=1, branch_align=1, stem_align=1, split=False)


@dataclass
class EdgeGraph:
    """The module a converter reads, a sample input for it (NCHW, the fixed batch) and the
    metadata the file will carry."""

    module: nn.Module
    example: Tensor
    metadata: dict[str, Any]


def edge_graph(model: ShuffleNetBase, options: ExportOptions, runtime: Runtime) -> EdgeGraph:
    """What an edge export for ``runtime`` converts (:meth:`Runtime.graph
    <shufflenet.export.runtime.Runtime.graph>`): the shuffle-free graph in its layout unless
    ``options.fastpath`` is None or the model has none, then the plain BatchNorm-folded one,
    each rewritten for its kernels. The metadata says which (``graph``), and records ``batch``
    (the fixed batch size: ``options.batch``, 1 for a dynamic one) and ``input_layout``."""
    model = model.eval()
    metadata = model_metadata(model, options.input_size)
    batch = options.batch or 1
    x = sample_inputs(batch, model.in_chans, metadata["preprocessing"])
    layout = None if options.fastpath is None else runtime.layout
    module, metadata["graph"] = runtime.graph(model, x, layout)
    metadata["batch"] = batch
    metadata["input_layout"] = runtime.input_layout
    return EdgeGraph(module.eval(), x, metadata)


def edge_int8_path(path: str | os.PathLike[str]) -> Path:
    """Where an edge format's int8 file of ``path`` goes: ``FILE.int8.EXT`` beside ``FILE.EXT``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def check_edge_metadata(
    metadata: Any,
    label: str | os.PathLike[str],
    input_shape: Sequence[int],
    output_shape: Sequence[int],
) -> dict[str, Any]:
    """``metadata`` checked (:func:`~shufflenet.weights.validate_metadata`) against the file's
    own input and output shapes: the batch and layout it records, the size its preprocessing
    says, and as many classes."""
    metadata = validate_metadata(metadata, label)
    layout = metadata.get("input_layout")
    if layout not in LAYOUTS:
        raise ValueError(f"{label}: its metadata's input_layout must be NCHW or NHWC: {layout!r}")
    shape = [int(d) for d in input_shape]
    if len(shape) != 4:
        raise ValueError(f"{label} must have one 4-d image input, not {shape}")
    batch, *rest = shape
    channels, height, width = (rest[2], rest[0], rest[1]) if layout == "NHWC" else rest
    expected = list(check_input_size(metadata["preprocessing"]["input_size"]))
    if [height, width] != expected or metadata.get("batch") != batch:
        raise ValueError(
            f"{label}: its input is {layout} {shape} but its metadata says batch "
            f"{metadata.get('batch')} of {expected[0]}x{expected[1]}: export it again"
        )
    if min(shape) < 1 or math.prod(shape) > MAX_BATCH_ELEMENTS:
        raise ValueError(f"{label}: its input {shape} is empty or too large to run")
    in_chans = int(metadata["model_config"].get("in_chans", 3))
    classes = metadata["num_classes"]
    outputs = [int(d) for d in output_shape]
    if channels != in_chans or len(outputs) != 2 or outputs != [batch, classes or outputs[-1]]:
        raise ValueError(
            f"{label}: input {shape} and output {outputs} do not fit {in_chans} channels and "
            f"{classes} classes as its metadata says"
        )
    return metadata


# -- the adapter ---------------------------------------------------------------------------------
# Writes a format's int8 file: (model, fp32 file, int8 file, options, calibration images); returns
# the ``quantization`` record the file's metadata carries.
EdgeQuantize = Callable[[ShuffleNetBase, Path, Path, ExportOptions, Tensor], dict[str, Any]]
Verifier = Callable[..., Verification]


def edge_verifier(runtime: Runtime) -> Verifier:
    """``verify(path, model, tolerance=FP32_TOLERANCE)``: ``path`` opened in ``runtime`` next
    to ``model`` at the file's batch size."""

    def verify(
        path: str | os.PathLike[str], model: ShuffleNetBase, tolerance: float = FP32_TOLERANCE
    ) -> Verification:
        return verify_opened(runtime.open(path), model, tolerance)

    verify.__doc__ = f"Run ``path`` in {runtime.name} next to ``model`` at the file's batch size."
    return verify


def bytes_converter(to_bytes: Callable[[nn.Module, Tensor], bytes], name: str) -> Converter:
    """A runtime's ``convert`` for a converter that returns the file's bytes: ``to_bytes(module,
    example)`` written to ``folder / name``."""

    def convert(module: nn.Module, example: Tensor, folder: Path) -> Path:
        path = folder / name
        path.write_bytes(to_bytes(module, example))
        return path

    return convert


def graph_export(
    runtime: Runtime, to_bytes: Callable[[nn.Module, Tensor, dict[str, Any]], bytes]
) -> Callable[[ShuffleNetBase, str | os.PathLike[str], ExportOptions], Path]:
    """``export(model, path, options)``: ``to_bytes(module, example, metadata)`` of
    :func:`edge_graph` for ``runtime``, written to ``path``."""

    def export(model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions) -> Path:
        graph = edge_graph(model, options, runtime)
        return write_bytes(path, to_bytes(graph.module, graph.example, graph.metadata))

    export.__doc__ = (
        f"Convert ``model`` to a {runtime.name} file at ``path``: :func:`edge_graph` (the "
        "shuffle-free graph, or the plain one where ``options.fastpath`` is None or the model "
        "has none), ``options.batch`` fixed (1 if None), fp32 weights."
    )
    return export


# Converts a graph to int8 file bytes: (module, example, calibration images, metadata, the int8
# options checked, the float layers resolved, the model) -> bytes.
Int8Bytes = Callable[
    [nn.Module, Tensor, Tensor, dict[str, Any], Int8Options, tuple[str, ...], nn.Module], bytes
]


def int8_graph_options(
    model: ShuffleNetBase, options: ExportOptions, runtime: Runtime
) -> tuple[ExportOptions, Int8Options, tuple[str, ...]]:
    """``options.int8`` checked for ``runtime``, its float layers resolved, and the export
    options of the graph to quantize: the plain one where a float layer is one that the
    shuffle-free graph rebuilds (:func:`~shufflenet.export.int8_options.needs_plain_graph`)."""
    int8 = options.int8.checked(runtime.name)
    layers = resolve_float_layers(model, int8.float_layers or ())
    if needs_plain_graph(model, layers):
        options = dataclasses.replace(options, fastpath=None)
    return options, int8, layers


def int8_record(
    runtime: Runtime, method: str, int8: Int8Options, layers: Sequence[str], images: int
) -> dict[str, Any]:
    """The ``quantization`` metadata of a PT2E int8 file (``method``: the quantizer)."""
    scope = "per-channel" if int8.per_channel else "per-tensor"
    return {
        "method": method,
        "weights": f"int8 symmetric {scope}",
        "activations": f"int8 per-tensor, {int8.method} calibration",
        "calibration_images": images,
        **int8.record(runtime.name, layers),
    }


def graph_int8(runtime: Runtime, to_int8_bytes: Int8Bytes, method: str) -> EdgeQuantize:
    """An :data:`EdgeQuantize` that writes ``to_int8_bytes`` of the graph :func:`graph_export`
    converts (the plain one where float layers need it, :func:`int8_graph_options`), its
    metadata's ``quantization`` naming ``method`` and the choices made."""

    def write_int8(
        model: ShuffleNetBase, path: Path, target: Path, options: ExportOptions, calib: Tensor
    ) -> dict[str, Any]:
        options, int8, layers = int8_graph_options(model, options, runtime)
        graph = edge_graph(model, options, runtime)
        record = int8_record(runtime, method, int8, layers, len(calib))
        graph.metadata["quantization"] = record
        module, example = graph.module, graph.example
        data = to_int8_bytes(module, example, calib, graph.metadata, int8, layers, model)
        write_bytes(target, data)
        return record

    return write_int8


def edge_format(
    description: str,
    runtime: Runtime,
    export: Callable[[ShuffleNetBase, Path, ExportOptions], Path | list[Path]],
    *,
    files: Callable[[Path], list[Path]] = lambda path: [path],
    quantize: EdgeQuantize | None = None,
    suffixes: tuple[str, ...] = (),
) -> ExportFormat:
    """The :class:`~shufflenet.export.ExportFormat` of an edge format: ``export`` writes the
    files of one path (``files`` lists them; the path ends in one of ``suffixes``), which
    ``runtime`` opens for :func:`~shufflenet.export.check.verify_opened`; ``quantize``, if
    any, writes the int8 ``FILE.int8.EXT``, which is then compared with the fp32 file on the
    calibration set's evaluation images (:func:`compare_edge_int8`)."""

    def write(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
        written = export(model, path, options)
        return written if isinstance(written, list) else [written]

    def verify(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
        return [verify_opened(runtime.open(path, None, first_in_child=False), model)]

    return ExportFormat(
        description,
        write,
        verify,
        files=files,
        quantize=None if quantize is None else _int8_writer(quantize, runtime),
        int8_files=lambda path: files(edge_int8_path(path)),
        suffixes=suffixes,
        runtime=runtime,
    )


def _int8_writer(quantize: EdgeQuantize, runtime: Runtime) -> Callable[..., Int8Result]:
    """An :class:`~shufflenet.export.ExportFormat`'s ``quantize``: ``quantize`` writes the int8
    file, which is then compared with the fp32 one on ``calib``'s evaluation images, labelled
    in the model's class order."""

    def write_int8(
        model: ShuffleNetBase,
        path: Path,
        calib: str,
        options: ExportOptions,
        data: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Int8Result:
        if data is None:
            count = options.int8.checked(runtime.name).calib_images
            data = model_calibration_data(model, calib, options.input_size, count)
        calibration, images, labels = data
        target = edge_int8_path(path)
        record = quantize(model, path, target, options, calibration)
        fp32, int8 = (runtime.open(file, 1, first_in_child=False) for file in (path, target))
        report = compare_edge_int8(fp32, int8, images, labels)
        return Int8Result(target, calib, record["weights"], report, [])

    return write_int8


# -- int8 ----------------------------------------------------------------------------------------
def pt2e_calibrated(graph: EdgeGraph, quantizer: Any, calibration: Tensor, **convert: Any) -> Any:
    """``graph`` quantized by PyTorch 2 export quantization with ``quantizer``: captured with
    ``torch.export``, observers inserted (``prepare_pt2e``), ``calibration`` images run through
    it, then ``convert_pt2e(**convert)``. The result still runs in PyTorch, as float operators
    between quantize/dequantize pairs, for a converter to lower at the graph's batch size.

    The capture has a free batch axis where ``torch.export`` allows it, so that calibration
    runs in batches of :data:`CALIBRATION_BATCH` (the observers cost per call); else the graph's.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured, size = _capture(graph, calibration)
    chunks = image_batches(calibration, size, fixed=size == len(graph.example))
    if not chunks:
        raise ValueError(f"{len(calibration)} calibration images make no batch of {size}")
    prepared = prepare_pt2e(captured, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        for chunk in chunks:
            prepared(torch.from_numpy(chunk))
    converted = convert_pt2e(prepared, **convert)
    return move_exported_model_to_eval(converted)


CALIBRATION_BATCH = 32


def _capture(graph: EdgeGraph, calibration: Tensor) -> tuple[Any, int]:
    """``graph.module`` as an exported graph module, and the batch size it runs."""
    if len(calibration) >= 2:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH_ELEMENTS // 4096)
        try:  # an example of 2: one of 1 would fix the batch axis at 1
            program = torch.export.export(
                graph.module, (calibration[:2],), dynamic_shapes=({0: batch},)
            )
            return program.module(), CALIBRATION_BATCH
        except Exception:  # torch.export's errors for a graph that fixes its batch; fall back
            pass
    return torch.export.export(graph.module, (graph.example,)).module(), len(graph.example)


def compare_edge_int8(
    fp32: OpenedModel,
    int8: OpenedModel,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    runs: int = 50,
) -> Int8Report:
    """Top-1 agreement of two files of one format on ``images``, their sizes and the latency of
    one batch (the median of ``runs``, the two timed in alternating rounds), as
    :func:`~shufflenet.export.compare_int8` reports ONNX files."""
    logits = [opened(images) for opened in (fp32, int8)]
    preds = [out.argmax(1) for out in logits]
    batch = fp32.batch or 1
    feed = [opened.inputs(images[:batch]) for opened in (fp32, int8)]
    if any(len(f) < batch for f in feed):
        raise ValueError(f"{len(images)} images make no batch of {batch}")
    runners = {
        i: TimedRun(functools.partial(opened.run, f))
        for i, (opened, f) in enumerate(zip((fp32, int8), feed, strict=True))
    }
    timings = measure(runners, runs=runs, warmup=3, rounds=3)
    top1 = [None if labels is None else float((p == labels.numpy()).mean()) for p in preds]
    return Int8Report(
        fp32_bytes=os.path.getsize(fp32.path),
        int8_bytes=os.path.getsize(int8.path),
        fp32_ms=timings[0].median_ms,
        int8_ms=timings[1].median_ms,
        images=len(preds[0]),
        agreement=float((preds[0] == preds[1]).mean()),
        fp32_top1=top1[0],
        int8_top1=top1[1],
        threads=1,
        output_error=output_error(*logits),
    )
