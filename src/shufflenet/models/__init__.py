"""The networks: channel ops, shared blocks, the registry, and one module per family.

Importing this package registers every family (a new family is a module here, imported below).
"""

from . import v1, v2, v2_plus
from .registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = [
    "ModelInfo",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
    "v1",
    "v2",
    "v2_plus",
]
