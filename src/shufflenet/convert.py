"""Foreign checkpoints -> our safetensors weights files, never unpickling more than tensors.

One small filter per source renames (and would reshape) keys onto this package's names, like
timm's ``checkpoint_filter_fn``; then the architecture is the registered model whose every
parameter shape fits (or the one named), loaded strictly, and saved with the source's
preprocessing and the ImageNet class names for 1000-class weights.

* ``torchvision``: V2 state dicts (``.pth``); the names are already ours (default layout).
* ``megvii``: the official release's checkpoints, ``{'state_dict': ...}`` with ``module.``
  prefixes: V1 and V2, whose units differ in structure from the paper/torchvision ones, so they
  load into ``layout="megvii"`` models, which compute exactly what the official networks do;
  ShuffleNetV2+ (Small, Medium, Large: the size is read from the shapes) and ShuffleNetV2.Large
  (SE-ShuffleNet v2-164; with its auxiliary classifiers if the checkpoint has them), whose
  families follow the release. Their input is BGR 0-255 without normalisation
  (:data:`MEGVII_PREPROCESSING`).
* ``mmpretrain``: OpenMMLab's V1 and V2 (``backbone.``/``head.`` keys): default layouts, V1's
  depthwise conv and BN permuted (:mod:`shufflenet.mmpretrain_keys`).

Megvii key mapping (V1/V2: ``N`` counts the units of all stages, 4 + 8 + 4, ``s`` from 2; V2+:
4 + 4 + 8 + 4, ``s`` from 1; V2.Large: ``Pa`` is the ``a``-th unit of stage ``P``, 2..5):

=============================================  ============================================
Megvii                                          ours
=============================================  ============================================
``first_conv.{0,1}``                            ``conv1.{0,1}``
V2 ``features.N.branch_main.k``                 ``stage{s}.{i}.branch2.k``
V2 ``features.N.branch_proj.k``                 ``stage{s}.{i}.branch1.k``
V2 ``conv_last.{0,1}``                          ``conv5.{0,1}``
V1 ``features.N.branch_main_1.{0,1}``           ``stage{s}.{i}.gconv1``, ``.bn1``
V1 ``features.N.branch_main_1.{3,4}``           ``stage{s}.{i}.dwconv``, ``.bn2``
V1 ``features.N.branch_main_2.{0,1}``           ``stage{s}.{i}.gconv2``, ``.bn3``
``classifier.0.weight``                         ``fc.weight`` (no bias)
V2+ ``features.N.branch_{main,proj}.k``         ``stage{s}.{i}.branch_{main,proj}.k``
V2+ ``...branch_main.k.SE_opr.{1,2,4}``         ``...branch_main.k.gate.{1,2,4}``
V2+ ``conv_last.{0,1}``                         ``conv_last.{0,1}``
V2+ ``LastSE.SE_opr.{1,2,4}``                   ``head_se.gate.{1,2,4}``
V2+ ``fc.0.weight``                             ``head_fc.0.weight``
V2.Large ``first_conv.k.{conv,bn}``             ``conv1.k.{0,1}``
V2.Large ``features.{P-2}.Pa.{proj,down}``      ``stage{P}.{a}.{proj,down}`` (``a``: 0, 1, ...)
V2.Large ``...Pa.branch_main.k.{conv,bn}``      ``stage{P}.{a}.branch_main.k.{0,1}``
V2.Large ``...Pa.se_fc{1,2}``                   ``stage{P}.{a}.se.fc{1,2}``
V2.Large ``...Pa.se_block.{0,2}``               dropped: the same tensors as ``se_fc{1,2}``
V2.Large ``predict_{56,28,14}.conv.k.{conv,bn}`` ``aux_heads.stage{2,3,4}.conv.k.{0,1}``
V2.Large ``predict_{56,28,14}.fc``              ``aux_heads.stage{2,3,4}.fc``
V2.Large ``conv_last.{conv,bn}``, ``fc``        ``conv_last.{0,1}``, ``fc`` (with bias)
=============================================  ============================================
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .io import check_output_path
from .mmpretrain_keys import mmpretrain_kind
from .models import create_model, get_model_info, list_models
from .models.base import ShuffleNetBase
from .models.v1 import V1_REPEATS
from .models.v2 import V2_REPEATS
from .models.v2_plus import V2_PLUS_REPEATS
from .preprocessing import MEGVII_PREPROCESSING, imagenet_classes
from .weights import (
    check_model_kwargs,
    error_reason,
    load_state_dict_checked,
    printable,
    save,
)

__all__ = [
    "SOURCES",
    "ConvertResult",
    "Detected",
    "checkpoint_model",
    "convert_checkpoint",
    "megvii_v1_filter",
    "megvii_v2_filter",
    "megvii_v2_large_filter",
    "megvii_v2_plus_filter",
    "read_checkpoint",
    "torchvision_filter",
]

_WRAPPERS = ("state_dict", "model")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a PyTorch checkpoint, loaded with ``weights_only=True``.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` and strips ``module.`` prefixes
    (``DataParallel``). Anything but a mapping of names to dense CPU tensors is refused, and so
    are two keys that name the same tensor once the prefix is stripped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such checkpoint: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text quotes the file and advises unsafe loading
        raise ValueError(
            f"{p} is not a readable PyTorch checkpoint: it is corrupt or holds objects other "
            "than tensors, which are never unpickled"
        ) from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise ValueError(
            f"{p} is not a readable PyTorch checkpoint (truncated or corrupt): {error_reason(e)}"
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
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in obj.items():
        kind = _unreadable_kind(value)
        if kind:
            raise ValueError(
                f"{p}: {printable(key)} is {kind}; only dense tensors held in memory on the CPU "
                "are read"
            )
        name = key.removeprefix("module.")
        if name in out:
            raise ValueError(
                f"{p}: {printable(origin[name])} and {printable(key)} are the same key once the "
                "DataParallel prefix 'module.' is stripped; a checkpoint holds each tensor once"
            )
        out[name], origin[name] = value, key
    return out


def _unreadable_kind(tensor: Tensor) -> str | None:
    """What ``tensor`` is when it is not a dense tensor with data on the CPU, else ``None``."""
    if tensor.layout != torch.strided:
        return f"a sparse tensor (layout {str(tensor.layout).removeprefix('torch.')})"
    if tensor.device.type == "meta":
        return "a meta tensor (a shape without data)"
    if tensor.device.type != "cpu":
        return f"a tensor on the {tensor.device.type} device"
    if tensor.is_quantized:
        return f"a quantized tensor ({str(tensor.dtype).removeprefix('torch.')})"
    return None


def _check_values(src: object, state_dict: dict[str, Tensor], names: dict[int, str]) -> None:
    """``ValueError`` if a floating-point tensor of ``state_dict`` (read from ``src``) holds NaN
    or infinite values or a BatchNorm ``running_var`` is negative; ``names`` maps
    ``id(tensor)`` to the name to report (default: its key)."""

    def name(key: str, value: Tensor) -> str:
        return printable(names.get(id(value), key))

    nonfinite = []
    for key, value in state_dict.items():
        if value.is_floating_point():
            count = value.numel() - int(torch.isfinite(value).sum())
            if count:
                nonfinite.append(f"{name(key, value)} ({count} of {value.numel()} values)")
    if nonfinite:
        more = f" (+{len(nonfinite) - 3} more)" if len(nonfinite) > 3 else ""
        raise ValueError(
            f"{src}: NaN or infinite values in {len(nonfinite)} tensor(s): "
            f"{', '.join(nonfinite[:3])}{more}"
        )
    negative = [
        name(key, value)
        for key, value in state_dict.items()
        if key.endswith("running_var") and value.is_floating_point() and bool((value < 0).any())
    ]
    if negative:
        more = f" (+{len(negative) - 3} more)" if len(negative) > 3 else ""
        raise ValueError(
            f"{src}: negative BatchNorm running variance in {', '.join(negative[:3])}{more}: "
            "a variance is never below zero"
        )


def _unit(index: int, stage_repeats: tuple[int, ...], first_stage: int = 2) -> str:
    """``stage{s}.{i}`` for the ``index``-th unit counted over all stages."""
    for stage, repeats in enumerate(stage_repeats, start=first_stage):
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


def megvii_v2_plus_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ShuffleNetV2+ names -> ours (:mod:`shufflenet.models.v2_plus` kept the release's
    indices); see the module docstring."""

    def unit(m: re.Match[str]) -> str:
        rest = m[2].replace(".SE_opr.", ".gate.")
        return f"{_unit(int(m[1]), V2_PLUS_REPEATS, first_stage=1)}.{rest}"

    return _rename(
        state_dict,
        [
            *_SHARED_RULES,
            (r"^fc\.0\.", lambda m: "head_fc.0."),
            (r"^LastSE\.SE_opr\.", lambda m: "head_se.gate."),
            (r"^features\.(\d+)\.(.+)$", unit),
        ],
    )


