"""Reference architectures to time ShuffleNet against, and one namespace for everything timeable.

The papers' speed claims compare ShuffleNet with other networks: V1 with AlexNet ("0.5x is about
13x faster at similar accuracy"), V2 with MobileNet V2 at equal FLOPs (Table 8). These baselines
are torchvision's implementations, built with random weights (speed does not depend on the
weights; nothing is downloaded). Their accuracy comes from two places, both kept as data:

* ``paper_top1``: the number a paper reports (the ShuffleNet papers' own tables where they list
  the model, otherwise the model's own paper);
* ``torchvision_top1``: torchvision's published top-1 of its default weights, read from the
  weights' metadata that ships with torchvision (no download).

:func:`model_card` and :func:`build_model` accept our model names and the baseline names alike,
so ``bench`` and ``select`` can put both on one table.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from ..models import get_model_info, list_models

__all__ = [
    "BASELINES",
    "BaselineInfo",
    "ModelCard",
    "build_model",
    "build_torchvision_counterpart",
    "expand_model_names",
    "has_torchvision_counterpart",
    "model_card",
]


@dataclass(frozen=True)
class BaselineInfo:
    """A torchvision reference architecture and what a paper reports for it."""

    name: str
    description: str
    paper_top1: float | None = None
    paper_mflops: float | None = None
    paper_source: str | None = None

    @property
    def torchvision_top1(self) -> float:
        """Top-1 (%) of torchvision's default weights, from the metadata torchvision ships."""
        import torchvision

        meta = torchvision.models.get_model_weights(self.name).DEFAULT.meta
        return float(meta["_metrics"]["ImageNet-1K"]["acc@1"])


BASELINES: dict[str, BaselineInfo] = {
    b.name: b
    for b in (
        BaselineInfo(
            "alexnet",
            "AlexNet (torchvision's one-tower variant)",
            paper_top1=57.2,  # 42.8% error, 720 MFLOPs, 184.0 ms on a Snapdragon 820
            paper_mflops=720,
            paper_source="ShuffleNet V1, Table 8",
        ),
        BaselineInfo(
            "mobilenet_v2",
            "MobileNet V2 1.0x",
            paper_top1=72.0,  # 28.0% error at 300 MFLOPs
            paper_mflops=300,
            paper_source="ShuffleNet V2, Table 8",
        ),
        BaselineInfo(
            "mobilenet_v3_small",
            "MobileNet V3 Small 1.0x",
            paper_top1=67.4,
            paper_mflops=56,
            paper_source="MobileNetV3 (Howard et al., 2019), Table 3",
        ),
        BaselineInfo(
            "mobilenet_v3_large",
            "MobileNet V3 Large 1.0x",
            paper_top1=75.2,
            paper_mflops=219,
            paper_source="MobileNetV3 (Howard et al., 2019), Table 3",
        ),
        BaselineInfo("resnet18", "ResNet-18"),
    )
}


@dataclass(frozen=True)
class ModelCard:
    """What ``bench`` and ``select`` show next to a measured latency.

    ``top1`` is the paper's number where there is one, else torchvision's; ``top1_source`` says
    which (``None`` when no accuracy is published for the model).
    """

    name: str
    family: str
    top1: float | None
    top1_source: str | None
    paper_mflops: float | None


def model_card(name: str) -> ModelCard:
    """The card of one of our models or of a baseline; unknown names raise ``ValueError``."""
    if name in BASELINES:
        b = BASELINES[name]
        if b.paper_top1 is not None:
            return ModelCard(name, "baseline", b.paper_top1, b.paper_source, b.paper_mflops)
        return ModelCard(name, "baseline", b.torchvision_top1, "torchvision", b.paper_mflops)
    info = get_model_info(name)
    paper = info.paper_source or f"ShuffleNet {info.family.upper()} paper"
    source = paper if info.paper_top1 is not None else None
    return ModelCard(name, info.family, info.paper_top1, source, info.paper_mflops)


def build_model(name: str, num_classes: int = 1000, pretrained: bool | str = False) -> nn.Module:
    """Build one of our models or a baseline with random weights, in eval mode; ours with
    their published weights if ``pretrained`` (``create_model``'s)."""
    if name in BASELINES:
        if pretrained is not False:
            raise ValueError(f"pretrained applies to this package's models, not {name}")
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()
    from ..models import create_model

    return create_model(name, num_classes=num_classes, pretrained=pretrained).eval()


def has_torchvision_counterpart(name: str) -> bool:
    """Whether torchvision builds our model ``name`` too (its four V2 widths)."""
    return name not in BASELINES and "torchvision" in get_model_info(name).reference_top1


def build_torchvision_counterpart(name: str, num_classes: int = 1000) -> nn.Module:
    """torchvision's implementation of our V2 model ``name`` (random weights, eval mode)."""
    if not has_torchvision_counterpart(name):
        raise ValueError(
            f"torchvision has no implementation of {name!r}: only its four ShuffleNet V2 "
            "widths can be compared with torchvision's"
        )
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()


def expand_model_names(patterns: list[str]) -> list[str]:
    """Expand shell-style patterns over our models and the baselines, keeping order, no repeats.

    A name that matches nothing raises ``ValueError`` (with suggestions for our models).
    """
    names: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            found = list_models(pattern) + fnmatch.filter(BASELINES, pattern)
            if not found:
                raise ValueError(f"no model or baseline matches {pattern!r}")
        else:
            if pattern not in BASELINES:
                try:
                    get_model_info(pattern)
                except ValueError as e:
                    raise ValueError(f"{e}; baselines: {', '.join(BASELINES)}") from None
            found = [pattern]
        names += [n for n in found if n not in names]
    return names
