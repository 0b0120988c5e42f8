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

**Folders** are ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``;
:func:`check_image_folder` checks the tree (class sets, empty classes, every image decodes)
before a run starts, and the ``ImageFolder`` datasets hold exactly the images it listed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, check_input_size, control_character

__all__ = [
    "AUGMENTATIONS",
    "DIGITS",
    "DIGITS_CLASSES",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGE_EXTENSIONS",
    "DataSplits",
    "DigitsDataset",
    "FolderReport",
    "build_eval_transform",
    "build_train_transform",
    "check_image_folder",
    "digits_datasets",
    "folder_datasets",
    "load_data",
    "load_eval_data",
    "make_preprocessing",
]

DIGITS = "digits"
# Mean and standard deviation of the digits' pixels scaled to [0, 1].
DIGITS_MEAN = (0.305, 0.305, 0.305)
DIGITS_STD = (0.376, 0.376, 0.376)
DIGITS_CLASSES = [str(d) for d in range(10)]
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
IMAGE_EXTENSIONS = tuple(datasets.folder.IMG_EXTENSIONS)
# auto: "light" for digits, "imagenet" for folders of photos.
AUGMENTATIONS = ("auto", "imagenet", "light", "none")
# Eval resize for photos: the centre crop covers 87.5% of the shorter side (224 of 256).
CROP_FRACTION = 0.875


