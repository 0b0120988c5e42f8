"""Our weights format: safetensors tensors plus JSON metadata that says how to rebuild the model.

A file written by :func:`save` holds the state dict and, in its metadata, the registry name and
constructor arguments (``model_config``), the class names and the preprocessing that the model
expects. :func:`load` rebuilds the model from that alone. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .io import atomic_path
from .models import create_model, get_model_info
from .models.base import ShuffleNetBase
from .preprocessing import Preprocessing

__all__ = ["FORMAT", "load", "load_state_dict_checked", "read_metadata", "save"]

FORMAT = "shufflenet/1"


def _preprocessing_dict(model: ShuffleNetBase, preprocessing: Any) -> dict[str, Any]:
    if preprocessing is None:
        preprocessing = get_model_info(model.model_config["name"]).preprocessing
    if isinstance(preprocessing, Preprocessing):
        preprocessing = asdict(preprocessing)
    return dict(preprocessing)


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` (safetensors, atomically).

    ``model`` must come from :func:`shufflenet.create_model` (or carry a ``model_config``).
    ``preprocessing`` defaults to the registry's for the architecture; ``extra`` keys are stored
    as JSON and returned by :func:`read_metadata`.
    """
    config = getattr(model, "model_config", None)
    if not isinstance(model, ShuffleNetBase) or not config:
        raise ValueError(
            "cannot save a model without model_config: build it with shufflenet.create_model"
        )
    num_classes = model.num_classes
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(config),
        "num_classes": str(num_classes),
        "class_names": json.dumps(class_names),
        "preprocessing": json.dumps(_preprocessing_dict(model, preprocessing)),
        **{key: json.dumps(value) for key, value in extra.items()},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def _check_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such weights file: {p}")
    return p


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a weights file, JSON values decoded."""
    p = _check_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{p} is not a readable safetensors file ({e})") from None
    if raw.get("format") != FORMAT or "model_config" not in raw:
        raise ValueError(
            f"{p} is not a shufflenet weights file (no model_config metadata); "
            "convert foreign checkpoints with `shufflenet convert`"
        )
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strictly load ``state_dict``; a mismatch raises ``ValueError`` naming the first keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise ValueError("checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ShuffleNetBase:
    """Rebuild the model stored in ``path`` by :func:`save`, in eval mode.

    The metadata is available as ``model.weights_metadata``.
    """
    metadata = read_metadata(path)
    config = dict(metadata["model_config"])
    model = create_model(config.pop("name"), **config)
    try:
        state_dict = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is corrupt or truncated ({e})") from None
    load_state_dict_checked(model, state_dict)
    model.weights_metadata = metadata
    return model.eval()
