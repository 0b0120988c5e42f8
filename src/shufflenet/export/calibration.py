"""Calibration and evaluation images for int8, and the batches that feed ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.base import ShuffleNetBase
from .metadata import model_metadata

__all__ = ["calibration_data", "calibration_reader", "image_batches", "model_calibration_data"]


def calibration_data(
    calib: str,
    preprocessing: dict[str, Any],
    max_images: int = 256,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(calibration images, evaluation images, evaluation labels) through ``preprocessing``.

    ``calib`` is ``"digits"`` (calibrate on the train split, evaluate on the val split) or an
    image folder: ``ROOT/train`` and ``ROOT/val``, or one folder of class folders used for both.
    At most ``max_images`` calibration images, spread evenly over the set.

    With ``num_classes`` (the model's), the labels are the model's indices of the classes,
    matched by name with ``class_names`` (:func:`~shufflenet.data.match_classes`): a set with
    a class that is not one of the model's is a ``ValueError`` (some of the model's classes
    may be missing); without ``class_names`` the set's own order is kept, if it has
    ``num_classes`` classes. Without ``num_classes``, the labels are the set's own indices.
    """
    from .. import data

    transform = data.build_eval_transform(preprocessing)
    root = Path(calib)
    calib_set: Any
    eval_set: Any
    classes: list[str]
    if calib == data.DIGITS:
        calib_set, eval_set = data.digits_datasets(transform, transform)
        classes = data.DIGITS_CLASSES.copy()
    elif (root / "train").is_dir() and (root / "val").is_dir():
        calib_set, eval_set, report = data.folder_datasets(root, transform, transform)
        classes = report.classes
    else:
        eval_set, classes, _ = data.load_eval_data(calib, preprocessing)
        calib_set = eval_set
    count = len(calib_set)
    if count == 0 or len(eval_set) == 0:
        raise ValueError(f"calib {calib} holds no images: give digits or a folder of class folders")
    mapping = None
    if num_classes is not None:
        _, mapping = data.match_classes(
            classes, class_names, num_classes, f"calib {calib}", "the model", subset=True
        )
    picks = np.linspace(0, count - 1, min(count, max_images)).round().astype(int)
    calib_images = torch.stack([calib_set[int(i)][0] for i in dict.fromkeys(picks)])
    items = [eval_set[i] for i in range(len(eval_set))]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    if mapping is not None:
        labels = torch.tensor(mapping)[labels]
    return calib_images, images, labels


def model_calibration_data(
    model: ShuffleNetBase,
    calib: str,
    input_size: Sequence[int] | None = None,
    max_images: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`calibration_data` of ``calib`` for ``model`` exported at ``input_size``: its
    preprocessing, at most ``max_images`` calibration images, and labels in its class order
    (matched by its class names, if it has any)."""
    metadata = model_metadata(model, input_size)
    return calibration_data(
        calib,
        metadata["preprocessing"],
        max_images,
        class_names=metadata["class_names"],
        num_classes=metadata["num_classes"],
    )


def image_batches(images: Tensor, size: int, fixed: bool) -> list[np.ndarray]:
    """``images`` in batches of ``size``; a ``fixed`` batch axis drops a short last batch."""
    chunks = [images[i : i + size].numpy() for i in range(0, len(images), size)]
    return [c for c in chunks if len(c) == size or not fixed]


def calibration_reader(chunks: list[np.ndarray]) -> Any:
    """An ONNX Runtime calibration reader that feeds ``chunks`` to the input named "input"."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self.batches, None)
            return None if chunk is None else {"input": chunk}

    return Reader()
