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

from ..io import write_bytes
from ..limits import MAX_BATCH_ELEMENTS
from ..models.base import ShuffleNetBase
from ..runtimes import executorch_program, probe, require, stdout_to_stderr
from ..verification import FP32_TOLERANCE, Verification
from ..weights import printable
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
from .xnnpack import xnnpack_graph

__all__ = [
    "EXECUTORCH",
    "EXECUTORCH_INT8",
    "PTE_METADATA",
    "delegated_fraction",
    "export_executorch",
    "open_executorch",
    "read_pte_metadata",
    "to_pte",
    "to_pte_int8",
    "verify_executorch",
    "write_executorch_int8",
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


def export_executorch(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> Path:
    """Lower ``model`` to a ``.pte`` program at ``path``: ``torch.export`` of the shuffle-free
    graph (the plain one where ``options.fastpath`` is None or the model has none; see
    :func:`~shufflenet.export.edge.edge_graph`), ``to_edge_transform_and_lower`` with the
    XNNPACK partitioner, NCHW input, ``options.batch`` fixed (1 if None), fp32."""
    graph = _graph(model, options)
    return write_bytes(path, to_pte(graph.module, graph.example, graph.metadata))


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
    except Exception as e:  # the runtime's errors, not one JSON object, RecursionError
        reason = printable(_first_line(e))[:200]
        raise ValueError(f"{label}: its shufflenet metadata is unreadable ({reason})") from None


def open_executorch(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> EdgeModel:
    """A ``.pte`` export in ExecuTorch's runtime, its metadata checked against ``forward``;
    ``threads`` sets the process's ExecuTorch thread pool (see
    :func:`~shufflenet.runtimes.executorch_program`).

    The file is read once. Its flatbuffer identifier is checked first (ExecuTorch aborts the
    process on some foreign files); then its bytes are loaded, every method compiled and run
    once, in a child process (:func:`~shufflenet.runtimes.probe`; ``first_in_child=False``
    skips that for a file just exported), so that a damaged file that aborts XNNPACK's
    compiler is an error here; then they are loaded in this process."""
    require("executorch", "running a .pte file")
    data = read_model_file(path, "ExecuTorch")
    if len(data) < 8 or data[4:6] != b"ET" or not data[6:8].isalnum():
        raise ValueError(f"{path} is not an ExecuTorch program (.pte)")
    if first_in_child:
        with private_copy(data, ".pte") as copy:
            probe("executorch", copy, path, MAX_BATCH_ELEMENTS)
    try:
        program = executorch_program(data, threads)
    except Exception as e:  # the runtime raises RuntimeError for files it cannot load
        raise ValueError(f"{path}: ExecuTorch cannot load it ({_first_line(e)})") from None
    metadata = read_pte_metadata(program, path)
    if "forward" not in program.method_names:
        raise ValueError(f"{path} has no forward method")
    try:
        with stdout_to_stderr():
            forward = program.load_method("forward")
    except Exception as e:  # the runtime's RuntimeError for a method it cannot load
        raise ValueError(f"{path}: ExecuTorch cannot load its forward ({_first_line(e)})") from None
    meta = forward.metadata
    if meta.num_inputs() != 1 or meta.num_outputs() != 1:
        raise ValueError(f"{path}: forward must take one input and return one output")
    shapes = [info.sizes() for info in (meta.input_tensor_meta(0), meta.output_tensor_meta(0))]
    metadata = check_edge_metadata(metadata, path, *shapes)

    def run(x: np.ndarray) -> np.ndarray:
        (out,) = forward.execute([torch.from_numpy(x)])
        return np.asarray(out.numpy(), dtype=np.float32)

    return EdgeModel("executorch", Path(path), metadata, run, runtime=(program, forward, data))


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def verify_executorch(
    path: str | os.PathLike[str], model: ShuffleNetBase, tolerance: float = FP32_TOLERANCE
) -> Verification:
    """Run ``path`` in ExecuTorch next to ``model`` at the file's batch size."""
    return verify_edge(open_executorch(path), model, tolerance)


# What the int8 file's metadata says of its quantization.
EXECUTORCH_INT8 = {
    "method": "PT2E (ExecuTorch XNNPACKQuantizer)",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 per-tensor, calibrated",
}


def to_pte_int8(
    module: Any, example: Tensor, calibration: Tensor, metadata: dict[str, Any] | None = None
) -> bytes:
    """Any ``module`` quantized by ExecuTorch's PT2E ``XNNPACKQuantizer`` (int8 weights
    symmetric per output channel, int8 activations calibrated on ``calibration``) and lowered
    at ``example``'s shape to XNNPACK's int8 kernels, as ``.pte`` bytes; input and output stay
    float32. ``metadata`` as in :func:`to_pte`."""
    quantizer_module = require(
        "executorch",
        "ExecuTorch int8 export",
        "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
    )
    quantizer = quantizer_module.XNNPACKQuantizer().set_global(
        quantizer_module.get_symmetric_quantization_config(is_per_channel=True)
    )
    converted = pt2e_calibrated(EdgeGraph(module, example, metadata or {}), quantizer, calibration)
    return to_pte(converted, example, metadata)


def write_executorch_int8(
    model: ShuffleNetBase, path: Path, target: Path, options: ExportOptions, calibration: Tensor
) -> dict[str, Any]:
    """The int8 ``.pte`` ``target``: :func:`to_pte_int8` of the graph :func:`export_executorch`
    lowers, calibrated on ``calibration``; returns its ``quantization`` record."""
    graph = _graph(model, options)
    graph.metadata["quantization"] = {**EXECUTORCH_INT8, "calibration_images": len(calibration)}
    write_bytes(target, to_pte_int8(graph.module, graph.example, calibration, graph.metadata))
    return graph.metadata["quantization"]


EXECUTORCH = edge_format(
    "ExecuTorch .pte lowered to XNNPACK (NCHW input, fixed batch), checked in ExecuTorch",
    export_executorch,
    open_executorch,
    quantize=write_executorch_int8,
    suffixes=(".pte",),
)
