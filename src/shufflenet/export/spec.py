"""What an export format provides, as one entry of :data:`shufflenet.export.FORMATS`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..deploy.fastpath import FastPathOptions
from ..models.base import ShuffleNetBase
from ..verification import Verification

__all__ = ["ExportFormat", "ExportOptions"]


@dataclass(frozen=True)
class ExportOptions:
    """The options of one :func:`~shufflenet.export.export_model` call; a format reads the ones
    it supports (ONNX all, TorchScript and ncnn ``input_size``; LiteRT, ExecuTorch and MNN
    ``batch`` (fixed, 1 for None), ``input_size`` and whether ``fastpath`` is None (the plain
    graph), each with its own shuffle-free layout otherwise)."""

    opset: int
    batch: int | None  # None: a dynamic batch axis
    input_size: Sequence[int] | None  # None: the model's preprocessing's
    fastpath: FastPathOptions | None  # the ONNX graph layout, None for the plain graph

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a file is verified at: 1 and 3 for a dynamic batch axis."""
        return (1, 3) if self.batch is None else (self.batch,)


@dataclass(frozen=True)
class ExportFormat:
    """One export format: how to write it and how to check what was written.

    ``export(model, path, options)`` writes the files (the first one is ``path``) and returns
    them; ``verify(path, model, options)`` runs them next to ``model``, the format's own runtime
    first. ``int8`` says whether the format has an int8 export: ONNX's is
    :func:`~shufflenet.export.export_int8`, another format's is ``quantize(model, path, calib,
    options, data)``, which writes the int8 file beside the fp32 one at ``path`` and returns an
    :class:`~shufflenet.export.Int8Result` (``data``: :func:`~shufflenet.export.calibration_data`
    of ``calib``, loaded already). ``files(path)`` lists every file an export to ``path``
    writes, ``int8_files(path)`` those its int8 export adds (None: ONNX's ``FILE.int8.onnx``).
    ``suffixes`` are the file suffixes its ``path`` may end in, lower case, the first the usual
    one (empty: any).
    """

    description: str  # one line, for ``shufflenet export --help``
    export: Callable[[ShuffleNetBase, Path, ExportOptions], list[Path]]
    verify: Callable[[Path, ShuffleNetBase, ExportOptions], list[Verification]]
    int8: bool = False
    files: Callable[[Path], list[Path]] = lambda path: [path]
    quantize: (
        Callable[
            [ShuffleNetBase, Path, str, ExportOptions, tuple[Tensor, Tensor, Tensor] | None], Any
        ]
        | None
    ) = None
    int8_files: Callable[[Path], list[Path]] | None = None
    suffixes: tuple[str, ...] = ()
