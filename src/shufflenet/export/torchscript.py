"""TorchScript export: a trace of the BatchNorm-folded, static-shuffle model that runs any batch
size, with the metadata as ``shufflenet.json`` inside the archive."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..deploy import fuse_bn, static_shuffles
from ..io import atomic_path
from ..models.base import ShuffleNetBase
from ..verification import FP32_TOLERANCE, Verification
from ..weights import validate_metadata
from .check import compare_with_model
from .metadata import model_metadata, sample_inputs
from .spec import ExportFormat, ExportOptions

__all__ = ["TORCHSCRIPT", "TORCHSCRIPT_METADATA", "export_torchscript", "verify_torchscript"]

TORCHSCRIPT_METADATA = "shufflenet.json"


def export_torchscript(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int] | None = None,
) -> Path:
    """Trace the BN-folded, static-shuffle copy of ``model``; any batch size runs."""
    metadata = model_metadata(model, input_size)
    x = sample_inputs(1, model.in_chans, metadata["preprocessing"])
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice, TracerWarnings
        traced = torch.jit.trace(static_shuffles(fuse_bn(model)), (x,), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return Path(path)


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
    metadata = validate_metadata(json.loads(files[TORCHSCRIPT_METADATA]), path)

    def run(x: Tensor) -> Any:
        with torch.no_grad():
            return scripted(x).numpy()

    return compare_with_model(
        model, run, "torchscript", batch_sizes, metadata, input_size, tolerance
    )


def _export(model: ShuffleNetBase, path: Path, options: ExportOptions) -> list[Path]:
    return [export_torchscript(model, path, input_size=options.input_size)]


def _verify(path: Path, model: ShuffleNetBase, options: ExportOptions) -> list[Verification]:
    return [verify_torchscript(path, model, options.batch_sizes, options.input_size)]


TORCHSCRIPT = ExportFormat(
    "TorchScript, checked with torch.jit.load", _export, _verify, suffixes=(".pt", ".ts")
)
