"""Any ShuffleNet as a backbone: chosen feature maps, frozen stages, BatchNorms kept in eval mode.

``create_model(name, features_only=True, out_indices=(1, 2, 3))`` gives a
:class:`ShuffleNetFeatures`: the stem and the stages up to the last chosen feature map (no
later stage, no last conv, no head), returning the chosen maps of C2..C5 (strides 4, 8, 16,
32; ``feature_info``) as a list. It holds the classification model's own modules under their
own names, so a classification state dict fits it key for key, less the dropped modules:
``ShuffleNetFeatures(shufflenet.load(path), out_indices=(1, 2, 3))`` builds one from a weights
file.

``frozen_stages`` (mmdetection's convention: -1 none, 0 the stem, k the stem and the first k
stages) turns the gradients of those modules off and keeps their BatchNorms in eval mode, so
that their running statistics never change; ``norm_eval`` keeps every BatchNorm in eval mode
while training. Both work on classification models too, and everything goes through what
every family shares (``stem_names``, ``stage_names``, ``feature_info``), never per family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .base import ShuffleNetBase, check_input, set_norms_eval

__all__ = [
    "BACKBONE_OPTIONS",
    "FeatureInfo",
    "ShuffleNetFeatures",
    "apply_backbone_options",
    "check_frozen_stages",
    "check_out_indices",
    "frozen_module_names",
]

# The keywords of ``create_model`` handled here rather than by the network's constructor.
BACKBONE_OPTIONS = ("features_only", "out_indices", "frozen_stages", "norm_eval")


class FeatureInfo(list[dict[str, Any]]):
    """The chosen feature maps: a list of dicts (``num_chs``, ``reduction``, ``module``,
    ``index``), also usable as timm's ``FeatureInfo``.

    As in timm, :meth:`channels`, :meth:`reduction`, :meth:`module_name` and :meth:`get`
    without ``idx`` give the values of the chosen maps; with ``idx`` (an int or a list) they
    index all the model's maps (0..3: C2..C5), chosen or not. ``info`` holds all the maps,
    ``out_indices`` the chosen ones.
    """

    def __init__(self, info: Sequence[Mapping[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = [{**d, "index": i} for i, d in enumerate(info)]
        self.out_indices = tuple(out_indices)
        super().__init__(self.info[i] for i in self.out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """The value of ``key`` for each chosen map, or for the map(s) ``idx``."""
        if idx is None:
            return [d[key] for d in self]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(
        self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None
    ) -> Any:
        """The dicts (restricted to ``keys`` if given) of the chosen maps, or of ``idx``."""

        def pick(d: dict[str, Any]) -> dict[str, Any]:
            return dict(d) if keys is None else {k: d[k] for k in keys}

        if idx is None:
            return [pick(d) for d in self]
        if isinstance(idx, int):
            return pick(self.info[idx])
        return [pick(self.info[i]) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Channels of the chosen maps (or of ``idx``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Strides (input size / map size) of the chosen maps (or of ``idx``)."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """Names of the modules whose outputs the chosen maps (or ``idx``) are."""
        return self.get("module", idx)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_out_indices(out_indices: Any, count: int = 4) -> tuple[int, ...]:
    """``out_indices`` as a tuple: distinct indices into the ``count`` feature maps, in
    increasing order; ``ValueError`` otherwise."""
    span = f"0..{count - 1} (C2..C{count + 1})"
    if not isinstance(out_indices, tuple | list) or not out_indices:
        raise ValueError(
            f"out_indices must be a non-empty tuple of feature-map indices within {span}, got "
            f"{out_indices!r}"
        )
    for i in out_indices:
        if not _is_int(i) or not 0 <= i < count:
            raise ValueError(f"out_indices must hold integers within {span}, got {out_indices!r}")
    if len(set(out_indices)) != len(out_indices):
        raise ValueError(f"out_indices has duplicates: {out_indices!r}")
    if list(out_indices) != sorted(out_indices):
        raise ValueError(f"out_indices must be in increasing order, got {out_indices!r}")
    return tuple(out_indices)


def check_frozen_stages(frozen_stages: Any, num_stages: int) -> int:
    """``frozen_stages`` if it is an integer within -1..``num_stages``; ``ValueError``
    otherwise."""
    if not _is_int(frozen_stages) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(
            f"frozen_stages must be an integer within -1..{num_stages} (-1: none, 0: the stem, "
            f"k: the stem and the first k of the {num_stages} stages), got {frozen_stages!r}"
        )
    return int(frozen_stages)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def frozen_module_names(model: ShuffleNetBase, frozen_stages: int) -> tuple[str, ...]:
    """The stem and stage modules of ``model`` that ``frozen_stages`` freezes (checked)."""
    k = check_frozen_stages(frozen_stages, len(model.stage_names))
    return () if k < 0 else (*model.stem_names, *model.stage_names[:k])


def _freeze(module: nn.Module, names: Sequence[str], norm_eval: Any) -> tuple[str, ...]:
    """Turn off the gradients inside the submodules ``names``; returns the submodules whose
    BatchNorms must stay in eval mode (``""``: all, with ``norm_eval``)."""
    _check_flag(norm_eval, "norm_eval")
    for name in names:
        for p in module.get_submodule(name).parameters():
            p.requires_grad_(False)
    return ("",) if norm_eval else tuple(names)


def apply_backbone_options(
    model: ShuffleNetBase, frozen_stages: int = -1, norm_eval: bool = False
) -> ShuffleNetBase:
    """Freeze the stem and first ``frozen_stages`` stages of ``model`` (gradients off,
    BatchNorms in eval mode while training) and with ``norm_eval`` keep every BatchNorm in
    eval mode; both checked. Only freezes (what was frozen stays so). Returns ``model`` in the
    mode it was in; ``model_config`` is left as it is (``create_model`` records options)."""
    names = frozen_module_names(model, frozen_stages)
    model.eval_norms = _freeze(model, names, norm_eval)
    return model.train(model.training)


class ShuffleNetFeatures(nn.Module):
    """The feature maps ``out_indices`` (of C2..C5) of ``model``, as a list.

    Holds ``model``'s stem and its stages up to the last chosen map, the same module objects
    under the same names (a state dict of ``model`` fits, less the dropped keys); nothing past
    that map is kept or run. ``frozen_stages`` and ``norm_eval``: see
    :func:`apply_backbone_options` (stages count as in ``model``, kept or not); what
    ``model`` already froze stays frozen. ``feature_info`` (a :class:`FeatureInfo`) describes
    the outputs; ``model_config`` is ``model``'s plus these options.
    """

    def __init__(
        self,
        model: ShuffleNetBase,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, ShuffleNetBase):
            raise ValueError(
                f"model must be a ShuffleNet network (shufflenet.create_model or "
                f"shufflenet.load), got {type(model).__name__}"
            )
        indices = check_out_indices(out_indices, len(model.feature_info))
        self.feature_info = FeatureInfo(model.feature_info, indices)
        self.out_indices = indices
        order = (*model.stem_names, *model.stage_names)
        last = order.index(str(model.feature_info[indices[-1]]["module"]))
        kept = order[: last + 1]
        for name in kept:
            self.add_module(name, model.get_submodule(name))
        self.stem_names = tuple(n for n in model.stem_names if n in kept)
        self.stage_names = tuple(n for n in model.stage_names if n in kept)
        self._outputs = tuple(self.feature_info.module_name())
        self.in_chans = model.in_chans
        frozen = [n for n in frozen_module_names(model, frozen_stages) if n in kept]
        norms = _freeze(self, frozen, norm_eval)
        inherited = tuple(n for n in model.eval_norms if n == "" or n in kept)
        self.eval_norms = ("",) if "" in (*norms, *inherited) else (*norms, *inherited)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.model_config: dict[str, Any] = {}
        if model.model_config:
            self.model_config = {
                **model.model_config,
                "features_only": True,
                "out_indices": list(indices),
            }
            if frozen_stages != -1:
                self.model_config["frozen_stages"] = frozen_stages
            if norm_eval:
                self.model_config["norm_eval"] = True
        self.train(model.training)

    def train(self, mode: bool = True) -> ShuffleNetFeatures:
        """Training mode, except the BatchNorms inside ``eval_norms``, which stay in eval."""
        super().train(mode)
        if mode:
            set_norms_eval(self, self.eval_norms)
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input(x, self.in_chans)
        outputs = []
        for name in (*self.stem_names, *self.stage_names):
            x = getattr(self, name)(x)
            if name in self._outputs:
                outputs.append(x)
        return outputs
