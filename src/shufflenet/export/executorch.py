"""ExecuTorch: a ``.pte`` program lowered to the XNNPACK delegate from the shuffle-free graph,
run in ExecuTorch's runtime (:data:`EXECUTORCH_RUNTIME`, the one place that imports it); int8 by
the PT2E XNNPACK quantizer.

The program's ``forward`` takes NCHW float32 images at a fixed batch (ExecuTorch's Android and
iOS image helpers make NCHW tensors); its method ``shufflenet_metadata`` returns the model's
metadata (:func:`~shufflenet.export.model_metadata`) as one JSON string, so the file carries
its preprocessing and class names itself (:func:`read_pte_metadata`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from .xnnpack import xnnpack_graph

__all__ = [
    "EXECUTORCH",
    "EXECUTORCH_EXTRA",
    "EXECUTORCH_INT8",
    "EXECUTORCH_RUNTIME",
    "PTE_METADATA",
    "delegated_fraction",
    "export_executorch",
    "load_executorch",
    "open_executorch",
    "read_pte_metadata",
    "to_pte",
    "to_pte_int8",
    "verify_executorch",
]

EXECUTORCH_EXTRA = Extra("executorch", "executorch", "executorch.runtime", "executorch")
PTE_METADATA = "shufflenet_metadata"  # the constant method that returns the metadata JSON
# Loads argv[1], compiles and runs every method once on zeros; exit 3 if an input holds more
# than argv[2] values (:func:`~shufflenet.runtimes.probe`).
PROBE = """
import math, sys, torch
from executorch.runtime import Runtime
program = Runtime.get().load_program(sys.argv[1])
for name in program.method_names:
    method = program.load_method(name)
    meta = method.metadata
    shapes = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    if any(math.prod(s) > int(sys.argv[2]) for s in shapes):
        sys.exit(3)
    method.execute([torch.zeros(s) for s in shapes])
