"""Exports that verify themselves: ONNX, TorchScript and ncnn, plus int8 ONNX.

Every export starts from a copy with the BatchNorms folded and the shuffles expressed with
constant indices (:mod:`shufflenet.deploy`), or, for ONNX by default, from the shuffle-free graph
of :mod:`shufflenet.deploy.fastpath`; either way an ONNX graph has no shape-computing subgraph
and its batch axis is dynamic. After writing, the file is run in its own runtime (an ONNX
file in ONNX Runtime and, when installed, in OpenVINO) next to the PyTorch model on the same
inputs (random pixels through the model's preprocessing) and the largest absolute difference of
the outputs is reported; :class:`Verification` says whether it is within tolerance (1e-4 of
the largest output for fp32; non-finite outputs fail).

The files carry the model's metadata (architecture and layout, class names, preprocessing): in
``metadata_props`` for ONNX, as ``shufflenet.json`` inside a TorchScript archive, and in a
``.json`` file beside an ncnn ``.param``.

int8 is ONNX Runtime's post-training static quantization (QDQ, per-channel weights), calibrated
on digits or an image folder; :func:`compare_int8` measures what it costs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import cpu
from ..deploy import fuse_bn, static_shuffles
from ..deploy.fastpath import ONNXRUNTIME, FastPathOptions, fast_model, fastpath_support
from ..io import atomic_path, write_json
from ..models import get_model_info
from ..models.base import ShuffleNetBase
from ..runtimes import has_openvino, openvino_model, ort_session
from ..verification import FP32_TOLERANCE, Verification, compare_outputs
from ..weights import FORMAT
from .onnx import DEFAULT_OPSET, OPSETS, to_onnx

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "FP32_TOLERANCE",
    "ExportResult",
    "Int8Report",
    "LayerError",
    "Verification",
    "calibration_data",
    "compare_int8",
    "default_int8_weights",
    "export_model",
    "export_ncnn",
    "export_onnx",
    "export_torchscript",
    "int8_layer_errors",
    "model_metadata",
    "onnx_bytes",
    "ort_session",
    "quantize_int8",
    "read_onnx_metadata",
    "sample_inputs",
    "verify_ncnn",
    "verify_onnx",
    "verify_openvino",
    "verify_torchscript",
]

FORMATS = ("onnx", "torchscript", "ncnn")
TORCHSCRIPT_METADATA = "shufflenet.json"


# -- metadata and sample inputs --------------------------------------------------------------
def model_metadata(model: ShuffleNetBase) -> dict[str, Any]:
    """What an exported file records about ``model`` (JSON-ready values).

    A model from :func:`shufflenet.load` keeps its file's metadata; a fresh
    :func:`shufflenet.create_model` one gets its architecture's default preprocessing.
    """
    loaded = dict(getattr(model, "weights_metadata", None) or {})
    config = loaded.get("model_config") or getattr(model, "model_config", None)
    if not config:
        raise ValueError("cannot export a model without model_config: use shufflenet.create_model")
    preprocessing = loaded.get("preprocessing")
    if preprocessing is None:
        preprocessing = asdict(get_model_info(config["name"]).preprocessing)
    return {
        **loaded,
        "format": FORMAT,
        "model_config": config,
        "num_classes": model.num_classes,
        "class_names": loaded.get("class_names"),
        "preprocessing": preprocessing,
    }


def _input_size(metadata: dict[str, Any], input_size: Sequence[int] | None) -> tuple[int, int]:
    size = input_size if input_size is not None else metadata["preprocessing"]["input_size"]
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 32:
        raise ValueError(f"input size must be at least 32x32, got {height}x{width}")
    return int(height), int(width)


def sample_inputs(
    batch: int,
    in_chans: int,
    preprocessing: dict[str, Any],
    input_size: Sequence[int] | None = None,
    seed: int = 0,
) -> Tensor:
    """Random uint8 pixels through ``preprocessing``'s scale and normalisation (float32, NCHW)."""
    height, width = _input_size({"preprocessing": preprocessing}, input_size)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, in_chans, height, width), generator=g).float()
    mean = torch.tensor(preprocessing.get("mean", (0.0,)), dtype=torch.float32)
    std = torch.tensor(preprocessing.get("std", (1.0,)), dtype=torch.float32)
    if mean.numel() != in_chans:
        mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
    scaled = pixels * float(preprocessing.get("scale", 1.0))
    return (scaled - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def _graph_form(model: nn.Module, input_size: tuple[int, int] | None = None) -> nn.Module:
    """BatchNorms folded, shuffles static: gathers, or reshapes fixed to ``input_size``."""
    return static_shuffles(fuse_bn(model), input_size)


# -- verification ---------------------------------------------------------------------------
def _compare(
    model: nn.Module,
    run: Any,
    engine: str,
    batch_sizes: Sequence[int],
    metadata: dict[str, Any],
    input_size: Sequence[int] | None,
    tolerance: float,
) -> Verification:
    model = model.eval()
    in_chans = int(metadata["model_config"].get("in_chans", 3))
    pairs = []
    for i, batch in enumerate(batch_sizes):
        x = sample_inputs(batch, in_chans, metadata["preprocessing"], input_size, seed=i)
        with torch.no_grad():
            expected = model(x).numpy()
        pairs.append((np.asarray(run(x)), expected))
    return compare_outputs(engine, pairs, batch_sizes, tolerance)


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

    return _compare(model, run, "onnxruntime", batch_sizes, metadata, (height, width), tolerance)


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

    return _compare(model, run, "openvino", batch_sizes, metadata, (height, width), tolerance)


def verify_torchscript(
    path: str | os.PathLike[str],
    model: ShuffleNetBase,
    batch_sizes: Sequence[int] = (1, 3),
    input_size: Sequence[int] | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Load ``path`` with ``torch.jit.load`` and compare it with ``model``."""
    files = {TORCHSCRIPT_METADATA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    metadata = json.loads(files[TORCHSCRIPT_METADATA])

    def run(x: Tensor) -> Any:
        with torch.no_grad():
            return scripted(x).numpy()

    return _compare(model, run, "torchscript", batch_sizes, metadata, input_size, tolerance)


# -- ONNX -------------------------------------------------------------------------------------
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
    BatchNorm-folded graph. The metadata entry ``graph`` says which one was written.
    """
    import onnx

    if opset not in OPSETS:
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or dynamic, got {batch}")
    metadata = model_metadata(model)
    x = sample_inputs(batch or 1, model.in_chans, metadata["preprocessing"], input_size)
    output = "logits" if model.num_classes else "features"
    plain_reason = "not requested" if fastpath is None else fastpath_support(model)
    if plain_reason is None:
        graph = fast_model(model, fastpath)  # type: ignore[arg-type]
        metadata["graph"] = f"shuffle-free (shufflenet.deploy.fastpath, {fastpath})"
    else:
        graph = _graph_form(model, (x.shape[2], x.shape[3]))
        metadata["graph"] = f"plain BN-folded (no fast path: {plain_reason})"
    data = to_onnx(graph, x, opset=opset, dynamic_batch=not batch, output_name=output)
    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
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


def read_onnx_metadata(model: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The shufflenet metadata of an ONNX file (or its bytes), JSON values decoded."""
    import onnx

    label = "the ONNX data" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise FileNotFoundError(f"no such ONNX file: {label}")
    try:
        if isinstance(model, bytes):
            proto = onnx.load_from_string(model)
        else:
            proto = onnx.load(label, load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError types for garbage
        raise ValueError(f"{label} is not a readable ONNX file ({e})") from None
    raw = {p.key: p.value for p in proto.metadata_props}
    if raw.get("format") != json.dumps(FORMAT) or "preprocessing" not in raw:
        raise ValueError(
            f"{label} has no shufflenet metadata (preprocessing, class names): "
            "export it with `shufflenet export`"
        )
    return {key: json.loads(value) for key, value in raw.items()}


# -- TorchScript ------------------------------------------------------------------------------
def export_torchscript(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int] | None = None,
) -> Path:
    """Trace the BN-folded, static-shuffle copy of ``model``; any batch size runs."""
    metadata = model_metadata(model)
    x = sample_inputs(1, model.in_chans, metadata["preprocessing"], input_size)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice, TracerWarnings
        traced = torch.jit.trace(_graph_form(model), (x,), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return Path(path)


# -- ncnn (through pnnx) ------------------------------------------------------------------------
def _ncnn_paths(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    param = Path(path)
    if param.suffix != ".param":
        raise ValueError(f"an ncnn export is FILE.param (weights go to FILE.bin), got {param}")
    return param, param.with_suffix(".bin"), param.with_suffix(".json")


def export_ncnn(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int] | None = None,
) -> list[Path]:
    """Convert ``model`` to ncnn with pnnx: ``FILE.param``, ``FILE.bin`` and ``FILE.json``.

    pnnx reads a TorchScript trace of the BN-folded model (it turns the reshape/transpose
    shuffles into ncnn layers itself); weights stay fp32.
    """
    try:
        import pnnx
    except ImportError:
        raise ValueError("ncnn export needs pnnx and ncnn: pip install pnnx ncnn") from None
    param, weights, sidecar = _ncnn_paths(path)
    metadata = model_metadata(model)
    x = sample_inputs(1, model.in_chans, metadata["preprocessing"], input_size)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(fuse_bn(model), (x,), check_trace=False)
        traced.save(os.path.join(tmp, "model.pt"))
        shape = ",".join(map(str, x.shape))
        outputs = {
            "ncnnparam": "model.ncnn.param",
            "ncnnbin": "model.ncnn.bin",
            "ncnnpy": "model_ncnn.py",
            "pnnxparam": "model.pnnx.param",
            "pnnxbin": "model.pnnx.bin",
            "pnnxpy": "model_pnnx.py",
            "pnnxonnx": "model.pnnx.onnx",
        }
        command = [pnnx.EXEC_PATH, "model.pt", f"inputshape=[{shape}]f32", "fp16=0"]
        command += [f"{key}={value}" for key, value in outputs.items()]
        proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
        made = [Path(tmp, outputs["ncnnparam"]), Path(tmp, outputs["ncnnbin"])]
        if proc.returncode != 0 or not all(p.is_file() for p in made):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise ValueError(f"pnnx failed (exit {proc.returncode}): {' | '.join(tail)}")
        for source, target in zip(made, (param, weights), strict=True):
            with atomic_path(target) as out:
                shutil.copyfile(source, out)
    write_json(sidecar, {**metadata, "input_size": list(x.shape[2:])})
    return [param, weights, sidecar]


def verify_ncnn(
    path: str | os.PathLike[str],
    model: ShuffleNetBase,
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Run the ncnn files in ncnn (fp32 arithmetic, one image) and compare with ``model``."""
    try:
        import ncnn
    except ImportError:
        raise ValueError("verifying an ncnn export needs ncnn: pip install ncnn") from None
    param, weights, sidecar = _ncnn_paths(path)
    metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    net = ncnn.Net()
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
        setattr(net.opt, option, False)
    net.opt.use_bf16_storage = False
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ValueError(f"ncnn cannot load {param} / {weights}")

    def run(x: Tensor) -> Any:
        extractor = net.create_extractor()
        extractor.input("in0", ncnn.Mat(x[0].numpy()).clone())
        _, out = extractor.extract("out0")
        return np.array(out)[None]

    try:
        return _compare(model, run, "ncnn", (1,), metadata, metadata["input_size"], tolerance)
    finally:
        net.clear()


# -- one call: export and verify ----------------------------------------------------------------
@dataclass
class ExportResult:
    """The files written and how they compare with PyTorch, in each runtime that checked them."""

    format: str
    files: list[Path]
    verifications: list[Verification]

    @property
    def verification(self) -> Verification:
        """The check in the format's own runtime (ONNX Runtime for ONNX)."""
        return self.verifications[0]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.verifications)


def export_model(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    fastpath: FastPathOptions | None = ONNXRUNTIME,
) -> ExportResult:
    """Export ``model`` to ``path`` in ``format`` and verify the file against PyTorch.

    An ONNX file is run in ONNX Runtime and, when it is installed, in OpenVINO too. The file is
    kept even if a check fails (``result.passed`` is False), so that it can be inspected.
    ``fastpath`` is the ONNX graph layout (see :func:`onnx_bytes`).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    model = model.eval()
    batch_sizes = (1, 3) if batch is None else (batch,)
    if format == "onnx":
        files = [
            export_onnx(
                model, path, opset=opset, batch=batch, input_size=input_size, fastpath=fastpath
            )
        ]
        checks = [verify_onnx(path, model, batch_sizes)]
        if has_openvino():
            checks.append(verify_openvino(path, model, batch_sizes))
    elif format == "torchscript":
        files = [export_torchscript(model, path, input_size=input_size)]
        checks = [verify_torchscript(path, model, batch_sizes, input_size)]
    else:
        files = export_ncnn(model, path, input_size=input_size)
        checks = [verify_ncnn(path, model)]
    return ExportResult(format, files, checks)


# -- int8 ---------------------------------------------------------------------------------------
def calibration_data(
    calib: str, preprocessing: dict[str, Any], max_images: int = 256
) -> tuple[Tensor, Tensor, Tensor]:
    """(calibration images, evaluation images, evaluation labels) through ``preprocessing``.

    ``calib`` is ``"digits"`` (calibrate on the train split, evaluate on the val split) or an
    image folder: ``ROOT/train`` and ``ROOT/val``, or one folder of class folders used for both.
    At most ``max_images`` calibration images, spread evenly over the set.
    """
    from .. import data

    transform = data.build_eval_transform(preprocessing)
    root = Path(calib)
    calib_set: Any
    eval_set: Any
    if calib == data.DIGITS:
        calib_set, eval_set = data.digits_datasets(transform, transform)
    elif (root / "train").is_dir() and (root / "val").is_dir():
        calib_set, eval_set, _ = data.folder_datasets(root, transform, transform)
    else:
        eval_set, _, _ = data.load_eval_data(calib, preprocessing)
        calib_set = eval_set
    count = len(calib_set)
    picks = np.linspace(0, count - 1, min(count, max_images)).round().astype(int)
    calib_images = torch.stack([calib_set[int(i)][0] for i in dict.fromkeys(picks)])
    items = [eval_set[i] for i in range(len(eval_set))]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    return calib_images, images, labels


def _batches(images: Tensor, size: int, fixed: bool) -> list[np.ndarray]:
    """``images`` in batches of ``size``; a ``fixed`` batch axis drops a short last batch."""
    chunks = [images[i : i + size].numpy() for i in range(0, len(images), size)]
    return [c for c in chunks if len(c) == size or not fixed]


def _reader(chunks: list[np.ndarray]) -> Any:
    """An ONNX Runtime calibration reader that feeds ``chunks`` to the input named "input"."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self.batches, None)
            return None if chunk is None else {"input": chunk}

    return Reader()


def _batch_axis(session: Any, default: int) -> tuple[int, bool]:
    dim = session.get_inputs()[0].shape[0]
    return (dim, True) if isinstance(dim, int) else (default, False)


# x86 CPU flags of the instructions that multiply uint8 by int8 into 32-bit sums without saturating.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def default_int8_weights(
    machine: str | None = None, cpu_flags: frozenset[str] | None = None
) -> str:
    """The int8 weight type that keeps ONNX Runtime exact on this CPU: ``int8`` or ``uint8``.

    uint8 activations times int8 weights (U8S8) is ONNX Runtime's fast pairing, but on x86 CPUs
    without VNNI its AVX2/AVX-512 kernels add pairs of products in 16 bits (``vpmaddubsw``), which
    saturate; ONNX Runtime's quantization guide recommends U8U8 there. ``int8`` on ARM and on
    x86 with VNNI (or AMX); ``uint8`` on other x86 CPUs, and where the flags cannot be read.
    Arguments default to this machine.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "int8"
    flags = cpu.cpu_flags() if cpu_flags is None else cpu_flags
    return "int8" if flags is not None and flags & VNNI_FLAGS else "uint8"


def quantize_int8(
    model: ShuffleNetBase,
    out_path: str | os.PathLike[str],
    calibration: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    batch_size: int = 16,
    fastpath: FastPathOptions | None = None,
    activations: str = "uint8",
    weights: str = "auto",
) -> Path:
    """Post-training static int8 ONNX of ``model``: QDQ, 8-bit weights with one scale per output
    channel, uint8 (or int8) activations with min/max ranges from ``calibration`` images.

    ``weights`` is ``int8``, ``uint8`` or ``auto`` (:func:`default_int8_weights` for this CPU:
    U8S8 where ONNX Runtime computes it without saturating, U8U8 elsewhere). ``fastpath`` picks
    the fp32 graph to quantize (see :func:`onnx_bytes`); the default is the plain BN-folded one,
    whose tensors :func:`int8_layer_errors` reports on (the shuffle-free one measured 0.93x of
    fp32 against the plain one's 0.88x on an AVX2 CPU without VNNI). The file carries the
    model's metadata plus a ``quantization`` entry.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if opset < 13:
        raise ValueError("per-channel int8 needs opset 13 or newer: export with --opset 13+")
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activations not in types:
        raise ValueError(f"activations must be uint8 or int8, got {activations!r}")
    if weights == "auto":
        weights = default_int8_weights()
    if weights not in types:
        raise ValueError(f"weights must be auto, int8 or uint8, got {weights!r}")
    fp32 = onnx_bytes(model, opset=opset, batch=batch, input_size=input_size, fastpath=fastpath)
    metadata = read_onnx_metadata(fp32)
    chunks = _batches(calibration, batch or batch_size, batch is not None)
    if not chunks:
        raise ValueError(f"{len(calibration)} calibration images make no batch of {batch}")

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp, f) for f in ("fp32", "prepared", "int8"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _reader(chunks),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=types[activations],
            weight_type=types[weights],
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(quantized))
    _uniform_weight_zero_points(proto)
    metadata["quantization"] = {
        "method": "onnxruntime static QDQ",
        "weights": f"{weights} per-channel",
        "activations": f"{activations} per-tensor, min/max calibration",
        "calibration_images": len(calibration),
    }
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
    onnx.checker.check_model(proto)
    with atomic_path(out_path) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return Path(out_path)


def _uniform_weight_zero_points(proto: Any) -> None:
    """Give the all-zero channels of per-channel uint8 weights the zero point of the others
    (where the others share one).

    Zero-padded channels (the shuffle-free graph has many) quantize to weights equal to their
    zero point 0 while the other channels get 128, and ONNX Runtime runs convolutions with
    mixed weight zero points on a slow path (7x slower here). Such a channel dequantizes to
    zeros with any zero point, so moving it to the common one is exact.
    """
    from onnx import TensorProto, numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight, zero = inits.get(node.input[0]), inits.get(node.input[2])
        if weight is None or zero is None or zero.data_type != TensorProto.UINT8:
            continue
        zp = numpy_helper.to_array(zero).copy()
        if zp.size < 2 or (zp == zp[0]).all():
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        channels = np.moveaxis(numpy_helper.to_array(weight), axis, 0).copy()  # C order
        lanes = channels.reshape(len(zp), -1)  # a view: edits reach ``channels``
        zeros = (lanes == zp[:, None]).all(1)  # channels whose weights are all exactly zero
        used = np.unique(zp[~zeros])
        if len(used) != 1:
            continue
        lanes[zeros], zp[zeros] = used[0], used[0]
        q = np.moveaxis(channels, 0, axis)
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q), weight.name))
        zero.CopyFrom(numpy_helper.from_array(zp, zero.name))


