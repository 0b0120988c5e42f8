"""Training curves: loss and accuracy against epoch, drawn with matplotlib (Agg) into a PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import atomic_path

__all__ = ["plot_curves"]


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    final_top1: float | None = None,
) -> Path:
    """Write ``curves.png``: train/val loss (left, log scale) and val top-1/top-5 in % (right).

    ``history`` holds one row per epoch with ``epoch``, ``train_loss``, ``val_loss``,
    ``val_top1`` and ``val_top5`` (fractions), as in ``metrics.csv``. ``final_top1`` is the
    top-1 after the last epoch's BN re-estimation, marked at the last epoch.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train (smoothed labels)")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    # Log scale: early epochs can be orders of magnitude above the rest.
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss", yscale="log")
    acc_ax.plot(epochs, [100 * r["val_top1"] for r in history], "o-", label="val top-1")
    acc_ax.plot(epochs, [100 * r["val_top5"] for r in history], "o-", label="val top-5")
    last = history[-1]["val_top1"] if history else None
    if final_top1 is not None and epochs:
        acc_ax.plot(
            [epochs[-1]], [100 * final_top1], "*", markersize=12, label="top-1, BN re-estimated"
        )
        last = final_top1
    title = "Accuracy" if last is None else f"Accuracy (final top-1 {100 * last:.2f}%)"
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    acc_ax.set_ylim(top=100.5)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
