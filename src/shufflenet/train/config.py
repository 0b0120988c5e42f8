"""What defines a training run: :class:`TrainConfig`, its checks and its defaults.

**Recipe** (V1 paper and the official release): SGD with momentum 0.9 and Nesterov off, a
linear warm-up then linear decay to 0 per step (cosine optional), weight decay 4e-5 on
convolution and linear weights only (not on BN parameters or biases), label smoothing 0.1, and
an optional pass that re-estimates the BN statistics at the end. ``optimizer`` and ``schedule``
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
from typing import Any

from ..data import AUGMENTATIONS, DIGITS
from ..device import resolve_device
from ..limits import MAX_THREADS
from ..models import get_model_info
from ..preprocessing import check_input_size
from .files import RunFiles, read_checkpoint
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
# The V1 paper: lr 0.5 for a batch of 1024, decayed linearly to 0.
PAPER_LR = 0.5
PAPER_BATCH = 1024
DIGITS_IMAGE_SIZE = 64
FOLDER_IMAGE_SIZE = 224
# Beyond this, torch's seeding overflows.
MAX_SEED = 2**32 - 1
# The integer fields for which None means "the default".
OPTIONAL_COUNTS = ("epochs", "limit_train_batches", "workers", "threads")


@dataclass
class TrainConfig:
    """Everything that defines a training run; defaults train on the embedded digits.

    ``lr`` is the peak learning rate; ``None`` scales the paper's 0.5 for a batch of 1024
    linearly to ``batch_size`` (the global batch across processes): 0.015625 for 32.
    ``image_size`` ``None`` means 64 for digits and 224 for folders. ``workers`` ``None`` means 0
    for digits (held in memory) and ``min(8, cores per process)`` for folders.
    ``threads`` sets PyTorch's CPU threads for the run; ``None`` on CPU means
    :func:`shufflenet.device.idle_threads` (the checkpoint records the number, so a CLI resume
    reuses it). ``limit_train_batches`` caps the batches per epoch (quick trials).
    ``fast`` trains the shuffle-free form of V1 and V2 (:func:`shufflenet.train.train_model`,
    the same function and the same SGD trajectory up to float rounding; checkpoints and the
    weights file hold the standard layout); ``compile`` runs the training step's forward and
    loss through ``torch.compile``, whose AOTAutograd compiles the backward too.
    ``epochs`` ``None`` chooses the length from the data: about 600 optimizer steps, 15 to 200
    epochs (:func:`~shufflenet.train.schedule.choose_epochs`; 15 for digits); the run logs the
    choice and its checkpoint records it.
    ``bn_recalibrate`` is the number of batches for the final BN-statistics pass, as the
    official release does (0: none). ``init_weights`` starts from a ``shufflenet.save`` file of
    the same architecture (fine-tuning; a classifier of another size is replaced);
    ``freeze_stages`` K >= 0 then keeps the stem and the first K stages as loaded, weights and
    BN statistics (-1: nothing frozen; see :mod:`shufflenet.models.backbone`).
    """

    model: str = "shufflenet_v2_x0_5"
    data: str = DIGITS
    out: str | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    schedule: str = "linear"
    warmup_epochs: float = 1.0
    image_size: int | None = None
    augment: str = "auto"
    drop_rate: float = 0.0
    bn_recalibrate: int = 20
    init_weights: str | None = None
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
    compile: bool = False
    progress: bool = True
    resume: bool = False

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
        if self.freeze_stages >= 0 and not self.init_weights:
            raise ValueError(
                f"freeze_stages {self.freeze_stages} needs init_weights: frozen layers keep "
                "the weights they start from, and random ones are of no use"
            )
        lr = PAPER_LR * self.batch_size / PAPER_BATCH if self.lr is None else self.lr
        _check_real("lr", lr, 0.0, inclusive=False)
        for name in ("weight_decay", "warmup_epochs"):
            _check_real(name, getattr(self, name), 0.0)
        for name in ("momentum", "label_smoothing", "drop_rate"):
            _check_real(name, getattr(self, name), 0.0, 1.0)
        for name, table in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in table:
                raise ValueError(f"{name} must be one of {', '.join(table)}, got {value!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"
            )
        size = self.image_size
        if size is None:
            size = DIGITS_IMAGE_SIZE if self.data == DIGITS else FOLDER_IMAGE_SIZE
        check_input_size(size, "image_size")
        resolve_device(self.device)
        return replace(self, image_size=size, lr=float(lr))


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
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def recipe_differences(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The recipe fields of ``config`` that differ from a checkpoint's ``saved`` config (a
    field that the checkpoint predates counts as its default)."""
    return [
        f"{f.name} {getattr(config, f.name)!r} (checkpoint: {saved.get(f.name, f.default)!r})"
        for f in fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS
        and getattr(config, f.name) != saved.get(f.name, f.default)
        and not (f.name == "epochs" and config.epochs is None)  # None: as the run chose
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
