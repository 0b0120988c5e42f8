"""The network a training run updates: built from the config (fine-tuned from ``init_weights``,
stages frozen), and the loss it minimises (auxiliary classifiers included)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..models import create_model
from ..models.backbone import apply_backbone_options
from ..models.base import AuxOutputs, ShuffleNetBase
from ..weights import load, load_state_dict_checked
from .config import TrainConfig

__all__ = ["create_run_model", "training_loss"]


def training_loss(
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    output: torch.Tensor | AuxOutputs,
    target: torch.Tensor,
    aux_weights: tuple[float, ...] = (),
) -> torch.Tensor:
    """``criterion`` on the logits, plus, for a model with auxiliary classifiers
    (:class:`~shufflenet.models.base.AuxOutputs`), each auxiliary loss times its weight."""
    if not isinstance(output, AuxOutputs):
        return criterion(output, target)
    if len(aux_weights) != len(output.aux):
        raise ValueError(
            f"aux_weights needs one weight per auxiliary output ({len(output.aux)}), got "
            f"{len(aux_weights)}"
        )
    loss = criterion(output.logits, target)
    for weight, aux in zip(aux_weights, output.aux, strict=True):
        loss = loss + weight * criterion(aux, target)
    return loss


def _is_classifier(key: str) -> bool:
    """Whether ``key`` belongs to a layer sized by the class count (``fc``, auxiliary ``fc``)."""
    return key.startswith("fc.") or (key.startswith("aux_heads.") and ".fc." in key)


def create_run_model(config: TrainConfig, num_classes: int, fine_tune: bool) -> ShuffleNetBase:
    """A new ``config.model``; with ``fine_tune``, from ``config.init_weights`` or the weights
    published for it (``config.pretrained``) if given (a classifier of another size keeps its
    fresh weights). ``config.freeze_stages`` freezes
    its stem and first stages (resumed runs too); the optimizer gets only the trainable
    parameters, and the weights file records the network alone, not the freezing."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if config.drop_rate:
        kwargs["drop_rate"] = config.drop_rate
    pretrained = config.pretrained if fine_tune else False
    model = create_model(config.model, pretrained=pretrained, **kwargs)
    stages = len(model.stage_names)
    if config.freeze_stages > stages:
        raise ValueError(
            f"freeze_stages must be within -1..{stages}: {config.model} has {stages} stages "
            f"({', '.join(model.stage_names)}), got {config.freeze_stages}"
        )
    apply_backbone_options(model, frozen_stages=config.freeze_stages)
    if not (fine_tune and config.init_weights):
        return model
    source = load(config.init_weights)
    if source.model_config.get("name") != config.model:
        raise ValueError(
            f"init_weights {config.init_weights} holds {source.model_config.get('name')}, "
            f"not {config.model}"
        )
    state, fresh = source.state_dict(), model.state_dict()
    if source.num_classes != model.num_classes:
        state = {k: v for k, v in state.items() if not _is_classifier(k)}
        state.update({k: v for k, v in fresh.items() if _is_classifier(k)})
    # auxiliary heads are for training only: a file without them (a converted release) starts
    # them fresh
    state.update({k: v for k, v in fresh.items() if k.startswith("aux_heads.") and k not in state})
    load_state_dict_checked(model, state)
    return model
