"""Which parts of the modern recipe help a small network on small data? Short runs, several seeds.

    python benchmarks/recipe_ablation.py [--seeds 3] [--threads 1] [--jobs 1]
                                         [--json benchmarks/results/recipe_ablation.json]

ShuffleNetV2 0.5x (``--fast``) is trained on two data sets with today's default (the paper's
recipe), with each part of torchvision's recipe added alone, with the whole recipe, with
distillation from a larger model of ours (V2 1.0x, trained first on the same data with the
paper's recipe, seed 0) and, on the photos, fine-tuned from a locally trained stand-in for
published weights. Each row is trained with ``--seeds`` seeds (initial weights, batches and
augmentation change); reported: the final val top-1 per seed, its mean and spread (standard
deviation, min..max). Every run of a data set has the same length (fixed epochs, not the
recipes' step budgets), so a row measures what its part does in that budget.

The data, built from images that installed packages ship (nothing is downloaded):

* ``digits``: scikit-learn's 8x8 digits at 32x32 (1,437 train / 360 val), 5 epochs of 44 steps.
* ``photos``: a folder assembled from the three photos that scikit-learn and Matplotlib ship
  (``china.jpg``, ``flower.jpg``, ``grace_hopper.jpg``; ``photo_folder.py``): each photo's four
  quadrants are 12 classes; training crops (20 per class) come from the left 60% of a
  quadrant, validation crops (10 per class) from the right 40%, so the val images show other
  content than the training ones. Crops are squares of 50-90% of the region's shorter side,
  stored at 72x72; the models see 48x48. 30 epochs of 7 steps.
* ``icons``: the stand-in for published weights, trained on another data set: the 74 icons of
  the Adwaita theme at 512 px (``/usr/share/icons/Adwaita/512x512``), one class each, 16
  training and 4 validation views per icon (random crops on random backgrounds), 10 epochs.
  Fine-tuning rows start from it (``init_weights``; the classifier is replaced).
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photo_folder import PHOTO_SIZE, build_photos

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_ablation.json"
ICONS = Path("/usr/share/icons/Adwaita/512x512")
MODEL = "shufflenet_v2_x0_5"
TEACHER = "shufflenet_v2_x1_0"
DIGITS_EPOCHS, PHOTO_EPOCHS, ICON_EPOCHS = 5, 30, 10


@dataclass(frozen=True)
class DataSet:
    data: str
    image_size: int
    epochs: int


@dataclass(frozen=True)
class Row:
    """One configuration: TrainConfig fields over today's default (``recipe="paper"``)."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    teacher: bool = False  # distil from the data set's teacher
    pretrained: bool = False  # fine-tune from the icons model
    photos_only: bool = False


TORCHVISION = {"recipe": "torchvision"}
ROWS = [
    Row("default (paper recipe)"),
    Row("+ trivialaugment", {"auto_augment": "trivialaugment"}),
    Row("+ randaugment", {"auto_augment": "randaugment"}),
    Row("+ random erasing 0.1", {"random_erase": 0.1}),
    Row("+ mixup 0.2", {"mixup": 0.2}),
    Row("+ cutmix 1.0", {"cutmix": 1.0}),
    Row("+ EMA", {"_ema": True}),
    Row("+ 4 repeats", {"repeats": 4}),
    Row("+ train 176 / eval 232->224 (scaled)", {"_res": True}, photos_only=True),
    Row(
        "+ cosine, 5 warm-up epochs, wd 2e-5",
        {"schedule": "cosine", "warmup_epochs": 5.0, "weight_decay": 2e-5},
    ),
    Row("torchvision recipe (all of the above)", TORCHVISION),
    Row("default + teacher (alpha 0.5, T 1)", {"distill_temperature": 1.0}, teacher=True),
    Row("default + teacher (alpha 0.5, T 4)", {"distill_temperature": 4.0}, teacher=True),
    Row("from icons, paper recipe", {"recipe": "paper"}, pretrained=True, photos_only=True),
    *(
        Row(
            f"from icons, finetune recipe, lr {lr:g} per 1024",
            {"recipe": "finetune", "_lr": lr},
            pretrained=True,
            photos_only=True,
        )
        for lr in (0.05, 0.15, 0.5)
    ),
]


# -- data ------------------------------------------------------------------------------------
def build_icons(root: Path, train: int = 16, val: int = 4) -> Path:
    """One class per Adwaita icon: random crops composed on random solid backgrounds."""
    import random

    from PIL import Image

    rng = random.Random(1)
    icons = sorted(ICONS.glob("*/*.png"))
    if not icons:
        raise FileNotFoundError(f"no icons in {ICONS} (the adwaita-icon-theme package)")
    for path in icons:
        icon = Image.open(path).convert("RGBA")
        for split, count in (("train", train), ("val", val)):
            folder = root / split / f"{path.parent.name}_{path.stem}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = tuple(rng.randrange(256) for _ in range(3))
                canvas = Image.new("RGBA", icon.size, (*colour, 255))
                canvas.alpha_composite(icon)
                side = int(icon.size[0] * rng.uniform(0.6, 1.0))
                x, y = rng.randint(0, icon.size[0] - side), rng.randint(0, icon.size[1] - side)
                view = canvas.crop((x, y, x + side, y + side)).convert("RGB")
                view.resize((PHOTO_SIZE, PHOTO_SIZE)).save(folder / f"{i}.jpg", quality=90)
    return root


# -- runs ------------------------------------------------------------------------------------
def train(settings: dict[str, Any]) -> dict[str, Any]:
    """One ``fit`` (in a worker process); its final val top-1 and time. The curves are not
    drawn (the run's other files are written as usual)."""
    import shufflenet.plots
    from shufflenet.train import TrainConfig, fit

    shufflenet.plots.plot_curves = lambda *args, **kwargs: None

    start = time.perf_counter()
    result = fit(TrainConfig(**settings))
    return {"top1": result.final.top1, "seconds": time.perf_counter() - start}


