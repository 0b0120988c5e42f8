"""Rewrites: copies of a model that compute the same function, faster or in a form that graph
exporters handle well, for inference and (``train_model``) for training. The original model is
never modified.

* :func:`fuse_bn` (``fuse``) folds every BatchNorm into the convolution that feeds it.
* :func:`static_shuffles` (``static``) replaces the channel shuffles and splits of every unit by
  gathers (or reshapes for a fixed spatial size) and slices with constant indices.
* ``fastpath`` rewrites V1 and V2 into exactly equivalent graphs with no shuffle at all.
* :func:`optimize` (``inference``) makes a fast PyTorch module for CPU inference.
* :func:`train_model` (``train_fast``) is the shuffle-free form for training, with BatchNorm, that
  maps back to the standard model exactly (``to_standard``).
"""

from .fuse import fuse_bn
from .inference import OPTIMIZE_BACKENDS, has_cxx_compiler, optimize
from .static import static_shuffles
from .train_fast import TrainFastModel, train_model, train_model_support

__all__ = [
    "OPTIMIZE_BACKENDS",
    "TrainFastModel",
    "fuse_bn",
    "has_cxx_compiler",
    "optimize",
    "static_shuffles",
    "train_model",
    "train_model_support",
]