@dataclass
class Int8Report:
    """What int8 costs and gains next to fp32, on the same images and machine."""

    fp32_bytes: int
    int8_bytes: int
    fp32_ms: float
    int8_ms: float
    images: int
    agreement: float
    fp32_top1: float | None
    int8_top1: float | None
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _latency_ms(session: Any, name: str, x: np.ndarray, runs: int) -> float:
    for _ in range(max(3, runs // 10)):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def compare_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    images: Tensor,
    labels: Tensor | None = None,
    *,
    runs: int = 50,
    threads: int = 1,
) -> Int8Report:
    """Top-1 agreement of the two files on ``images``, their sizes and batch-1 latency.

    Latency is the median of ``runs`` single-image runs with ``threads`` intra-op threads.
    """
    sessions = [ort_session(fp32_path, threads), ort_session(int8_path, threads)]
    name = sessions[0].get_inputs()[0].name
    size, fixed = _batch_axis(sessions[0], 32)
    batches = _batches(images, size, fixed)
    preds = [
        np.concatenate([s.run(None, {name: b})[0] for b in batches]).argmax(1) for s in sessions
    ]
    n = len(preds[0])
    one = batches[0][:size] if fixed else batches[0][:1]
    latencies: list[list[float]] = [[], []]
    for _ in range(3):  # alternate so that both see the same machine load
        for i, session in enumerate(sessions):
            latencies[i].append(_latency_ms(session, name, one, runs // 3 + 1))
    top1 = [None if labels is None else float((p == labels[:n].numpy()).mean()) for p in preds]
    return Int8Report(
        fp32_bytes=os.path.getsize(fp32_path),
        int8_bytes=os.path.getsize(int8_path),
        fp32_ms=float(np.median(latencies[0])),
        int8_ms=float(np.median(latencies[1])),
        images=n,
        agreement=float((preds[0] == preds[1]).mean()),
        fp32_top1=top1[0],
        int8_top1=top1[1],
        threads=threads,
    )


@dataclass
class LayerError:
    """How far one activation of the int8 model is from fp32: signal-to-noise ratio in dB."""

    tensor: str
    kind: str
    sqnr_db: float


def _producer_kinds(proto: Any) -> dict[str, str]:
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
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    fp32 = onnx_bytes(model, opset=opset, batch=batch, input_size=input_size, fastpath=None)
    grids = _activation_grids(onnx.load(str(int8_path)))
    with tempfile.TemporaryDirectory() as tmp:
        plain, augmented = Path(tmp, "fp32.onnx"), Path(tmp, "fp32_all.onnx")
        plain.write_bytes(fp32)
        modify_model_output_intermediate_tensors(str(plain), str(augmented))
        chunks = _batches(images, batch or 16, batch is not None)[:2]
        activations = collect_activations(str(augmented), _reader(chunks))
    kinds = _producer_kinds(onnx.load_from_string(fp32))
    kinds["input"] = "input"
    rows = [
        LayerError(tensor, kinds[tensor], _grid_sqnr(np.concatenate(activations[tensor]), *grid))
        for tensor, grid in grids.items()
        if tensor in activations and tensor in kinds
    ]
    return sorted(rows, key=lambda row: row.sqnr_db)
