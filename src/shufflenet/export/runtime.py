"""A runtime that runs exported files: its record (:class:`Runtime`), which export verification,
``predict``, the bench and the CLI read, and what opening a file in it gives
(:class:`OpenedModel`).

A file takes float32 images in the layout its runtime reads (the runtime's ``input_layout``),
at a fixed batch size or any; :class:`OpenedModel` runs NCHW tensors of any number
through it, converting and splitting them into batches of that size, so that verification,
``predict`` and ``bench`` run the same code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor, nn

from ..deploy.fastpath import FastPathOptions
from ..io import read_regular
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..runtimes import Extra
from .onnx import export_graph

__all__ = [
    "LAYOUTS",
    "MAX_MODEL_BYTES",
    "Converter",
    "Loader",
    "OpenedModel",
    "Opener",
    "Runtime",
    "private_copy",
    "read_model_file",
]

LAYOUTS = ("NCHW", "NHWC")
# The largest exported file a runtime is given (V2.Large's fp32 files are the largest).
MAX_MODEL_BYTES = 1 << 31


@dataclass
class OpenedModel:
    """A file opened in its runtime.

    ``run`` takes one batch as the file does (float32, ``input_layout``; ``batch`` images where
    that is fixed) and returns the float32 outputs; :meth:`inputs` converts NCHW images to
    that, and calling the model runs NCHW images of any number (zero-padded to whole batches).
    ``metadata`` is the file's own, checked against its graph (empty for a file opened without
    it: the bench's conversions of any module).
    """

    engine: str  # the runtime's name: "onnxruntime", "litert", ...
    path: Path
    run: Callable[[np.ndarray], np.ndarray]
    input_layout: str = "NCHW"
    batch: int | None = None  # None: any batch size
    metadata: dict[str, Any] = field(default_factory=dict)
    # The runtime's objects that ``run`` needs alive (an ExecuTorch method does not keep its
    # program, whose memory it runs from: freeing it crashes the process).
    runtime: Any = None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the images the file takes, from its metadata."""
        return check_input_size(self.metadata["preprocessing"]["input_size"])

    def inputs(self, x: Tensor | np.ndarray) -> np.ndarray:
        """NCHW images as the file takes them: float32, C-contiguous, in its layout."""
        array = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        if self.input_layout == "NHWC":
            array = array.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Outputs for NCHW images ``x``, run in chunks of :attr:`batch` (the last padded), or
        at once where the file takes any batch."""
        array = self.inputs(x)
        if not len(array):
            raise ValueError("no images to run")
        if self.batch is None:
            return np.asarray(self.run(array), dtype=np.float32)
        outs = []
        for start in range(0, len(array), self.batch):
            chunk = array[start : start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(self.run(chunk), dtype=np.float32)[: len(chunk) - pad])
        return np.concatenate(outs)


class Opener(Protocol):
    """Opens an exported file in its runtime, its metadata checked against its graph; the file
    is first opened in a child process unless ``first_in_child`` is False (a file that export
    just wrote)."""

    def __call__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        *,
        first_in_child: bool = ...,
    ) -> OpenedModel: ...


# Opens any file of the runtime's format, without our metadata, on a device: (path, threads,
# device) -> OpenedModel. What the bench times its own conversions with.
Loader = Callable[[str | os.PathLike[str], int | None, str], OpenedModel]
# Converts any module taking NCHW images into a file the runtime runs at ``example``'s shape:
# (module, example, folder) -> the file written in ``folder``.
Converter = Callable[[nn.Module, Tensor, Path], Path]


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """One runtime that runs exported files, as every part of the library needs it.

    ``name`` is its engine name (``predict --engine``, ``bench --engines``); ``open`` opens an
    export with its metadata (verification, ``predict``); ``load`` opens any file of its format
    and ``convert`` makes one from any module (the bench, torchvision's models included); both
    run the same code, and read the whole file (it may be removed once opened). Its files take
    ``input_layout`` images, at a fixed batch size unless ``fixed_batch`` is False. ``layout``
    is the shuffle-free layout its files are made in and ``rewrite`` the graph rewrites that
    keep them whole in its kernels (:meth:`graph`). ``own_process``: timed in a process of its
    own on the CPU, whose threads ``share_threads`` sizes first where the runtime has one pool
    per process. ``open_model`` runs our weights in it through an in-memory export
    (``predict --engine NAME`` of a ``.safetensors`` file).
    """

    name: str
    package: str  # whose version identifies it (bench's machine record); found without import
    open: Opener
    load: Loader
    convert: Converter
    extra: Extra | None = None  # None: installed with shufflenet
    devices: tuple[str, ...] = ("cpu",)
    input_layout: str = "NCHW"
    fixed_batch: bool = True
    layout: FastPathOptions | None = None
    rewrite: Callable[[nn.Module, Tensor], nn.Module] | None = None
    own_process: bool = True
    share_threads: Callable[[int | None], None] | None = None
    open_model: Callable[[ShuffleNetBase, Path], OpenedModel] | None = None

    def graph(
        self, model: nn.Module, example: Tensor, layout: FastPathOptions | None
    ) -> tuple[nn.Module, str]:
        """The module a file of ``model`` for this runtime is converted from at ``example``'s
        (NCHW) shape, and what it is: :func:`~shufflenet.export.onnx.export_graph` in
        ``layout``, then :attr:`rewrite` for our models."""
        module, graph = export_graph(model, layout, (example.shape[2], example.shape[3]))
        if self.rewrite is not None and isinstance(model, ShuffleNetBase):
            module = self.rewrite(module, example)
        return module, graph


def read_model_file(path: str | os.PathLike[str], runtime: str) -> bytes:
    """The bytes of an exported file: a regular file (:func:`~shufflenet.io.open_regular`: a
    FIFO never blocks) of at most :data:`MAX_MODEL_BYTES`; ``FileNotFoundError`` if missing."""
    try:
        return read_regular(path, MAX_MODEL_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {runtime} file: {path}") from None


@contextlib.contextmanager
def private_copy(data: bytes, suffix: str) -> Iterator[Path]:
    """``data`` as a file in a folder of this process's own, removed afterwards: what a runtime
    that opens files by name loads, so that it reads exactly the bytes that were checked."""
    with tempfile.TemporaryDirectory(prefix="shufflenet-open-") as folder:
        path = Path(folder, f"model{suffix}")
        path.write_bytes(data)
        yield path
