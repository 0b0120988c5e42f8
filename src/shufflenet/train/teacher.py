"""Knowledge distillation: a frozen teacher whose softened outputs the run's model learns.

:func:`load_teacher` opens the teacher that ``--teacher`` names: a weights file of ours
(``shufflenet.save``, as ``train`` writes), a model of ours by name (its published weights,
:mod:`shufflenet.hub`), or ``torchvision:NAME`` / ``timm:NAME`` with the weights its library
publishes. The teacher sees the batch the student sees (mixed, when mixup or cutmix is on),
renormalized to its own preprocessing, and its outputs are taken in the data's class order
(matched by class name where the teacher has names: an ImageNet teacher serves data whose
classes are ImageNet classes). It stays in eval mode without gradients.
:func:`distill_loss` is the KL divergence between the temperature-softened outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import match_classes
from ..models import create_model, list_models
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..weights import error_reason, load

__all__ = ["Teacher", "distill_loss", "load_teacher"]

IMAGENET_PREPROCESSING = {
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "scale": 1.0 / 255.0,
    "channel_order": "RGB",
}


def distill_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``temperature**2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean, in
    float32 (the square keeps the gradient's scale independent of T, as Hinton et al.)."""
    t = F.log_softmax(teacher.float() / temperature, dim=1)
    s = F.log_softmax(student.float() / temperature, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _channels(values: Sequence[float]) -> Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return t.expand(3).clone() if t.numel() == 1 else t


class Teacher(nn.Module):
    """A frozen ``model`` taking the student's input: the input renormalized from the
    student's ``preprocessing`` to the teacher's, the logits picked at ``index`` (the teacher's
    class of each of the data's classes; ``None``: the same order)."""

    gain: Tensor
    shift: Tensor

    def __init__(
        self,
        model: nn.Module,
        student: Mapping[str, Any],
        teacher: Mapping[str, Any],
        index: Sequence[int] | None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.flip = student.get("channel_order", "RGB") != teacher.get("channel_order", "RGB")
        s_mean, s_std = _channels(student["mean"]), _channels(student["std"])
        if self.flip:
            s_mean, s_std = s_mean.flip(0), s_std.flip(0)
        t_mean, t_std = _channels(teacher["mean"]), _channels(teacher["std"])
        ratio = float(teacher["scale"]) / float(student["scale"])
        # x_teacher = x_student * gain + shift, per channel (pixel values in between)
        self.register_buffer("gain", (s_std * ratio / t_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "shift", ((s_mean * ratio - t_mean) / t_std).view(1, 3, 1, 1), persistent=False
        )
        self.index = None if index is None else torch.tensor(list(index))
        self.identity = not self.flip and bool(
            torch.equal(self.gain, torch.ones_like(self.gain))
            and torch.equal(self.shift, torch.zeros_like(self.shift))
        )
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Always in eval mode: its BatchNorm statistics and dropout stay as loaded."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if not self.identity:
            x = (x.flip(1) if self.flip else x) * self.gain + self.shift
        logits = self.model(x)
        if self.index is not None:
            logits = logits[:, self.index.to(logits.device)]
        return logits


def _foreign(library: str, name: str) -> tuple[nn.Module, list[str] | None, dict[str, Any]]:
    """A torchvision or timm model with its library's published weights, its class names (if
    known) and its preprocessing."""
    if library == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=weights)
        return model, list(weights.meta["categories"]), IMAGENET_PREPROCESSING
    import timm

    model = timm.create_model(name, pretrained=True)
    cfg = cast(dict[str, Any], model.pretrained_cfg)
    pre = {
        "mean": list(cfg.get("mean", IMAGENET_MEAN)),
        "std": list(cfg.get("std", IMAGENET_STD)),
        "scale": 1.0 / 255.0,
        "channel_order": "RGB",
    }
    return model, None, pre


def _open(spec: str) -> tuple[nn.Module, list[str] | None, dict[str, Any]]:
    library, _, name = spec.partition(":")
    if library in ("torchvision", "timm") and name:
        try:
            return _foreign(library, name)
        except (ValueError, KeyError, RuntimeError, OSError, ImportError) as e:
            raise OSError(f"cannot load the teacher {spec}: {error_reason(e)}") from None
    if spec in list_models():
        model = create_model(spec, pretrained=True)
    elif Path(spec).suffix == ".safetensors" or Path(spec).exists():
        model = load(spec)
    else:
        raise ValueError(
            f"teacher must be a weights file, a model name of ours, torchvision:NAME or "
            f"timm:NAME, got {spec!r}"
        )
    meta = cast(dict[str, Any], model.weights_metadata)
    return model, meta.get("class_names"), dict(meta["preprocessing"])


def load_teacher(
    spec: str,
    classes: Sequence[str],
    preprocessing: Mapping[str, Any],
    device: torch.device,
) -> Teacher:
    """The teacher that ``spec`` names, for data of ``classes`` fed through ``preprocessing``
    (the student's), on ``device``. ``ValueError`` when its classes cannot be matched (by name,
    or, for a teacher without names, by count), ``OSError`` when it cannot be loaded."""
    model, names, pre = _open(spec)
    count = len(names) if names is not None else getattr(model, "num_classes", None)
    if names is None and count != len(classes):
        raise ValueError(
            f"the teacher {spec} has {count} classes and no class names, so the data must have "
            f"{count} classes in its order, not {len(classes)}"
        )
    index = None
    if names is not None:
        _, index = match_classes(classes, names, len(names), "the data", spec, subset=True)
    return Teacher(model, preprocessing, pre, index).to(device)
