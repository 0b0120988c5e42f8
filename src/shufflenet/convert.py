"""Foreign checkpoints -> our safetensors weights files, never unpickling more than tensors.

One small filter per source renames (and would reshape) keys onto this package's names, like
timm's ``checkpoint_filter_fn``; then the architecture is the registered model whose every
parameter shape fits (or the one named), loaded strictly, and saved with the source's
preprocessing and the ImageNet class names for 1000-class weights.

* ``torchvision``: V2 state dicts (``.pth``); the names are already ours (default layout).
* ``megvii``: the official release's V1 and V2 checkpoints, ``{'state_dict': ...}`` with
  ``module.`` prefixes. Their units differ in structure from the paper/torchvision ones, so they
  load into ``layout="megvii"`` models, which compute exactly what the official networks do.
  Their input is BGR 0-255 without normalisation (:data:`MEGVII_PREPROCESSING`).

Megvii key mapping (``N`` counts the units of all stages, 4 + 8 + 4):

====================================  ==========================================
Megvii                                 ours
====================================  ==========================================
``first_conv.{0,1}``                   ``conv1.{0,1}``
V2 ``features.N.branch_main.k``        ``stage{s}.{i}.branch2.k``
V2 ``features.N.branch_proj.k``        ``stage{s}.{i}.branch1.k``
V2 ``conv_last.{0,1}``                 ``conv5.{0,1}``
V1 ``features.N.branch_main_1.{0,1}``  ``stage{s}.{i}.gconv1``, ``.bn1``
V1 ``features.N.branch_main_1.{3,4}``  ``stage{s}.{i}.dwconv``, ``.bn2``
V1 ``features.N.branch_main_2.{0,1}``  ``stage{s}.{i}.gconv2``, ``.bn3``
``classifier.0.weight``                ``fc.weight`` (no bias)
====================================  ==========================================
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from .io import check_output_path
from .models import create_model, get_model_info, list_models
from .models.v1 import V1_REPEATS
from .models.v2 import V2_REPEATS
from .preprocessing import MEGVII_PREPROCESSING, imagenet_classes
from .weights import check_model_kwargs, load_state_dict_checked, printable, save

__all__ = [
    "SOURCES",
    "ConvertResult",
    "convert_checkpoint",
    "megvii_v1_filter",
    "megvii_v2_filter",
    "read_checkpoint",
    "torchvision_filter",
]

_WRAPPERS = ("state_dict", "model")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a PyTorch checkpoint, loaded with ``weights_only=True``.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` and strips ``module.`` prefixes
    (``DataParallel``). Anything but a mapping of names to tensors is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such checkpoint: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{p} is not a readable PyTorch checkpoint (truncated, corrupt, or holding objects "
            f"other than tensors, which are never unpickled): {reason}"
        ) from None
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{p} holds no state dict (got {type(obj).__name__})")
    bad = [
        printable(str(k))
        for k, v in obj.items()
        if not isinstance(k, str) or not isinstance(v, Tensor)
    ]
    if bad:
        raise ValueError(f"{p}: entries that are not tensors: {', '.join(bad[:3])}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _unit(index: int, stage_repeats: tuple[int, ...]) -> str:
    """``stage{s}.{i}`` for the ``index``-th unit counted over all stages."""
    for stage, repeats in enumerate(stage_repeats, start=2):
        if index < repeats:
            return f"stage{stage}.{index}"
        index -= repeats
    raise ValueError(f"unit index out of range: {index + sum(stage_repeats)}")


def _rename(
    state_dict: dict[str, Tensor], rules: list[tuple[str, Callable[..., str]]]
) -> dict[str, Tensor]:
    """Apply the first matching (regex, replacement) to every key; others stay as they are."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            new, count = re.subn(pattern, repl, key)
            if count:
                key = new
                break
        out[key] = value
    return out


_SHARED_RULES: list[tuple[str, Callable[..., str]]] = [
    (r"^first_conv\.([01])\.", lambda m: f"conv1.{m[1]}."),
    (r"^classifier\.0\.weight$", lambda m: "fc.weight"),
]


def torchvision_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's V2 names are ours already."""
    return dict(state_dict)