# V2.Large's auxiliary classifiers are named by the side of their input at 224x224.
_LARGE_AUX = {"predict_56": "stage2", "predict_28": "stage3", "predict_14": "stage4"}
_LARGE_SE_TWINS = {"0": "se_fc1", "2": "se_fc2"}
_LARGE_SE = {"se_fc1": "se.fc1", "se_fc2": "se.fc2"}


def _drop_se_duplicates(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """V2.Large holds each SE layer twice, as ``se_fc{1,2}`` and ``se_block.{0,2}``: keep one
    (``ValueError`` if the two differ)."""
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"^(.+)\.se_block\.([02])\.(weight|bias)$", key)
        if m is None:
            out[key] = value
            continue
        twin = f"{m[1]}.{_LARGE_SE_TWINS[m[2]]}.{m[3]}"
        if twin not in state_dict:
            out[twin] = value  # only the Sequential's copy: keep it under the layer's name
        elif state_dict[twin].shape != value.shape or not torch.equal(state_dict[twin], value):
            raise ValueError(
                f"{printable(key)} differs from {printable(twin)}: the checkpoint's two copies "
                "of this squeeze-excitation layer disagree"
            )
    return out


def megvii_v2_large_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ShuffleNetV2.Large names -> ours (:mod:`shufflenet.models.v2_large`); see the
    module docstring. The release's duplicate SE keys are dropped once checked equal."""

    def rename(key: str) -> str:
        key = re.sub(r"^first_conv\.", "conv1.", key)
        m = re.match(r"^features\.(\d+)\.(\d+)([a-z])\.", key)
        if m and int(m[2]) == int(m[1]) + 2:  # features.0.2a. -> stage2.0.
            key = f"stage{m[2]}.{ord(m[3]) - ord('a')}." + key[m.end() :]
        key = re.sub(r"\.(se_fc[12])\.", lambda m: f".{_LARGE_SE[m[1]]}.", key)
        m = re.match(r"^(predict_\d+)\.", key)
        if m and m[1] in _LARGE_AUX:
            key = f"aux_heads.{_LARGE_AUX[m[1]]}." + key[m.end() :]
        # Conv_BN_ReLU's conv/bn -> ConvNormAct's 0/1
        return re.sub(
            r"\.(conv|bn)\.(weight|bias|running_mean|running_var|num_batches_tracked)$",
            lambda m: f".{0 if m[1] == 'conv' else 1}.{m[2]}",
            key,
        )

    return {rename(k): v for k, v in _drop_se_duplicates(state_dict).items()}


