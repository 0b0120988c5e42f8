"""Data for training and evaluation: the embedded digits, ImageFolder trees, and transforms.

Every model file records its ``preprocessing`` (``input_size``, ``resize``, ``mean``, ``std``,
``scale``, ``channel_order``); :func:`build_eval_transform` turns that dict back into the exact
pipeline, so evaluation and prediction see what training saw:

    RGB image -> resize shorter side to ``resize`` -> centre crop ``input_size``
    -> reorder channels -> (pixel * scale - mean) / std

**Digits** are scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, bundled with
scikit-learn, so nothing is downloaded). Pixel values 0..16 become 0..255 and the single channel
is repeated three times: a digits model takes the same 3-channel RGB input as every other model,
so ``predict`` and the exports need no special case. The digits are bright ink on a dark
background, as scikit-learn stores them. The split is stratified and seeded (80/20: 1,437 train,
360 val) and does not depend on the training seed.

**Folders** are ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``, checked before a
run starts (:mod:`shufflenet.folders`, whose names this module re-exports).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .folders import (
    IMAGE_EXTENSIONS,
    FolderReport,
    check_image_folder,
    folder_datasets,
    image_folder,
)
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, check_input_size

__all__ = [
    "AUGMENTATIONS",
    "AUTO_AUGMENTS",
    "DIGITS",
    "DIGITS_CLASSES",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGE_EXTENSIONS",
    "DataSplits",
    "DigitsDataset",
    "FolderReport",
    "batch_mixer",
    "build_eval_transform",
    "build_train_transform",
    "check_image_folder",
    "digits_datasets",
    "folder_datasets",
    "load_data",
    "load_eval_data",
    "make_preprocessing",
    "match_classes",
]

DIGITS = "digits"
# Mean and standard deviation of the digits' pixels scaled to [0, 1].
DIGITS_MEAN = (0.305, 0.305, 0.305)
DIGITS_STD = (0.376, 0.376, 0.376)
DIGITS_CLASSES = [str(d) for d in range(10)]
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
# auto: "light" for digits, "imagenet" for folders of photos.
AUGMENTATIONS = ("auto", "imagenet", "light", "none")
# Policies drawn per image on top of an augmentation level: torchvision's TrivialAugmentWide
# and RandAugment (2 operations of magnitude 9).
AUTO_AUGMENTS = ("none", "trivialaugment", "randaugment")
# Eval resize for photos: the centre crop covers 87.5% of the shorter side (224 of 256).
CROP_FRACTION = 0.875


def make_preprocessing(data: str, image_size: int, resize: int | None = None) -> dict[str, Any]:
    """The preprocessing dict that a model trained on ``data`` at ``image_size`` records;
    ``resize`` (the shorter side before the centre crop) defaults to ``image_size`` for digits
    (no crop) and ``image_size / 0.875`` for photos."""
    if resize is not None:
        check_input_size(resize, "val_resize")
        if resize < image_size:
            raise ValueError(f"val_resize {resize} is smaller than the crop {image_size}")
    if data == DIGITS:
        # Upscale the whole digit: no crop.
        return {
            "input_size": [image_size, image_size],
            "resize": resize or image_size,
            "mean": list(DIGITS_MEAN),
            "std": list(DIGITS_STD),
            "scale": 1.0 / 255.0,
            "channel_order": "RGB",
        }
    return {
        "input_size": [image_size, image_size],
        "resize": resize or round(image_size / CROP_FRACTION),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "scale": 1.0 / 255.0,
        "channel_order": "RGB",
    }


# -- transforms ---------------------------------------------------------------------------
class ToRGB:
    """Any PIL image or (C, H, W) uint8 tensor -> a 3-channel RGB image of the same kind."""

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image):
            return image if image.mode == "RGB" else image.convert("RGB")
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[-3] not in (1, 3, 4):
                raise ValueError(
                    f"expected a (C, H, W) image with 1, 3 or 4 channels, got {image.shape}"
                )
            if image.shape[-3] == 1:
                return image.expand(3, -1, -1)
            return image[..., :3, :, :]
        raise TypeError(f"expected a PIL image or a tensor, got {type(image).__name__}")


class ReorderChannels:
    """Reverse the channel axis of a (..., C, H, W) tensor (RGB <-> BGR)."""

    def __call__(self, image: Tensor) -> Tensor:
        return image.flip(-3)


def _check_preprocessing(pre: Mapping[str, Any]) -> tuple[tuple[int, int], int | None]:
    missing = [k for k in ("input_size", "mean", "std", "scale") if k not in pre]
    if missing:
        raise ValueError(f"preprocessing lacks {', '.join(missing)}: {dict(pre)}")
    size = pre["input_size"]
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"preprocessing input_size must be [height, width], got {size!r}")
    if len(pre["mean"]) not in (1, 3) or len(pre["std"]) not in (1, 3) or min(pre["std"]) <= 0:
        raise ValueError("preprocessing mean and std need 1 or 3 values each (RGB), std > 0")
    if pre.get("channel_order", "RGB") not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be RGB or BGR, got {pre['channel_order']!r}")
    resize = pre.get("resize")
    return (int(size[0]), int(size[1])), None if resize is None else int(resize)


def _to_model_input(pre: Mapping[str, Any]) -> list[Callable[[Any], Any]]:
    # (x * scale - mean) / std == (x - mean / scale) / (std / scale), on float pixel values.
    scale = float(pre["scale"])
    steps: list[Callable[[Any], Any]] = [v2.ToImage()]
    if pre.get("channel_order", "RGB") == "BGR":
        steps.append(ReorderChannels())
    steps += [
        v2.ToDtype(torch.float32, scale=False),
        v2.Normalize([m / scale for m in pre["mean"]], [s / scale for s in pre["std"]]),
    ]
    return steps


def build_eval_transform(preprocessing: Mapping[str, Any]) -> v2.Compose:
    """The deterministic pipeline a model expects, from its ``preprocessing`` metadata.

    Takes a PIL image (any mode) or a (C, H, W) uint8 tensor and returns a float
    (3, H, W) tensor. ``resize`` (shorter side) may be ``None``: resize straight to
    ``input_size``.
    """
    size, resize = _check_preprocessing(preprocessing)
    return v2.Compose(
        [
            ToRGB(),
            v2.Resize(resize if resize is not None else size, antialias=True),
            v2.CenterCrop(size),
            *_to_model_input(preprocessing),
        ]
    )


def build_train_transform(
    preprocessing: Mapping[str, Any],
    augment: str,
    *,
    auto_augment: str = "none",
    random_erase: float = 0.0,
) -> v2.Compose:
    """The training pipeline: ``preprocessing`` plus augmentation.

    ``imagenet``: the official ShuffleNet recipe for photos, RandomResizedCrop (area 25-100%,
    less aggressive than Inception's 8%, as the V1 paper advises for small models), horizontal
    flip and ColorJitter(0.4, 0.4, 0.4). ``light``: for tiny images such as digits, the image padded
    by 1/8 of its size and randomly cropped back (shifts of up to 12.5%, CIFAR style), no flip.
    ``none``: the eval pipeline. ``auto_augment`` (a name of :data:`AUTO_AUGMENTS`) adds a
    policy after the level's crops and flip, in place of ColorJitter (as torchvision's recipe);
    ``random_erase`` is the probability of erasing a random rectangle of the normalized image.
    """
    if augment not in AUGMENTATIONS or augment == "auto":
        raise ValueError(f"augment must be one of imagenet, light, none, got {augment!r}")
    if auto_augment not in AUTO_AUGMENTS:
        raise ValueError(
            f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)}, got {auto_augment!r}"
        )
    size, resize = _check_preprocessing(preprocessing)
    if augment == "none":
        steps: list[Callable[[Any], Any]] = list(build_eval_transform(preprocessing).transforms)
        steps = steps[: -len(_to_model_input(preprocessing))]
    elif augment == "imagenet":
        steps = [
            ToRGB(),
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if auto_augment == "none":
            steps.append(v2.ColorJitter(0.4, 0.4, 0.4))
    else:
        steps = [
            ToRGB(),
            v2.Resize(resize if resize is not None else size, antialias=True),
            v2.CenterCrop(size),
            v2.RandomCrop(size, padding=max(1, min(size) // 8)),
        ]
    if auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    elif auto_augment == "randaugment":
        steps.append(v2.RandAugment())
    steps += _to_model_input(preprocessing)
    if random_erase:
        steps.append(v2.RandomErasing(p=random_erase, value=0))
    return v2.Compose(steps)


def batch_mixer(
    mixup: float, cutmix: float, num_classes: int
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """Mixup and cutmix of a batch (torchvision's ``MixUp``/``CutMix``, ``alpha`` each; with
    both, one of the two per batch), or ``None`` when both alphas are 0. The mixer takes
    (images, class indices) and returns the mixed images and their labels, mixed the same way:
    ``lam * one_hot(y) + (1 - lam) * one_hot(y rolled by one)``, ``lam`` the share of the first
    image (cutmix: its area). It draws from PyTorch's global RNG."""
    mixes: list[Callable[..., Any]] = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


