"""ExecuTorch export: a ``.pte`` program lowered to the XNNPACK delegate from the shuffle-free
graph, verified in ExecuTorch's runtime; int8 by the PT2E XNNPACK quantizer.

The program's ``forward`` takes NCHW float32 images at a fixed batch (ExecuTorch's Android and
iOS image helpers make NCHW tensors); its method ``shufflenet_metadata`` returns the model's
metadata (:func:`~shufflenet.export.model_metadata`) as one JSON string, so the file carries
its preprocessing and class names itself (:func:`read_pte_metadata`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_path
from ..models.base import ShuffleNetBase
from ..runtimes import executorch_program, require, stdout_to_stderr
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
from .xnnpack import xnnpack_graph

__all__ = [
    "EXECUTORCH",
    "PTE_METADATA",
    "delegated_fraction",
    "export_executorch",
    "export_executorch_int8",
    "open_executorch",
    "read_pte_metadata",
    "to_pte",
    "verify_executorch",
]

PTE_METADATA = "shufflenet_metadata"  # the constant method that returns the metadata JSON


def to_pte(module: Any, example: Tensor, metadata: dict[str, Any] | None = None) -> bytes:
    """Any ``module`` captured by ``torch.export`` on ``example`` and lowered to XNNPACK, as
    ``.pte`` bytes; ``metadata``, if given, returned by a ``shufflenet_metadata`` method. Warns
    when XNNPACK does not take every operator. For converting any model the same way, as
    ``bench --compare`` does for torchvision's (see :mod:`.xnnpack` for our graphs' rewrites)."""
    exir = require("executorch", "ExecuTorch export", "executorch.exir")
    partitioner = require(
        "executorch",
        "ExecuTorch export",
        "executorch.backends.xnnpack.partition.xnnpack_partitioner",
    )
    methods = None if metadata is None else {PTE_METADATA: json.dumps(metadata)}
    with stdout_to_stderr(), torch.no_grad():
        program = torch.export.export(module, (example,))
        edge = exir.to_edge_transform_and_lower(
            program, partitioner=[partitioner.XnnpackPartitioner()], constant_methods=methods
        )
        fraction = delegated_fraction(edge.exported_program().graph_module)
        data = bytes(edge.to_executorch().buffer)
    if fraction < 1.0:
        warnings.warn(
            f"XNNPACK takes {fraction:.0%} of the operators; the others run in ExecuTorch's "
            "portable kernels, slowly",
            stacklevel=2,
        )
    return data


def delegated_fraction(graph_module: Any) -> float:
    """The fraction of a lowered graph's operator calls that run inside a delegate (1.0: all
    of them in XNNPACK; what stays outside runs in ExecuTorch's portable kernels)."""
    calls = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    names = [getattr(n.target, "__name__", str(n.target)) for n in calls]
    delegated = sum(name == "executorch_call_delegate" for name in names)
    outside = sum(name not in ("executorch_call_delegate", "getitem") for name in names)
    return 1.0 if delegated + outside == 0 else delegated / (delegated + outside)