def megvii_v2_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official V2 names -> ours (``layout="megvii"``); see the module docstring."""
    branches = {"branch_main": "branch2", "branch_proj": "branch1"}
    return _rename(
        state_dict,
        [
            *_SHARED_RULES,
            (r"^conv_last\.([01])\.", lambda m: f"conv5.{m[1]}."),
            (
                r"^features\.(\d+)\.(branch_main|branch_proj)\.",
                lambda m: f"{_unit(int(m[1]), V2_REPEATS)}.{branches[m[2]]}.",
            ),
        ],
    )


def megvii_v1_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official V1 names -> ours (``layout="megvii"``); see the module docstring."""
    layers = {
        ("branch_main_1", "0"): "gconv1",
        ("branch_main_1", "1"): "bn1",
        ("branch_main_1", "3"): "dwconv",
        ("branch_main_1", "4"): "bn2",
        ("branch_main_2", "0"): "gconv2",
        ("branch_main_2", "1"): "bn3",
    }

    def unit_layer(m: re.Match[str]) -> str:
        layer = layers.get((m[2], m[3]), f"{m[2]}.{m[3]}")
        return f"{_unit(int(m[1]), V1_REPEATS)}.{layer}."

    return _rename(
        state_dict,
        [*_SHARED_RULES, (r"^features\.(\d+)\.(branch_main_[12])\.(\d+)\.", unit_layer)],
    )


Filter = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def _torchvision(state_dict: dict[str, Tensor]) -> tuple[str, str, Filter]:
    return "shufflenet_v2_x*", "torchvision", torchvision_filter


def _megvii(state_dict: dict[str, Tensor]) -> tuple[str, str, Filter]:
    if any(".branch_main_1." in k for k in state_dict):
        return "shufflenet_v1_*", "megvii", megvii_v1_filter
    if any(".branch_main." in k for k in state_dict):
        return "shufflenet_v2_x*", "megvii", megvii_v2_filter
    raise ValueError(
        "not a Megvii ShuffleNet V1/V2 checkpoint: no features.N.branch_main(_1) keys; first "
        f"keys: {', '.join(map(printable, list(state_dict)[:3]))}"
    )


# Where checkpoints come from: source -> (model name pattern, layout, key filter) of a state dict.
# A new source is one entry here plus its filter.
SOURCES: dict[str, Callable[[dict[str, Tensor]], tuple[str, str, Filter]]] = {
    "torchvision": _torchvision,
    "megvii": _megvii,
}


def _shape_matches(name: str, kwargs: dict[str, object], state_dict: dict[str, Tensor]) -> int:
    with torch.device("meta"):
        expected = create_model(name, **kwargs).state_dict()
    fits = sum(k in state_dict and state_dict[k].shape == v.shape for k, v in expected.items())
    return fits - len(set(state_dict) - set(expected))


def _best_model(pattern: str, kwargs: dict[str, object], state_dict: dict[str, Tensor]) -> str:
    """The registered model (matching ``pattern``) whose shapes fit ``state_dict`` best."""
    return max(list_models(pattern), key=lambda n: _shape_matches(n, kwargs, state_dict))


@dataclass
class ConvertResult:
    """What :func:`convert_checkpoint` wrote."""

    path: Path
    model: str
    layout: str
    num_classes: int
    source: str

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path)}


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    source: str,
    model: str | None = None,
) -> ConvertResult:
    """Convert the ``source`` checkpoint ``src`` to our weights file ``dst``.

    The architecture is ``model`` if given, else the registered one whose shapes fit. A
    checkpoint that does not fit raises ``ValueError`` naming the first mismatched keys. ``dst``
    is checked first (never ``src``), and the class count and input channels read from the
    tensors' shapes are bounded before any model is built.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    check_output_path(dst, "dst", inputs=[src])
    raw = read_checkpoint(src)
    pattern, layout, filter_fn = SOURCES[source](raw)
    state_dict = filter_fn(raw)
    fc, stem = state_dict.get("fc.weight"), state_dict.get("conv1.0.weight")
    kwargs: dict[str, object] = {"layout": layout}
    if fc is not None and fc.dim() == 2:
        kwargs["num_classes"] = fc.shape[0]
    if stem is not None and stem.dim() == 4:
        kwargs["in_chans"] = stem.shape[1]
    try:
        check_model_kwargs(kwargs)
    except ValueError as e:
        raise ValueError(
            f"{src}: {e} (read from the shapes of fc.weight, conv1.0.weight)"
        ) from None
    if model is None:
        model = _best_model(pattern, kwargs, state_dict)
    else:
        get_model_info(model)  # unknown names raise with suggestions
    if layout == "torchvision":
        del kwargs["layout"]  # the default: keep model_config as plain as torchvision's
    net = create_model(model, **kwargs)
    for key, value in net.state_dict().items():  # older checkpoints predate this BN counter
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    try:
        load_state_dict_checked(net, state_dict)
    except ValueError as e:
        raise ValueError(f"{src} ({source}) does not fit {model}: {e}") from None
    preprocessing = MEGVII_PREPROCESSING if source == "megvii" else None
    class_names = imagenet_classes() if net.num_classes == 1000 else None
    path = save(
        net.eval(),
        dst,
        class_names=class_names,
        preprocessing=preprocessing,
        converted_from={"source": source, "file": Path(src).name},
    )
    return ConvertResult(path, model, layout, net.num_classes, source)
