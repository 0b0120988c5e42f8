"""ONNX export: the one call of PyTorch's ONNX exporter, the checked file with metadata, and its
verification in ONNX Runtime and OpenVINO.

By default the graph is the shuffle-free one of :mod:`shufflenet.deploy.fastpath`; otherwise
(``fastpath=None``, or a model it does not cover) the plain graph: BatchNorms folded, shuffles as
reshapes with constant shapes. Either way it has no shape-computing subgraph, and its batch axis
is dynamic unless fixed.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..deploy import fuse_bn, static_shuffles
from ..deploy.fastpath import ONNXRUNTIME, FastPathOptions, fast_model, fastpath_support
from ..io import atomic_path
from ..models.base import ShuffleNetBase
from ..runtimes import has_openvino, openvino_model, ort_session
from ..verification import FP32_TOLERANCE, Verification
from .check import compare_with_model
from .metadata import model_metadata, read_onnx_metadata, sample_inputs, write_onnx_metadata
from .spec import ExportFormat, ExportOptions

__all__ = [
    "DEFAULT_OPSET",
    "ONNX",
    "OPSETS",
    "export_onnx",
    "onnx_bytes",
    "plain_graph",
    "to_onnx",
    "verify_onnx",
    "verify_openvino",
]

DEFAULT_OPSET = 17
# The TorchScript-based ONNX exporter supports these opsets; per-channel int8 needs 13 or more.
OPSETS = range(9, 21)


def to_onnx(
    module: nn.Module,
    example: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    output_name: str = "output",
) -> bytes:
    """``module`` traced on ``example`` as ONNX bytes: input ``input``, one output, the batch
    axis dynamic unless ``dynamic_batch`` is False. Any module; nothing is checked or added."""
    if opset not in OPSETS:
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The exporter's deprecation notice, and TracerWarnings from input checks that only
        # read static shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=[output_name],
            dynamic_axes=axes,
        )
    return buffer.getvalue()


def plain_graph(model: nn.Module, input_size: tuple[int, int] | None = None) -> nn.Module:
    """BatchNorms folded, shuffles static: gathers, or reshapes fixed to ``input_size``."""
    return static_shuffles(fuse_bn(model), input_size)


def onnx_bytes(
    model: ShuffleNetBase,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    fastpath: FastPathOptions | None = ONNXRUNTIME,
) -> bytes:
    """The checked ONNX model (with metadata) as bytes; ``batch=None`` makes the batch dynamic.

    By default the graph is the shuffle-free form of :mod:`shufflenet.deploy.fastpath` laid out for
    ``fastpath`` (ONNX Runtime); ``fastpath=None``, or a model it does not cover, gives the plain
    BatchNorm-folded graph. The metadata entry ``graph`` says which one was written, and its
    preprocessing the input size the graph takes (:func:`~shufflenet.export.model_metadata`).
    """
    import onnx

    if opset not in OPSETS:
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or dynamic, got {batch}")
    metadata = model_metadata(model, input_size)
    x = sample_inputs(batch or 1, model.in_chans, metadata["preprocessing"])
    output = "logits" if model.num_classes else "features"
    plain_reason = "not requested" if fastpath is None else fastpath_support(model)
    if plain_reason is None:
        graph = fast_model(model, fastpath)  # type: ignore[arg-type]
        metadata["graph"] = f"shuffle-free (shufflenet.deploy.fastpath, {fastpath})"
    else:
        graph = plain_graph(model, (x.shape[2], x.shape[3]))
        metadata["graph"] = f"plain BN-folded (no fast path: {plain_reason})"
    data = to_onnx(graph, x, opset=opset, dynamic_batch=not batch, output_name=output)
    proto = onnx.load_from_string(data)
    write_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_onnx(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    fastpath: FastPathOptions | None = ONNXRUNTIME,
) -> Path:
    """Write ``model`` as ONNX to ``path`` (see :func:`onnx_bytes`)."""
    data = onnx_bytes(model, opset=opset, batch=batch, input_size=input_size, fastpath=fastpath)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def verify_onnx(
    path: str | os.PathLike[str],
    model: ShuffleNetBase,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch on the same inputs."""
    session = ort_session(path)
    name = session.get_inputs()[0].name
    metadata = read_onnx_metadata(path)
    height, width = session.get_inputs()[0].shape[2:]

    def run(x: Tensor) -> Any:
        return session.run(None, {name: x.numpy()})[0]

    return compare_with_model(
        model, run, "onnxruntime", batch_sizes, metadata, (height, width), tolerance
    )


def verify_openvino(
    path: str | os.PathLike[str],
    model: ShuffleNetBase,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Run ``path`` in OpenVINO's CPU plugin (fp32) and ``model`` in PyTorch on the same inputs.

    Worth running beside :func:`verify_onnx`: runtimes rewrite graphs differently, and a file
    that one computes right another may not (OpenVINO 2026.4 miscomputed a constant Gather that
    feeds a depthwise conv feeding a 1x1 conv, which ONNX Runtime computes right).
    """
    compiled = openvino_model(path)
    metadata = read_onnx_metadata(path)
    shape = compiled.input(0).get_partial_shape()
    height, width = shape[2].get_length(), shape[3].get_length()

    def run(x: Tensor) -> Any:
        return compiled(x.numpy())[0]

    return compare_with_model(
        model, run, "openvino", batch_sizes, metadata, (height, width), tolerance
    )


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


ONNX = ExportFormat(
    "ONNX, checked in ONNX Runtime and OpenVINO (if installed)",
    _export,
    _verify,
    int8=True,
    suffixes=(".onnx",),
)
