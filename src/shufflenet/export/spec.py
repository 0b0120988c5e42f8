"""What an export format provides, as one entry of :data:`shufflenet.export.FORMATS`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..deploy.fastpath import FastPathOptions
from ..models.base import ShuffleNetBase
from ..verification import Verification
from .int8_options import Int8Options
from .runtime import Runtime

__all__ = ["ExportFormat", "ExportOptions"]


@dataclass(frozen=True)
class ExportOptions:
    """The options of one :func:`~shufflenet.export.export_model` call; a format reads the ones
    it supports (ONNX all, TorchScript and ncnn ``input_size``; the fixed-batch formats ``batch``
    (fixed, 1 for None), ``input_size`` and whether ``fastpath`` is None (the plain graph), each
    with its runtime's shuffle-free layout otherwise)."""

    opset: int
    batch: int | None  # None: a dynamic batch axis
    input_size: Sequence[int] | None  # None: the model's preprocessing's
    fastpath: FastPathOptions | None  # the ONNX graph layout, None for the plain graph
    int8_weights: str = "auto"  # the int8 weight type, where the format's int8 has a choice
    int8: Int8Options = field(default_factory=Int8Options)  # calibration, float layers

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a file is verified at: 1 and 3 for a dynamic batch axis."""
        return (1, 3) if self.batch is None else (self.batch,)


def _int8_weights_are_int8(options: ExportOptions) -> None:
    if options.int8_weights != "auto":
        raise ValueError(
            f"int8_weights must be auto for this format, which quantizes weights to int8; got "
            f"{options.int8_weights!r}"
        )


# Writes the int8 file beside the fp32 one and measures it: (model, fp32 path, calib, options,
# calibration data or None) -> an :class:`~shufflenet.export.Int8Result`.
Quantize = Callable[
    [ShuffleNetBase, Path, str, ExportOptions, tuple[Tensor, Tensor, Tensor] | None], Any
]


@dataclass(frozen=True)
class ExportFormat:
    """One export format: how to write it and how to check what was written.

    ``export(model, path, options)`` writes the files (the first one is ``path``) and returns
    them; ``verify(path, model, options)`` runs them next to ``model``, the format's own runtime
    first. ``quantize(model, path, calib, options, data)``, if the format has int8, writes the
    int8 file beside the fp32 one at ``path`` and returns an
    :class:`~shufflenet.export.Int8Result` (``data``: :func:`~shufflenet.export.calibration_data`
    of ``calib``, loaded already); ``check_int8(options)`` refuses options its int8 does not
    take, before any work. ``files(path)`` lists every file an export to ``path`` writes,
    ``int8_files(path)`` those its int8 export adds. ``suffixes`` are the file suffixes its
    ``path`` may end in, lower case, the first the usual one (empty: any). ``runtime`` runs its
    files for ``predict`` and the bench (None: neither runs them).
    """

    description: str  # one line, for ``shufflenet export --help``
    export: Callable[[ShuffleNetBase, Path, ExportOptions], list[Path]]
    verify: Callable[[Path, ShuffleNetBase, ExportOptions], list[Verification]]
    files: Callable[[Path], list[Path]] = lambda path: [path]
    quantize: Quantize | None = None
    check_int8: Callable[[ExportOptions], None] = _int8_weights_are_int8
    int8_files: Callable[[Path], list[Path]] = lambda path: []
    suffixes: tuple[str, ...] = ()
    runtime: Runtime | None = None

    @property
    def int8(self) -> bool:
        """Whether the format has an int8 export."""
        return self.quantize is not None
