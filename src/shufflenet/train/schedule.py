"""The optimizer's recipe: the optimizers and lr decays by name (``OPTIMIZERS``, ``SCHEDULES``:
adding one is a row, which ``TrainConfig`` and ``shufflenet train`` then accept), the per-step
learning-rate schedule, the weight-decay groups and the run's default length."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "STEP_BUDGET",
    "choose_epochs",
    "lr_factor",
    "lr_scheduler",
    "param_groups",
    "warmup_steps",
]

ParamGroups = list[dict[str, Any]]


def _sgd(groups: ParamGroups, lr: float, momentum: float) -> Optimizer:
    """SGD with momentum, Nesterov off (the papers')."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def _sgd_nesterov(groups: ParamGroups, lr: float, momentum: float) -> Optimizer:
    """SGD with Nesterov momentum."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def _adamw(groups: ParamGroups, lr: float, momentum: float) -> Optimizer:
    """AdamW, ``momentum`` as its first beta (decoupled weight decay, per group)."""
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


# name -> factory(param_groups(...), peak lr, momentum); ``TrainConfig.optimizer`` picks one.
# Each group carries its own ``weight_decay``. An optimizer that updates every entry on its own
# also trains the shuffle-free form (``fast``) exactly as the standard model.
OPTIMIZERS: dict[str, Callable[[ParamGroups, float, float], Optimizer]] = {
    "sgd": _sgd,
    "sgd_nesterov": _sgd_nesterov,
    "adamw": _adamw,
}

# name -> the lr factor after warm-up as a function of the decay's progress, 0 to 1 (past 1: the
# run is over); ``TrainConfig.schedule`` picks one.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
}

# Without --epochs, a run makes about STEP_BUDGET optimizer steps, in MIN_EPOCHS to MAX_EPOCHS
# epochs: digits (44 batches of 32) keeps 15 epochs, while a folder of 360 photos (11 batches)
# gets 55 instead of the 165 steps that a fixed 15 epochs would give it.
STEP_BUDGET = 600
MIN_EPOCHS = 15
MAX_EPOCHS = 200


def choose_epochs(steps_per_epoch: int, budget: int = STEP_BUDGET) -> int:
    """The default run length for ``steps_per_epoch`` optimizer steps per epoch: enough epochs
    for ``budget`` steps (a recipe's; :data:`STEP_BUDGET` by default), within
    ``MIN_EPOCHS..MAX_EPOCHS``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(budget / steps_per_epoch)))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear") -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` steps, then the decay ``schedule`` (a key of
    :data:`SCHEDULES`: linear or cosine, reaching 0 after the last step).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return SCHEDULES[schedule]((step - warmup_steps) / max(1, total_steps - warmup_steps))


def warmup_steps(epochs: int, steps_per_epoch: int, warmup_epochs: float) -> int:
    """The warm-up's optimizer steps: ``warmup_epochs``, but at most a fifth of the run."""
    return min(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch // 5)


def lr_scheduler(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    schedule: str,
) -> LambdaLR:
    """:func:`lr_factor` per step over ``epochs``, after :func:`warmup_steps` of warm-up."""
    total = epochs * steps_per_epoch
    warmup = warmup_steps(epochs, steps_per_epoch, warmup_epochs)

    # A plain function, not a partial: LambdaLR keeps only callable objects' state in its
    # state_dict, and the checkpoint format stays as it is.
    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, schedule)

    return LambdaLR(optimizer, factor)


def param_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    """Two groups: weights of convolutions and linear layers decay; BN and biases don't."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
