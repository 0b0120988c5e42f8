"""Fast image decoding for streaming prediction: a file to the model's crop as uint8 pixels,
then a whole batch normalised at once.

The result matches :func:`shufflenet.data.build_eval_transform` (resize the shorter side, centre
crop, channel order, ``(pixel * scale - mean) / std``) up to the resampling filter. A JPEG at
least twice the resize is decoded at 1/2, 1/4 or 1/8 scale by libjpeg-turbo's DCT scaling
(PIL's ``draft``): most of a photo's decoding skipped. Images are decoded by PIL (whose wheels
bundle libjpeg-turbo; torchvision's own decoders are deprecated since torchvision 0.29); the
resize (bilinear, antialiased) and crop run on uint8 tensors, where they are cheapest.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ..data import build_eval_transform
from ..predict import read_image_file, unreadable

__all__ = ["FastDecoder"]


def _resized(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``resize``, as torchvision does."""
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


class FastDecoder:
    """Image files -> (3, H, W) uint8 crops (:meth:`__call__`), and batches of them -> the model's
    float input (:meth:`normalize`), for a model's ``preprocessing`` metadata."""

    def __init__(self, preprocessing: Mapping[str, Any]) -> None:
        build_eval_transform(preprocessing)  # the same checks, the same errors
        size = preprocessing["input_size"]
        self.size = (int(size[0]), int(size[1])) if not isinstance(size, int) else (size, size)
        resize = preprocessing.get("resize")
        self.resize = None if resize is None else int(resize)
        scale = float(preprocessing["scale"])
        self.bgr = preprocessing.get("channel_order", "RGB") == "BGR"
        mean = torch.tensor([m / scale for m in preprocessing["mean"]], dtype=torch.float32)
        std = torch.tensor([s / scale for s in preprocessing["std"]], dtype=torch.float32)
        self._mean, self._std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to before the centre crop."""
        if self.resize is None:
            return self.size
        return _resized(height, width, self.resize)

    def __call__(self, path: str | os.PathLike[str]) -> Tensor:
        """The (3, H, W) uint8 crop of the image file ``path``; ``ValueError`` saying why for a
        file that is not a readable image."""
        return self.decode(read_image_file(Path(path)))

    def decode(self, data: bytes) -> Tensor:
        """The (3, H, W) uint8 crop of an image file's bytes."""
        try:
            return self._decode(data)
        except Exception as e:  # PIL raises many types for truncated or foreign files
            raise unreadable(e) from None

    def _decode(self, data: bytes) -> Tensor:
        with Image.open(io.BytesIO(data)) as image:  # the header only; bombs refused here
            width, height = image.size
            target = self.target(height, width)
            if image.format == "JPEG":  # the smallest 1/2^k scale still at least the target
                image.draft("RGB", (target[1], target[0]))
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
        if tuple(pixels.shape[1:]) != target:
            pixels = F.resize(pixels, list(target), antialias=True)
        return F.center_crop(pixels, list(self.size)).contiguous()

    def normalize(self, batch: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 crops -> the model's float32 input."""
        if self.bgr:
            batch = batch.flip(1)
        return (batch.float() - self._mean) / self._std
