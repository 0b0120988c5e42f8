"""The optimizer's recipe: the per-step learning-rate schedule and the weight-decay groups."""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["STEP_BUDGET", "choose_epochs", "lr_factor", "lr_scheduler", "param_groups"]

# Without --epochs, a run makes about STEP_BUDGET optimizer steps, in MIN_EPOCHS to MAX_EPOCHS
# epochs: digits (44 batches of 32) keeps 15 epochs, while a folder of 360 photos (11 batches)
# gets 55 instead of the 165 steps that a fixed 15 epochs would give it.
STEP_BUDGET = 600
MIN_EPOCHS = 15
MAX_EPOCHS = 200


def choose_epochs(steps_per_epoch: int) -> int:
    """The default run length for ``steps_per_epoch`` optimizer steps per epoch: enough epochs
    for :data:`STEP_BUDGET` steps, within ``MIN_EPOCHS..MAX_EPOCHS``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(STEP_BUDGET / steps_per_epoch)))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear") -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` steps, then linear (or cosine) decay that reaches 0
    after the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def lr_scheduler(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    schedule: str,
) -> LambdaLR:
    """:func:`lr_factor` per step over ``epochs``, with a short warm-up: ``warmup_epochs``, but
    at most a fifth of the run."""
    total = epochs * steps_per_epoch
    warmup = min(round(warmup_epochs * steps_per_epoch), total // 5)

    # A plain function, not a partial: LambdaLR keeps only callable objects' state in its
    # state_dict, and the checkpoint format stays as it is.
    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, schedule)

    return LambdaLR(optimizer, factor)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: weights of convolutions and linear layers decay; BN and biases don't."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