def make_preprocessing(data: str, image_size: int) -> dict[str, Any]:
    """The preprocessing dict that a model trained on ``data`` at ``image_size`` records."""
    if data == DIGITS:
        # Upscale the whole digit: no crop.
        return {
            "input_size": [image_size, image_size],
            "resize": image_size,
            "mean": list(DIGITS_MEAN),
            "std": list(DIGITS_STD),
            "scale": 1.0 / 255.0,
            "channel_order": "RGB",
        }
    return {
        "input_size": [image_size, image_size],
        "resize": round(image_size / CROP_FRACTION),
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
    if len(pre["mean"]) != 3 or len(pre["std"]) != 3 or min(pre["std"]) <= 0:
        raise ValueError("preprocessing mean and std need 3 values each, std > 0")
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


def build_train_transform(preprocessing: Mapping[str, Any], augment: str) -> v2.Compose:
    """The training pipeline: ``preprocessing`` plus augmentation.

    ``imagenet``: the official ShuffleNet recipe for photos, RandomResizedCrop (area 25-100%,
    less aggressive than Inception's 8%, as the V1 paper advises for small models), horizontal
    flip and ColorJitter(0.4, 0.4, 0.4). ``light``: for tiny images such as digits, the image padded
    by 1/8 of its size and randomly cropped back (shifts of up to 12.5%, CIFAR style), no flip.
    ``none``: the eval pipeline.
    """
    if augment not in AUGMENTATIONS or augment == "auto":
        raise ValueError(f"augment must be one of imagenet, light, none, got {augment!r}")
    size, resize = _check_preprocessing(preprocessing)
    if augment == "none":
        return build_eval_transform(preprocessing)
    if augment == "imagenet":
        steps: list[Callable[[Any], Any]] = [
            ToRGB(),
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4),
        ]
    else:
        steps = [
            ToRGB(),
            v2.Resize(resize if resize is not None else size, antialias=True),
            v2.CenterCrop(size),
            v2.RandomCrop(size, padding=max(1, min(size) // 8)),
        ]
    return v2.Compose([*steps, *_to_model_input(preprocessing)])


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


# -- image folders ------------------------------------------------------------------------
@dataclass
class FolderReport:
    """What :func:`check_image_folder` found: the classes, the unreadable images skipped and
    ``images[split][class]``, the readable image files of each class folder."""

    root: Path
    classes: list[str]
    num_images: dict[str, int]
    bad_images: list[tuple[Path, str]] = field(default_factory=list)
    images: dict[str, dict[str, list[Path]]] = field(default_factory=dict)


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )


def _linked_classes(split_dir: Path, classes: Sequence[str]) -> list[str]:
    """The class folders that are links to a folder holding their split folder or another
    class folder of the split (their images would get two labels)."""
    real = {c: Path(os.path.realpath(split_dir / c)) for c in classes}
    split = Path(os.path.realpath(split_dir))

    def holds(outer: Path, inner: Path) -> bool:
        return outer == inner or outer in inner.parents

    return [
        f"{split_dir.name}/{c}"
        for c, path in real.items()
        if (split_dir / c).is_symlink()
        and (
            holds(path, split)
            or any(holds(path, p) or holds(p, path) for o, p in real.items() if o != c)
        )
    ]


def _list_images(class_dir: Path) -> list[Path]:
    found = []
    for parent, _, files in os.walk(class_dir):  # links to folders are not followed
        found += [
            Path(parent, f)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    return sorted(found)


def _image_problem(path: Path) -> str | None:
    """``None`` if ``path`` decodes as an image, else why not. Only regular files (or links to
    them) are opened: a FIFO or a device would block or never end."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return e.strerror or type(e).__name__
    if not stat.S_ISREG(mode):
        return "not a regular file"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads all data
            image.load()
    except Exception as e:  # PIL raises many types for bad files; every one means "unreadable"
        return str(e) or type(e).__name__
    return None


def _shorten(items: Sequence[str], limit: int = 8) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_image_folder(
    root: str | os.PathLike[str],
    splits: Sequence[str] = ("train", "val"),
    *,
    skip_bad_images: bool = False,
    workers: int = 8,
) -> FolderReport:
    """Check an ImageFolder tree before using it; raise one ``ValueError`` naming every problem.

    Problems: a missing split folder, no class folders, class sets that differ between splits,
    class folders without images, and image files that do not decode (or are not regular
    files, such as FIFOs, which are never opened). With ``skip_bad_images`` the unreadable
    files are left out (and listed in the report) instead; a class left with no images is still
    an error.

    Links: a link to an image file is read. Links to folders inside a class folder are not
    followed, so a loop such as ``train/cat/up -> ..`` neither multiplies the images nor labels
    other classes' images ``cat``. A class folder may itself be a link, but not to a folder
    that holds its split folder or another class folder of the split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root} (expected {DIGITS!r} or a folder)")
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise ValueError(
            f"{root} needs the sub-folders {' and '.join(splits)} with one folder per class "
            f"inside; missing: {', '.join(missing)}"
        )
    classes = {s: _list_classes(root / s) for s in splits}
    no_classes = [s for s in splits if not classes[s]]
    if no_classes:
        raise ValueError(
            f"no class folders in {', '.join(str(root / s) for s in no_classes)} "
            "(expected one sub-folder of images per class)"
        )
    problems = []
    reference = classes[splits[0]]
    odd = [name for name in reference if control_character(name)]
    if odd:
        problems.append(
            f"class folder names with control characters: {', '.join(map(repr, odd))} "
            "(class names become labels shown on terminals: rename them)"
        )
    for s in splits[1:]:
        if classes[s] != reference:
            only_ref = sorted(set(reference) - set(classes[s]))
            only_s = sorted(set(classes[s]) - set(reference))
            problems.append(
                f"class folders differ between {splits[0]}/ and {s}/ (only in {splits[0]}: "
                f"{_shorten(only_ref) or '-'}; only in {s}: {_shorten(only_s) or '-'})"
            )
    linked = [name for s in splits for name in _linked_classes(root / s, classes[s])]
    if linked:
        problems.append(
            "class folders that link to a folder holding other classes (their images would "
            f"get two labels): {_shorten(linked)}; make them plain folders"
        )
    files = {(s, c): _list_images(root / s / c) for s in splits for c in classes[s]}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        all_files = [p for paths in files.values() for p in paths]
        errors = dict(zip(all_files, pool.map(_image_problem, all_files), strict=True))
    bad = [(p, e) for p, e in errors.items() if e is not None]
    bad_set = {p for p, _ in bad}
    empty = [f"{s}/{c}" for (s, c), paths in files.items() if not paths]
    emptied = [
        f"{s}/{c}"
        for (s, c), paths in files.items()
        if paths and skip_bad_images and all(p in bad_set for p in paths)
    ]
    if empty:
        problems.append(f"class folders without images: {_shorten(empty)}")
    if emptied:
        problems.append(f"class folders with no readable image: {_shorten(emptied)}")
    if bad and not skip_bad_images:
        listed = [f"{p.relative_to(root)} ({e})" for p, e in bad]
        problems.append(
            f"{len(bad)} unreadable image file(s): {_shorten(listed, 10)}; fix or remove them, "
            "or skip them with skip_bad_images=True"
        )
    if problems:
        raise ValueError(f"data folder {root}: " + "; ".join(problems))
    images = {
        s: {c: [p for p in files[s, c] if p not in bad_set] for c in classes[s]} for s in splits
    }
    counts = {s: sum(map(len, images[s].values())) for s in splits}
    return FolderReport(root, reference, counts, bad, images)


class _ListedImageFolder(datasets.ImageFolder):
    """An ``ImageFolder`` of the images :func:`check_image_folder` listed, class by class; it
    does not walk the tree again (torchvision's walk follows every link)."""

    def __init__(self, split_dir: Path, images: Mapping[str, list[Path]], transform: Any):
        self.listed = images
        super().__init__(str(split_dir), transform=transform)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(self.listed)
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(  # type: ignore[override]
        self, directory: str | Path, class_to_idx: dict[str, int], *args: Any, **kwargs: Any
    ) -> list[tuple[str, int]]:
        return [(str(p), i) for c, i in class_to_idx.items() for p in self.listed[c]]


def _image_folder(
    report: FolderReport, split: str, transform: Callable[[Any], Any]
) -> datasets.ImageFolder:
    return _ListedImageFolder(report.root / split, report.images[split], transform)


def folder_datasets(
    root: str | os.PathLike[str],
    train_transform: Callable[[Any], Any],
    val_transform: Callable[[Any], Any],
    *,
    skip_bad_images: bool = False,
    workers: int = 8,
) -> tuple[datasets.ImageFolder, datasets.ImageFolder, FolderReport]:
    """``ROOT/train`` and ``ROOT/val`` as ImageFolder datasets, after :func:`check_image_folder`."""
    report = check_image_folder(root, skip_bad_images=skip_bad_images, workers=workers)
    train = _image_folder(report, "train", train_transform)
    val = _image_folder(report, "val", val_transform)
    return train, val, report


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
) -> DataSplits:
    """``"digits"`` or an ImageFolder root, as train (augmented) and val (eval pipeline) sets."""
    check_input_size(image_size, "image_size")
    pre = make_preprocessing(data, image_size)
    if augment == "auto":
        augment = "light" if data == DIGITS else "imagenet"
    train_tf, val_tf = build_train_transform(pre, augment), build_eval_transform(pre)
    if data == DIGITS:
        train, val = digits_datasets(train_tf, val_tf)
        plain = DigitsDataset(train.images, train.labels, val_tf)
        return DataSplits(train, val, plain, DIGITS_CLASSES.copy(), pre)
    train_f, val_f, report = folder_datasets(
        data, train_tf, val_tf, skip_bad_images=skip_bad_images, workers=workers
    )
    plain_f = _image_folder(report, "train", val_tf)
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
    return _image_folder(report, split, transform), report.classes, report.bad_images
