"""Model names -> builders and the papers' numbers, like timm's ``create_model``/``list_models``.

Each family module registers its models when :mod:`shufflenet.models` imports it, with one
:func:`register_models` call whose rows are :class:`ModelInfo` records that spell each name
out. Those rows are the one place of the papers' numbers: ``shufflenet models`` prints them, the
tests assert the built networks against them, and builder docstrings do not repeat them.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

from ..preprocessing import Preprocessing
from .backbone import ShuffleNetFeatures, apply_backbone_options
from .base import ShuffleNetBase

__all__ = [
    "ModelInfo",
    "PublishedSource",
    "create_model",
    "get_model_info",
    "list_models",
    "published_sources",
    "register_model",
    "register_models",
    "register_pretrained_loader",
]


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture and what the papers report for it (``None``: not reported)."""

    name: str
    family: str
    builder: Callable[..., ShuffleNetBase]
    description: str
    paper_mflops: float | None = None
    paper_params_m: float | None = None
    paper_top1_err: float | None = None
    reference_top1: dict[str, float] = field(default_factory=dict)
    paper_source: str | None = None  # who published the paper columns; None: the family's paper
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    @property
    def paper_top1(self) -> float | None:
        """The paper's top-1 accuracy in percent."""
        return None if self.paper_top1_err is None else round(100.0 - self.paper_top1_err, 2)


class PublishedSource(Protocol):
    """One published weights file of a model, as the timm registry lists it
    (:class:`shufflenet.hub.PretrainedWeights` is one)."""

    @property
    def source(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def license(self) -> str: ...
    @property
    def recipe_url(self) -> str: ...
    @property
    def preprocessing(self) -> Preprocessing: ...


_REGISTRY: dict[str, ModelInfo] = {}
# Loads published weights into a model built here: ``(model, source or True)``, and lists a
# model's published files. Set by :mod:`shufflenet.hub` (a higher layer) when ``shufflenet``
# is imported.
_pretrained_loader: list[Callable[[ShuffleNetBase, str | bool], None]] = []
_pretrained_sources: list[Callable[[str], Sequence[PublishedSource]]] = []


def register_pretrained_loader(
    loader: Callable[[ShuffleNetBase, str | bool], None],
    sources: Callable[[str], Sequence[PublishedSource]],
) -> None:
    """Make ``loader`` the one that ``create_model(..., pretrained=...)`` calls, and
    ``sources`` the one that lists a model's published files (its default source first)."""
    _pretrained_loader[:] = [loader]
    _pretrained_sources[:] = [sources]


def published_sources(name: str) -> list[PublishedSource]:
    """The published weights files of model ``name``, its default source first (none before
    :mod:`shufflenet.hub` is imported)."""
    return list(_pretrained_sources[0](name)) if _pretrained_sources else []


def register_model(info: ModelInfo) -> ModelInfo:
    """Add ``info`` to the registry; names are unique."""
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def register_models(*infos: ModelInfo) -> tuple[ModelInfo, ...]:
    """Add each of ``infos`` to the registry, in order; the family's table of models."""
    return tuple(register_model(info) for info in infos)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names in registry order, optionally filtered by a shell-style pattern."""
    names = list(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (see `shufflenet models` for all names)"
        ) from None


@overload
def create_model(
    name: str, *, features_only: Literal[True], **kwargs: Any
) -> ShuffleNetFeatures: ...
@overload
def create_model(name: str, *, features_only: Literal[False], **kwargs: Any) -> ShuffleNetBase: ...
@overload
def create_model(
    name: str, *, features_only: bool, **kwargs: Any
) -> ShuffleNetBase | ShuffleNetFeatures: ...
@overload
def create_model(name: str, **kwargs: Any) -> ShuffleNetBase: ...
def create_model(
    name: str, *, features_only: bool = False, **kwargs: Any
) -> ShuffleNetBase | ShuffleNetFeatures:
    """Build the registered model ``name`` with random weights.

    Keyword arguments go to the network (``num_classes``, ``in_chans``, ``drop_rate``, ...),
    except the backbone options (:mod:`.backbone`): ``frozen_stages`` (-1: none, 0: the stem,
    k: the stem and the first k stages) and ``norm_eval`` (every BatchNorm stays in eval mode
    while training), and with ``features_only=True`` ``out_indices`` (of the feature maps
    C2..C5, default all four): then the model is a :class:`~.backbone.ShuffleNetFeatures`
    returning those maps as a list, without the layers after the last one.

    ``pretrained=True`` loads the published weights of the model's default source,
    ``pretrained="SOURCE"`` those of that source (:mod:`shufflenet.hub`: fetched once, checked
    against their hash, converted); with a ``num_classes`` other than theirs the classifier
    stays fresh (fine-tuning). The model then carries their preprocessing and class names in
    ``model.weights_metadata``, as a loaded weights file does.

    The model remembers how it was built in ``model.model_config`` so that ``shufflenet.save``
    can record it and ``shufflenet.load`` can rebuild it (``features_only`` models excepted:
    save the classification model; its weights fit the backbone).
    """
    info = get_model_info(name)
    if not isinstance(features_only, bool):
        raise ValueError(f"features_only must be True or False, got {features_only!r}")
    pretrained = kwargs.pop("pretrained", None) or False
    if not isinstance(pretrained, bool | str):
        raise ValueError(f"pretrained must be True, False or a source name, got {pretrained!r}")
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices chooses feature maps: it needs features_only=True")
    options: dict[str, Any] = {
        k: kwargs.pop(k) for k in ("frozen_stages", "norm_eval") if k in kwargs
    }
    model = info.builder(**kwargs)
    model.model_config = {"name": name, **kwargs}
    if pretrained is not False:
        _pretrained_loader[0](model, pretrained)
    if features_only:
        if out_indices is None:
            out_indices = tuple(range(len(model.feature_info)))
        return ShuffleNetFeatures(model, out_indices, **options)
    model.model_config.update(options)
    return apply_backbone_options(model, **options)