def _export(graph: EdgeGraph, path: str | os.PathLike[str], module: Any) -> Path:
    data = to_pte(module, graph.example, graph.metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def export_executorch(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> Path:
    """Lower ``model`` to a ``.pte`` program at ``path``: ``torch.export`` of the shuffle-free
    graph (the plain one where ``options.fastpath`` is None or the model has none; see
    :func:`~shufflenet.export.edge.edge_graph`), ``to_edge_transform_and_lower`` with the
    XNNPACK partitioner, NCHW input, ``options.batch`` fixed (1 if None), fp32."""
    graph = _graph(model, options)
    return _export(graph, path, graph.module)


def _graph(model: ShuffleNetBase, options: ExportOptions) -> EdgeGraph:
    """The edge graph with the rewrites that keep it whole in XNNPACK (:mod:`.xnnpack`)."""
    graph = edge_graph(model, options, "NCHW")
    graph.module = xnnpack_graph(graph.module, graph.example)
    return graph


def read_pte_metadata(program: Any, label: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata a loaded ``.pte`` ``program`` returns from ``shufflenet_metadata``."""
    if PTE_METADATA not in program.method_names:
        raise ValueError(
            f"{label} has no shufflenet metadata (preprocessing, class names): export it with "
            "`shufflenet export --format executorch`"
        )
    try:
        (text,) = program.load_method(PTE_METADATA).execute([])
        return dict(json.loads(text))
    except Exception as e:  # the runtime's own errors, or not one JSON object
        raise ValueError(f"{label}: its shufflenet metadata is unreadable ({e})") from None


def open_executorch(path: str | os.PathLike[str], threads: int | None = None) -> EdgeModel:
    """A ``.pte`` export in ExecuTorch's runtime, its metadata checked against ``forward``;
    ``threads`` sets the process's ExecuTorch thread pool (see
    :func:`~shufflenet.runtimes.executorch_program`).

    The file's flatbuffer identifier is checked first: ExecuTorch 1.5 aborts the process on
    some foreign files (its error log fails to decode their bytes)."""
    require("executorch", "running a .pte file")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isalnum():
        raise ValueError(f"{path} is not an ExecuTorch program (.pte)")
    try:
        program = executorch_program(path, threads)
    except ValueError:
        raise
    except Exception as e:  # the runtime raises RuntimeError for files it cannot load
        raise ValueError(f"{path}: ExecuTorch cannot load it ({e})") from None
    metadata = read_pte_metadata(program, path)
    if "forward" not in program.method_names:
        raise ValueError(f"{path} has no forward method")
    with stdout_to_stderr():
        forward = program.load_method("forward")
    meta = forward.metadata
    if meta.num_inputs() != 1 or meta.num_outputs() != 1:
        raise ValueError(f"{path}: forward must take one input and return one output")
    shapes = [info.sizes() for info in (meta.input_tensor_meta(0), meta.output_tensor_meta(0))]
    metadata = check_edge_metadata(metadata, path, *shapes)

    def run(x: np.ndarray) -> np.ndarray:
        (out,) = forward.execute([torch.from_numpy(x)])
        return np.asarray(out.numpy(), dtype=np.float32)

    return EdgeModel("executorch", Path(path), metadata, run, runtime=(program, forward))


def verify_executorch(
    path: str | os.PathLike[str], model: ShuffleNetBase, tolerance: float = FP32_TOLERANCE
) -> Verification:
    """Run ``path`` in ExecuTorch next to ``model`` at the file's batch size."""
    return verify_edge(open_executorch(path), model, tolerance)


def export_executorch_int8(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    calib: str,
    options: ExportOptions,
    data: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Int8Result:
    """int8 ``FILE.int8.pte`` beside the fp32 ``FILE.pte`` at ``path``: ExecuTorch's PT2E
    ``XNNPACKQuantizer`` (int8 weights symmetric per output channel, int8 activations
    calibrated on ``calib``'s images), lowered to XNNPACK's int8 kernels; input and output stay
    float32. Compared with the fp32 file on ``calib``'s evaluation images."""
    quantizer_module = require(
        "executorch",
        "ExecuTorch int8 export",
        "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
    )
    graph = _graph(model, options)
    if data is None:
        data = calibration_data(calib, graph.metadata["preprocessing"])
    calibration, images, labels = data
    quantizer = quantizer_module.XNNPACKQuantizer().set_global(
        quantizer_module.get_symmetric_quantization_config(is_per_channel=True)
    )
    converted = pt2e_calibrated(graph, quantizer, calibration)
    graph.metadata["quantization"] = {
        "method": "PT2E (ExecuTorch XNNPACKQuantizer)",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 per-tensor, calibrated",
        "calibration_images": len(calibration),
    }
    quantized = edge_int8_path(path)
    _export(graph, quantized, converted)
    fp32, int8 = open_executorch(path, 1), open_executorch(quantized, 1)
    report = compare_edge_int8(fp32, int8, images, labels)
    return Int8Result(quantized, calib, graph.metadata["quantization"]["weights"], report, [])


def _export_format(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
    return [export_executorch(model, path, options)]


def _verify_format(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
    return [verify_executorch(path, model)]


EXECUTORCH = ExportFormat(
    "ExecuTorch .pte lowered to XNNPACK (NCHW input, fixed batch), checked in ExecuTorch",
    _export_format,
    _verify_format,
    int8=True,
    quantize=export_executorch_int8,
    int8_files=lambda path: [edge_int8_path(path)],
)
