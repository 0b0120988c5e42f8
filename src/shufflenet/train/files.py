"""The files of a run directory, each written atomically by rank 0.

- ``checkpoint.pt``: model, optimizer, scheduler, grad scaler, epoch, metrics history and every
  RNG state (of each process), after every epoch. Plain tensors and containers, read back with
  ``torch.load(weights_only=True)``;
- ``model.safetensors``: weights plus metadata (architecture, classes, preprocessing), for
  ``shufflenet.load``, ``shufflenet eval`` and ``predict``;
- ``metrics.csv`` (one line per finished epoch) and ``curves.png``;
- ``.lock`` while a run holds the directory (:func:`lock_run_dir`, :func:`hold_run_dir`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path, check_output_path, remove_stale_temps, write_text
from ..weights import error_reason
from .distributed import Dist, broadcast

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_COLUMNS",
    "RunFiles",
    "default_run_dir",
    "hold_run_dir",
    "lock_run_dir",
    "read_checkpoint",
    "write_checkpoint",
    "write_metrics",
]

CHECKPOINT_FORMAT = "shufflenet-checkpoint/1"
# Attempts at the run dir's lock while other runs remove the .lock or folders they made.
LOCK_TRIES = 100
# What every checkpoint holds besides its format.
CHECKPOINT_KEYS = (
    "config",
    "epoch",
    "world_size",
    "classes",
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "history",
)
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

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file the run writes."""
        return (self.checkpoint, self.model, self.metrics, self.curves)


def default_run_dir(model: str) -> Path:
    """``runs/MODEL``, or the first of ``runs/MODEL-2``, ``-3``, ... that does not exist."""
    base = Path("runs") / model
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``flock`` on its ``.lock`` file) for the block.

    ``ValueError`` at once if another run holds it. The kernel releases the lock when the
    process ends, however it ends; the block's end also removes ``.lock``, and the folders this
    call created if they are still empty (a run that failed before writing anything).
    """
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    lock = RunFiles(run_dir).lock
    for _ in range(LOCK_TRIES):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except (FileNotFoundError, FileExistsError):
            if run_dir.exists() and not run_dir.is_dir():
                raise
            continue  # a run that held it is removing the folders it made
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"another training run holds {run_dir} (its lock {lock} is taken); wait for "
                "it to end or choose another out"
            ) from None
        except OSError as e:
            os.close(fd)
            raise OSError(e.errno, f"cannot lock the run dir {run_dir}: {e.strerror}") from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # locked a .lock that its run removed meanwhile: take the new one
    else:
        raise OSError(
            errno.EBUSY, f"cannot lock the run dir {run_dir}: other runs keep removing it"
        )
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                break


@contextlib.contextmanager
def hold_run_dir(files: RunFiles, ctx: Dist) -> Iterator[None]:
    """Rank 0 checks that the run dir can be written, locks it for the block and removes the
    temporary files of a killed run; every process raises rank 0's error if it cannot."""
    with contextlib.ExitStack() as stack:
        error: Exception | None = None
        if ctx.is_main:
            try:
                check_output_path(files.checkpoint, "out")
                stack.enter_context(lock_run_dir(files.dir))
                for path in files.outputs:
                    remove_stale_temps(path)
            except (ValueError, OSError) as e:
                error = e
        message = broadcast(None if error is None else str(error), ctx)
        if error is not None:
            raise error
        if message is not None:
            raise ValueError(message)
        yield


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The contents of a ``checkpoint.pt``; ``ValueError`` for a damaged or foreign file, in one
    line that quotes nothing from the file unescaped."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text quotes the file and advises unsafe loading
        raise ValueError(
            f"{path} is not a shufflenet training checkpoint: it is corrupt or holds objects "
            "other than tensors and plain values, which are never unpickled"
        ) from None
    except Exception as e:  # a truncated or damaged file: say so in one line
        raise ValueError(
            f"cannot read checkpoint {path} (truncated or corrupt): {error_reason(e)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a shufflenet training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is damaged: it lacks {', '.join(missing)}")
    if not isinstance(ckpt["config"], dict):
        raise ValueError(f"checkpoint {path} is damaged: its config is not a mapping")
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
