"""Whether a runtime computes what PyTorch computes: the one output check of exports and bench.

The largest absolute difference is compared with ``tolerance`` times the largest output
magnitude. Relative, because float32 rounding grows with the outputs, while a real graph bug (a
wrong shuffle, a misfolded BatchNorm, a runtime's miscompiled pattern) shows up at the outputs'
own scale: an absolute 1e-4 would fail large-logit models and let anything pass for a fresh
model, whose logits may be ~1e-5. Non-finite values, on either side, never pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FP32_TOLERANCE", "Verification", "compare_outputs"]

FP32_TOLERANCE = 1e-4


@dataclass
class Verification:
    """Largest absolute difference between a runtime and PyTorch on the same inputs."""

    engine: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_abs_output: float
    tolerance: float

    @property
    def allowed(self) -> float:
        return self.tolerance * self.max_abs_output

    @property
    def finite(self) -> bool:
        return math.isfinite(self.max_abs_diff) and math.isfinite(self.max_abs_output)

    @property
    def passed(self) -> bool:
        return self.finite and self.max_abs_diff <= self.allowed

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        if not self.finite:
            verdict += " (non-finite outputs)"
        return (
            f"{self.engine} vs PyTorch, batch {'/'.join(map(str, self.batch_sizes))}: "
            f"max |diff| {self.max_abs_diff:.3g}, allowed {self.allowed:.3g} "
            f"({self.tolerance:g} x max |output| {self.max_abs_output:.3g}): {verdict}"
        )


def compare_outputs(
    engine: str,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_sizes: Sequence[int],
    tolerance: float = FP32_TOLERANCE,
) -> Verification:
    """Check (got, expected) output pairs, one per batch; NaN or inf anywhere fails."""
    diffs, outputs = [], []
    for got, expected in pairs:
        got = np.asarray(got, dtype=np.float32).reshape(expected.shape)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, which fails as it should
            diffs.append(float(np.abs(got - expected).max()))  # NaN propagates, unlike max()
        outputs.append(float(np.abs(expected).max()))
    return Verification(
        engine, tuple(batch_sizes), float(np.max(diffs)), float(np.max(outputs)), tolerance
    )
