"""What an exported file records about its model, and the sample inputs exports are checked on.

The metadata (architecture and layout, class names, preprocessing) goes into ``metadata_props``
for ONNX, ``shufflenet.json`` inside a TorchScript archive, and a ``.json`` file beside an ncnn
``.param``. Sample inputs are random pixels through the model's preprocessing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import read_regular
from ..limits import MAX_BATCH_ELEMENTS, check_batch
from ..models import get_model_info
from ..models.base import ShuffleNetBase
from ..preprocessing import check_input_size
from ..weights import FORMAT, MAX_RESIZE, parse_metadata, printable, validate_metadata

__all__ = [
    "MAX_SIDECAR_BYTES",
    "check_sidecar_target",
    "input_size_of",
    "model_metadata",
    "read_onnx_metadata",
    "read_sidecar",
    "sample_inputs",
]

# A side-car JSON holds the metadata: class names are its largest part (at most MAX_CLASSES).
MAX_SIDECAR_BYTES = 64 << 20


def model_metadata(
    model: ShuffleNetBase, input_size: Sequence[int] | None = None
) -> dict[str, Any]:
    """What an exported file records about ``model`` (JSON-ready values, checked with
    :func:`~shufflenet.weights.validate_metadata`).

    A model from :func:`shufflenet.load` keeps its file's metadata; a fresh
    :func:`shufflenet.create_model` one gets its architecture's default preprocessing. With
    ``input_size``, the size the exported graph is made for, the preprocessing says so: its
    ``input_size`` is that, and ``resize`` scales with it (the same centre-crop fraction).
    """
    loaded = dict(getattr(model, "weights_metadata", None) or {})
    config = getattr(model, "model_config", None) or loaded.get("model_config")
    if not config:
        raise ValueError("cannot export a model without model_config: use shufflenet.create_model")
    preprocessing = loaded.get("preprocessing")
    if preprocessing is None:
        preprocessing = asdict(get_model_info(config["name"]).preprocessing)
    if input_size is not None:
        preprocessing = _at_input_size(preprocessing, check_input_size(input_size))
    names = loaded.get("class_names")
    metadata = {
        **loaded,
        "format": FORMAT,
        "model_config": config,
        "num_classes": model.num_classes,
        # A classifier replaced since loading (reset_classifier) has no names yet.
        "class_names": names if names is not None and len(names) == model.num_classes else None,
        "preprocessing": preprocessing,
    }
    return validate_metadata(metadata, f"the metadata of {config['name']}")


def _at_input_size(preprocessing: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """``preprocessing`` for inputs of ``size``: ``resize`` scaled by the shorter sides."""
    out = {**preprocessing, "input_size": list(size)}
    if preprocessing.get("resize") is not None:
        old = min(check_input_size(preprocessing["input_size"]))
        resize = round(preprocessing["resize"] * min(size) / old)
        out["resize"] = min(MAX_RESIZE, max(min(size), resize))
    return out


def input_size_of(
    preprocessing: dict[str, Any], input_size: Sequence[int] | None = None
) -> tuple[int, int]:
    """(height, width): ``input_size`` if given, else the preprocessing's; within the bounds of
    :func:`~shufflenet.preprocessing.check_input_size`."""
    return check_input_size(input_size if input_size is not None else preprocessing["input_size"])


def sample_inputs(
    batch: int,
    in_chans: int,
    preprocessing: dict[str, Any],
    input_size: Sequence[int] | None = None,
    seed: int = 0,
) -> Tensor:
    """Random uint8 pixels through ``preprocessing``'s scale and normalisation (float32, NCHW)."""
    height, width = input_size_of(preprocessing, input_size)
    check_batch(batch, (in_chans, height, width))
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, in_chans, height, width), generator=g).float()
    mean = torch.tensor(preprocessing.get("mean", (0.0,)), dtype=torch.float32)
    std = torch.tensor(preprocessing.get("std", (1.0,)), dtype=torch.float32)
    if mean.numel() != in_chans:
        mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
    scaled = pixels * float(preprocessing.get("scale", 1.0))
    return (scaled - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def read_onnx_metadata(model: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The shufflenet metadata of an ONNX file (or its bytes), JSON values decoded and checked
    (:func:`~shufflenet.weights.validate_metadata`), along with the graph, before any runtime
    loads it: one input whose fixed sizes are the metadata's, one output with as many classes,
    and external data (if any) only from regular files in the file's own folder."""
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
    metadata = parse_metadata(raw, label)
    _check_graph(proto.graph, metadata, label)
    folder = None if isinstance(model, bytes) else Path(model).parent
    _check_external_data(proto, label, folder)
    return metadata


def _dims(value: Any) -> list[int | None]:
    """The sizes of a graph input or output; ``None`` where not fixed."""
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _check_graph(graph: Any, metadata: dict[str, Any], label: str) -> None:
    if len(graph.output) != 1:
        raise ValueError(
            f"{label} has {len(graph.output)} outputs: a classifier file has one (export it "
            "with `shufflenet export`)"
        )
    constants = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        raise ValueError(f"{label} must have one (N, C, H, W) input")
    batch, channels, *size = _dims(inputs[0])
    expected = list(check_input_size(metadata["preprocessing"]["input_size"]))
    if any(s is not None and s != e for s, e in zip(size, expected, strict=True)):
        shown = "x".join(str(s) for s in size)
        raise ValueError(
            f"{label}: its graph takes {shown} inputs but its metadata says "
            f"{expected[0]}x{expected[1]}: export it again with `shufflenet export`"
        )
    if any(d is not None and d < 1 for d in (batch, channels, *size)):
        raise ValueError(f"{label}: its input has empty axes {_dims(inputs[0])}")
    if batch is not None and batch * (channels or 1) * math.prod(expected) > MAX_BATCH_ELEMENTS:
        raise ValueError(f"{label}: its fixed batch of {batch} images is too large to run")
    outputs = _dims(graph.output[0])
    classes = metadata["num_classes"]
    if len(outputs) != 2 or (classes and outputs[1] is not None and outputs[1] != classes):
        raise ValueError(
            f"{label}: its output has sizes {outputs}, not (N, {classes}) as its metadata says"
        )


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        yield from (attr.t, *attr.tensors, attr.sparse_tensor.values, attr.sparse_tensor.indices)
        for sub in (attr.g, *attr.graphs):
            yield from _tensors(sub)


def _check_external_data(proto: Any, label: str, folder: Path | None) -> None:
    """Refuse tensors whose external data is not a regular file inside ``folder`` (ONNX
    Runtime would read any path, a FIFO too); any external data for bytes (``folder`` None)."""
    from onnx import TensorProto

    functions = (t for f in proto.functions for n in f.node for t in _node_tensors(n))
    for tensor in (*_tensors(proto.graph), *functions):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"{label}: tensor {printable(tensor.name)} reads external data {location!r}"
        if folder is None:
            raise ValueError(f"{where}, which ONNX data in memory cannot have")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ValueError(f"{where} outside its folder {folder}: refused")
        if not target.is_file():
            raise ValueError(f"{where}, which is missing or not a regular file")


def write_onnx_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Replace ``proto``'s ``metadata_props`` with ``metadata``, each value as JSON."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})


def read_sidecar(path: str | os.PathLike[str]) -> Any:
    """The JSON value of a side-car file (``FILE.json`` beside an ``.mnn`` or ncnn ``.param``),
    not yet checked: a regular file of at most :data:`MAX_SIDECAR_BYTES`, one JSON document;
    ``ValueError`` naming ``path`` otherwise (``FileNotFoundError`` if it is missing)."""
    data = read_regular(path, MAX_SIDECAR_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: unreadable metadata (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSON errors, integers past Python's limit
        reason = printable(str(e))[:200]
        raise ValueError(f"{path}: unreadable metadata ({reason})") from None


def check_sidecar_target(path: str | os.PathLike[str]) -> None:
    """``path``, a side-car about to be written, is new or a side-car of ours (a JSON object of
    format ``shufflenet/1``): ``ValueError`` rather than overwrite another file there."""
    if not os.path.lexists(path):
        return
    try:
        ours = read_sidecar(path)
    except (OSError, ValueError):
        ours = None
    if not isinstance(ours, dict) or ours.get("format") != FORMAT:
        raise ValueError(
            f"{path} exists and is not the metadata of a shufflenet export: it would be "
            "overwritten; choose another output name or move it away"
        )
