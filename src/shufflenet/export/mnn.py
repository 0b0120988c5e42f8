"""MNN: our ONNX export converted by MNN's converter to ``FILE.mnn``, the metadata in
``FILE.json`` beside it (an ``.mnn`` file has no place for it), run with MNN's Python API
(:data:`MNN_RUNTIME`, the one place that imports it).

The ONNX graph is the shuffle-free one laid out for MNN (:data:`MNN_LAYOUT`; the plain one
with ``fastpath=None`` or for models without one) at a fixed batch;
the ``.mnn`` file takes NCHW float32 images. The converter is MNN's own C++ one, run in a child
process of this Python (it prints, and a crash there must not take this process down); MNN's
``mnnconvert`` script is not used, as it uploads usage logs. int8 is MNN's offline quantizer
on that file (:func:`quantize_mnn`), likewise in a child process.

The side-car is tied to its graph both ways: it records the SHA-256 of the ``.mnn`` file
(``mnn_sha256``), and the ``.mnn`` file's ``bizCode`` records a digest of the side-car's
metadata. :func:`open_mnn` refuses a side-car of another export, an edited one and an ``.mnn``
file changed since. Graphs whose largest tensor passes :data:`MNN_MAX_TENSOR_VALUES` are refused
before MNN sees them: MNN's CPU backend crashes on tensors near 2 GiB.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..deploy.fastpath import EAGER
from ..io import atomic_path, write_json
from ..limits import MAX_BATCH_ELEMENTS
from ..models import create_model
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..runtimes import Extra, probe, require, stdout_to_stderr
from ..weights import error_reason, validate_metadata
from .edge import check_edge_metadata, edge_format, edge_verifier, int8_graph_options
from .int8_options import Int8Options
from .metadata import check_sidecar_target, model_metadata, read_onnx_metadata, read_sidecar
from .mnn_int8 import keep_float, quantizer_config
from .onnx import onnx_bytes, to_onnx
from .runtime import OpenedModel, Runtime, private_copy, read_model_file
from .spec import ExportOptions

__all__ = [
    "MNN",
    "MNN_EXTRA",
    "MNN_INT8",
    "MNN_LAYOUT",
    "MNN_MAX_TENSOR_VALUES",
    "MNN_RUNTIME",
    "SIDECAR_HASH",
    "convert_onnx_to_mnn",
    "export_mnn",
    "load_mnn",
    "mnn_paths",
    "open_mnn",
    "quantize_mnn",
    "verify_mnn",
]

MNN_EXTRA = Extra("mnn", "MNN", "MNN", "MNN")
# Opens argv[1] and runs it once on zeros of the NCHW shape argv[3] (comma-separated)
# (:func:`~shufflenet.runtimes.probe`; the caller bounds the shape).
PROBE = """
import sys, numpy as np, MNN
shape = [int(s) for s in sys.argv[3].split(",")]
module = MNN.nn.load_module_from_file(sys.argv[1], [], [], thread_num=1)
x = MNN.expr.const(np.zeros(shape, np.float32), shape, MNN.expr.NCHW)
module.onForward([x])[0].read()
"""

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
# The most values one tensor of a graph may hold for MNN (512 MiB of float32): its CPU backend
# crashes when a tensor or a convolution's buffer nears 2 GiB, so this leaves room for both.
MNN_MAX_TENSOR_VALUES = 1 << 27
SIDECAR_HASH = "mnn_sha256"  # the side-car's key for the SHA-256 of its .mnn file
_STAMP = "shufflenet:"  # a bizCode: this, then the digest of the side-car's metadata
# What the int8 file's metadata says of its quantization.
MNN_INT8 = {
    "method": "MNN offline quantization (mnnquant), max-pools in float",
    "weights": "int8 symmetric per-channel (MAX_ABS)",
}


def mnn_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``FILE.mnn`` and the ``FILE.json`` that holds its metadata."""
    model = Path(path)
    if model.suffix != ".mnn":
        raise ValueError(f"an MNN export is FILE.mnn (metadata goes to FILE.json), got {model}")
    return model, model.with_suffix(".json")


def convert_onnx_to_mnn(
    onnx: bytes, path: str | os.PathLike[str], *args: str, biz_code: str = "shufflenet"
) -> Path:
    """Convert ONNX bytes to the ``.mnn`` file ``path`` with MNN's converter (``args``: more
    converter flags; ``biz_code``: the string the file's ``bizCode`` holds); a ``ValueError``
    with the converter's last lines if it fails."""
    require(MNN_EXTRA, "MNN export")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "model.onnx")
        source.write_bytes(onnx)
        return _convert(source, "ONNX", path, biz_code, *args)


