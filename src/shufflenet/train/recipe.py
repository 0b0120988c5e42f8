"""Named recipes: the settings a run takes where its config leaves ``None``.

``paper`` is the V1/V2 papers' (and the official release's). ``torchvision`` is the recipe
behind torchvision's ShuffleNetV2 1.5x and 2.0x weights (TrivialAugment, random erasing 0.1,
mixup 0.2 and cutmix 1.0, EMA of the weights, cosine decay after 5 warm-up epochs, weight decay
2e-5, 4 repeated augmentations, training crops of 176 evaluated at 232/224, 600 epochs: 2.5
times the paper's length, which the step budget scales by). ``finetune`` is for a start from
weights (``init_weights``, ``pretrained``); ``qat`` for quantization-aware training, which
nudges trained weights onto the int8 grid at a fiftieth of the others' peak rate. ``auto`` picks
``qat`` for a QAT run, else one by the data and the start (:data:`AUTO`), as
``benchmarks/recipe_ablation.py`` measured. Every part is overridable: a
config field that is not ``None`` wins over the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..preprocessing import MIN_INPUT_SIZE

__all__ = [
    "AUTO",
    "EMA_RUN_FRACTION",
    "OVERRIDABLE",
    "RECIPES",
    "RECIPE_FIELDS",
    "Recipe",
    "choose_recipe",
    "describe_recipe",
    "ema_decay_for",
    "recipe_table",
    "recipe_values",
]

# The batch the recipes' learning rates are stated for; ``lr`` scales linearly to the batch.
REFERENCE_BATCH = 1024


@dataclass(frozen=True)
class Recipe:
    """One named recipe. ``lr`` is the peak for a global batch of 1024 (scaled linearly to the
    run's); ``train_crop`` (training crop / evaluation crop) and ``val_crop`` (evaluation crop /
    the shorter side it is cut from) apply to folders of photos (digits are upscaled whole);
    ``step_budget`` sets the default length (:func:`~shufflenet.train.schedule.choose_epochs`);
    ``ema`` averages the weights over :data:`EMA_RUN_FRACTION` of the run."""

    about: str
    optimizer: str = "sgd"
    lr: float = 0.5
    schedule: str = "linear"
    warmup_epochs: float = 1.0
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    auto_augment: str = "none"
    random_erase: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: bool = False
    repeats: int = 1
    train_crop: float = 1.0
    val_crop: float = 0.875
    step_budget: int = 600


RECIPES: dict[str, Recipe] = {
    "paper": Recipe("the V1/V2 papers' and the official release's"),
    "torchvision": Recipe(
        "torchvision's new recipe (its ShuffleNetV2 1.5x and 2.0x weights)",
        schedule="cosine",
        warmup_epochs=5.0,
        weight_decay=2e-5,
        auto_augment="trivialaugment",
        random_erase=0.1,
        mixup=0.2,
        cutmix=1.0,
        ema=True,
        repeats=4,
        train_crop=176 / 224,
        val_crop=224 / 232,
        step_budget=1500,
    ),
    "finetune": Recipe(
        "for a start from weights: a short warm-up, cosine decay, EMA",
        schedule="cosine",
        warmup_epochs=0.2,
        weight_decay=2e-5,
        ema=True,
    ),
    "qat": Recipe(
        "for quantization-aware training (``qat``): small steps from trained weights",
        lr=0.01,
        schedule="cosine",
        warmup_epochs=0.0,
        weight_decay=2e-5,
    ),
}

# (digits, starts from weights) -> the recipe that ``recipe="auto"`` takes: the best of the
# table that benchmarks/recipe_ablation.py measures (docs/training.md shows it).
AUTO: dict[tuple[bool, bool], str] = {
    (True, False): "paper",
    (False, False): "paper",
    (True, True): "finetune",
    (False, True): "finetune",
}

# The config fields a recipe fills where they are None (``lr``, ``ema_decay``, ``train_size``,
# ``val_resize`` and ``epochs`` are derived from it as well).
RECIPE_FIELDS = (
    "optimizer",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "auto_augment",
    "random_erase",
    "mixup",
    "cutmix",
    "repeats",
)
# Every config field a recipe decides where it is None: RECIPE_FIELDS and the derived ones.
OVERRIDABLE = (*RECIPE_FIELDS, "lr", "ema_decay", "train_size", "val_resize", "epochs")
# The EMA's time constant as a fraction of the run's optimizer steps: torchvision's settings
# (decay 0.99998 adjusted to 32-step updates at batch 1024 over 600 epochs) average over about
# 23 of its 600 epochs.
EMA_RUN_FRACTION = 0.04


def choose_recipe(recipe: str, digits: bool, fine_tune: bool, qat: bool = False) -> str:
    """The recipe's name: ``recipe`` itself, or for ``auto`` ``qat`` for a QAT run, else the
    one :data:`AUTO` picks."""
    if recipe == "auto":
        return "qat" if qat else AUTO[(digits, fine_tune)]
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of auto, {', '.join(RECIPES)}, got {recipe!r}")
    return recipe


def recipe_values(
    name: str,
    given: Mapping[str, Any],
    *,
    batch_size: int,
    image_size: int,
    digits: bool,
) -> dict[str, Any]:
    """The values that recipe ``name`` gives the fields of ``given`` (config field -> value)
    that are ``None``: those of :data:`RECIPE_FIELDS`, ``lr`` (scaled to ``batch_size``),
    ``train_size`` and ``val_resize`` (from ``image_size``) and ``ema_decay`` (0.0 where the
    recipe has no EMA; left ``None`` for the run to set from its length otherwise)."""
    r = RECIPES[name]
    derived: dict[str, Any] = {name: getattr(r, name) for name in RECIPE_FIELDS}
    derived["lr"] = r.lr * batch_size / REFERENCE_BATCH
    train_crop, val_crop = (1.0, 1.0) if digits else (r.train_crop, r.val_crop)
    derived["train_size"] = max(MIN_INPUT_SIZE, round(image_size * train_crop))
    derived["val_resize"] = max(image_size, round(image_size / val_crop))
    derived["ema_decay"] = None if r.ema else 0.0
    return {k: v for k, v in derived.items() if given.get(k) is None}


def ema_decay_for(total_steps: int) -> float:
    """The per-step EMA decay that averages over :data:`EMA_RUN_FRACTION` of ``total_steps``."""
    return 1.0 - 1.0 / max(1.0, EMA_RUN_FRACTION * total_steps)


def _part(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# recipe_table's label of each Recipe field: the option that overrides it
LABELS = {
    "optimizer": "`--optimizer`",
    "lr": "`--lr`, per 1024 images (scaled to the batch)",
    "schedule": "`--schedule` (decay after the warm-up)",
    "warmup_epochs": "`--warmup-epochs` (at most a fifth of the run)",
    "weight_decay": "`--weight-decay` (conv and linear weights)",
    "label_smoothing": "`--label-smoothing`",
    "auto_augment": "`--auto-augment`",
    "random_erase": "`--random-erase`",
    "mixup": "`--mixup`",
    "cutmix": "`--cutmix`",
    "ema": f"`--ema-decay` (on: over {EMA_RUN_FRACTION:.0%} of the run's steps)",
    "repeats": "`--repeats`",
    "train_crop": "`--train-size` / `--image-size` (folders)",
    "val_crop": "`--image-size` / `--val-resize` (folders)",
    "step_budget": "optimizer steps without `--epochs`",
}


def recipe_table() -> str:
    """The recipes as a Markdown table (a row per setting, a column per recipe), and the
    cases ``auto`` picks each one for."""
    names = list(RECIPES)
    rows = [
        f"| setting | {' | '.join(f'`{n}`' for n in names)} |",
        f"|---|{'---|' * len(names)}",
    ]
    for f in fields(Recipe):
        if f.name != "about":
            cells = [_part(getattr(RECIPES[n], f.name)) for n in names]
            rows.append(f"| {LABELS[f.name]} | {' | '.join(cells)} |")
    picks = []
    for name in names:
        cases = [
            f"{'digits' if digits else 'folders'} from {'weights' if start else 'scratch'}"
            for (digits, start), chosen in AUTO.items()
            if chosen == name
        ]
        if name == "qat":
            cases.append("`--qat`")
        picks.append(", ".join(cases) or "-")
    rows.append(f"| `auto` picks it for | {' | '.join(picks)} |")
    return "\n".join(rows)


def describe_recipe(config: Any, name: str, given: Sequence[str]) -> str:
    """One line for the run's log: recipe ``name`` and each of its parts as ``config`` (a
    validated :class:`~shufflenet.train.TrainConfig`) has it; ``given`` names the fields set
    over the recipe."""
    c = config
    why = ""
    if c.recipe == "auto":
        data = "digits" if c.data == "digits" else "a folder"
        start = "weights" if c.init_weights or c.pretrained else "scratch"
        why = f" (auto: {'qat' if c.qat else f'{data}, from {start}'}; --recipe chooses)"
    augment = c.augment if c.augment != "auto" else ("light" if c.data == "digits" else "imagenet")
    ema = "EMA off"
    if c.ema_decay:
        ema = f"EMA decay {c.ema_decay:.4g}"
    parts = [
        f"{c.optimizer} lr {c.lr:.3g}, {c.schedule} decay, {_part(c.warmup_epochs)} warm-up epochs",
        f"weight decay {_part(c.weight_decay)} (none on norms and biases)",
        f"label smoothing {_part(c.label_smoothing)}",
        f"augment {augment}"
        + (f" + {c.auto_augment}" if c.auto_augment != "none" else "")
        + (f", random erasing {_part(c.random_erase)}" if c.random_erase else ""),
        f"mixup {_part(c.mixup)}, cutmix {_part(c.cutmix)}",
        ema,
        f"{c.repeats} repeat{'s' if c.repeats != 1 else ''} per image",
        f"train {c.train_size} px, eval {c.val_resize} -> {c.image_size} px",
    ]
    if c.teacher:
        parts.append(
            f"teacher {c.teacher} (alpha {_part(c.distill_alpha)}, temperature "
            f"{_part(c.distill_temperature)})"
        )
    if c.freeze_stages >= 0:
        parts.append(f"stem and {c.freeze_stages} stage(s) frozen")
    line = f"recipe {name}{why}: " + "; ".join(parts)
    if given:
        line += f"; set over the recipe: {', '.join(given)}"
    return line
