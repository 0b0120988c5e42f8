"""What defines a training run: :class:`TrainConfig`, its checks and its defaults.

The settings left ``None`` come from a named recipe (:mod:`shufflenet.train.recipe`: the
papers', torchvision's new one, one for fine-tuning; ``auto`` picks by the data and the start).
Weight decay applies to convolution and linear weights only (not to BN parameters or biases),
and an optional pass re-estimates the BN statistics at the end. ``optimizer`` and ``schedule``
name rows of :data:`~shufflenet.train.schedule.OPTIMIZERS` and
:data:`~shufflenet.train.schedule.SCHEDULES`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

from ..data import AUGMENTATIONS, AUTO_AUGMENTS, DIGITS
from ..device import resolve_device
from ..limits import MAX_THREADS
from ..models import get_model_info
from ..preprocessing import check_input_size
from .files import RunFiles, read_checkpoint
from .recipe import RECIPES, choose_recipe, recipe_values
from .schedule import OPTIMIZERS, SCHEDULES

__all__ = [
    "TrainConfig",
    "check_resume_classes",
    "checkpoint_to_resume",
    "read_run_config",
    "recipe_differences",
]

# Fields that may change when a run is resumed; every other field is the recipe.
# Settings that change how a run computes, not what: a resumed run may change them.
RUNTIME_FIELDS = ("out", "device", "workers", "threads", "progress", "resume", "fast", "compile")
# Fields that None leaves to the run to set from the data (and the checkpoint records).
PLANNED_FIELDS = ("epochs", "ema_decay")
MAX_REPEATS = 64
DIGITS_IMAGE_SIZE = 64
FOLDER_IMAGE_SIZE = 224
# Beyond this, torch's seeding overflows.
MAX_SEED = 2**32 - 1
# The integer fields for which None means "the default".
OPTIONAL_COUNTS = ("epochs", "limit_train_batches", "workers", "threads")


@dataclass
class TrainConfig:
    """Everything that defines a training run; defaults train on the embedded digits.

    ``recipe`` names the recipe (:data:`~shufflenet.train.recipe.RECIPES`, or ``auto``: by the
    data and whether the run starts from weights) that fills every field left ``None`` among
    ``optimizer``, ``lr``, ``schedule``, ``warmup_epochs``, ``weight_decay``,
    ``label_smoothing``, the augmentation parts, ``ema_decay``, ``repeats``, ``train_size``,
    ``val_resize`` and the length. ``lr`` is the peak learning rate; the recipe's is stated for
    a batch of 1024 and scaled linearly to ``batch_size`` (the global batch across processes):
    the paper's 0.5 gives 0.015625 for 32.
    ``image_size`` ``None`` means 64 for digits and 224 for folders: the evaluation crop and the
    model's input, cut from the shorter side resized to ``val_resize``; training crops are
    ``train_size``. ``auto_augment`` adds a policy (trivialaugment, randaugment) to
    ``augment``'s level, ``random_erase`` erases a rectangle with that probability; ``mixup`` and
    ``cutmix`` are the alphas of batch mixing (0: off; both: one of the two per batch), the
    labels mixed as the images are, label smoothing on top; ``ema_decay`` (0: off) keeps an
    exponential moving average of the weights, per step, which is validated and saved (``None``
    with a recipe that has EMA: chosen from the run's length); ``repeats`` > 1 samples each
    image that many times per epoch, augmented anew (repeated augmentation; an epoch keeps its
    length). ``teacher`` distils a teacher's outputs into the model (``distill_alpha`` of the
    loss is the KL divergence at ``distill_temperature``; see
    :func:`shufflenet.train.teacher.load_teacher`). ``workers`` ``None`` means 0
    for digits (held in memory) and ``min(8, cores per process)`` for folders.
    ``threads`` sets PyTorch's CPU threads for the run; ``None`` on CPU means
    :func:`shufflenet.device.idle_threads` (the checkpoint records the number, so a CLI resume
    reuses it). ``limit_train_batches`` caps the batches per epoch (quick trials).
    ``fast`` trains the shuffle-free form of V1 and V2 (:func:`shufflenet.train.train_model`,
    the same function and the same SGD trajectory up to float rounding; checkpoints and the
    weights file hold the standard layout); ``compile`` runs the training step's forward and
    loss through ``torch.compile``, whose AOTAutograd compiles the backward too.
    ``qat`` trains with int8 simulated, from ``init_weights`` or ``pretrained``
    (:mod:`shufflenet.train.qat`: BN statistics freeze mid-run, so no EMA and no final BN pass).
    ``epochs`` ``None`` chooses the length from the data: about 600 optimizer steps, 15 to 200
    epochs (:func:`~shufflenet.train.schedule.choose_epochs`; 15 for digits); the run logs the
    choice and its checkpoint records it.
    ``bn_recalibrate`` is the number of batches for the final BN-statistics pass, as the
    official release does (0: none). ``init_weights`` starts from a ``shufflenet.save`` file of
    the same architecture (fine-tuning; a classifier of another size is replaced), and
    ``pretrained`` (``True`` or a source name) from the weights published for ``model``
    (:mod:`shufflenet.hub`), the same way; ``freeze_stages`` K >= 0 then keeps the stem and the
    first K stages as loaded, weights and BN statistics (-1: nothing frozen; see
    :mod:`shufflenet.models.backbone`).
    """

    model: str = "shufflenet_v2_x0_5"
    data: str = DIGITS
    out: str | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    label_smoothing: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    image_size: int | None = None
    augment: str = "auto"
    drop_rate: float = 0.0
    recipe: str = "auto"
    auto_augment: str | None = None
    random_erase: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    ema_decay: float | None = None
    repeats: int | None = None
    train_size: int | None = None
    val_resize: int | None = None
    teacher: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0
    bn_recalibrate: int = 20
    init_weights: str | None = None
    pretrained: bool | str = False
    freeze_stages: int = -1
    limit_train_batches: int | None = None
    skip_bad_images: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None
    amp: bool = False
    channels_last: bool = False
    fast: bool = False
    qat: bool = False
    compile: bool = False
    progress: bool = True
    resume: bool = False

    @property
    def recipe_name(self) -> str:
        """The recipe this config trains with: ``recipe``, or the one ``auto`` picks for its
        data, its start (weights or scratch) and ``qat``."""
        start = bool(self.init_weights or self.pretrained)
        return choose_recipe(self.recipe, self.data == DIGITS, start, self.qat)

    def validated(self) -> TrainConfig:
        """A copy with ``image_size`` and ``lr`` resolved; raises ``ValueError`` naming the
        field on a bad setting (of a wrong type, out of range, or not finite)."""
        get_model_info(self.model)
        for name in ("epochs", "batch_size", "limit_train_batches"):
            value = getattr(self, name)
            if not (_is_int(value, 1) or (value is None and name in OPTIONAL_COUNTS)):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, low, high in (
            ("bn_recalibrate", 0, None),
            ("seed", 0, MAX_SEED),
            ("workers", 0, MAX_THREADS),
            ("threads", 1, MAX_THREADS),
        ):
            value = getattr(self, name)
            if not (_is_int(value, low, high) or (value is None and name in OPTIONAL_COUNTS)):
                span = f">= {low}" if high is None else f"in {low}..{high}"
                raise ValueError(f"{name} must be an integer {span}, got {value!r}")
        if not _is_int(self.freeze_stages, -1):
            raise ValueError(
                "freeze_stages must be an integer >= -1 (-1: none, 0: the stem, K: the stem and "
                f"the first K stages), got {self.freeze_stages!r}"
            )
        if not isinstance(self.pretrained, bool | str) or self.pretrained == "":
            raise ValueError(f"pretrained must be true, false or a source, got {self.pretrained!r}")
        if self.pretrained is not False and self.init_weights:
            raise ValueError("init_weights and pretrained both choose the start: give one")
        if self.freeze_stages >= 0 and not (self.init_weights or self.pretrained):
            raise ValueError(
                f"freeze_stages {self.freeze_stages} needs init_weights or pretrained: frozen "
                "layers keep the weights they start from, and random ones are of no use"
            )
        if not isinstance(self.recipe, str) or not (
            self.recipe == "auto" or self.recipe in RECIPES
        ):
            raise ValueError(
                f"recipe must be one of auto, {', '.join(RECIPES)}, got {self.recipe!r}"
            )
        size = self.image_size
        if size is None:
            size = DIGITS_IMAGE_SIZE if self.data == DIGITS else FOLDER_IMAGE_SIZE
        check_input_size(size, "image_size")
        filled = recipe_values(
            self.recipe_name,
            {f.name: getattr(self, f.name) for f in fields(self)},
            batch_size=self.batch_size,
            image_size=size,
            digits=self.data == DIGITS,
        )
        config = replace(self, image_size=size, **filled)
        if self.qat:
            config = replace(config, **_qat_settings(self))
        config._check_parts()
        resolve_device(self.device)
        return replace(config, lr=float(cast(float, config.lr)))

    def _check_parts(self) -> None:
        """``ValueError`` naming the first recipe part that is out of range."""
        _check_real("lr", self.lr, 0.0, inclusive=False)
        for name in ("weight_decay", "warmup_epochs", "mixup", "cutmix"):
            _check_real(name, getattr(self, name), 0.0)
        for name in ("momentum", "label_smoothing", "drop_rate", "random_erase"):
            _check_real(name, getattr(self, name), 0.0, 1.0)
        if self.ema_decay is not None:
            _check_real("ema_decay", self.ema_decay, 0.0, 1.0)
        _check_real("distill_alpha", self.distill_alpha, 0.0)
        if self.distill_alpha > 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}")
        _check_real("distill_temperature", self.distill_temperature, 0.0, inclusive=False)
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            raise ValueError(f"teacher must be a model name or a file, got {self.teacher!r}")
        if not _is_int(self.repeats, 1, MAX_REPEATS):
            raise ValueError(
                f"repeats must be an integer in 1..{MAX_REPEATS}, got {self.repeats!r}"
            )
        for name, table in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("augment", AUGMENTATIONS),
            ("auto_augment", AUTO_AUGMENTS),
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in table:
                raise ValueError(f"{name} must be one of {', '.join(table)}, got {value!r}")
        check_input_size(cast(int, self.train_size), "train_size")
        check_input_size(cast(int, self.val_resize), "val_resize")
        if cast(int, self.val_resize) < cast(int, self.image_size):
            raise ValueError(
                f"val_resize {self.val_resize} is smaller than the evaluation crop image_size "
                f"{self.image_size}"
            )


def _qat_settings(config: TrainConfig) -> dict[str, Any]:
    """What ``qat`` sets over the recipe (no EMA, no final BN pass); ``ValueError`` for what
    ``config`` (as given) asks and it cannot train with."""
    if not (config.init_weights or config.pretrained):
        raise ValueError("qat fine-tunes trained weights: give init_weights or pretrained")
    for name in ("compile", "amp", "channels_last"):
        if getattr(config, name):
            raise ValueError(f"qat trains without {name}")
    if config.ema_decay:
        raise ValueError(f"qat trains without an EMA, got ema_decay {config.ema_decay}")
    return {"ema_decay": 0.0, "bn_recalibrate": 0}


def _is_int(value: Any, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return low <= value and (high is None or value <= high)


def _check_real(
    name: str, value: Any, low: float, high: float | None = None, *, inclusive: bool = True
) -> None:
    """``ValueError`` unless ``value`` is a finite number >= ``low`` (> with ``inclusive``
    False) and, if given, < ``high``."""
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int too large for a float stays nan
            number = float(value)
    above = number >= low if inclusive else number > low
    if not (math.isfinite(number) and above and (high is None or number < high)):
        if high is not None:
            span = f"in [{low:g}, {high:g})"
        else:
            span = f"{'>=' if inclusive else '>'} {low:g} and finite"
        raise ValueError(f"{name} must be {span}, got {value!r}")


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The config of the run in ``run_dir``, from its checkpoint (to resume it)."""
    path = RunFiles(Path(run_dir)).checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {run_dir} ({path.name} not found)")
    saved = read_checkpoint(path)["config"]
    known = {f.name for f in fields(TrainConfig)}
    # a run from before named recipes trained with the paper's
    return TrainConfig(**{"recipe": "paper", **{k: v for k, v in saved.items() if k in known}})