Filter = Callable[[dict[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class Detected:
    """What a source's checkpoint holds: a description, the pattern of the registered models it
    may fit, the layout of its units (as :class:`ConvertResult` reports it), its key filter and
    the constructor arguments it needs besides ``num_classes`` and ``in_chans``."""

    description: str
    pattern: str
    layout: str
    filter: Filter
    kwargs: dict[str, object] = field(default_factory=dict)


def _torchvision(state_dict: dict[str, Tensor]) -> Detected:
    # the default layout, not passed: model_config stays as plain as torchvision's
    return Detected(
        "torchvision ShuffleNet V2", "shufflenet_v2_x*", "torchvision", torchvision_filter
    )


def _megvii(state_dict: dict[str, Tensor]) -> Detected:
    keys = list(state_dict)
    if any(".branch_main_1." in k for k in keys):
        return Detected(
            "Megvii ShuffleNet V1",
            "shufflenet_v1_*",
            "megvii",
            megvii_v1_filter,
            kwargs={"layout": "megvii"},
        )
    if "first_conv.0.conv.weight" in state_dict or any(".se_fc1." in k for k in keys):
        aux = any(k.split(".", 1)[0] in _LARGE_AUX for k in keys)
        return Detected(
            "Megvii ShuffleNetV2.Large",
            "shufflenet_v2_large",
            "megvii",
            megvii_v2_large_filter,
            kwargs={"aux_logits": aux},
        )
    branches = any(".branch_main." in k for k in keys)
    if any(k.startswith("LastSE.") or ".SE_opr." in k for k in keys) or (
        branches and "fc.0.weight" in state_dict and "conv_last.0.weight" in state_dict
    ):
        return Detected(
            "Megvii ShuffleNetV2+", "shufflenet_v2_plus_*", "megvii", megvii_v2_plus_filter
        )
    if branches:
        return Detected(
            "Megvii ShuffleNet V2",
            "shufflenet_v2_x*",
            "megvii",
            megvii_v2_filter,
            kwargs={"layout": "megvii"},
        )
    raise ValueError(
        "not a Megvii ShuffleNet V1/V2/V2+/V2.Large checkpoint: no features.N.branch_main(_1) "
        f"keys; first keys: {', '.join(map(printable, keys[:3]))}"
    )


def _mmpretrain(state_dict: dict[str, Tensor]) -> Detected:
    return Detected(*mmpretrain_kind(list(state_dict)))


# Where checkpoints come from: source -> what a state dict of it is (:class:`Detected`).
# A new source is one entry here plus its filter.
SOURCES: dict[str, Callable[[dict[str, Tensor]], Detected]] = {
    "torchvision": _torchvision,
    "megvii": _megvii,
    "mmpretrain": _mmpretrain,
}


def _shape_matches(name: str, kwargs: dict[str, object], state_dict: dict[str, Tensor]) -> int:
    try:
        with torch.device("meta"):
            expected = create_model(name, **kwargs).state_dict()
    except ValueError:  # widths that this layout cannot build
        return -len(state_dict) - 1
    fits = sum(k in state_dict and state_dict[k].shape == v.shape for k, v in expected.items())
    return fits - len(set(state_dict) - set(expected))


def _best_model(pattern: str, kwargs: dict[str, object], state_dict: dict[str, Tensor]) -> str:
    """The registered model (matching ``pattern``) whose shapes fit ``state_dict`` best."""
    names = list_models(pattern)
    if len(names) == 1:
        return names[0]
    return max(names, key=lambda n: _shape_matches(n, kwargs, state_dict))


@dataclass
class ConvertResult:
    """What :func:`convert_checkpoint` wrote (``layout``: the units' layout of the source,
    ``megvii`` for every Megvii checkpoint, V2+ and V2.Large included, which have no other)."""

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
    tensors' shapes are bounded before any model is built. NaN or infinite weights and negative
    BatchNorm running variances raise ``ValueError`` naming the keys; nothing is written.
    """
    check_output_path(dst, "dst", inputs=[src])
    net, detected = checkpoint_model(src, source, model)
    preprocessing = MEGVII_PREPROCESSING if source == "megvii" else None
    class_names = imagenet_classes() if net.num_classes == 1000 else None
    path = save(
        net,
        dst,
        class_names=class_names,
        preprocessing=preprocessing,
        converted_from={"source": source, "file": Path(src).name},
    )
    return ConvertResult(path, net.model_config["name"], detected.layout, net.num_classes, source)


def checkpoint_model(
    src: str | os.PathLike[str], source: str, model: str | None = None
) -> tuple[ShuffleNetBase, Detected]:
    """The network (eval mode) that the ``source`` checkpoint ``src`` holds, and what the
    checkpoint was found to be; the checks of :func:`convert_checkpoint`, nothing written."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    raw = read_checkpoint(src)
    detected = SOURCES[source](raw)
    state_dict = detected.filter(raw)
    fc = state_dict.get("fc.weight")
    stem = state_dict.get("conv1.0.weight", state_dict.get("conv1.0.0.weight"))
    kwargs: dict[str, object] = dict(detected.kwargs)
    if fc is not None and fc.dim() == 2:
        kwargs["num_classes"] = fc.shape[0]
    if stem is not None and stem.dim() == 4:
        kwargs["in_chans"] = stem.shape[1]
    try:
        check_model_kwargs(kwargs)
    except ValueError as e:
        raise ValueError(
            f"{src}: {e} (read from the shapes of fc.weight and the stem's first conv)"
        ) from None
    if model is None:
        model = _best_model(detected.pattern, kwargs, state_dict)
    else:
        get_model_info(model)  # unknown names raise with suggestions
        if not fnmatch.fnmatchcase(model, detected.pattern):
            raise ValueError(
                f"{src} is a {detected.description} checkpoint: model must be one of "
                f"{', '.join(list_models(detected.pattern))}, got {model}"
            )
    net = create_model(model, **kwargs)
    for key, value in net.state_dict().items():  # older checkpoints predate this BN counter
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    try:
        load_state_dict_checked(net, state_dict)
    except ValueError as e:
        raise ValueError(f"{src} ({source}) does not fit {model}: {e}") from None
    # checked once loaded, when every tensor has a shape of the model: bounded work
    _check_values(src, state_dict, {id(v): k for k, v in raw.items()})
    return net.eval(), detected
