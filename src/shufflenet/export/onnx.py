"""ONNX: the one call of PyTorch's ONNX exporter that every ONNX file here goes through."""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_OPSET", "OPSETS", "to_onnx"]

DEFAULT_OPSET = 17
# The TorchScript-based ONNX exporter supports these opsets; per-channel int8 needs 13 or more.
OPSETS = range(9, 21)


def to_onnx(
    module: nn.Module,
    example: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    output_name: str = "output",
) -> bytes:
    """``module`` traced on ``example`` as ONNX bytes: input ``input``, one output, the batch
    axis dynamic unless ``dynamic_batch`` is False. Any module; nothing is checked or added."""
    if opset not in OPSETS:
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The exporter's deprecation notice, and TracerWarnings from input checks that only
        # read static shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=[output_name],
            dynamic_axes=axes,
        )
    return buffer.getvalue()
