"""What an int8 export reports, in every format that has one: what the int8 file costs and gains
next to the fp32 one (:class:`Int8Report`), and the file with that report (:class:`Int8Result`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .int8_errors import LayerError, sqnr_db_by_kind

__all__ = ["Int8Report", "Int8Result", "output_error"]


def output_error(fp32: np.ndarray, int8: np.ndarray) -> float:
    """The relative L2 distance of ``int8``'s outputs from ``fp32``'s."""
    reference = float(np.linalg.norm(fp32))
    return float(np.linalg.norm(int8 - fp32)) / max(reference, 1e-30)


@dataclass
class Int8Report:
    """What int8 costs and gains next to fp32, on the same images and machine.
    ``output_error`` is the relative L2 distance of the int8 file's logits from fp32's over all
    the images (``||int8 - fp32|| / ||fp32||``)."""

    fp32_bytes: int
    int8_bytes: int
    fp32_ms: float
    int8_ms: float
    images: int
    agreement: float
    fp32_top1: float | None
    int8_top1: float | None
    threads: int
    output_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Int8Result:
    """An int8 file: its weight scheme, what it costs next to the fp32 file, and each quantized
    activation's error, worst first (ONNX's; empty for the other formats). ``min_agreement`` is
    the top-1 agreement with fp32 it must reach (a fraction; None: no threshold)."""

    path: Path
    calib: str
    weights: str
    report: Int8Report
    layers: list[LayerError]
    min_agreement: float | None = None

    @property
    def passed(self) -> bool:
        """Whether the agreement reaches ``min_agreement`` (True without a threshold)."""
        return self.min_agreement is None or self.report.agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the path, calibration set and weights, the report's fields, the
        threshold and whether it passed, the medians by kind and the five weakest activations."""
        return {
            "path": str(self.path),
            "calib": self.calib,
            "weights": self.weights,
            **self.report.to_dict(),
            "min_agreement": self.min_agreement,
            "passed": self.passed,
            "sqnr_db_by_kind": sqnr_db_by_kind(self.layers),
            "weakest_layers": [asdict(layer) for layer in self.layers[:5]],
        }
