"""ncnn export through pnnx: ``FILE.param``, ``FILE.bin`` and the metadata in ``FILE.json``,
verified in ncnn itself (this is the one module that imports ncnn)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..deploy import fuse_bn
from ..io import atomic_path, write_json
from ..models.base import ShuffleNetBase
from ..runtimes import Extra, require
from ..verification import FP32_TOLERANCE, Verification
from ..weights import validate_metadata
from .check import compare_with_model
from .metadata import model_metadata, sample_inputs
from .spec import ExportFormat, ExportOptions

__all__ = ["NCNN", "NCNN_EXTRA", "export_ncnn", "verify_ncnn"]

NCNN_EXTRA = Extra("ncnn", "pnnx and ncnn", "ncnn", "ncnn")


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
    pnnx = require(NCNN_EXTRA, "ncnn export", "pnnx")
    param, weights, sidecar = _ncnn_paths(path)
    metadata = model_metadata(model, input_size)
    x = sample_inputs(1, model.in_chans, metadata["preprocessing"])
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
    ncnn = require(NCNN_EXTRA, "verifying an ncnn export")
    param, weights, sidecar = _ncnn_paths(path)
    metadata = validate_metadata(json.loads(sidecar.read_text(encoding="utf-8")), sidecar)
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
        return compare_with_model(
            model, run, "ncnn", (1,), metadata, metadata["input_size"], tolerance
        )
    finally:
        net.clear()


def _export(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
    return export_ncnn(model, path, input_size=options.input_size)


def _verify(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
    return [verify_ncnn(path, model)]


NCNN = ExportFormat(
    "ncnn via pnnx (FILE.param, FILE.bin), checked in ncnn",
    _export,
    _verify,
    files=lambda path: list(_ncnn_paths(path)),
    suffixes=(".param",),
)
