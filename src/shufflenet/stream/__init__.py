"""Prediction over large image collections: streamed on one machine (:func:`predict_to_file`,
:func:`iter_predictions`), or as a Ray Data pipeline (:func:`predict_on_ray`), written as CSV,
JSON Lines or Parquet rows (:mod:`shufflenet.stream.files`) and continued after an
interruption.
"""

from .files import columns, read_rows
from .local import (
    StreamProgress,
    StreamResult,
    iter_images,
    iter_predictions,
    predict_to_file,
)
from .raydata import predict_on_ray

__all__ = [
    "StreamProgress",
    "StreamResult",
    "columns",
    "iter_images",
    "iter_predictions",
    "predict_on_ray",
    "predict_to_file",
    "read_rows",
]
