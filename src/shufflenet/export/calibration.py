"""Calibration and evaluation images for int8, and the batches that feed ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["calibration_data", "calibration_reader", "image_batches"]


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
    if count == 0 or len(eval_set) == 0:
        raise ValueError(f"calib {calib} holds no images: give digits or a folder of class folders")
    picks = np.linspace(0, count - 1, min(count, max_images)).round().astype(int)
    calib_images = torch.stack([calib_set[int(i)][0] for i in dict.fromkeys(picks)])
    items = [eval_set[i] for i in range(len(eval_set))]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    return calib_images, images, labels


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
