"""How a model's input is made from an image: one :class:`Preprocessing` type and its constants."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEGVII_PREPROCESSING",
    "Preprocessing",
    "imagenet_classes",
]

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
