"""The files of a run directory, each written atomically by rank 0.

- ``checkpoint.pt``: model, optimizer, scheduler, grad scaler, epoch, metrics history and every
  RNG state (of each process), after every epoch. Plain tensors and containers, read back with
  ``torch.load(weights_only=True)``;
- ``model.safetensors``: weights plus metadata (architecture, classes, preprocessing), for
  ``shufflenet.load``, ``shufflenet eval`` and ``predict``;
- ``metrics.csv`` (one line per finished epoch) and ``curves.png``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path, write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_COLUMNS",
    "RunFiles",
    "default_run_dir",
    "read_checkpoint",
    "write_checkpoint",
    "write_metrics",
]

CHECKPOINT_FORMAT = "shufflenet-checkpoint/1"
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "seconds",
    "images_per_s",
)


@dataclass(frozen=True)
class RunFiles:
    """Where a run in ``dir`` keeps each of its files."""

    dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.dir / "curves.png"


def default_run_dir(model: str) -> Path:
    """``runs/MODEL``, or the first of ``runs/MODEL-2``, ``-3``, ... that does not exist."""
    base = Path("runs") / model
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The contents of a ``checkpoint.pt``; ``ValueError`` for a damaged or foreign file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say so in one line
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a shufflenet training checkpoint")
    return ckpt


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plain tensors and containers) as a checkpoint, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def write_metrics(path: Path, history: Sequence[dict[str, float]]) -> None:
    """Write ``metrics.csv``: one row per epoch, the columns of :data:`METRIC_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())
