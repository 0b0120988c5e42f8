"""ImageFolder trees (``ROOT/<split>/<class>/*.jpg``), checked before they are used.

:func:`check_image_folder` names every problem of a tree at once (class sets, empty classes,
images that do not decode, files that are not regular files, folder links) before a run starts,
and :func:`folder_datasets` builds ``ImageFolder`` datasets holding exactly the images it listed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import datasets

from .preprocessing import control_character

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderReport",
    "check_image_folder",
    "folder_datasets",
    "image_folder",
]

IMAGE_EXTENSIONS = tuple(datasets.folder.IMG_EXTENSIONS)


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
        c
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

    The messages name the folder checked: ``root``, or ``root/SPLIT`` when only one split is
    checked (with the paths in it relative to that folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root} (expected 'digits' or a folder)")
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
    where = root / splits[0] if len(splits) == 1 else root  # the folder the messages name

    def label(split: str, name: str) -> str:
        return name if len(splits) == 1 else f"{split}/{name}"

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
    linked = [label(s, c) for s in splits for c in _linked_classes(root / s, classes[s])]
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
    empty = [label(s, c) for (s, c), paths in files.items() if not paths]
    emptied = [
        label(s, c)
        for (s, c), paths in files.items()
        if paths and skip_bad_images and all(p in bad_set for p in paths)
    ]
    if empty:
        problems.append(f"class folders without images: {_shorten(empty)}")
    if emptied:
        problems.append(f"class folders with no readable image: {_shorten(emptied)}")
    if bad and not skip_bad_images:
        listed = [f"{p.relative_to(where)} ({e})" for p, e in bad]
        problems.append(
            f"{len(bad)} unreadable image file(s): {_shorten(listed, 10)}; fix or remove them, "
            "or skip them with skip_bad_images=True"
        )
    if problems:
        raise ValueError(f"data folder {where}: " + "; ".join(problems))
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


def image_folder(
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
    train = image_folder(report, "train", train_transform)
    val = image_folder(report, "val", val_transform)
    return train, val, report
