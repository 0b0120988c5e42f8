"""Our weights format: safetensors tensors plus JSON metadata that says how to rebuild the model.

A file written by :func:`save` holds the state dict and, in its metadata, the registry name and
constructor arguments (``model_config``), the class names and the preprocessing that the model
expects. :func:`load` rebuilds the model from that alone. Nothing is ever unpickled.

Metadata is untrusted input: every reader (:func:`read_metadata`, :func:`load`, ONNX files'
:func:`~shufflenet.export.read_onnx_metadata`) checks it with one schema,
:func:`validate_metadata`, before anything is built or allocated: types, known keys, and sizes,
class counts and channels within the bounds of :mod:`shufflenet.preprocessing`. Class names
must be plain text, so that printing them cannot drive the terminal.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .io import atomic_path, open_regular
from .models.backbone import ShuffleNetFeatures
from .models.base import ShuffleNetBase
from .models.registry import create_model, get_model_info
from .preprocessing import (
    MAX_CLASSES,
    MAX_IN_CHANS,
    MAX_INPUT_SIZE,
    Preprocessing,
    check_input_size,
    control_character,
)

__all__ = [
    "CONFIG_KEYS",
    "FORMAT",
    "MAX_RESIZE",
    "check_model_kwargs",
    "error_reason",
    "load",
    "load_state_dict_checked",
    "parse_metadata",
    "printable",
    "read_metadata",
    "save",
    "validate_metadata",
]

FORMAT = "shufflenet/1"
# The keys a model_config may hold: the registry name and the constructor arguments.
CONFIG_KEYS = (
    "name",
    "num_classes",
    "in_chans",
    "drop_rate",
    "layout",
    "aux_logits",
    "frozen_stages",  # the backbone options of models.backbone (training behaviour)
    "norm_eval",
)
# A features_only backbone is not saved: its classification model's weights fit it.
_FEATURES_HINT = (
    "weights files hold classification models: save the whole model (its weights fit a "
    "backbone key for key) and build the backbone with "
    "ShuffleNetFeatures(shufflenet.load(path), out_indices=...)"
)
MAX_FROZEN_STAGES = 64  # a bound for files; the network checks its own number of stages
MAX_RESIZE = 2 * MAX_INPUT_SIZE  # the shorter side before the centre crop
_PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))
_REQUIRED_PREPROCESSING = ("input_size", "mean", "std", "scale")
_RESERVED = ("format", "model_config", "num_classes", "class_names", "preprocessing")
_MAX_MESSAGE = 300  # characters of a message about a file's metadata (values are echoed)
# Bounds on mean and std in pixel units (a pixel is 0..255).
_MIN_STD_PIXELS = 1e-2
_MAX_PIXEL_VALUE = 1e5


def printable(text: str) -> str:
    """``text`` as it is if printable, else its ``repr`` (control characters escaped)."""
    return text if text.isprintable() else repr(text)


def error_reason(error: Exception) -> str:
    """The first line of a library's ``error`` about a file, safe to show: control characters
    escaped, at most 200 characters; its type's name where the text is empty or advises
    loading the file unsafely (``weights_only``)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if not line or "weights_only" in line:
        return type(error).__name__
    line = printable(line)
    return line if len(line) <= 200 else line[:197] + "..."


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's limit on digits
        return "a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer within {low}..{high}, got {_show(value)}")
    return value


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` if it is not a finite number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None


def check_model_kwargs(kwargs: Mapping[str, Any]) -> None:
    """The constructor arguments of a ``model_config`` (all but ``name``): known keys, and
    ``num_classes``, ``in_chans``, ``drop_rate``, ``layout``, ``aux_logits`` of the right types
    and within bounds; ``ValueError`` naming the argument otherwise."""
    if "features_only" in kwargs or "out_indices" in kwargs:
        raise ValueError(f"features_only and out_indices are not stored: {_FEATURES_HINT}")
    unknown = [_show(key) for key in kwargs if key not in CONFIG_KEYS[1:]]
    if unknown:
        raise ValueError(
            f"unknown keys {', '.join(unknown)}: a model_config holds only {', '.join(CONFIG_KEYS)}"
        )
    if "num_classes" in kwargs:
        _integer(kwargs["num_classes"], "num_classes", 0, MAX_CLASSES)
    if "in_chans" in kwargs:
        _integer(kwargs["in_chans"], "in_chans", 1, MAX_IN_CHANS)
    if "drop_rate" in kwargs:
        rate = _finite(kwargs["drop_rate"])
        if rate is None or not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {_show(kwargs['drop_rate'])}")
    if "layout" in kwargs and not isinstance(kwargs["layout"], str):
        raise ValueError(f"layout must be a string, got {_show(kwargs['layout'])}")
    if "aux_logits" in kwargs and not isinstance(kwargs["aux_logits"], bool):
        raise ValueError(f"aux_logits must be true or false, got {_show(kwargs['aux_logits'])}")
    if "frozen_stages" in kwargs:
        _integer(kwargs["frozen_stages"], "frozen_stages", -1, MAX_FROZEN_STAGES)
    if "norm_eval" in kwargs and not isinstance(kwargs["norm_eval"], bool):
        raise ValueError(f"norm_eval must be true or false, got {_show(kwargs['norm_eval'])}")


def _check_model_config(config: Any) -> None:
    if not isinstance(config, dict):
        raise ValueError(
            'model_config must be a JSON object such as {"name": "shufflenet_v2_x1_0", '
            f'"num_classes": 10}}, got {_show(config)}'
        )
    name = config.get("name")
    if not isinstance(name, str):
        raise ValueError(
            f"model_config needs a name: a registered model such as shufflenet_v2_x1_0, got "
            f"{_show(name)}"
        )
    try:
        get_model_info(name)  # an unknown name raises with suggestions
        check_model_kwargs({k: v for k, v in config.items() if k != "name"})
    except ValueError as e:
        raise ValueError(f"model_config: {e}") from None


def _check_class_names(names: Any, num_classes: int) -> None:
    if names is None:
        return
    if not isinstance(names, list | tuple) or len(names) != num_classes:
        raise ValueError(
            f"class_names must be a list of {num_classes} names (or null), got {_show(names)}"
        )
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"class_names[{i}] must be a string, got {_show(name)}")
        bad = control_character(name)
        if bad is not None:
            raise ValueError(
                f"class_names[{i}] {_show(name)} holds the control character {bad!r}: class "
                "names must be plain text"
            )


def _check_preprocessing(pre: Any, in_chans: int) -> None:
    if not isinstance(pre, dict):
        raise ValueError(
            f"preprocessing must be a JSON object with {', '.join(_PREPROCESSING_KEYS)}, got "
            f"{_show(pre)}"
        )
    unknown = [_show(key) for key in pre if key not in _PREPROCESSING_KEYS]
    if unknown:
        raise ValueError(
            f"preprocessing has unknown keys {', '.join(unknown)}: it may hold only "
            f"{', '.join(_PREPROCESSING_KEYS)}"
        )
    missing = [key for key in _REQUIRED_PREPROCESSING if key not in pre]
    if missing:
        raise ValueError(f"preprocessing lacks {', '.join(missing)}")
    height, width = check_input_size(pre["input_size"], "preprocessing input_size")
    if pre.get("resize") is not None:
        _integer(pre["resize"], "preprocessing resize", min(height, width), MAX_RESIZE)
    scale = _finite(pre["scale"])
    if scale is None or scale <= 0:
        raise ValueError(
            f"preprocessing scale must be a finite number > 0, got {_show(pre['scale'])}"
        )
    counts = sorted({1, 3, in_chans})
    for key in ("mean", "std"):
        values = pre[key]
        if not isinstance(values, list | tuple) or len(values) not in counts:
            raise ValueError(
                f"preprocessing {key} must be a list of {' or '.join(map(str, counts))} numbers, "
                f"got {_show(values)}"
            )
        # The pipeline normalises pixel values with mean / scale and std / scale.
        numbers = [n for n in map(_finite, values) if n is not None and math.isfinite(n / scale)]
        if len(numbers) != len(values):
            raise ValueError(f"preprocessing {key} must hold finite numbers, got {_show(values)}")
        if key == "std" and min(numbers) <= 0:
            raise ValueError(f"preprocessing std must be > 0, got {_show(values)}")
        # In pixel units (0..255 before ``scale``): a std far below one level, or values far
        # past the pixel range, only make the inputs overflow.
        pixels = [n / scale for n in numbers]
        low = _MIN_STD_PIXELS if key == "std" else -_MAX_PIXEL_VALUE
        if min(pixels) < low or max(pixels) > _MAX_PIXEL_VALUE:
            raise ValueError(
                f"preprocessing {key} / scale must be within {low:g}..{_MAX_PIXEL_VALUE:g} "
                f"(pixel units), got {_show(values)} with scale {_show(scale)}"
            )
    if pre.get("channel_order", "RGB") not in ("RGB", "BGR"):
        raise ValueError(
            f"preprocessing channel_order must be RGB or BGR, got {_show(pre['channel_order'])}"
        )


def _check_num_classes(num_classes: int, built: int) -> None:
    if num_classes != built:
        raise ValueError(
            f"num_classes {num_classes} does not match the {built} classes of model_config"
        )


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a JSON object, got {_show(metadata)}")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"format must be {FORMAT!r}, got {_show(metadata.get('format'))}")
    missing = [
        key for key in ("model_config", "num_classes", "preprocessing") if key not in metadata
    ]
    if missing:
        raise ValueError(
            f"metadata lacks {', '.join(missing)}: save the model again with shufflenet.save"
        )
    config = metadata["model_config"]
    _check_model_config(config)
    num_classes = _integer(metadata["num_classes"], "num_classes", 0, MAX_CLASSES)
    _check_num_classes(num_classes, config.get("num_classes", num_classes))
    _check_class_names(metadata.get("class_names"), num_classes)
    _check_preprocessing(
        metadata["preprocessing"], config.get("in_chans", 3)
    )  # 3: the constructors' default


def validate_metadata(metadata: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """``metadata`` (JSON values decoded) if it follows the schema, else one ``ValueError``
    naming ``source`` (a file) and what to fix.

    The schema: ``format``; ``model_config`` (a registered ``name`` and
    :func:`check_model_kwargs`; the constructor checks the ``layout`` when the model is built);
    ``num_classes`` (within 0..:data:`~shufflenet.preprocessing.MAX_CLASSES`, the
    ``model_config``'s, which :func:`load` checks against the built model); ``class_names``
    (``null`` or that many strings without control characters); ``preprocessing`` (the
    fields of :class:`~shufflenet.preprocessing.Preprocessing`: ``input_size`` within the
    input bounds, ``resize`` ``null`` or from its shorter side to :data:`MAX_RESIZE`, ``mean``
    and ``std`` lists of 1, 3 or ``in_chans`` finite numbers, ``std`` > 0, ``scale`` finite
    > 0, ``channel_order`` RGB or BGR). Other keys are free.
    """
    try:
        _check_metadata(metadata)
    except ValueError as e:
        message = str(e)
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        raise ValueError(f"{source}: {message}") from None
    return metadata


def parse_metadata(raw: Mapping[str, str], source: str | os.PathLike[str]) -> dict[str, Any]:
    """Stored metadata (JSON text values; others kept as strings) decoded and validated
    (:func:`validate_metadata`)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except RecursionError:
            raise ValueError(f"{source}: metadata {_show(key)} is nested too deeply") from None
        except ValueError:
            out[key] = value
    return validate_metadata(out, source)


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
    as JSON and returned by :func:`read_metadata`. Metadata that :func:`validate_metadata`
    refuses is never written.
    """
    config = getattr(model, "model_config", None)
    if isinstance(model, ShuffleNetFeatures):
        raise ValueError(f"cannot save a features_only backbone: {_FEATURES_HINT}")
    if not isinstance(model, ShuffleNetBase) or not config:
        raise ValueError(
            "cannot save a model without model_config: build it with shufflenet.create_model"
        )
    num_classes = model.num_classes
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    reserved = [key for key in extra if key in _RESERVED]
    if reserved:
        raise ValueError(f"metadata keys {', '.join(reserved)} are written by save itself")
    metadata = validate_metadata(
        {
            "format": FORMAT,
            "model_config": config,
            "num_classes": num_classes,
            "class_names": None if class_names is None else list(class_names),
            "preprocessing": _preprocessing_dict(model, preprocessing),
            **extra,
        },
        path,
    )
    stored = {k: v if k == "format" else json.dumps(v) for k, v in metadata.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=stored)
    return Path(path)


def _check_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such weights file: {p}")
    if not p.is_file():
        raise ValueError(f"{p} is not a regular file: give a .safetensors weights file")
    return p


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[str]:
    """A name of the regular file ``path`` opened and checked (a FIFO swapped in after
    :func:`_check_file` never blocks): its ``/proc/self/fd`` entry where there is one."""
    with open_regular(path) as f:
        name = f"/proc/self/fd/{f.fileno()}"
        yield name if os.path.exists(name) else str(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a weights file, JSON values decoded and checked
    (:func:`validate_metadata`)."""
    p = _check_file(path)
    try:
        with _opened(p) as name, safe_open(name, framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        reason = printable(str(e))[:_MAX_MESSAGE]
        raise ValueError(f"{p} is not a readable safetensors file ({reason})") from None
    if raw.get("format") != FORMAT or "model_config" not in raw:
        raise ValueError(
            f"{p} is not a shufflenet weights file (no model_config metadata); "
            "convert foreign checkpoints with `shufflenet convert`"
        )
    return parse_metadata(raw, p)


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strictly load ``state_dict``; a mismatch raises ``ValueError`` naming the first keys.

    Keys must match, and shapes; where the model holds floating-point values the tensors must
    be floating point too (half precision is cast), never bool, integer or complex.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [printable(str(k)) for k in state_dict if k not in expected]
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    dtypes = [
        f"{k}: {state_dict[k].dtype} for {v.dtype}"
        for k, v in expected.items()
        if k in state_dict
        and (
            state_dict[k].is_floating_point() != v.is_floating_point()
            or state_dict[k].dtype == torch.bool
            or state_dict[k].is_complex()
        )
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape", wrong),
        ("dtype", dtypes),
    ):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if dtypes:
        problems.append("weights must be floating point")
    if problems:
        raise ValueError("checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _read_tensors(
    path: str | os.PathLike[str], map_location: str | torch.device
) -> dict[str, torch.Tensor]:
    try:
        with _opened(Path(path)) as name:
            return load_file(name, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"corrupt or truncated ({printable(str(e))[:_MAX_MESSAGE]})") from None


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ShuffleNetBase:
    """Rebuild the model stored in ``path`` by :func:`save`, in eval mode.

    The metadata is checked before anything is built (:func:`read_metadata`) and available as
    ``model.weights_metadata``.
    """
    metadata = read_metadata(path)
    config = dict(metadata["model_config"])
    try:
        model = create_model(config.pop("name"), features_only=False, **config)
    except (ValueError, TypeError) as e:  # what the constructor checks itself (the layout),
        # or an argument that this architecture does not take (aux_logits for V1)
        raise ValueError(f"{path}: model_config: {e}") from None
    try:
        _check_num_classes(metadata["num_classes"], model.num_classes)
        load_state_dict_checked(model, _read_tensors(path, map_location))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.weights_metadata = metadata
    return model.eval()
