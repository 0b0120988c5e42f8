"""Classify image files with a weights file: our safetensors, or an exported file in its own
runtime (an ``.onnx`` file in ONNX Runtime, a ``.tflite`` one in LiteRT, ...: each format's
:class:`~shufflenet.export.runtime.Runtime` in :data:`~shufflenet.export.FORMATS`).

The preprocessing comes from the file's metadata (:func:`shufflenet.data.build_eval_transform`),
so the model sees exactly what it was trained or converted for (RGB normalised for torchvision
weights, BGR 0-255 for Megvii ones). A file that cannot be read or decoded, or is not a regular
file (a FIFO is never opened), gives a :class:`Prediction` with an ``error`` while the others are
still predicted, and so does an image whose outputs are not finite (damaged weights). The
weights file's metadata (and an exported file's graph) is checked first
(:func:`shufflenet.weights.validate_metadata`); the runtimes that could crash on a damaged file
open it in a child process first (:func:`shufflenet.runtimes.probe`).

1000-class weights without their own class names get the ImageNet-1k names bundled in
``shufflenet/data/imagenet_classes.txt`` (copied from torchvision's
``torchvision.models._meta._IMAGENET_CATEGORIES``, BSD-3-Clause).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .export.formats import FORMATS, format_of
from .export.runtime import OpenedModel, Runtime
from .io import open_regular
from .limits import check_batch
from .preprocessing import imagenet_classes
from .weights import error_reason

__all__ = [
    "ENGINES",
    "Engine",
    "Logits",
    "Prediction",
    "Predictor",
    "class_names_of",
    "default_engine",
    "find_images",
    "predict",
    "read_image_file",
]

# The largest image file read (a 100-megapixel JPEG is about 50 MB).
MAX_IMAGE_BYTES = 1 << 28
NON_FINITE = "the model's outputs are not finite (NaN or infinite): its weights are damaged"


def class_names_of(metadata: dict[str, Any]) -> list[str]:
    """The metadata's class names, ImageNet's for 1000 classes, else the label indices."""
    num_classes = int(metadata.get("num_classes", 0))
    names = metadata.get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == 1000:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]


@dataclass
class Prediction:
    """The ``topk`` classes of one image, best first, or why it could not be predicted;
    ``features``: the pooled embedding the classifier reads, where asked for."""

    path: str
    top: list[tuple[str, int, float]] = field(default_factory=list)  # (name, index, prob)
    error: str | None = None
    features: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        top = [{"class": n, "index": i, "probability": p} for n, i, p in self.top]
        record: dict[str, Any] = {"path": self.path, "top": top, "error": self.error}
        if self.features is not None:
            record["features"] = self.features
        return record


Logits = Callable[[Tensor], np.ndarray]  # a preprocessed (N, C, H, W) batch -> raw outputs
Engine = Callable[[Path], tuple[dict[str, Any], Logits]]  # a weights file -> (metadata, logits)


def default_engine(path: str | os.PathLike[str]) -> str:
    """The engine for ``path``: its format's runtime for an exported file, else ``torch``."""
    format = format_of(path)
    runtime = None if format is None else FORMATS[format].runtime
    return "torch" if runtime is None else runtime.name