# -- digits -------------------------------------------------------------------------------
class DigitsDataset(Dataset[tuple[Any, int]]):
    """Digits as (3, 8, 8) uint8 images with labels; ``transform`` maps an image to the input."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Any], Any] | None):
        self.classes = DIGITS_CLASSES.copy()
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


def _digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8)
    images = images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, val_idx = train_test_split(
        list(range(len(labels))),
        test_size=DIGITS_VAL_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_i, val_i = torch.tensor(train_idx), torch.tensor(val_idx)
    return images[train_i], labels[train_i], images[val_i], labels[val_i]


def digits_datasets(
    train_transform: Callable[[Any], Any] | None, val_transform: Callable[[Any], Any] | None
) -> tuple[DigitsDataset, DigitsDataset]:
    """The digits train and val splits (1,437 and 360 images), with the given transforms."""
    train_x, train_y, val_x, val_y = _digits_split()
    return DigitsDataset(train_x, train_y, train_transform), DigitsDataset(
        val_x, val_y, val_transform
    )


# -- one entry point for training and evaluation -------------------------------------------
@dataclass
class DataSplits:
    """Train and val datasets with their class names and the preprocessing they apply.

    ``train_plain`` is the training images through the eval pipeline (for BN recalibration).
    """

    train: Dataset[Any]
    val: Dataset[Any]
    train_plain: Dataset[Any]
    classes: list[str]
    preprocessing: dict[str, Any]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def num_train(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def num_val(self) -> int:
        return len(self.val)  # type: ignore[arg-type]


def load_data(
    data: str,
    image_size: int,
    *,
    augment: str = "auto",
    skip_bad_images: bool = False,
    workers: int = 8,
    train_size: int | None = None,
    val_resize: int | None = None,
    auto_augment: str = "none",
    random_erase: float = 0.0,
) -> DataSplits:
    """``"digits"`` or an ImageFolder root, as train (augmented) and val (eval pipeline) sets.

    ``image_size`` is the model's input at evaluation (the centre crop of ``val_resize``, which
    the model file records); training crops are ``train_size`` (default: ``image_size``).
    """
    check_input_size(image_size, "image_size")
    pre = make_preprocessing(data, image_size, val_resize)
    train_pre = pre
    if train_size is not None and train_size != image_size:
        check_input_size(train_size, "train_size")
        train_pre = make_preprocessing(data, train_size)
    if augment == "auto":
        augment = "light" if data == DIGITS else "imagenet"
    train_tf = build_train_transform(
        train_pre, augment, auto_augment=auto_augment, random_erase=random_erase
    )
    val_tf = build_eval_transform(pre)
    if data == DIGITS:
        train, val = digits_datasets(train_tf, val_tf)
        plain = DigitsDataset(train.images, train.labels, val_tf)
        return DataSplits(train, val, plain, DIGITS_CLASSES.copy(), pre)
    train_f, val_f, report = folder_datasets(
        data, train_tf, val_tf, skip_bad_images=skip_bad_images, workers=workers
    )
    plain_f = image_folder(report, "train", val_tf)
    return DataSplits(train_f, val_f, plain_f, report.classes, pre, report.bad_images)


def load_eval_data(
    data: str,
    preprocessing: Mapping[str, Any],
    *,
    skip_bad_images: bool = False,
    workers: int = 8,
) -> tuple[Dataset[Any], list[str], list[tuple[Path, str]]]:
    """The set to evaluate on: the digits val split, ``ROOT/val``, or ``ROOT`` itself when it
    has class folders but no ``val/``. Returns (dataset, class names, skipped files)."""
    transform = build_eval_transform(preprocessing)
    if data == DIGITS:
        return digits_datasets(None, transform)[1], DIGITS_CLASSES.copy(), []
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root} (expected {DIGITS!r} or a folder)")
    parent, split = (root, "val") if (root / "val").is_dir() else (root.parent, root.name)
    report = check_image_folder(parent, (split,), skip_bad_images=skip_bad_images, workers=workers)
    return image_folder(report, split, transform), report.classes, report.bad_images


# -- class order ----------------------------------------------------------------------------
def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f", ... ({len(names)} classes)" if len(names) > 5 else "")


def match_classes(
    data_classes: Sequence[str],
    model_classes: Sequence[str] | None,
    num_classes: int,
    data: str,
    model: str,
    *,
    subset: bool = False,
) -> tuple[list[str], list[int] | None]:
    """The model's class names, and the model's index of each of the data's classes (in the
    data's label order), matched by name; the indices are None where both orders agree.

    The data must have the model's classes (with ``subset``: some of them). A model without
    class names (``model_classes`` None) takes the data's names in the data's order, which
    needs as many classes as the model has. Anything else is a ``ValueError`` naming both
    sets; ``data`` and ``model`` name the two in it.
    """
    data_classes = list(data_classes)
    if model_classes is None:
        if len(data_classes) != num_classes:
            raise ValueError(
                f"{model} has {num_classes} classes and no class names, so {data} must have "
                f"{num_classes} classes in its order, not {len(data_classes)} "
                f"({_names(data_classes)})"
            )
        return data_classes, None
    names = list(model_classes)
    if subset:
        known = set(names)
        matched = all(name in known for name in data_classes)
    else:
        matched = sorted(data_classes) == sorted(names)
    if not matched:
        among = "among " if subset else ""
        raise ValueError(
            f"the classes of {data} ({_names(data_classes)}) are not {among}those of {model} "
            f"({_names(names)}): name its class folders after the model's classes"
        )
    if data_classes == names:
        return names, None
    return names, [names.index(name) for name in data_classes]
