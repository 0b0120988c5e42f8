"""Where int8 hurts: how well each activation of the fp32 graph keeps on its own int8 grid."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from torch import Tensor

from ..models.base import ShuffleNetBase
from .calibration import calibration_reader, image_batches
from .onnx import DEFAULT_OPSET, onnx_bytes

__all__ = [
    "LayerError",
    "graph_layer_errors",
    "int8_layer_errors",
    "producer_kinds",
    "sqnr_db_by_kind",
]


@dataclass
class LayerError:
    """How far one activation of the int8 model is from fp32: signal-to-noise ratio in dB."""

    tensor: str
    kind: str
    sqnr_db: float


def producer_kinds(proto: Any) -> dict[str, str]:
    """Output tensor -> what makes it: ``depthwise``, ``conv1x1(+relu)`` ... or the op type."""
    weights = {init.name: list(init.dims) for init in proto.graph.initializer}
    kinds: dict[str, str] = {}
    for node in proto.graph.node:
        kind = node.op_type
        if kind == "Conv" and node.input[1] in weights:
            out_channels, in_per_group, k = weights[node.input[1]][:3]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            depthwise = groups > 1 and in_per_group == 1 and groups == out_channels
            kind = "depthwise" if depthwise else f"conv{k}x{k}"
        elif kind == "Relu" and node.input[0] in kinds:
            kind = f"{kinds[node.input[0]]}+relu"
        kinds.update(dict.fromkeys(node.output, kind))
    return kinds


def _activation_grids(proto: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Activation tensor -> (scale, zero point) of the QuantizeLinear that quantizes it."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    return {
        node.input[0]: (constants[node.input[1]], constants[node.input[2]])
        for node in proto.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants
    }


def _grid_sqnr(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> float:
    """Signal-to-noise ratio (dB) of ``x`` rounded to an int8/uint8 grid."""
    info = np.iinfo(zero_point.dtype)
    zero = zero_point.astype(np.int64)
    levels = np.clip(np.round(x / scale) + zero, info.min, info.max)
    noise = float(((x - (levels - zero) * scale) ** 2).sum())
    return float(10 * np.log10(max(float((x**2).sum()), 1e-30) / max(noise, 1e-30)))


def int8_layer_errors(
    model: ShuffleNetBase,
    int8_path: str | os.PathLike[str],
    images: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
) -> list[LayerError]:
    """How well each activation of the fp32 model survives its own int8 grid, worst first.

    Every activation that ``int8_path`` quantizes is computed in fp32 on ``images`` (the plain
    graph :func:`quantize_int8` starts from), rounded to that file's scale and zero point, and
    compared with itself. This is each tensor's own error, not the error accumulated from the
    layers before it, so a low value says where int8 hurts.
    """
    fp32 = onnx_bytes(model, opset=opset, batch=batch, input_size=input_size, fastpath=None)
    return graph_layer_errors(fp32, int8_path, images, batch)


def graph_layer_errors(
    fp32: bytes, int8_path: str | os.PathLike[str], images: Tensor, batch: int | None
) -> list[LayerError]:
    """:func:`int8_layer_errors` of the fp32 ONNX model ``fp32``."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    grids = _activation_grids(onnx.load(str(int8_path)))
    with tempfile.TemporaryDirectory() as tmp:
        plain, augmented = Path(tmp, "fp32.onnx"), Path(tmp, "fp32_all.onnx")
        plain.write_bytes(fp32)
        modify_model_output_intermediate_tensors(str(plain), str(augmented))
        chunks = image_batches(images, batch or 16, batch is not None)[:2]
        activations = collect_activations(str(augmented), calibration_reader(chunks))
    kinds = producer_kinds(onnx.load_from_string(fp32))
    kinds["input"] = "input"
    rows = [
        LayerError(tensor, kinds[tensor], _grid_sqnr(np.concatenate(activations[tensor]), *grid))
        for tensor, grid in grids.items()
        if tensor in activations and tensor in kinds
    ]
    return sorted(rows, key=lambda row: row.sqnr_db)


def sqnr_db_by_kind(layers: Sequence[LayerError]) -> dict[str, float]:
    """Median SQNR (dB, one decimal) of ``layers`` by the op that makes them, worst first."""
    kinds: dict[str, list[float]] = {}
    for layer in layers:
        kinds.setdefault(layer.kind, []).append(layer.sqnr_db)
    medians = {kind: round(median(values), 1) for kind, values in kinds.items()}
    return dict(sorted(medians.items(), key=lambda kv: kv[1]))
