"""The export formats, one table: :data:`FORMATS` (name -> exporter, verifier, int8 and the
runtime that runs the files), :data:`RUNTIMES` (those runtimes by name), and
:func:`export_model`, which writes a format, verifies it and, where the format has it, adds int8.

Adding a format is one module with its :class:`ExportFormat` (and its
:class:`~shufflenet.export.runtime.Runtime`, if one runs its files), plus its row here; the
CLI, ``predict`` and the bench read their choices from these tables.
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
from .int8_options import Int8Options, resolve_float_layers
from .int8_report import Int8Result
from .litert import LITERT
from .mnn import MNN
from .ncnn import NCNN
from .onnx import DEFAULT_OPSET
from .onnx_format import ONNX
from .runtime import Runtime
from .spec import ExportFormat, ExportOptions
from .torchscript import TORCHSCRIPT

__all__ = [
    "DEFAULT_INT8_MIN_AGREEMENT",
    "FORMATS",
    "RUNTIMES",
    "ExportResult",
    "check_suffix",
    "export_model",
    "format_of",
    "output_files",
]

# The least top-1 agreement of an int8 file with its fp32 one for an export to pass: a file
# that changes the class of one image in five is no longer the same classifier (the README
# lists what each format's int8 keeps).
DEFAULT_INT8_MIN_AGREEMENT = 0.8

FORMATS: dict[str, ExportFormat] = {
    "onnx": ONNX,
    "torchscript": TORCHSCRIPT,
    "ncnn": NCNN,
    "litert": LITERT,
    "executorch": EXECUTORCH,
    "mnn": MNN,
}


# The runtime of each format whose files something runs, by its name (predict's and the bench's
# engine name).
RUNTIMES: dict[str, Runtime] = {
    spec.runtime.name: spec.runtime for spec in FORMATS.values() if spec.runtime is not None
}


def format_of(path: str | os.PathLike[str]) -> str | None:
    """The format whose runtime runs ``path``, by its suffix (any case); None for any other."""
    suffix = Path(path).suffix.lower()
    return next(
        (name for name, spec in FORMATS.items() if spec.runtime and suffix in spec.suffixes),
        None,
    )


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
    return [*files, *spec.int8_files(Path(path))] if int8 else files


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
    int8: Int8Options | None = None,
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
    (a fraction, 0..1) for ``result.passed``; the int8 file is kept either way. ``int8``
    chooses the calibration method, the number of calibration images, per-channel weights and
    the layers kept in float (:class:`~shufflenet.export.Int8Options`; None: the defaults).
    """
    spec = _format(format)
    check_suffix(path, format)
    if not (isinstance(int8_min_agreement, (int, float)) and 0 <= int8_min_agreement <= 1):
        raise ValueError(
            f"int8_min_agreement must be a fraction within 0..1, got {int8_min_agreement!r}"
        )
    options = ExportOptions(opset, batch, input_size, fastpath, int8_weights, int8 or Int8Options())
    calibration = None
    if calib is not None:  # int8: checked, and its images loaded, before any file is written
        if spec.quantize is None or spec.runtime is None:
            int8_formats = ", ".join(name for name, f in FORMATS.items() if f.int8)
            raise ValueError(f"calib (int8) needs format {int8_formats}, got {format!r}")
        spec.check_int8(options)
        checked = options.int8.checked(spec.runtime.name)
        resolve_float_layers(model, checked.float_layers or ())
        calibration = model_calibration_data(model, calib, input_size, checked.calib_images)
    model = model.eval()
    files = spec.export(model, Path(path), options)
    result = ExportResult(format, files, spec.verify(Path(path), model, options))
    if spec.quantize is not None and calib is not None and result.verified:
        result.int8 = spec.quantize(model, Path(path), calib, options, calibration)
        result.int8.min_agreement = float(int8_min_agreement)
    return result
