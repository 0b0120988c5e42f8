"""How an exported file is checked: it and the PyTorch model run on the same sample inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..verification import FP32_TOLERANCE, Verification, compare_outputs
from .metadata import sample_inputs
from .runtime import OpenedModel

__all__ = ["compare_with_model", "verify_opened"]


def compare_with_model(
    model: nn.Module,
    run: Callable[[Tensor], Any],
    engine: str,
    batch_sizes: Sequence[int],
    metadata: dict[str, Any],
    input_size: Sequence[int] | None,
    tolerance: float,
) -> Verification:
    """``run`` (an exported file in its runtime) against ``model``, one input per batch size.

    The inputs are :func:`~shufflenet.export.sample_inputs` of the file's ``metadata``.
    """
    model = model.eval()
    in_chans = int(metadata["model_config"].get("in_chans", 3))
    pairs = []
    for i, batch in enumerate(batch_sizes):
        x = sample_inputs(batch, in_chans, metadata["preprocessing"], input_size, seed=i)
        with torch.no_grad():
            expected = model(x).numpy()
        pairs.append((np.asarray(run(x)), expected))
    return compare_outputs(engine, pairs, batch_sizes, tolerance)


def verify_opened(
    opened: OpenedModel,
    model: nn.Module,
    tolerance: float = FP32_TOLERANCE,
    batch_sizes: Sequence[int] | None = None,
) -> Verification:
    """``opened`` (an export in its runtime) next to ``model`` on the same sample inputs, at
    ``batch_sizes`` (default: the file's fixed batch, or 1 and 3)."""
    if batch_sizes is None:
        batch_sizes = (1, 3) if opened.batch is None else (opened.batch,)
    return compare_with_model(
        model,
        opened,
        opened.engine,
        batch_sizes,
        opened.metadata,
        opened.input_size,
        tolerance,
    )
