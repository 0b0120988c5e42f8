"""MNN export: our ONNX export converted by MNN's converter to ``FILE.mnn``, the metadata in
``FILE.json`` beside it (an ``.mnn`` file has no place for it), verified with MNN's Python API.

The ONNX graph is the shuffle-free one laid out for MNN (:data:`MNN_LAYOUT`; the plain one
with ``fastpath=None`` or for models without one) at a fixed batch;
the ``.mnn`` file takes NCHW float32 images. The converter is MNN's own C++ one, run in a child
process of this Python (it prints, and a crash there must not take this process down); MNN's
``mnnconvert`` script is not used, as it uploads usage logs. int8 is MNN's offline quantizer
on that file (:func:`quantize_mnn`), likewise in a child process.
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
import torch
from PIL import Image
from torch import Tensor

from ..deploy.fastpath import EAGER
from ..io import atomic_path, write_json
from ..limits import MAX_BATCH_ELEMENTS
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..runtimes import mnn_module, require, stdout_to_stderr
from ..verification import FP32_TOLERANCE, Verification
from ..weights import validate_metadata
from .edge import (
    EdgeModel,
    check_edge_metadata,
    edge_format,
    verify_edge,
)
from .metadata import read_onnx_metadata
from .onnx import onnx_bytes
from .spec import ExportOptions

__all__ = [
    "MNN",
    "MNN_INT8",
    "MNN_LAYOUT",
    "convert_onnx_to_mnn",
    "export_mnn",
    "mnn_paths",
    "open_mnn",
    "quantize_mnn",
    "verify_mnn",
    "write_mnn_int8",
]

# The shuffle-free layout for MNN is eager PyTorch's: unpadded, each producer one conv followed
# by a split (MNN makes the split a view). One conv per chunk, as in the XNNPACK formats, doubles
# MNN's conv calls, whose per-op overhead at batch 1 outweighs the copies it saves
# (`benchmarks/edge_runtimes.py --runtimes mnn --layout edge` times that layout).
MNN_LAYOUT = EAGER

# MNN's converter and offline quantizer, from the mnn wheel's extension module, without the
# logging wrappers of its scripts. Both take an argv list (mnn 3.6.1's own ``mnnquant`` script
# passes three strings and aborts in C++).
_CONVERTER = "import sys, _tools; _tools.mnnconvert(sys.argv)"
_QUANTIZER = "import sys, _tools; _tools.mnnquant(sys.argv)"
# What the int8 file's metadata says of its quantization.
MNN_INT8 = {
    "method": "MNN offline quantization (mnnquant)",
    "weights": "int8 symmetric (MAX_ABS)",
    "activations": "int8 per-tensor symmetric, EMA calibration",
}


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
        command = ["-f", "ONNX", "--modelFile", str(source), "--MNNModel", str(target)]
        log = _run_tool(_CONVERTER, [*command, "--bizCode", "shufflenet", *args], tmp, "converter")
        if "Converted Success" not in log or not target.is_file():
            tail = log.strip().splitlines()[-4:]
            raise ValueError(f"MNN's converter failed: {' | '.join(tail)}")
        with atomic_path(path) as out:
            shutil.copyfile(target, out)
    return Path(path)


def _run_tool(code: str, args: list[str], cwd: str, what: str) -> str:
    """Run one of MNN's tools in a child process (it prints, and a crash there must not take
    this process down); its output, or a ``ValueError`` with its last lines."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, cwd=cwd
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = log.strip().splitlines()[-4:]
        raise ValueError(f"MNN's {what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return log


def quantize_mnn(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    calibration: Tensor,
    preprocessing: dict[str, Any],
) -> Path:
    """MNN's offline quantizer on the fp32 ``.mnn`` file ``source``: int8 weights (MAX_ABS)
    and activations (ranges by exponential moving average over the ``calibration`` images),
    written to ``target``. EMA, as MNN's guide advises for small calibration sets: on a
    digits-trained V2 0.5x it kept 89% top-1 agreement with fp32 where KL kept 84% (and its
    runs sometimes crash) and ADMM crashed. MNN quantizes activations symmetrically (-127..127),
    so ReLU outputs use half of the grid: it agrees less with fp32 than LiteRT's or ExecuTorch's
    int8 (99%), which use asymmetric activations.

    The quantizer reads image files and makes the input itself (``(pixel - mean) * normal`` in
    a channel order): the calibration images (NCHW, through ``preprocessing`` already) are
    written back to PNG files, and ``preprocessing`` becomes its mean, normal and format.
    """
    require("mnn", "MNN int8 export")
    pre = preprocessing
    channels = calibration.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"MNN's quantizer reads 1- or 3-channel images, not {channels}")
    mean = torch.tensor(pre["mean"][:channels]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"][:channels]).view(1, -1, 1, 1)
    pixels = ((calibration * std + mean) / pre["scale"]).round().clamp(0, 255).to(torch.uint8)
    order = "GRAY" if channels == 1 else pre.get("channel_order", "RGB")
    if order == "BGR":  # the image files are RGB; MNN swaps them back
        pixels = pixels.flip(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        for i, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(image.squeeze(-1) if channels == 1 else image).save(folder / f"{i}.png")
        height, width = calibration.shape[2:]
        config = {
            "format": order,
            "mean": [m / pre["scale"] for m in pre["mean"][:channels]],
            "normal": [pre["scale"] / s for s in pre["std"][:channels]],
            "width": int(width),
            "height": int(height),
            "path": str(folder) + os.sep,
            "used_image_num": len(calibration),
            "feature_quantize_method": "EMA",
            "weight_quantize_method": "MAX_ABS",
        }
        write_json(Path(tmp, "config.json"), config)
        out = Path(tmp, "int8.mnn")
        _run_tool(_QUANTIZER, [str(source), str(out), "config.json"], tmp, "quantizer")
        if not out.is_file():
            raise ValueError("MNN's quantizer wrote no file")
        with atomic_path(target) as tmp_target:
            shutil.copyfile(out, tmp_target)
    return Path(target)


def export_mnn(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> list[Path]:
    """Write ``FILE.mnn`` and ``FILE.json`` at ``path``: our ONNX export (``options.opset``,
    ``options.batch`` fixed (1 if None), ``options.input_size``; the shuffle-free graph in
    MNN's layout unless ``options.fastpath`` is None) converted by MNN, weights fp32."""
    model_path, sidecar = mnn_paths(path)
    batch = options.batch or 1
    fastpath = None if options.fastpath is None else MNN_LAYOUT
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


def write_mnn_int8(
    model: ShuffleNetBase, path: Path, target: Path, options: ExportOptions, calibration: Tensor
) -> dict[str, Any]:
    """The int8 ``target`` (and its side-car JSON): :func:`quantize_mnn` of the fp32 file at
    ``path``, written by :func:`export_mnn` already; returns its ``quantization`` record."""
    model_path, sidecar = mnn_paths(path)
    metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    quantized, quantized_sidecar = mnn_paths(target)
    quantize_mnn(model_path, quantized, calibration, metadata["preprocessing"])
    metadata["quantization"] = {**MNN_INT8, "calibration_images": len(calibration)}
    write_json(quantized_sidecar, metadata)
    return metadata["quantization"]


MNN = edge_format(
    "MNN from our ONNX export (FILE.mnn, FILE.json; NCHW, fixed batch), checked in MNN",
    export_mnn,
    open_mnn,
    files=lambda path: list(mnn_paths(path)),
    quantize=write_mnn_int8,
)
