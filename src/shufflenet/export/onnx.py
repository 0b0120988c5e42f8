"""ONNX export: the graph every export converts (:func:`export_graph`), the one call of
PyTorch's ONNX exporter, and the checked file with metadata.

By default the graph is the shuffle-free one of :mod:`shufflenet.deploy.fastpath`; otherwise
(``fastpath=None``, or a model it does not cover) the plain graph: BatchNorms folded, shuffles as
reshapes with constant shapes. Either way it has no shape-computing subgraph, and its batch axis
is dynamic unless fixed. Its runtimes and its :data:`~shufflenet.export.FORMATS` entry are
:mod:`.onnx_format`'s.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..deploy import fuse_bn, static_shuffles
from ..deploy.fastpath import ONNXRUNTIME, FastPathOptions, fast_model, fastpath_support
from ..io import atomic_path
from ..models.base import ShuffleNetBase
from .metadata import model_metadata, sample_inputs, write_onnx_metadata

__all__ = [
    "DEFAULT_OPSET",
    "OPSETS",
    "export_graph",
    "export_onnx",
    "onnx_bytes",
    "plain_graph",
    "to_onnx",
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


def export_graph(
    model: nn.Module, layout: FastPathOptions | None, input_size: tuple[int, int]
) -> tuple[nn.Module, str]:
    """The graph a file is made from, in eval mode, and what it is (an exported file's
    ``graph`` metadata): our model's shuffle-free form in ``layout``
    (:func:`~shufflenet.deploy.fastpath.fast_model`) unless ``layout`` is None or the model has
    none (:func:`~shufflenet.deploy.fastpath.fastpath_support` says why), else its plain graph
    (:func:`plain_graph` at ``input_size``); any other module as it is."""
    if not isinstance(model, ShuffleNetBase):
        return model.eval(), "as given"
    model = model.eval()
    reason = "not requested" if layout is None else fastpath_support(model)
    if reason is None:
        assert layout is not None
        graph = f"shuffle-free (shufflenet.deploy.fastpath, {layout})"
        return fast_model(model, layout).eval(), graph
    return plain_graph(model, input_size).eval(), f"plain BN-folded (no fast path: {reason})"


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
    graph, metadata["graph"] = export_graph(model, fastpath, (x.shape[2], x.shape[3]))
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
