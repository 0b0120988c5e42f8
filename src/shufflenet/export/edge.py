"""What the LiteRT, ExecuTorch and MNN exports share: the graph they convert, a file opened in
its runtime (:class:`EdgeModel`), its check against PyTorch, and int8 calibration and report.

Each of these files has a fixed batch size (``batch`` in its metadata; 1 unless exported with
another) and takes float32 images in the layout its metadata's ``input_layout`` names: NHWC for
LiteRT, NCHW for ExecuTorch and MNN. :class:`EdgeModel` runs it on NCHW tensors, converting and
splitting them into batches of that size, so that verification, ``predict`` and ``bench`` run
the same code.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..deploy.fastpath import FastPathOptions, fast_model, fastpath_support
from ..io import read_regular
from ..limits import MAX_BATCH_ELEMENTS
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..timer import TimedRun, measure
from ..verification import FP32_TOLERANCE, Verification
from ..weights import validate_metadata
from .calibration import image_batches, model_calibration_data
from .check import compare_with_model
from .int8 import Int8Report, Int8Result
from .metadata import model_metadata, sample_inputs
from .onnx import plain_graph
from .spec import ExportFormat, ExportOptions

__all__ = [
    "EDGE_LAYOUT",
    "MAX_MODEL_BYTES",
    "EdgeGraph",
    "EdgeModel",
    "EdgeOpener",
    "EdgeQuantize",
    "check_edge_metadata",
    "compare_edge_int8",
    "edge_format",
    "edge_graph",
    "edge_int8_path",
    "private_copy",
    "pt2e_calibrated",
    "read_model_file",
    "verify_edge",
]

# The shuffle-free layout the edge exports use: no padding (XNNPACK and MNN block channels
# their own way), and one conv per chunk rather than a conv and a split: ExecuTorch's XNNPACK
# partitioner leaves channel splits out of the delegate, cutting the graph into many pieces.
EDGE_LAYOUT = FastPathOptions(chunk_align=1, branch_align=1, stem_align=1, split=False)
LAYOUTS = ("NCHW", "NHWC")


@dataclass
class EdgeGraph:
    """The module a converter reads, a sample input for it (NCHW, the fixed batch) and the
    metadata the file will carry."""

    module: nn.Module
    example: Tensor
    metadata: dict[str, Any]


def edge_graph(
    model: ShuffleNetBase,
    options: ExportOptions,
    input_layout: str = "NCHW",
    layout: FastPathOptions = EDGE_LAYOUT,
) -> EdgeGraph:
    """What an edge export converts: the shuffle-free graph (:func:`fast_model` with
    ``layout``) unless ``options.fastpath`` is None or the model has none, then the plain
    BatchNorm-folded one. The metadata says which (``graph``), and records ``batch`` (the
    fixed batch size: ``options.batch``, 1 for a dynamic one) and ``input_layout``."""
    if input_layout not in LAYOUTS:
        raise ValueError(f"input_layout must be NCHW or NHWC, got {input_layout!r}")
    model = model.eval()
    metadata = model_metadata(model, options.input_size)
    batch = options.batch or 1
    x = sample_inputs(batch, model.in_chans, metadata["preprocessing"])
    reason = "not requested" if options.fastpath is None else fastpath_support(model)
    if reason is None:
        module = fast_model(model, layout)
        metadata["graph"] = f"shuffle-free (shufflenet.deploy.fastpath, {layout})"
    else:
        module = plain_graph(model, (x.shape[2], x.shape[3]))
        metadata["graph"] = f"plain BN-folded (no fast path: {reason})"
    metadata["batch"] = batch
    metadata["input_layout"] = input_layout
    return EdgeGraph(module.eval(), x, metadata)


def edge_int8_path(path: str | os.PathLike[str]) -> Path:
    """Where an edge format's int8 file of ``path`` goes: ``FILE.int8.EXT`` beside ``FILE.EXT``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix}")


# The largest exported file a runtime is given (V2.Large's fp32 files are about 500 MB).
MAX_MODEL_BYTES = 1 << 31


