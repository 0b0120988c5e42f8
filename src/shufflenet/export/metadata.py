"""What an exported file records about its model, and the sample inputs exports are checked on.

The metadata (architecture and layout, class names, preprocessing) goes into ``metadata_props``
for ONNX, ``shufflenet.json`` inside a TorchScript archive, and a ``.json`` file beside an ncnn
``.param``. Sample inputs are random pixels through the model's preprocessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models import get_model_info
from ..models.base import ShuffleNetBase
from ..weights import FORMAT

__all__ = ["input_size_of", "model_metadata", "read_onnx_metadata", "sample_inputs"]


def model_metadata(model: ShuffleNetBase) -> dict[str, Any]:
    """What an exported file records about ``model`` (JSON-ready values).

    A model from :func:`shufflenet.load` keeps its file's metadata; a fresh
    :func:`shufflenet.create_model` one gets its architecture's default preprocessing.
    """
    loaded = dict(getattr(model, "weights_metadata", None) or {})
    config = loaded.get("model_config") or getattr(model, "model_config", None)
    if not config:
        raise ValueError("cannot export a model without model_config: use shufflenet.create_model")
    preprocessing = loaded.get("preprocessing")
    if preprocessing is None:
        preprocessing = asdict(get_model_info(config["name"]).preprocessing)
    return {
        **loaded,
        "format": FORMAT,
        "model_config": config,
        "num_classes": model.num_classes,
        "class_names": loaded.get("class_names"),
        "preprocessing": preprocessing,
    }


def input_size_of(
    preprocessing: dict[str, Any], input_size: Sequence[int] | None = None
) -> tuple[int, int]:
    """(height, width): ``input_size`` if given, else the preprocessing's; at least 32x32."""
    size = input_size if input_size is not None else preprocessing["input_size"]
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 32:
        raise ValueError(f"input size must be at least 32x32, got {height}x{width}")
    return int(height), int(width)


def sample_inputs(
    batch: int,
    in_chans: int,
    preprocessing: dict[str, Any],
    input_size: Sequence[int] | None = None,
    seed: int = 0,
) -> Tensor:
    """Random uint8 pixels through ``preprocessing``'s scale and normalisation (float32, NCHW)."""
    height, width = input_size_of(preprocessing, input_size)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, in_chans, height, width), generator=g).float()
    mean = torch.tensor(preprocessing.get("mean", (0.0,)), dtype=torch.float32)
    std = torch.tensor(preprocessing.get("std", (1.0,)), dtype=torch.float32)
    if mean.numel() != in_chans:
        mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
    scaled = pixels * float(preprocessing.get("scale", 1.0))
    return (scaled - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def read_onnx_metadata(model: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The shufflenet metadata of an ONNX file (or its bytes), JSON values decoded."""
    import onnx

    label = "the ONNX data" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise FileNotFoundError(f"no such ONNX file: {label}")
    try:
        if isinstance(model, bytes):
            proto = onnx.load_from_string(model)
        else:
            proto = onnx.load(label, load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError types for garbage
        raise ValueError(f"{label} is not a readable ONNX file ({e})") from None
    raw = {p.key: p.value for p in proto.metadata_props}
    if raw.get("format") != json.dumps(FORMAT) or "preprocessing" not in raw:
        raise ValueError(
            f"{label} has no shufflenet metadata (preprocessing, class names): "
            "export it with `shufflenet export`"
        )
    return {key: json.loads(value) for key, value in raw.items()}


def write_onnx_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Replace ``proto``'s ``metadata_props`` with ``metadata``, each value as JSON."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