class _TorchLogits:
    """A model's outputs in PyTorch; :meth:`with_features` also returns the input of its
    classifier ``fc`` (the pooled embedding)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, batch: Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(batch).numpy()

    def with_features(self, batch: Tensor) -> tuple[np.ndarray, np.ndarray]:
        seen: list[Tensor] = []
        network = getattr(self.model, "model", self.model)  # optimize() wraps the network
        fc = network.get_submodule("fc")
        hook = fc.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            logits = self(batch)
        finally:
            hook.remove()
        return logits, seen[0].float().numpy()


def _torch_engine(path: Path, fast: bool = False) -> tuple[dict[str, Any], Logits]:
    """Our safetensors weights in PyTorch; ``fast``: BatchNorm folded, shuffle-free and
    channels_last (:func:`shufflenet.deploy.optimize`, eager), the same outputs within 1e-4."""
    from .weights import load

    engine = default_engine(path)
    if engine != "torch":
        raise ValueError(f"{path} is an exported file: predict it with engine={engine!r}")
    model = load(path)
    if not fast:
        return model.weights_metadata, _TorchLogits(model)
    from .deploy import optimize

    return model.weights_metadata, _TorchLogits(optimize(model, backend="eager"))


def _runtime_engine(format: str, runtime: Runtime) -> Engine:
    """An engine that runs ``format``'s exported files in ``runtime``, with their own metadata
    (and our weights through an in-memory export, where the runtime has one); a fixed batch is
    filled with zeros where short."""

    def open_file(path: Path) -> tuple[dict[str, Any], Logits]:
        from .weights import load

        own = default_engine(path)
        files = " or ".join(FORMATS[format].suffixes)
        if own == "torch" and runtime.open_model is not None:
            opened = runtime.open_model(load(path), path)
        elif own == runtime.name:
            opened = runtime.open(path)
        elif own == "torch":
            raise ValueError(
                f"{path}: engine {runtime.name!r} runs {files} files; export one with "
                f"`shufflenet export --format {format}`"
            )
        else:
            raise ValueError(
                f"{path}: engine {runtime.name!r} runs {files} files; run this file with "
                f"engine {own!r}"
            )
        return opened.metadata, functools.partial(_run, opened)

    open_file.__doc__ = f"A {format} file in {runtime.name}."
    return open_file


def _run(opened: OpenedModel, batch: Tensor) -> np.ndarray:
    try:
        return opened(batch)
    except ValueError:
        raise
    except Exception as e:  # a runtime's own types, for a graph that loads but cannot run
        raise ValueError(
            f"{opened.path}: {opened.engine} cannot run it ({error_reason(e)})"
        ) from None


def _engines() -> dict[str, Engine]:
    engines: dict[str, Engine] = {"torch": _torch_engine}
    for format, spec in FORMATS.items():
        if spec.runtime is not None:
            engines[spec.runtime.name] = _runtime_engine(format, spec.runtime)
    return engines


# Engine name -> how it opens a weights file; ``predict --engine`` offers these.
ENGINES: dict[str, Engine] = _engines()


def unreadable(error: Exception) -> ValueError:
    """The error of an image that PIL (or a decoder) could not read, saying why."""
    if isinstance(error, UnidentifiedImageError):
        return ValueError("not a readable image (no image format PIL knows, or damaged)")
    return ValueError(f"not a readable image ({str(error) or type(error).__name__})")


def read_image_file(path: Path) -> bytes:
    """The bytes of an image file, at most :data:`MAX_IMAGE_BYTES`; ``ValueError`` saying why
    it cannot be read. Only regular files are read, checked on the open file: a FIFO would
    block, a device never end (:func:`~shufflenet.io.open_regular`)."""
    if path.is_dir():
        raise ValueError("a directory without image files")
    try:
        file = open_regular(path)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except ValueError:
        raise ValueError("not a regular file (a FIFO, socket or device): refused") from None
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror})") from None
    try:
        with file:
            data = file.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"larger than {MAX_IMAGE_BYTES} bytes: refused")
    return data


class Predictor:
    """A weights file ready to classify images with ``engine`` (default: the file's own).

    An exported file runs in its format's runtime; our safetensors files in PyTorch, or in a
    runtime through an in-memory export (ONNX Runtime; see :data:`ENGINES`). ``fast``: the
    ``torch`` engine runs the optimised form of the model (:func:`shufflenet.deploy.optimize`).
    """

    def __init__(
        self, weights: str | os.PathLike[str], engine: str | None = None, *, fast: bool = False
    ) -> None:
        from .data import build_eval_transform

        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"no such weights file: {path}")
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file: give a weights or exported file")
        engine = engine or default_engine(path)
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.engine = engine
        if engine == "torch":
            self.metadata, self._logits = _torch_engine(path, fast)
        else:
            self.metadata, self._logits = ENGINES[engine](path)
        if int(self.metadata.get("num_classes", 0)) < 1:
            raise ValueError(f"{path} has no classifier (num_classes 0): nothing to predict")
        self.class_names = class_names_of(self.metadata)
        try:
            self.transform = build_eval_transform(self.metadata["preprocessing"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        size = self.metadata["preprocessing"]["input_size"]
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def logits(self, batch: Tensor) -> np.ndarray:
        """Raw outputs for a preprocessed (N, C, H, W) batch."""
        return self._logits(batch)

    def check(self, topk: int, batch_size: int, features: bool = False) -> int:
        """``ValueError`` for a ``topk``, ``batch_size`` or ``features`` this model cannot
        run; the number of classes a prediction lists."""
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        check_batch(batch_size, (3, *self.input_size))
        if features and not isinstance(self._logits, _TorchLogits):
            raise ValueError(
                f"features need engine 'torch' (a weights file): engine {self.engine!r} "
                "runs a file whose only output is the logits"
            )
        return min(topk, len(self.class_names))

    def classify(
        self, paths: Sequence[str], batch: Tensor, topk: int, features: bool = False
    ) -> list[Prediction]:
        """A :class:`Prediction` for each preprocessed image of ``batch``, named by ``paths``;
        an image whose outputs are not finite gets an ``error``."""
        k = self.check(topk, len(paths), features)
        embedding = None
        if features:
            assert isinstance(self._logits, _TorchLogits)
            raw, embedding = self._logits.with_features(batch)
        else:
            raw = self.logits(batch)
        logits = torch.from_numpy(raw).float()
        finite = logits.isfinite().all(1).tolist()
        values, indices = logits.softmax(1).topk(k, dim=1)
        results = []
        for n, (path, ok, vals, idxs) in enumerate(
            zip(paths, finite, values.tolist(), indices.tolist(), strict=True)
        ):
            if not ok:
                results.append(Prediction(path, error=NON_FINITE))
                continue
            top = [(self.class_names[c], c, float(v)) for v, c in zip(vals, idxs, strict=True)]
            feats = None if embedding is None else embedding[n].tolist()
            results.append(Prediction(path, top, features=feats))
        return results

    def load_image(self, path: Path) -> Tensor:
        """Decode ``path`` and apply the preprocessing; raises ``ValueError`` if unreadable
        (:func:`read_image_file`)."""
        data = read_image_file(path)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return self.transform(image)
        except Exception as e:  # PIL raises many types for truncated or foreign files
            raise unreadable(e) from None

    def predict(
        self, paths: Sequence[Path], topk: int = 5, batch_size: int = 16
    ) -> list[Prediction]:
        """One :class:`Prediction` per path, in order."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        results = [Prediction(str(p)) for p in paths]
        for start in range(0, len(paths), batch_size):
            good, tensors = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    tensors.append(self.load_image(paths[i]))
                    good.append(i)
                except ValueError as e:
                    results[i].error = str(e)
            if tensors:
                names = [results[i].path for i in good]
                rows = self.classify(names, torch.stack(tensors), topk)
                for i, row in zip(good, rows, strict=True):
                    results[i] = row
        return results


def find_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; directories expand to the image files below them, sorted.

    A directory without images is itself listed, so that it is reported as a failure.
    """
    from .data import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(
                p
                for p in item.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.name.startswith(".")
            )
            found += images or [item]
        else:
            found.append(item)
    return found


def predict(
    weights: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    topk: int = 5,
    engine: str | None = None,
) -> list[Prediction]:
    """Classify the images in ``inputs`` (files or directories) with ``weights``."""
    return Predictor(weights, engine).predict(find_images(inputs), topk)