"""


def to_pte(module: Any, example: Tensor, metadata: dict[str, Any] | None = None) -> bytes:
    """Any ``module`` captured by ``torch.export`` on ``example`` and lowered to XNNPACK, as
    ``.pte`` bytes; ``metadata``, if given, returned by a ``shufflenet_metadata`` method. Warns
    when XNNPACK does not take every operator. For converting any model the same way, as
    ``bench --compare`` does for torchvision's (see :mod:`.xnnpack` for our graphs' rewrites)."""
    exir = require(EXECUTORCH_EXTRA, "ExecuTorch export", "executorch.exir")
    partitioner = require(
        EXECUTORCH_EXTRA,
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
        reason = error_reason(e)
        raise ValueError(f"{label}: its shufflenet metadata is unreadable ({reason})") from None


def _program(data: bytes, path: str | os.PathLike[str], threads: int | None) -> Any:
    """``.pte`` bytes loaded by ExecuTorch's runtime (``Program``: methods ``forward`` and, for
    our files, ``shufflenet_metadata``), XNNPACK delegate included. ``threads`` resizes
    ExecuTorch's one thread pool (XNNPACK's threads), for the whole process; ``None`` keeps it
    (ExecuTorch's default: one thread per core)."""
    runtime = require(EXECUTORCH_EXTRA, "running a .pte file")
    try:
        with stdout_to_stderr():
            if threads:  # one pool per process, for every program: not while another one runs
                pybindings = require(
                    EXECUTORCH_EXTRA, module="executorch.extension.pybindings.portable_lib"
                )
                pybindings._unsafe_reset_threadpool(threads)
            return runtime.Runtime.get().load_program(data)
    except ValueError:
        raise
    except Exception as e:  # the runtime raises RuntimeError for files it cannot load
        raise ValueError(f"{path}: ExecuTorch cannot load it ({error_reason(e)})") from None


def _check_header(data: bytes, path: str | os.PathLike[str]) -> None:
    """ExecuTorch aborts the process on some foreign files: its flatbuffer identifier first."""
    if len(data) < 8 or data[4:6] != b"ET" or not data[6:8].isalnum():
        raise ValueError(f"{path} is not an ExecuTorch program (.pte)")


def _forward(
    program: Any, data: bytes, path: str | os.PathLike[str]
) -> tuple[OpenedModel, Sequence[int], Sequence[int]]:
    """The program's ``forward`` (NCHW float32, one input, one output), and its input and
    output shapes. The model keeps the program alive: a method does not hold it, and runs
    from its memory (once it is freed, the next run crashes the process)."""
    if "forward" not in program.method_names:
        raise ValueError(f"{path} has no forward method")
    try:
        with stdout_to_stderr():
            forward = program.load_method("forward")
    except Exception as e:  # the runtime's RuntimeError for a method it cannot load
        reason = error_reason(e)
        raise ValueError(f"{path}: ExecuTorch cannot load its forward ({reason})") from None
    meta = forward.metadata
    if meta.num_inputs() != 1 or meta.num_outputs() != 1:
        raise ValueError(f"{path}: forward must take one input and return one output")
    inputs, outputs = (
        info.sizes() for info in (meta.input_tensor_meta(0), meta.output_tensor_meta(0))
    )

    def run(x: np.ndarray) -> np.ndarray:
        (out,) = forward.execute([torch.from_numpy(x)])
        return np.asarray(out.numpy(), dtype=np.float32)

    runtime = (program, forward, data)
    opened = OpenedModel("executorch", Path(path), run, "NCHW", int(inputs[0]), runtime=runtime)
    return opened, inputs, outputs


def open_executorch(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> OpenedModel:
    """A ``.pte`` export in ExecuTorch's runtime, its metadata checked against ``forward``;
    ``threads`` sets the process's ExecuTorch thread pool.

    The file is read once. Its flatbuffer identifier is checked first; then its bytes are
    loaded, every method compiled and run once, in a child process
    (:func:`~shufflenet.runtimes.probe`; ``first_in_child=False`` skips that for a file just
    exported), so that a damaged file that aborts XNNPACK's compiler is an error here; then
    they are loaded in this process."""
    require(EXECUTORCH_EXTRA, "running a .pte file")
    data = read_model_file(path, "ExecuTorch")
    _check_header(data, path)
    if first_in_child:
        with private_copy(data, ".pte") as copy:
            probe("executorch", PROBE, copy, path, MAX_BATCH_ELEMENTS)
    program = _program(data, path, threads)
    metadata = read_pte_metadata(program, path)
    opened, inputs, outputs = _forward(program, data, path)
    opened.metadata = check_edge_metadata(metadata, path, inputs, outputs)
    return opened


def load_executorch(
    path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu"
) -> OpenedModel:
    """Any ``.pte`` program's ``forward`` in ExecuTorch (XNNPACK), on the CPU; ``threads``
    sizes the process's one pool."""
    data = read_model_file(path, "ExecuTorch")
    _check_header(data, path)
    return _forward(_program(data, path, threads), data, path)[0]


# The quantizer the int8 file's metadata names.
EXECUTORCH_INT8 = "PT2E (ExecuTorch XNNPACKQuantizer)"


def to_pte_int8(
    module: Any,
    example: Tensor,
    calibration: Tensor,
    metadata: dict[str, Any] | None = None,
    int8: Int8Options | None = None,
    float_layers: Sequence[str] = (),
    model: nn.Module | None = None,
) -> bytes:
    """Any ``module`` quantized by ExecuTorch's PT2E ``XNNPACKQuantizer`` (int8 weights
    symmetric per output channel, int8 activations calibrated on ``calibration``) and lowered
    at ``example``'s shape to XNNPACK's int8 kernels, as ``.pte`` bytes; input and output stay
    float32. ``metadata`` as in :func:`to_pte`. ``int8`` chooses the calibration method
    (default: histogram) and per-tensor weights; ``float_layers`` (names of ``model``'s layers,
    resolved: see :func:`~shufflenet.export.int8_options.pick_layers`) stay float."""
    quantizer_module = require(
        EXECUTORCH_EXTRA,
        "ExecuTorch int8 export",
        "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
    )
    int8 = (int8 or Int8Options()).checked("executorch")
    quantizer = quantizer_module.XNNPACKQuantizer().set_global(
        pt2e_config(quantizer_module.get_symmetric_quantization_config, int8)
    )
    annotator = FloatLayers(quantizer, model or module, float_layers)
    graph = EdgeGraph(module, example, metadata or {})
    return to_pte(pt2e_calibrated(graph, annotator, calibration), example, metadata)


EXECUTORCH_RUNTIME = Runtime(
    name="executorch",
    package="executorch",
    open=open_executorch,
    load=load_executorch,
    convert=bytes_converter(to_pte, "model.pte"),
    extra=EXECUTORCH_EXTRA,
    layout=EDGE_LAYOUT,
    rewrite=xnnpack_graph,  # the rewrites that keep the graph whole in XNNPACK (:mod:`.xnnpack`)
)
export_executorch = graph_export(EXECUTORCH_RUNTIME, to_pte)
verify_executorch = edge_verifier(EXECUTORCH_RUNTIME)
EXECUTORCH = edge_format(
    "ExecuTorch .pte lowered to XNNPACK (NCHW input, fixed batch), checked in ExecuTorch",
    EXECUTORCH_RUNTIME,
    export_executorch,
    quantize=graph_int8(EXECUTORCH_RUNTIME, to_pte_int8, EXECUTORCH_INT8),
    suffixes=(".pte",),
)
