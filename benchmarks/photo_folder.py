"""A folder of real photos from images that installed packages ship (nothing is downloaded),
for the benchmarks that need photos rather than digits.

The three photos that scikit-learn and Matplotlib ship (``china.jpg``, ``flower.jpg``,
``grace_hopper.jpg``): each photo's four quadrants are 12 classes; training crops come from the
left 60% of a quadrant, validation crops from the right 40%, so the val images show other
content than the training ones. Crops are squares of 50-90% of the region's shorter side,
stored at :data:`PHOTO_SIZE` px as JPEG (quality 90).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

PHOTO_SIZE = 72


def _photos() -> list[Any]:
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = [Image.fromarray(a) for a in load_sample_images().images]
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    images.append(Image.open(hopper).convert("RGB"))
    return images


def _crop(image: Any, box: tuple[int, int, int, int], rng: Any) -> Any:
    left, top, right, bottom = box
    short = min(right - left, bottom - top)
    side = int(short * rng.uniform(0.5, 0.9))
    x = rng.randint(left, right - side)
    y = rng.randint(top, bottom - side)
    return image.crop((x, y, x + side, y + side)).resize((PHOTO_SIZE, PHOTO_SIZE))


def build_photos(root: Path, train: int = 20, val: int = 10) -> Path:
    """The 12-class photo folder (see the module's docstring)."""
    rng = random.Random(0)
    for p, image in enumerate(_photos()):
        w, h = image.size
        for q, (qx, qy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
            left, top = qx * w // 2, qy * h // 2
            right, bottom = left + w // 2, top + h // 2
            split_x = left + (right - left) * 3 // 5
            regions = {"train": (left, top, split_x, bottom), "val": (split_x, top, right, bottom)}
            for split, count in (("train", train), ("val", val)):
                folder = root / split / f"photo{p}_q{q}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    _crop(image, regions[split], rng).save(folder / f"{i}.jpg", quality=90)
    return root