def _convert(
    source: Path, kind: str, path: str | os.PathLike[str], biz_code: str, *args: str
) -> Path:
    """MNN's converter on the ``kind`` (ONNX or MNN) file ``source``, written to ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp, "model.mnn")
        command = ["-f", kind, "--modelFile", str(source.resolve()), "--MNNModel", str(target)]
        log = _run_tool(_CONVERTER, [*command, "--bizCode", biz_code, *args], tmp, "converter")
        done = ("Converted Success", "has convert to MNNModel")  # from a model; from JSON
        if not any(word in log for word in done) or not target.is_file():
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
    int8: Int8Options | None = None,
    float_layers: Sequence[str] = (),
    model: nn.Module | None = None,
    biz_code: str = "shufflenet",
) -> Path:
    """MNN's offline quantizer on the fp32 ``.mnn`` file ``source``, written to ``target``
    (its ``bizCode``: ``biz_code``): int8 weights per output channel (MAX_ABS), int8
    activations with ranges by ``int8.method`` over the ``calibration`` images (``ema``:
    moving average over batches of 64; ``entropy``: MNN's KL). Its max-pools and
    ``float_layers`` (names of ``model``'s layers, resolved) stay float
    (:mod:`~shufflenet.export.mnn_int8` says why the max-pools).

    The quantizer reads image files and makes the input itself (``(pixel - mean) * normal`` in
    a channel order): the calibration images (NCHW, through ``preprocessing`` already) are
    written back to PNG files, and ``preprocessing`` becomes its mean, normal and format.
    """
    require(MNN_EXTRA, "MNN int8 export")
    int8 = (int8 or Int8Options()).checked("mnn")
    pre = preprocessing
    channels = calibration.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"MNN's quantizer reads 1- or 3-channel images, not {channels}")
    mean = torch.tensor(pre["mean"][:channels]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"][:channels]).view(1, -1, 1, 1)
    pixels = ((calibration * std + mean) / pre["scale"]).round().clamp(0, 255).to(torch.uint8)
    if channels == 3 and pre.get("channel_order", "RGB") == "BGR":  # files are RGB
        pixels = pixels.flip(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        for i, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(image.squeeze(-1) if channels == 1 else image).save(folder / f"{i}.png")
        size = calibration.shape[2:]
        config = quantizer_config(pre, channels, size, str(folder) + os.sep, len(pixels), int8)
        write_json(Path(tmp, "config.json"), config)
        out = Path(tmp, "int8.mnn")
        source = Path(source).resolve()  # the tool runs in ``tmp``
        _run_tool(_QUANTIZER, [str(source), str(out), "config.json"], tmp, "quantizer")
        if not out.is_file():
            raise ValueError("MNN's quantizer wrote no file")
        nets = []
        for name, path in (("int8", out), ("fp32", source)):
            dump = ["-f", "MNN", "--modelFile", str(path), "--JsonFile", f"{name}.json"]
            _run_tool(_CONVERTER, dump, tmp, "converter")
            nets.append(json.loads(Path(tmp, f"{name}.json").read_text()))
        keep_float(nets[0], nets[1], model, float_layers)
        nets[0]["bizCode"] = biz_code  # read from the JSON, not from --bizCode
        write_json(Path(tmp, "edited.json"), nets[0])
        return _convert(Path(tmp, "edited.json"), "JSON", target, biz_code)


def _digest(metadata: dict[str, Any]) -> str:
    """The SHA-256 of ``metadata`` (but its :data:`SIDECAR_HASH`) as canonical JSON."""
    rest = {k: v for k, v in metadata.items() if k != SIDECAR_HASH}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_sidecar(sidecar: Path, model_path: Path, metadata: dict[str, Any]) -> None:
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    write_json(sidecar, {**metadata, SIDECAR_HASH: digest})


def check_mnn_size(config: dict[str, Any], shape: list[int], label: str) -> None:
    """``ValueError`` if the model of ``config`` (a ``model_config``) on an NCHW input of
    ``shape`` has a tensor of more than :data:`MNN_MAX_TENSOR_VALUES` values (found by running
    it on PyTorch's meta device: nothing is allocated)."""
    kwargs = {k: v for k, v in config.items() if k != "name"}
    with torch.device("meta"):
        net = create_model(config["name"], **kwargs).eval()
    largest = math.prod(shape)

    def record(module: Any, inputs: Any, output: Any) -> None:
        nonlocal largest
        if isinstance(output, Tensor):
            largest = max(largest, output.numel())

    handles = [m.register_forward_hook(record) for m in net.modules()]
    try:
        with torch.no_grad():
            net(torch.empty(shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    if largest > MNN_MAX_TENSOR_VALUES:
        raise ValueError(
            f"{label}: a batch of {shape[0]} at {shape[2]}x{shape[3]} makes tensors of "
            f"{largest} values, more than MNN runs ({MNN_MAX_TENSOR_VALUES}): lower the batch "
            "or the input size"
        )


def export_mnn(
    model: ShuffleNetBase, path: str | os.PathLike[str], options: ExportOptions
) -> list[Path]:
    """Write ``FILE.mnn`` and ``FILE.json`` at ``path``: our ONNX export (``options.opset``,
    ``options.batch`` fixed (1 if None), ``options.input_size``; the shuffle-free graph in
    MNN's layout unless ``options.fastpath`` is None) converted by MNN, weights fp32. An
    existing ``FILE.json`` that is not a side-car of ours is never overwritten."""
    model_path, sidecar = mnn_paths(path)
    check_sidecar_target(sidecar)
    batch = options.batch or 1
    planned = {**model_metadata(model, options.input_size), "batch": batch}
    check_mnn_size(planned["model_config"], _input_shape(planned, model_path), str(model_path))
    fastpath = None if options.fastpath is None else MNN_LAYOUT
    onnx = onnx_bytes(
        model,
        opset=options.opset,
        batch=batch,
        input_size=options.input_size,
        fastpath=fastpath,
    )
    metadata = {**read_onnx_metadata(onnx), "batch": batch, "input_layout": "NCHW"}
    convert_onnx_to_mnn(onnx, model_path, biz_code=_STAMP + _digest(metadata))
    _write_sidecar(sidecar, model_path, metadata)
    return [model_path, sidecar]


def _sidecar_metadata(model_path: Path, sidecar: Path, data: bytes) -> dict[str, Any]:
    """The side-car's metadata, checked, and checked to describe the ``.mnn`` bytes ``data``."""
    try:
        metadata = read_sidecar(sidecar)
    except FileNotFoundError:
        raise ValueError(
            f"{model_path} has no {sidecar.name} beside it (its preprocessing and class "
            "names): export it with `shufflenet export --format mnn`"
        ) from None
    recorded = metadata.pop(SIDECAR_HASH, None) if isinstance(metadata, dict) else None
    metadata = validate_metadata(metadata, sidecar)
    if recorded is None:
        raise ValueError(
            f"{sidecar} does not say which .mnn file it describes (no {SIDECAR_HASH}): "
            "export the model again"
        )
    if recorded != hashlib.sha256(data).hexdigest():
        raise ValueError(
            f"{sidecar} describes another .mnn file than {model_path} (its {SIDECAR_HASH} "
            "differs): use the side-car exported with it, or export again"
        )
    return metadata


def _module(path: Path, threads: int | None) -> Any:
    """An ``.mnn`` file as an MNN ``Module`` on the CPU backend with ``threads`` threads (default
    1) and MNN's default precision (fp32 on CPUs; ``Low`` would allow fp16 on ARM); ``None``
    where MNN cannot load it."""
    mnn = require(MNN_EXTRA, "running an .mnn file")
    try:
        with stdout_to_stderr():
            return mnn.nn.load_module_from_file(str(path), [], [], thread_num=threads or 1)
    except Exception:  # MNN's binding fails with a SystemError for files it cannot load
        return None


def _model(module: Any, path: Path, metadata: dict[str, Any] | None = None) -> OpenedModel:
    """``module`` run on NCHW float32 batches (the shape it was converted for)."""
    mnn = require(MNN_EXTRA, "running an .mnn file")

    def run(x: np.ndarray) -> np.ndarray:
        with stdout_to_stderr():
            var = mnn.expr.const(x, list(x.shape), mnn.expr.NCHW)
            (out,) = module.onForward([var])
            if out.data_format == mnn.expr.NC4HW4:
                out = mnn.expr.convert(out, mnn.expr.NCHW)
            return np.array(out.read(), dtype=np.float32)

    batch = None if metadata is None else int(metadata["batch"])
    return OpenedModel("mnn", path, run, "NCHW", batch, metadata or {}, runtime=module)


def open_mnn(
    path: str | os.PathLike[str], threads: int | None = None, *, first_in_child: bool = True
) -> OpenedModel:
    """An ``.mnn`` export in MNN (CPU), with the metadata of its ``FILE.json``: the side-car
    checked to belong to the file (:data:`SIDECAR_HASH` and the file's ``bizCode``), its
    input bounded, and the output of one run on zeros checked against it.

    The file is opened and run once in a child process first (:func:`~shufflenet.runtimes.
    probe`; ``first_in_child=False`` skips that for a file just exported), so that a damaged
    one that crashes MNN is an error here; then this process loads the same bytes."""
    model_path, sidecar = mnn_paths(path)
    data = read_model_file(model_path, "MNN")
    require(MNN_EXTRA, "running an .mnn file")
    metadata = _sidecar_metadata(model_path, sidecar, data)
    shape = _input_shape(metadata, sidecar)
    check_mnn_size(metadata["model_config"], shape, str(sidecar))
    with private_copy(data, ".mnn") as copy:
        if first_in_child:
            probe("mnn", PROBE, copy, model_path, MAX_BATCH_ELEMENTS, [",".join(map(str, shape))])
        module = _module(copy, threads)
    if module is None:
        raise ValueError(f"{model_path}: MNN cannot load it (not an MNN model, or damaged)")
    if module.get_info().get("bizCode") != _STAMP + _digest(metadata):
        raise ValueError(
            f"{sidecar} is not the metadata {model_path} was exported with (edited, or "
            "another export's): export the model again"
        )
    opened = _model(module, model_path, metadata)
    try:
        out = opened.run(np.zeros(shape, np.float32))
    except Exception as e:  # a graph that loads but does not run on its own input
        raise ValueError(f"{model_path}: MNN cannot run it ({error_reason(e)})") from None
    opened.metadata = check_edge_metadata(metadata, sidecar, shape, out.shape)
    return opened


def load_mnn(
    path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu"
) -> OpenedModel:
    """Any ``.mnn`` file in MNN on the CPU, ``threads`` threads (default 1)."""
    module = _module(Path(path), threads)
    if module is None:
        raise ValueError(f"{path}: MNN cannot load it (not an MNN model, or damaged)")
    return _model(module, Path(path))


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


def _write_int8(
    model: ShuffleNetBase, path: Path, target: Path, options: ExportOptions, calibration: Tensor
) -> dict[str, Any]:
    """The int8 ``target`` (and its side-car JSON): :func:`quantize_mnn` of the fp32 file at
    ``path``, written by :func:`export_mnn` already (or of the plain graph, exported here,
    where a float layer needs it), stamped with its own metadata's digest; returns its
    ``quantization`` record."""
    quantized, quantized_sidecar = mnn_paths(target)
    check_sidecar_target(quantized_sidecar)
    graph_options, int8, layers = int8_graph_options(model, options, MNN_RUNTIME)
    with tempfile.TemporaryDirectory() as tmp:
        if graph_options.fastpath is None and options.fastpath is not None:
            path = export_mnn(model, Path(tmp, "plain.mnn"), graph_options)[0]
        model_path, sidecar = mnn_paths(path)
        metadata = read_sidecar(sidecar)
        metadata.pop(SIDECAR_HASH, None)
        record = metadata["quantization"] = {
            **MNN_INT8,
            "activations": f"int8 per-tensor asymmetric, {int8.method} calibration",
            "calibration_images": len(calibration),
            **int8.record("mnn", layers),
        }
        quantize_mnn(
            model_path,
            quantized,
            calibration,
            metadata["preprocessing"],
            int8,
            layers,
            model,
            _STAMP + _digest(metadata),
        )
    _write_sidecar(quantized_sidecar, quantized, metadata)
    return record


def _to_file(module: nn.Module, example: Tensor, folder: Path) -> Path:
    """``module`` as an ``.mnn`` file in ``folder``, through ONNX at ``example``'s batch."""
    onnx = to_onnx(module, example, dynamic_batch=False)
    return convert_onnx_to_mnn(onnx, folder / "model.mnn")


MNN_RUNTIME = Runtime(
    name="mnn",
    package="MNN",
    open=open_mnn,
    load=load_mnn,
    convert=_to_file,
    extra=MNN_EXTRA,
    layout=MNN_LAYOUT,
)
verify_mnn = edge_verifier(MNN_RUNTIME)
MNN = edge_format(
    "MNN from our ONNX export (FILE.mnn, FILE.json; NCHW, fixed batch), checked in MNN",
    MNN_RUNTIME,
    export_mnn,
    files=lambda path: list(mnn_paths(path)),
    quantize=_write_int8,
    suffixes=(".mnn",),
)