def recipe_differences(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The recipe fields of ``config`` that differ from a checkpoint's ``saved`` config (a
    field that the checkpoint predates is not compared: the run went without it)."""
    return [
        f"{f.name} {getattr(config, f.name)!r} (checkpoint: {saved[f.name]!r})"
        for f in fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS
        and f.name in saved
        and getattr(config, f.name) != saved[f.name]
        and not (f.name in PLANNED_FIELDS and getattr(config, f.name) is None)  # as the run chose
    ]


def check_resume_classes(saved: Sequence[str], classes: Sequence[str], data: str) -> None:
    """``ValueError`` unless the ``classes`` of ``data`` are a checkpoint's ``saved`` ones, in
    the same order (a class index means the same class all run long)."""
    if list(saved) == list(classes):
        return
    only_data = sorted(set(classes) - set(saved))
    only_saved = sorted(set(saved) - set(classes))
    if only_data or only_saved:
        diff = (
            f"only in the data: {', '.join(only_data) or '-'}; "
            f"only in the checkpoint: {', '.join(only_saved) or '-'}"
        )
    else:
        diff = "the same classes in another order"
    raise ValueError(
        f"resume: the classes of {data} are not the run's ({diff}); the labels would change "
        "meaning mid-run: restore the class folders as they were, or start a new run"
    )


def checkpoint_to_resume(config: TrainConfig, files: RunFiles) -> dict[str, Any] | None:
    """The checkpoint of the run in ``files.dir`` to resume, or ``None`` for a new run; checks
    that the directory agrees with ``config.resume`` and, to resume, that the recipe does."""
    if not config.resume:
        if files.checkpoint.exists():
            raise ValueError(
                f"{files.dir} already holds a run; continue it with resume=True or choose "
                "another out"
            )
        return None
    if not files.checkpoint.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint in {files.dir} (start the run with resume=False first)"
        )
    checkpoint = read_checkpoint(files.checkpoint)
    diffs = recipe_differences(config, checkpoint["config"])
    if diffs:
        raise ValueError(
            "resume continues a run as it was started; these settings differ from "
            f"its checkpoint: {'; '.join(diffs)}"
        )
    return checkpoint
