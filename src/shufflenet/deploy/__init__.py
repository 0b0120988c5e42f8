"""Rewrites: copies of a model that compute the same function, faster or in a form that graph
exporters handle well. The original model is never modified.

* :func:`fuse_bn` (``fuse``) folds every BatchNorm into the convolution that feeds it.
* :func:`static_shuffles` (``static``) replaces the channel shuffles and splits of every unit by
  gathers (or reshapes for a fixed spatial size) and slices with constant indices.
* ``fastpath`` rewrites V1 and V2 into exactly equivalent graphs with no shuffle at all.
* :func:`optimize` (``inference``) makes a fast PyTorch module for CPU inference.

The shuffle-free training form lives with training (:mod:`shufflenet.train.fast`);
``shufflenet.deploy.train_model``, ``TrainFastModel`` and ``train_model_support`` still name it.
"""

from typing import Any

from .fuse import fuse_bn
from .inference import OPTIMIZE_BACKENDS, has_cxx_compiler, optimize
from .static import static_shuffles

__all__ = [
    "OPTIMIZE_BACKENDS",
    "fuse_bn",
    "has_cxx_compiler",
    "optimize",
    "static_shuffles",
]

# Names that moved to a higher layer, kept importable from here for code that uses the old path.
_MOVED_TO_TRAIN = ("TrainFastModel", "train_model", "train_model_support")


def __getattr__(name: str) -> Any:
    """The moved names, imported on first use (``deploy`` itself never needs ``train``)."""
    if name in _MOVED_TO_TRAIN:
        from ..train import fast

        return getattr(fast, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
