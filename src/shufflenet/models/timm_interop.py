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
normalisation. timm's pipeline makes RGB values in 0-1; for models that take Megvii's BGR 0-255
input (V2+, V2.Large, ``layout="megvii"``) the cfg's mean 0 and std 1/255 give the 0-255
scale, but the channels stay RGB: reverse them (``x.flip(1)``) before such a model, as the
cfg's ``notes`` say. No weights are hosted: ``pretrained=True`` raises ``ValueError``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from torch import nn

from ..preprocessing import MEGVII_PREPROCESSING, Preprocessing
from .registry import create_model, get_model_info, list_models

__all__ = ["install", "pretrained_cfg_for", "register_timm_models"]

# timm's register_model reads each module-level entry's cfg from here, by model name.
default_cfgs: dict[str, dict[str, Any]] = {}
_registered: set[str] = set()
BGR_NOTE = (
    "takes BGR values 0-255 (Megvii's preprocessing): mean and std give the 0-255 scale, but "
    "timm's transforms give RGB, so reverse the channels (x.flip(1)) before the model"
)


def pretrained_cfg_for(name: str, **kwargs: Any) -> dict[str, Any]:
    """timm's pretrained-cfg fields for model ``name`` built with ``kwargs``: input size,
    crop, interpolation, mean and std (on timm's 0-1 scale), classes and classifier."""
    info = get_model_info(name)
    pre: Preprocessing = info.preprocessing
    if kwargs.get("layout") == "megvii":
        pre = MEGVII_PREPROCESSING
    height, width = pre.input_size
    per_unit = 255.0 * pre.scale  # our mean and std are in units of pixel * scale
    cfg: dict[str, Any] = {
        "architecture": name,
        "input_size": (int(kwargs.get("in_chans", 3)), height, width),
        "interpolation": "bilinear",
        "crop_pct": min(height, width) / pre.resize if pre.resize else 1.0,
        "crop_mode": "center",
        "mean": tuple(m / per_unit for m in pre.mean),
        "std": tuple(s / per_unit for s in pre.std),
        "num_classes": int(kwargs.get("num_classes", 1000)),
        "classifier": None if kwargs.get("features_only") else "fc",
        "description": info.description,
    }
    if pre.channel_order == "BGR":
        cfg["notes"] = (BGR_NOTE,)
    return cfg


def _first_conv(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _build(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """What a timm entry point does for model ``name``: our ``create_model`` with ``kwargs``,
    and the model's ``pretrained_cfg`` (ours, updated by timm's ``pretrained_cfg`` if it is
    a dict or ``PretrainedCfg``, then by ``pretrained_cfg_overlay``)."""
    if pretrained:
        raise ValueError(
            f"no pretrained weights are hosted for {name}: pass pretrained=False and "
            "checkpoint_path=FILE (a shufflenet.save file of this model, such as a converted "
            "torchvision or Megvii checkpoint), or use shufflenet.load"
        )
    model = create_model(name, **kwargs)
    cfg = pretrained_cfg_for(name, **kwargs)
    cfg["first_conv"] = _first_conv(model)
    cfg["num_classes"] = getattr(model, "num_classes", 0)  # a features_only model has none
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
        default_cfgs[name] = pretrained_cfg_for(name)
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
