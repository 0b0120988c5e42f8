"""What :func:`~shufflenet.train.fit` reports: :class:`StepProgress` after every optimizer
step, and the :class:`FitResult` of the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..evaluate import EvalResult

__all__ = ["FitResult", "StepProgress"]


@dataclass(frozen=True)
class StepProgress:
    """Where a run is after an optimizer step, as :func:`fit` reports it to ``progress``.

    ``step`` of ``steps`` (per epoch) and ``epoch`` of ``epochs`` count from 1. ``loss`` (this
    epoch's mean training loss so far, on this process's batches), ``lr`` and ``images_per_s``
    (all processes) are measured every :data:`MEASURE_EVERY` steps and at the epoch's last
    step, ``None`` in between.
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    lr: float | None = None
    images_per_s: float | None = None


@dataclass
class FitResult:
    """Where a run wrote its outputs and how it ended (``is_main``: rank 0 of the run)."""

    run_dir: Path
    model_path: Path
    checkpoint_path: Path
    metrics_path: Path
    curves_path: Path
    epochs: int
    final: EvalResult
    history: list[dict[str, float]]
    seconds: float
    is_main: bool = True
    resumed_from: int | None = None
    skipped_images: list[str] = field(default_factory=list)
