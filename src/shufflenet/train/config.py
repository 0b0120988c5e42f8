"""What defines a training run: :class:`TrainConfig`, its checks and its defaults.

**Recipe** (V1 paper and the official release): SGD with momentum 0.9 and Nesterov off, a
linear warm-up then linear decay to 0 per step (cosine optional), weight decay 4e-5 on
convolution and linear weights only (not on BN parameters or biases), label smoothing 0.1, and
an optional pass that re-estimates the BN statistics at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..data import DIGITS
from ..device import resolve_device
from ..models import get_model_info
from .files import RunFiles, read_checkpoint

__all__ = [
    "SCHEDULES",
    "TrainConfig",
    "checkpoint_to_resume",
    "read_run_config",
    "recipe_differences",
]

SCHEDULES = ("linear", "cosine")
# Fields that may change when a run is resumed; every other field is the recipe.
RUNTIME_FIELDS = ("out", "device", "workers", "threads", "progress", "resume")
# The V1 paper: lr 0.5 for a batch of 1024, decayed linearly to 0.
PAPER_LR = 0.5
PAPER_BATCH = 1024
DIGITS_IMAGE_SIZE = 64
FOLDER_IMAGE_SIZE = 224


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
    ``bn_recalibrate`` is the number of batches for the final BN-statistics pass, as the
    official release does (0: none). ``init_weights`` starts from a ``shufflenet.save`` file of
    the same architecture (fine-tuning; a classifier of another size is replaced).
    """

    model: str = "shufflenet_v2_x0_5"
    data: str = DIGITS
    out: str | None = None
    epochs: int = 15
    batch_size: int = 32
    lr: float | None = None
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
    limit_train_batches: int | None = None
    skip_bad_images: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None
    amp: bool = False
    channels_last: bool = False
    progress: bool = True
    resume: bool = False

    def validated(self) -> TrainConfig:
        """A copy with ``image_size`` and ``lr`` resolved; raises ``ValueError`` on a bad
        setting."""
        get_model_info(self.model)
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "limit_train_batches": self.limit_train_batches,
        }
        for name, value in positive.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        lr = PAPER_LR * self.batch_size / PAPER_BATCH if self.lr is None else self.lr
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.bn_recalibrate < 0:
            raise ValueError("weight_decay, warmup_epochs and bn_recalibrate must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        size = self.image_size
        if size is None:
            size = DIGITS_IMAGE_SIZE if self.data == DIGITS else FOLDER_IMAGE_SIZE
        if size < 32:
            raise ValueError(f"image size must be at least 32 (five stride-2 steps), got {size}")
        resolve_device(self.device)
        return replace(self, image_size=size, lr=lr)


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The config of the run in ``run_dir``, from its checkpoint (to resume it)."""
    path = RunFiles(Path(run_dir)).checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {run_dir} ({path.name} not found)")
    saved = read_checkpoint(path)["config"]
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def recipe_differences(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The recipe fields of ``config`` that differ from a checkpoint's ``saved`` config."""
    return [
        f"{f.name} {getattr(config, f.name)!r} (checkpoint: {saved.get(f.name)!r})"
        for f in fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS and getattr(config, f.name) != saved.get(f.name)
    ]


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
