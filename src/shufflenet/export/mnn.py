"""MNN export: our ONNX export converted by MNN's converter to ``FILE.mnn``, the metadata in
``FILE.json`` beside it (an ``.mnn`` file has no place for it), verified with MNN's Python API.

The ONNX graph is the shuffle-free one laid out for MNN (:data:`~shufflenet.export.edge.
EDGE_LAYOUT`; the plain one with ``fastpath=None`` or for models without one) at a fixed batch;
the ``.mnn`` file takes NCHW float32 images. The converter is MNN's own C++ one, run in a child
process of this Python (it prints, and a crash there must not take this process down); MNN's
``mnnconvert`` script is not used, as it uploads usage logs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path, write_json
from ..limits import MAX_BATCH_ELEMENTS
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..runtimes import mnn_module, require, stdout_to_stderr
from ..verification import FP32_TOLERANCE, Verification
from ..weights import validate_metadata
from .edge import EDGE_LAYOUT, EdgeModel, check_edge_metadata, verify_edge
from .metadata import read_onnx_metadata
from .onnx import onnx_bytes
from .spec import ExportFormat, ExportOptions

__all__ = ["MNN", "convert_onnx_to_mnn", "export_mnn", "mnn_paths", "open_mnn", "verify_mnn"]

# MNN's converter, from the mnn wheel's extension module, without its logging wrapper.
_CONVERTER = "import sys, _tools; _tools.mnnconvert(sys.argv)"


def mnn_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``FILE.mnn`` and the ``FILE.json`` that holds its metadata."""
    model = Path(path)
    if model.suffix != ".mnn":
        raise ValueError(f"an MNN export is FILE.mnn (metadata goes to FILE.json), got {model}")
    return model, model.with_suffix(".json")


def convert_onnx_to_mnn(onnx: bytes, path: str | os.PathLike[str], *args: str) -> Path:
    """Convert ONNX bytes to the ``.mnn`` file ``path`` with MNN's converter (``args``: more
    converter flags); a ``ValueError`` with the converter's last lines if it fails."""
    require("mnn", "MNN export")
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "model.onnx"), Path(tmp, "model.mnn")
        source.write_bytes(onnx)
        command = [sys.executable, "-c", _CONVERTER, "-f", "ONNX", "--modelFile", str(source)]
        command += ["--MNNModel", str(target), "--bizCode", "shufflenet", *args]
        proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp)
        log = proc.stdout + proc.stderr
        if proc.returncode < 0 or "Converted Success" not in log or not target.is_file():
            tail = log.strip().splitlines()[-4:]
            raise ValueError(f"MNN's converter failed (exit {proc.returncode}): {' | '.join(tail)}")
        with atomic_path(path) as out:
            shutil.copyfile(target, out)
    return Path(path)


def export_mnn(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> list[Path]:
    """Write ``FILE.mnn`` and ``FILE.json`` at ``path``: our ONNX export (``options.opset``,
    ``options.batch`` fixed (1 if None), ``options.input_size``; the shuffle-free graph in
    MNN's layout unless ``options.fastpath`` is None) converted by MNN, weights fp32."""
    model_path, sidecar = mnn_paths(path)
    batch = options.batch or 1
    fastpath = None if options.fastpath is None else EDGE_LAYOUT
    onnx = onnx_bytes(
        model,
        opset=options.opset,
        batch=batch,
        input_size=options.input_size,
        fastpath=fastpath,
    )
    metadata = {**read_onnx_metadata(onnx), "batch": batch, "input_layout": "NCHW"}
    convert_onnx_to_mnn(onnx, model_path)
    write_json(sidecar, metadata)
    return [model_path, sidecar]


def open_mnn(path: str | os.PathLike[str], threads: int | None = None) -> EdgeModel:
    """An ``.mnn`` export in MNN (CPU), with the metadata of its ``FILE.json``, checked against
    the output of one run on zeros."""
    model_path, sidecar = mnn_paths(path)
    if not model_path.is_file():
        raise FileNotFoundError(f"no such MNN file: {model_path}")
    mnn = require("mnn", "running an .mnn file")
    try:
        metadata: Any = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{model_path} has no {sidecar.name} beside it (its preprocessing and class "
            "names): export it with `shufflenet export --format mnn`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{sidecar}: unreadable metadata ({e})") from None
    shape = _input_shape(metadata, sidecar)
    try:
        module = mnn_module(model_path, threads)
    except ValueError:
        raise
    except Exception:  # MNN's binding fails with a SystemError for files it cannot load
        module = None
    if module is None:
        raise ValueError(f"{model_path}: MNN cannot load it (not an MNN model, or damaged)")

    def run(x: np.ndarray) -> np.ndarray:
        with stdout_to_stderr():
            var = mnn.expr.const(x, list(x.shape), mnn.expr.NCHW)
            (out,) = module.onForward([var])
            if out.data_format == mnn.expr.NC4HW4:
                out = mnn.expr.convert(out, mnn.expr.NCHW)
            return np.array(out.read(), dtype=np.float32)

    try:
        out = run(np.zeros(shape, np.float32))
    except Exception as e:  # a graph that loads but does not run on its own input
        raise ValueError(f"{model_path}: MNN cannot run it ({e})") from None
    metadata = check_edge_metadata(metadata, sidecar, shape, out.shape)
    return EdgeModel("mnn", model_path, metadata, run, runtime=module)


def _input_shape(metadata: Any, sidecar: Path) -> list[int]:
    """The NCHW input that ``metadata`` describes (checked against the graph after a run)."""
    metadata = validate_metadata(metadata, sidecar)
    batch = metadata.get("batch")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"{sidecar}: its batch must be a positive integer, got {batch!r}")
    channels = int(metadata["model_config"].get("in_chans", 3))
    shape = [batch, channels, *check_input_size(metadata["preprocessing"]["input_size"])]
    if math.prod(shape) > MAX_BATCH_ELEMENTS:
        raise ValueError(f"{sidecar}: a batch of {batch} images is too large to run")
    return shape


def verify_mnn(
    path: str | os.PathLike[str], model: ShuffleNetBase, tolerance: float = FP32_TOLERANCE
) -> Verification:
    """Run ``path`` in MNN next to ``model`` at the file's batch size."""
    return verify_edge(open_mnn(path), model, tolerance)


def _export_format(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
    return export_mnn(model, path, options)


def _verify_format(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
    return [verify_mnn(path, model)]


MNN = ExportFormat(
    "MNN from our ONNX export (FILE.mnn, FILE.json; NCHW, fixed batch), checked in MNN",
    _export_format,
    _verify_format,
    files=lambda path: list(mnn_paths(path)),
)
