"""How a model's input is made from an image: one :class:`Preprocessing` type and its constants."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_CLASSES",
    "MAX_INPUT_SIZE",
    "MAX_IN_CHANS",
    "MEGVII_PREPROCESSING",
    "MIN_INPUT_SIZE",
    "Preprocessing",
    "check_input_size",
    "control_character",
    "imagenet_classes",
]

# Bounds on what any input (an argument, a weights file's metadata) may ask for, checked before
# anything is allocated. The networks downsample 32x, so smaller images have no pixel left.
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 4096
MAX_CLASSES = 100_000
MAX_IN_CHANS = 16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from an RGB image (torchvision's convention by default)."""

    input_size: tuple[int, int] = (224, 224)
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"


# What the official (Megvii) release's networks take: BGR pixel values 0-255, not normalised;
# shorter side resized to 256, centre crop 224.
MEGVII_PREPROCESSING = Preprocessing(
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0, channel_order="BGR"
)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (bundled with the package)."""
    from importlib.resources import files

    text = files("shufflenet").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


# Unicode categories refused in class names: control and format characters (ANSI escapes,
# newlines, bidirectional overrides), lone surrogates, line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def control_character(name: str) -> str | None:
    """The first character of ``name`` that a terminal would act on rather than show, if any."""
    return next((c for c in name if unicodedata.category(c) in _UNPRINTABLE), None)


def check_input_size(size: int | Sequence[int], name: str = "input_size") -> tuple[int, int]:
    """``size`` (one side, or (height, width)) as (height, width), each an integer within
    [:data:`MIN_INPUT_SIZE`, :data:`MAX_INPUT_SIZE`]; ``ValueError`` naming ``name`` otherwise."""
    sides = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(sides, Sequence) or isinstance(sides, str) or len(sides) != 2:
        raise ValueError(f"{name} must be a size or (height, width), got {size!r}")
    for side in sides:
        if not isinstance(side, int) or isinstance(side, bool):
            raise ValueError(f"{name} must hold integers, got {size!r}")
        if not MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE:
            raise ValueError(
                f"{name} must be within {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} pixels, got {size!r}"
            )
    return int(sides[0]), int(sides[1])
