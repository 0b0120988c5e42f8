"""Engines are checked against PyTorch before they are timed: a wrong one is never timed.

The reference is the model in eager PyTorch, fp32, on the CPU. On a GPU, cuDNN's convolutions
run in TF32 by default (10-bit mantissas, about 1e-3 relative error), hence a looser tolerance.
"""

from __future__ import annotations

import numpy as np

from ..verification import FP32_TOLERANCE, compare_outputs

__all__ = ["TOLERANCE", "WrongOutputs", "check_output", "runner_label"]

TOLERANCE = {"cpu": FP32_TOLERANCE, "cuda": 1e-2}  # by device type


class WrongOutputs(ValueError):
    """An engine computed a model wrong: it is not timed, and nothing is reported for it."""


def runner_label(key: object) -> str:
    """A runner key for messages: ("shufflenet_v2_x1_0", "torchvision") reads as words."""
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def check_output(
    engine: str, label: str, got: np.ndarray, expected: np.ndarray, device: str = "cpu"
) -> None:
    """Raise :class:`WrongOutputs` unless ``got`` matches PyTorch's ``expected`` output within
    the :data:`TOLERANCE` of the ``device`` type (``cpu`` or ``cuda``)."""
    check = compare_outputs(engine, [(got, expected)], (len(expected),), TOLERANCE[device])
    if not check.passed:
        raise WrongOutputs(f"{engine} computes {label} wrong, not timing it: {check.summary()}")