def config(ds: DataSet, row: Row, seed: int, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of ``row`` on ``ds`` with ``seed``."""
    fields = {k: v for k, v in row.fields.items() if not k.startswith("_")}
    settings: dict[str, Any] = {
        "model": MODEL,
        "data": ds.data,
        "image_size": ds.image_size,
        "epochs": ds.epochs,
        "batch_size": 32,
        "seed": seed,
        "fast": True,
        "progress": False,
        "workers": 0,
        "threads": extra["threads"],
        "out": str(out),
        "recipe": "paper",
        **fields,
    }
    if row.fields.get("_ema"):  # the torchvision recipe's EMA alone
        from shufflenet.train.recipe import ema_decay_for

        settings["ema_decay"] = ema_decay_for(extra["steps"][ds.data] * ds.epochs)
    if "_lr" in row.fields:  # per 1024 images, as the recipes state it
        settings["lr"] = row.fields["_lr"] * settings["batch_size"] / 1024
    if row.fields.get("_res"):  # 176 / 232 -> 224, scaled to the input size
        settings["train_size"] = round(ds.image_size * 176 / 224)
        settings["val_resize"] = round(ds.image_size * 232 / 224)
    if row.teacher:
        settings["teacher"] = extra["teachers"][ds.data]
    if row.pretrained:
        settings["init_weights"] = extra["pretrained"]
    return settings


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "per_seed": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def markdown(results: dict[str, Any]) -> str:
    """The table: a row per configuration, a column per data set (mean ± std, min..max)."""
    sets = list(results["data"])
    names = list(dict.fromkeys(n for s in sets for n in results["data"][s]["rows"]))
    lines = [
        "| configuration | " + " | ".join(f"{s} top-1 %" for s in sets) + " |",
        "|---|" + "---:|" * len(sets),
    ]
    for name in names:
        cells = []
        for s in sets:
            r = results["data"][s]["rows"].get(name)
            cells.append(
                f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} "
                f"({100 * r['min']:.1f}..{100 * r['max']:.1f})"
                if r
                else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument(
        "--rows",
        nargs="+",
        metavar="TEXT",
        help="only the rows whose name contains a TEXT, merged into the rows --json holds",
    )
    args = parser.parse_args()
    chosen = [r for r in ROWS if not args.rows or any(t in r.name for t in args.rows)]
    from shufflenet.io import write_json
    from shufflenet.speed.bench import machine_info

    sets = {"digits": DataSet("digits", 32, DIGITS_EPOCHS), "photos": DataSet("", 48, 30)}
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool,
    ):
        root = Path(tmp)
        sets["photos"] = DataSet(str(build_photos(root / "photos")), 48, PHOTO_EPOCHS)
        extra: dict[str, Any] = {
            "threads": args.threads,
            "steps": {sets["digits"].data: 1437 // 32, sets["photos"].data: 240 // 32},
            "teachers": {},
        }
        # the teachers and the stand-in for published weights, trained first (where needed)
        first = {
            f"teacher_{name}": {
                **config(ds, Row("teacher"), 0, root / f"teacher_{name}", extra),
                "model": TEACHER,
            }
            for name, ds in sets.items()
            if any(r.teacher for r in chosen)
        }
        icons = DataSet(str(root / "icons"), 48, ICON_EPOCHS)
        if any(r.pretrained for r in chosen):
            build_icons(root / "icons")
            first["icons"] = config(icons, Row("icons"), 0, root / "icons_run", extra)
        done = dict(zip(first, pool.map(train, first.values()), strict=True))
        for name, ds in sets.items():
            extra["teachers"][ds.data] = str(root / f"teacher_{name}" / "model.safetensors")
        extra["pretrained"] = str(root / "icons_run" / "model.safetensors")
        jobs = [
            (name, row, seed)
            for name in sets
            for row in chosen
            if not (row.photos_only and name != "photos")
            for seed in range(args.seeds)
        ]
        settings = [
            config(sets[n], row, seed, root / "runs" / f"{n}_{i}", extra)
            for i, (n, row, seed) in enumerate(jobs)
        ]
        outcomes = list(pool.map(train, settings))
    results: dict[str, Any] = {
        "machine": {**machine_info(), "threads": args.threads},
        "settings": {
            "model": MODEL,
            "teacher": TEACHER,
            "seeds": args.seeds,
            "batch_size": 32,
            "jobs": args.jobs,
            "data": {
                n: {"image_size": ds.image_size, "epochs": ds.epochs} for n, ds in sets.items()
            },
            "icons_epochs": icons.epochs,
        },
        "first": {name: {"top1": r["top1"], "seconds": r["seconds"]} for name, r in done.items()},
        "data": {},
        "seconds": time.perf_counter() - started,
    }
    for name in sets:
        rows: dict[str, Any] = {}
        for (n, row, _), outcome in zip(jobs, outcomes, strict=True):
            if n == name:
                rows.setdefault(row.name, []).append(outcome["top1"])
        results["data"][name] = {"rows": {k: summary(v) for k, v in rows.items()}}
    if args.rows:  # a follow-up: these rows join (or replace) those of the earlier run
        earlier = json.loads(args.json.read_text())
        for name, data in results["data"].items():
            earlier["data"][name]["rows"].update(data["rows"])
        earlier.setdefault("follow_ups", []).append(
            {k: results[k] for k in ("machine", "first", "seconds")} | {"rows": args.rows}
        )
        results = earlier
    write_json(args.json, results)
    print(markdown(results))
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
