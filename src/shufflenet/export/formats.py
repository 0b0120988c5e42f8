"""The export formats, one table: :data:`FORMATS` (name -> exporter and verifier), and
:func:`export_model`, which writes a format, verifies it and, for ONNX, LiteRT, ExecuTorch and
MNN, can add int8.

Adding a format is one module with its exporter and verifier and an :class:`ExportFormat`
entry, plus its row here; the CLI reads its ``--format`` choices from this table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..deploy.fastpath import ONNXRUNTIME, FastPathOptions
from ..models.base import ShuffleNetBase
from ..verification import Verification
from .calibration import model_calibration_data
from .executorch import EXECUTORCH
from .int8 import Int8Result, export_int8, int8_path, int8_types
from .litert import LITERT
from .mnn import MNN
from .ncnn import NCNN
from .onnx import DEFAULT_OPSET, ONNX
from .spec import ExportFormat, ExportOptions
from .torchscript import TORCHSCRIPT

__all__ = [
    "DEFAULT_INT8_MIN_AGREEMENT",
    "FORMATS",
    "ExportResult",
    "check_suffix",
    "export_model",
    "output_files",
]

# The least top-1 agreement of an int8 file with its fp32 one for an export to pass. Models
# trained on digits agree 99.7% in ONNX, about 99% in LiteRT and ExecuTorch and about 89% in
# MNN; a file that changes the class of one image in five is no longer the same classifier.
DEFAULT_INT8_MIN_AGREEMENT = 0.8

FORMATS: dict[str, ExportFormat] = {
    "onnx": ONNX,
    "torchscript": TORCHSCRIPT,
    "ncnn": NCNN,
    "litert": LITERT,
    "executorch": EXECUTORCH,
    "mnn": MNN,
}


def _format(format: str) -> ExportFormat:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return FORMATS[format]


def check_suffix(path: str | os.PathLike[str], format: str) -> Path:
    """``path``, if its suffix is one that ``format`` writes (any case); else a ``ValueError``
    naming the suffixes it may have."""
    spec = _format(format)
    target = Path(path)
    if spec.suffixes and target.suffix.lower() not in spec.suffixes:
        expected = " or ".join(spec.suffixes)
        raise ValueError(f"a {format} export must be named FILE{expected}, got {target}")
    return target


def output_files(path: str | os.PathLike[str], format: str, int8: bool = False) -> list[Path]:
    """Every file an export of ``format`` to ``path`` writes (with ``int8``: the int8 file too);
    a ``ValueError`` if ``path`` does not end in a suffix of ``format``."""
    spec = _format(format)
    files = spec.files(check_suffix(path, format))
    if not int8:
        return files
    return [*files, *(spec.int8_files(Path(path)) if spec.int8_files else [int8_path(path)])]


@dataclass
class ExportResult:
    """The files written and how they compare with PyTorch, in each runtime that checked them;
    with ``calib``, the int8 file and what it costs."""

    format: str
    files: list[Path]
    verifications: list[Verification]
    int8: Int8Result | None = None

    @property
    def verification(self) -> Verification:
        """The check in the format's own runtime (ONNX Runtime for ONNX)."""
        return self.verifications[0]

    @property
    def verified(self) -> bool:
        """Whether every runtime's check against PyTorch passed."""
        return all(check.passed for check in self.verifications)

    @property
    def passed(self) -> bool:
        """Whether every check passed and the int8 file, if any, agrees with fp32 at least as
        often as its ``min_agreement``."""
        return self.verified and (self.int8 is None or self.int8.passed)


def export_model(
    model: ShuffleNetBase,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: Sequence[int] | None = None,
    fastpath: FastPathOptions | None = ONNXRUNTIME,
    calib: str | None = None,
    int8_weights: str = "auto",
    int8_min_agreement: float = DEFAULT_INT8_MIN_AGREEMENT,
) -> ExportResult:
    """Export ``model`` to ``path`` in ``format`` and verify the file against PyTorch.

    ``path`` ends in one of the format's suffixes (``FORMATS[format].suffixes``: ``.onnx``,
    ``.pt`` or ``.ts``, ``.param``, ``.tflite``, ``.pte``, ``.mnn``). An ONNX file is run in
    ONNX Runtime and, when it is installed, in OpenVINO too. The file is kept even if a check
    fails (``result.passed`` is False), so that it can be inspected.
    ``fastpath`` is the ONNX graph layout (see :func:`~shufflenet.export.onnx_bytes`); other
    formats read None as the plain graph, and use their own layout otherwise. With ``calib``
    (``"digits"`` or an image folder), a file that passed is also quantized to int8:
    ``result.int8`` (ONNX with ``int8_weights``, :func:`~shufflenet.export.export_int8`;
    another format by its own ``quantize``). Its top-1 agreement with fp32 on ``calib``'s
    evaluation images (labelled by the model's class names) must reach ``int8_min_agreement``
    (a fraction, 0..1) for ``result.passed``; the int8 file is kept either way.
    """
    spec = _format(format)
    check_suffix(path, format)
    if not (isinstance(int8_min_agreement, (int, float)) and 0 <= int8_min_agreement <= 1):
        raise ValueError(
            f"int8_min_agreement must be a fraction within 0..1, got {int8_min_agreement!r}"
        )
    calibration = None
    if calib is not None:  # int8: checked, and its images loaded, before any file is written
        if not spec.int8:
            int8_formats = ", ".join(name for name, f in FORMATS.items() if f.int8)
            raise ValueError(f"calib (int8) needs format {int8_formats}, got {format!r}")
        if spec.quantize is None:
            int8_types(opset, "uint8", int8_weights)
        elif int8_weights != "auto":
            raise ValueError(f"int8_weights is ONNX's choice; {format} quantizes weights to int8")
        calibration = model_calibration_data(model, calib, input_size)
    model = model.eval()
    options = ExportOptions(opset, batch, input_size, fastpath)
    files = spec.export(model, Path(path), options)
    result = ExportResult(format, files, spec.verify(Path(path), model, options))
    if calib is not None and result.verified and spec.quantize is not None:
        result.int8 = spec.quantize(model, Path(path), calib, options, calibration)
    elif calib is not None and result.verified:
        plain = Path(path).read_bytes() if fastpath is None else None
        result.int8 = export_int8(
            model,
            path,
            calib,
            opset=opset,
            batch=batch,
            input_size=input_size,
            weights=int8_weights,
            plain=plain,
            data=calibration,
        )
    if result.int8 is not None:
        result.int8.min_agreement = float(int8_min_agreement)
    return result
