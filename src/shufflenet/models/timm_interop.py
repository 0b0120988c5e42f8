"""timm interop: every registered model is a timm model too, once timm is imported.

With timm installed, after ``import shufflenet``::

    timm.list_models("shufflenet*")
    timm.create_model("shufflenet_v2_x1_0", num_classes=10)
    timm.create_model("shufflenet_v2_x1_0", features_only=True, out_indices=(1, 2, 3))
    timm.create_model("shufflenet_v2_x1_0", checkpoint_path="model.safetensors")  # ours

``import shufflenet`` does not import timm (it takes seconds): :func:`install` registers the
models at once if timm is already imported, and otherwise puts a finder on ``sys.meta_path``
that registers them right after timm's own first import. Without timm nothing else happens.
:func:`register_timm_models` registers models added to our registry later.

Each model gets a timm ``pretrained_cfg`` (``model.pretrained_cfg``, ``default_cfg``, and in
timm's registry) from its :class:`~shufflenet.preprocessing.Preprocessing`, so that
``timm.data.resolve_data_config({}, model=model)`` gives its input size, crop and
normalisation. With ``checkpoint_path`` set to one of our weights files, the cfg is the file's
preprocessing and the file must hold that model with that many classes (``ValueError``
otherwise); other files are left to timm's loader (which never unpickles code). timm does not
pass ``checkpoint_path`` to the model's entry point: the entry point reads it from the
arguments of the ``timm.create_model`` call that runs it.

timm's pipeline makes RGB values in 0-1 and normalises them; our mean and std, in units of
``pixel * scale``, become timm's by dividing by ``255 * scale``. A ``resize`` becomes
``crop_pct`` (centre crop of the resized shorter side), no ``resize`` timm's ``squash`` crop
mode. The channel order has no timm field: for models that take BGR input (such as Megvii's
BGR 0-255 of V2+, V2.Large and ``layout="megvii"``: mean 0, std 1/255 in timm's terms) the
cfg's mean and std are in RGB order and the channels must be reversed (``x.flip(1)``) after
timm's transforms, as the cfg's ``notes`` say; building such a model from a weights file also
warns (``UserWarning``), since its predictions are wrong without the flip.
A model with published weights (:mod:`shufflenet.hub`'s table) has a tag per source in timm's
registry (``timm.list_pretrained("shufflenet*")``: ``shufflenet_v2_x1_0.torchvision``, ...,
the default source first), each with the file's url, license and preprocessing;
``pretrained=True`` loads the tag's file (the default source's without a tag; ``ValueError`` for
a model with none). With ``in_chans`` other than 3 the stem's weights are adapted as timm
adapts its own (summed over RGB for one channel).

timm's ``global_pool`` may be ``"avg"`` (the head's average pooling) or ``""`` (none: see
:meth:`~shufflenet.models.base.ShuffleNetBase.set_global_pool`), ``drop_path_rate`` and
``drop_block_rate`` 0 only: ShuffleNet has neither stochastic depth nor DropBlock. Other values
raise ``ValueError``. timm's ``device`` and ``dtype`` place and cast the model (it is built under
``torch.device(device)``); ``features_only=True`` gives a
:class:`~shufflenet.models.backbone.ShuffleNetFeatures` (``feature_cls="list"``, the default)
or timm's ``FeatureGetterNet`` over ``forward_intermediates`` (``feature_cls="getter"``). As
timm's Inception v3, SE-ShuffleNet v2-164 comes without auxiliary classifiers unless
``aux_logits=True`` (or a ``checkpoint_path`` file of ours that has them), so that timm's
``criterion(model(x), target)`` trains it. The rest of timm's model API (``reset_classifier``,
``forward_intermediates``, ...) is that of :class:`~shufflenet.models.base.ShuffleNetBase`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..preprocessing import MEGVII_PREPROCESSING, Preprocessing, check_input_size
from .base import ShuffleNetBase, check_global_pool, first_conv_name
from .registry import create_model, get_model_info, list_models, published_sources

__all__ = ["install", "pretrained_cfg_for", "register_timm_models"]

# timm's register_model reads each module-level entry's cfg from here, by model name.
default_cfgs: dict[str, dict[str, Any]] = {}
_registered: set[str] = set()
BGR_NOTE = (
    "takes BGR input: timm's transforms give RGB (this cfg's mean and std are in RGB order), "
    "so reverse the channels (x.flip(1)) before the model"
)
# timm's create_model options for layers that ShuffleNet does not have: 0 (or None) only.
_ZERO_ONLY = {
    "drop_path_rate": "ShuffleNet units have no stochastic depth",
    "drop_block_rate": "ShuffleNet has no DropBlock",
}
# How many frames above the entry point timm.create_model may be.
_MAX_FRAMES = 4
# Where timm's defaults differ from ours, by family: no auxiliary classifiers, as timm's own.
_TIMM_DEFAULTS: dict[str, dict[str, Any]] = {"v2_large": {"aux_logits": False}}
FEATURE_CLASSES = ("list", "getter")
# What a tag's cfg adds to the model's own: the file and its data cfg (not its class count).
_FILE_KEYS = ("url", "license", "origin_url", "tag", "input_size", "crop_pct", "crop_mode",
              "interpolation", "mean", "std")  # fmt: skip
STRIDE = 32  # of the last feature map: every network halves the input five times


def pretrained_cfg_for(name: str, **kwargs: Any) -> dict[str, Any]:
    """timm's pretrained-cfg fields for model ``name`` built with ``kwargs``: input size,
    crop, interpolation, mean and std (on timm's 0-1 scale), classes and classifier."""
    info = get_model_info(name)
    pre: Preprocessing = info.preprocessing
    if kwargs.get("layout") == "megvii":
        pre = MEGVII_PREPROCESSING
    cfg: dict[str, Any] = {
        "architecture": name,
        **_data_cfg(pre, int(kwargs.get("in_chans", 3))),
        "num_classes": int(kwargs.get("num_classes", 1000)),
        "classifier": None if kwargs.get("features_only") else "fc",
        "description": info.description,
    }
    return cfg


def _timm_default_cfg(name: str) -> Any:
    """What timm's registry takes for model ``name``: its cfg, or with published weights timm's
    ``DefaultCfg`` of one tagged cfg per source (the file's url, license, preprocessing)."""
    cfg = pretrained_cfg_for(name)
    sources = published_sources(name)
    if not sources:
        return cfg
    from timm.models import generate_default_cfgs

    tagged: dict[str, Any] = {
        f"{name}.{w.source}": {
            **cfg,
            **_data_cfg(w.preprocessing, 3),
            "url": w.url,
            "license": w.license,
            "origin_url": w.recipe_url,
        }
        for w in sources
    }
    return generate_default_cfgs(tagged)[name]


def _pool_size(input_size: Sequence[int]) -> tuple[int, int]:
    """The last feature map's size at ``input_size`` (C, H, W): every stride-2 layer pads by
    half its kernel, so each halves a side rounding up."""
    return (-(-input_size[1] // STRIDE), -(-input_size[2] // STRIDE))


def _crop_pct(side: int, resize: int) -> float:
    """The crop fraction from which timm's ``floor(side / crop_pct)`` gives ``resize`` back."""
    crop_pct = side / resize
    while math.floor(side / crop_pct) < resize:
        crop_pct = math.nextafter(crop_pct, 0.0)
    return crop_pct


def _data_cfg(pre: Preprocessing, in_chans: int) -> dict[str, Any]:
    """The fields of a pretrained cfg that ``timm.data.resolve_data_config`` reads, and the
    ``notes`` on the channel order where it is BGR."""
    height, width = pre.input_size
    per_unit = 255.0 * pre.scale  # our mean and std are in units of pixel * scale
    # timm normalises RGB values: a BGR model's per-channel values go in reverse order.
    bgr = pre.channel_order == "BGR"
    mean, std = (tuple(pre.mean[::-1]), tuple(pre.std[::-1])) if bgr else (pre.mean, pre.std)
    cfg: dict[str, Any] = {
        "input_size": (in_chans, height, width),
        "pool_size": _pool_size((in_chans, height, width)),
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": _crop_pct(min(height, width), pre.resize) if pre.resize else 1.0,
        "crop_mode": "center" if pre.resize else "squash",
        "mean": tuple(m / per_unit for m in mean),
        "std": tuple(s / per_unit for s in std),
    }
    if bgr:
        cfg["notes"] = (BGR_NOTE,)
    return cfg


def _pop_timm_options(kwargs: dict[str, Any]) -> str | None:
    """Check and remove timm's ``global_pool`` (returned), ``drop_path_rate`` and
    ``drop_block_rate``."""
    pool = kwargs.pop("global_pool", None)
    if pool is not None:
        check_global_pool(pool)
    for key, reason in _ZERO_ONLY.items():
        rate = kwargs.pop(key, None)
        if rate is not None and not (isinstance(rate, numbers.Real) and rate == 0):
            raise ValueError(
                f"{reason}: {key} must be 0, got {rate!r} (drop_rate sets the dropout before "
                "the classifier)"
            )
    return pool


def _pop_feature_cls(kwargs: dict[str, Any]) -> str:
    """timm's ``feature_cls`` (or ``feature_cfg={"feature_cls": ...}``), checked and removed."""
    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    feature_cls = kwargs.pop("feature_cls", feature_cfg.pop("feature_cls", "list"))
    if feature_cfg:
        raise ValueError(f"feature_cfg takes feature_cls only, got {sorted(feature_cfg)}")
    if not isinstance(feature_cls, str) or feature_cls.lower() not in FEATURE_CLASSES:
        raise ValueError(f"feature_cls must be one of {FEATURE_CLASSES}, got {feature_cls!r}")
    return feature_cls.lower()


def _timm_defaults(name: str, kwargs: dict[str, Any], metadata: Mapping[str, Any] | None) -> None:
    """Set timm's defaults for ``name`` that ``kwargs`` leaves unset; with one of our weights
    files, the file's configuration instead (the model must hold its weights)."""
    for key, value in _TIMM_DEFAULTS.get(get_model_info(name).family, {}).items():
        if metadata is None:
            kwargs.setdefault(key, value)
        elif key in metadata["model_config"]:
            kwargs.setdefault(key, metadata["model_config"][key])


def _create(name: str, kwargs: dict[str, Any], feature_cls: str) -> nn.Module:
    """Our ``create_model``, or timm's ``FeatureGetterNet`` around it for
    ``features_only=True, feature_cls="getter"``."""
    if feature_cls != "getter" or not kwargs.get("features_only"):
        return create_model(name, **kwargs)
    from timm.models._features import FeatureGetterNet

    kwargs = {k: v for k, v in kwargs.items() if k != "features_only"}
    out_indices = kwargs.pop("out_indices", None)
    model = create_model(name, **kwargs)
    if out_indices is None:
        out_indices = tuple(range(len(model.feature_info)))
    return FeatureGetterNet(model, out_indices=out_indices)


def _timm_checkpoint_path() -> Any:
    """The ``checkpoint_path`` of the ``timm.create_model`` call that runs the entry point
    calling this function's caller, or ``None``: timm loads it after the entry point returns."""
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame.f_back is None:
            return None
        frame = frame.f_back
        module = str(frame.f_globals.get("__name__", ""))
        if frame.f_code.co_name == "create_model" and module.startswith("timm."):
            return frame.f_locals.get("checkpoint_path")
    return None


def _file_metadata(path: Any) -> dict[str, Any] | None:
    """The checked metadata of ``path`` if it is one of our weights files (``ValueError`` if
    that metadata is bad), else ``None``: other files are timm's to load or refuse."""
    from safetensors import SafetensorError, safe_open

    from ..weights import FORMAT, parse_metadata

    if not isinstance(path, str | os.PathLike) or not os.path.isfile(path):
        return None
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    if raw.get("format") != FORMAT:
        return None
    return parse_metadata(raw, path)


def _file_preprocessing(
    name: str, model: nn.Module, metadata: Mapping[str, Any], path: Any
) -> Preprocessing:
    """The preprocessing of a weights file for ``model`` (built as ``name``); ``ValueError`` if
    the file holds another model or another number of classes."""
    stored = metadata["model_config"]["name"]
    if stored != name:
        raise ValueError(f"{path} holds a {stored} model, not {name}: create {stored!r} to load it")
    if isinstance(model, ShuffleNetBase) and model.num_classes != metadata["num_classes"]:
        raise ValueError(
            f"{path} holds {metadata['num_classes']} classes, the model has "
            f"{model.num_classes}: pass num_classes={metadata['num_classes']}"
        )
    pre = metadata["preprocessing"]
    return Preprocessing(
        input_size=check_input_size(pre["input_size"], "preprocessing input_size"),
        resize=pre.get("resize"),
        # 1, 3 or in_chans values per the file's (checked) metadata
        mean=tuple(float(m) for m in pre["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
        scale=float(pre["scale"]),
        channel_order=pre.get("channel_order", "RGB"),
    )


def _build(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """What a timm entry point does for model ``name``: our ``create_model`` with ``kwargs``
    (less timm's options, checked), and the model's ``pretrained_cfg``: ours, or the weights
    file's given as ``checkpoint_path``, updated by timm's ``pretrained_cfg`` if it is a dict
    or ``PretrainedCfg``, then by ``pretrained_cfg_overlay``. A tag (``MODEL.SOURCE``: timm
    passes ``pretrained_cfg="SOURCE"``) picks the published file that ``pretrained`` loads and
    its cfg."""
    tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
    sources = published_sources(name)
    if pretrained and tag is None and sources:
        tag = sources[0].source  # the default source's file, and its cfg
    if pretrained:  # the published weights of shufflenet.hub's table (the tag's source)
        kwargs["pretrained"] = tag or pretrained
    pool = _pop_timm_options(kwargs)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    feature_cls = _pop_feature_cls(kwargs)
    path = _timm_checkpoint_path()
    metadata = _file_metadata(path) if path else None
    _timm_defaults(name, kwargs, metadata)
    model: Any  # a network or backbone, given timm's attributes below
    with contextlib.nullcontext() if device is None else torch.device(device):
        model = _create(name, kwargs, feature_cls)
    if dtype is not None:
        model.to(dtype=dtype)
    if pool is not None and isinstance(model, ShuffleNetBase):
        model.set_global_pool(pool)
    cfg = pretrained_cfg_for(name, **kwargs)
    if metadata is not None:
        pre = _file_preprocessing(name, model, metadata, path)
        cfg.pop("notes", None)
        cfg.update(_data_cfg(pre, int(kwargs.get("in_chans", 3))))
        if pre.channel_order == "BGR":
            warnings.warn(f"{path}: {name} {BGR_NOTE}", UserWarning, stacklevel=4)
    cfg["first_conv"] = first_conv_name(model)
    cfg["num_classes"] = getattr(model, "num_classes", 0)  # a features_only model has none
    if tag is not None:
        from timm.models import get_pretrained_cfg

        pretrained_cfg = get_pretrained_cfg(f"{name}.{tag}")
        if pretrained_cfg is None:
            raise ValueError(f"{name} has no published weights tagged {tag!r}")
        pretrained_cfg = {k: v for k, v in pretrained_cfg.to_dict().items() if k in _FILE_KEYS}
    if hasattr(pretrained_cfg, "to_dict"):  # timm's PretrainedCfg
        pretrained_cfg = pretrained_cfg.to_dict()
    if isinstance(pretrained_cfg, dict):
        cfg.update(pretrained_cfg)
    cfg.update(pretrained_cfg_overlay or {})
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def _entry(name: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _build(name, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{get_model_info(name).description} (shufflenet.create_model({name!r}))."
    return entry


def register_timm_models(names: Sequence[str] | None = None) -> list[str]:
    """Register ``names`` (default: every model of our registry) with timm, importing it;
    returns the names newly registered. ``ImportError`` without timm."""
    from timm.models import register_model

    added = []
    for name in list_models() if names is None else names:
        if name in _registered:
            continue
        default_cfgs[name] = _timm_default_cfg(name)
        entry = globals()[name] = _entry(name)
        register_model(entry)
        _registered.add(name)
        added.append(name)
    return added


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs timm's own loader, then registers our models (and steps out of the way)."""

    def __init__(self, loader: importlib.abc.Loader, finder: _TimmFinder) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # timm's modules see their own loader, as without us.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._finder.remove()
        register_timm_models()


class _TimmFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the top-level ``timm`` package."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader, self)
                return spec
        return None

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Make our models timm models: now if timm is imported, else right after its import."""
    if "timm" in sys.modules:
        # timm blocked (None in sys.modules) or half-installed: nothing to register with.
        with contextlib.suppress(ImportError):
            register_timm_models()
        return
    if not any(isinstance(f, _TimmFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmFinder())