def read_model_file(path: str | os.PathLike[str], runtime: str) -> bytes:
    """The bytes of an exported file: a regular file (:func:`~shufflenet.io.open_regular`: a
    FIFO never blocks) of at most :data:`MAX_MODEL_BYTES`; ``FileNotFoundError`` if missing."""
    try:
        return read_regular(path, MAX_MODEL_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {runtime} file: {path}") from None


@contextlib.contextmanager
def private_copy(data: bytes, suffix: str) -> Iterator[Path]:
    """``data`` as a file in a folder of this process's own, removed afterwards: what a runtime
    that opens files by name loads, so that it reads exactly the bytes that were checked."""
    with tempfile.TemporaryDirectory(prefix="shufflenet-open-") as folder:
        path = Path(folder, f"model{suffix}")
        path.write_bytes(data)
        yield path


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


@dataclass
class EdgeModel:
    """An exported file opened in its runtime.

    ``run`` takes one batch as the file does (``batch`` images, float32, ``input_layout``) and
    returns the float32 outputs; :meth:`inputs` converts NCHW images to that, and calling the
    model runs NCHW images of any number (zero-padded to whole batches).
    """

    engine: str  # "litert", "executorch", "mnn"
    path: Path
    metadata: dict[str, Any]
    run: Callable[[np.ndarray], np.ndarray]
    # The runtime's objects that ``run`` needs alive (an ExecuTorch method does not keep its
    # program, whose memory it runs from: freeing it crashes the process).
    runtime: Any = None

    @property
    def batch(self) -> int:
        return int(self.metadata["batch"])

    @property
    def input_layout(self) -> str:
        return str(self.metadata["input_layout"])

    @property
    def input_size(self) -> tuple[int, int]:
        return check_input_size(self.metadata["preprocessing"]["input_size"])

    def inputs(self, x: Tensor | np.ndarray) -> np.ndarray:
        """NCHW images as the file takes them: float32, C-contiguous, in its layout."""
        array = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        if self.input_layout == "NHWC":
            array = array.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Outputs for NCHW images ``x``, run in chunks of :attr:`batch` (the last padded)."""
        array = self.inputs(x)
        outs = []
        for start in range(0, len(array), self.batch):
            chunk = array[start : start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(self.run(chunk), dtype=np.float32)[: len(chunk) - pad])
        if not outs:
            raise ValueError("no images to run")
        return np.concatenate(outs)


def verify_edge(
    opened: EdgeModel, model: ShuffleNetBase, tolerance: float = FP32_TOLERANCE
) -> Verification:
    """``opened`` next to ``model`` on the same sample inputs, at the file's batch size."""
    return compare_with_model(
        model,
        opened,
        opened.engine,
        (opened.batch,),
        opened.metadata,
        opened.input_size,
        tolerance,
    )


class EdgeOpener(Protocol):
    """Opens an exported file in its runtime: ``(path, threads, first_in_child=...)``."""

    def __call__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        *,
        first_in_child: bool = ...,
    ) -> EdgeModel: ...


# Writes a format's int8 file: (model, fp32 file, int8 file, options, calibration images); returns
# the ``quantization`` record the file's metadata carries.
EdgeQuantize = Callable[[ShuffleNetBase, Path, Path, ExportOptions, Tensor], dict[str, Any]]


def edge_format(
    description: str,
    export: Callable[[ShuffleNetBase, Path, ExportOptions], Path | list[Path]],
    opener: EdgeOpener,
    *,
    files: Callable[[Path], list[Path]] = lambda path: [path],
    quantize: EdgeQuantize | None = None,
    suffixes: tuple[str, ...] = (),
) -> ExportFormat:
    """The :class:`~shufflenet.export.ExportFormat` of an edge format: ``export`` writes the
    files of one path (``files`` lists them; the path ends in one of ``suffixes``),
    ``opener(path, threads)`` opens one in its runtime for :func:`verify_edge`; ``quantize``,
    if any, writes the int8 ``FILE.int8.EXT``, which is then compared with the fp32 file on the
    calibration set's evaluation images (:func:`compare_edge_int8`)."""

    def write(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
        written = export(model, path, options)
        return written if isinstance(written, list) else [written]

    def verify(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
        return [verify_edge(opener(path, None, first_in_child=False), model)]

    return ExportFormat(
        description,
        write,
        verify,
        int8=quantize is not None,
        files=files,
        quantize=None if quantize is None else _int8_writer(quantize, opener),
        int8_files=lambda path: files(edge_int8_path(path)),
        suffixes=suffixes,
    )


def _int8_writer(quantize: EdgeQuantize, opener: EdgeOpener) -> Callable[..., Int8Result]:
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
            data = model_calibration_data(model, calib, options.input_size)
        calibration, images, labels = data
        target = edge_int8_path(path)
        record = quantize(model, path, target, options, calibration)
        fp32, int8 = (opener(file, 1, first_in_child=False) for file in (path, target))
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
    fp32: EdgeModel,
    int8: EdgeModel,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    runs: int = 50,
) -> Int8Report:
    """Top-1 agreement of two files of one format on ``images``, their sizes and the latency of
    one batch (the median of ``runs``, the two timed in alternating rounds), as
    :func:`~shufflenet.export.compare_int8` reports ONNX files."""
    preds = [opened(images).argmax(1) for opened in (fp32, int8)]
    feed = [opened.inputs(images[: opened.batch]) for opened in (fp32, int8)]
    if any(len(f) < opened.batch for f, opened in zip(feed, (fp32, int8), strict=True)):
        raise ValueError(f"{len(images)} images make no batch of {fp32.batch}")
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
    )
