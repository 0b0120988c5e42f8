"""The networks: channel ops, shared blocks, the registry, and one module per family.

Importing this package registers every family (a new family is a module here, imported below);
``import shufflenet`` then makes them timm models too, where timm is installed
(:mod:`.timm_interop`).
"""

from . import v1, v2, v2_large, v2_plus
from .backbone import FeatureInfo, ShuffleNetFeatures
from .base import AuxOutputs
from .registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    register_model,
    register_models,
)

__all__ = [
    "AuxOutputs",
    "FeatureInfo",
    "ModelInfo",
    "ShuffleNetFeatures",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
    "register_models",
    "v1",
    "v2",
    "v2_large",
    "v2_plus",
]
