"""What every ShuffleNet network shares: blocks, stem, stages, head, feature access, weight init.

Blocks take their parts: ``norm_layer`` (a class such as ``nn.BatchNorm2d``, called with the
channel count) and ``act_layer`` (a class such as ``nn.ReLU`` or ``nn.Hardswish``, called with
``inplace=True``), so a family with other layers is a new module, not edits here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..preprocessing import MAX_CLASSES, MAX_IN_CHANS

__all__ = [
    "AuxOutputs",
    "ConvNormAct",
    "LayerFactory",
    "ShuffleNetBase",
    "check_positive",
    "check_split_unit",
    "depthwise_conv",
    "make_act",
    "run_checkpointed",
    "set_norms_eval",
]

LayerFactory = Callable[..., nn.Module]


class AuxOutputs(NamedTuple):
    """What a model with auxiliary classifiers returns in training mode (torchvision's Inception
    v3 convention): the main ``logits`` and the auxiliary heads' logits, in the order of the
    model's ``aux_loss_weights``. In eval mode such a model returns the logits tensor only."""

    logits: Tensor
    aux: tuple[Tensor, ...]


def make_act(act_layer: LayerFactory) -> nn.Module:
    """An activation module computing in place (``nn.ReLU``, ``nn.Hardswish``, ...)."""
    return act_layer(inplace=True)


def _check_num_classes(num_classes: int) -> None:
    if (
        not isinstance(num_classes, int)
        or isinstance(num_classes, bool)
        or not 0 <= num_classes <= MAX_CLASSES
    ):
        raise ValueError(
            f"num_classes must be an integer within 0..{MAX_CLASSES} (0: no classifier), got "
            f"{num_classes!r}"
        )


def set_norms_eval(module: nn.Module, names: tuple[str, ...]) -> None:
    """Put the BatchNorms inside the submodules ``names`` of ``module`` in eval mode (``""``:
    all of them), so that they normalise with, and never update, their running statistics."""
    for name in names:
        for m in module.get_submodule(name).modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` unless every named integer is >= 1."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def depthwise_conv(channels: int, stride: int, kernel_size: int = 3) -> nn.Conv2d:
    """A bias-free depthwise ``kernel_size`` conv with "same" padding."""
    padding = kernel_size // 2
    return nn.Conv2d(channels, channels, kernel_size, stride, padding, groups=channels, bias=False)


def check_split_unit(in_channels: int, out_channels: int, stride: int) -> None:
    """The widths of a unit that splits its channels in halves (V2 and its descendants)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if out_channels % 2:
        raise ValueError(f"output channels must be even to split in halves, got {out_channels}")
    if stride == 1 and in_channels != out_channels:
        raise ValueError(
            f"a stride-1 unit keeps its width, got {in_channels} -> {out_channels} channels"
        )


def megvii_init(root: nn.Module, small_std: Callable[[str], bool], prefix: str = "") -> None:
    """Megvii's release init of ``root``'s modules: convs N(0, 0.01) where ``small_std(name)``
    (the stem, SE convs) and N(0, 1 / input channels per group) otherwise, BN scale 1 and shift
    1e-4, Linear N(0, 0.01); biases 0. ``prefix`` starts the names, as in ``named_modules``."""
    for name, m in root.named_modules(prefix=prefix):
        if isinstance(m, nn.Conv2d):
            std = 0.01 if small_std(name) else 1.0 / m.weight.shape[1]
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def _norm_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of ``module``'s BatchNorms on exit."""
    buffers = [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in m.buffers(recurse=False)
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.copy_(value)


def run_checkpointed(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` through ``torch.utils.checkpoint``: activations are recomputed in the
    backward pass instead of stored. The recomputation leaves the BatchNorms' running
    statistics as the forward pass left them (updated once, as without checkpointing)."""
    out: Tensor = checkpoint(
        module,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _norm_stats_kept(module)),
    )
    return out


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> norm -> optional activation; keys ``0.*``, ``1.*`` like torchvision."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            norm_layer(out_channels),
        ]
        if act_layer is not None:
            layers.append(make_act(act_layer))
        super().__init__(*layers)


class ShuffleNetBase(nn.Module):
    """Shared forward paths and head of every ShuffleNet family.

    A network is a stem (the modules named in ``stem_names``, run in order), body stages
    (``stage_names``, run in order), an optional last conv (:meth:`_last_conv`) and the head
    (:meth:`_build_head`). V1 and V2 have the stem ``conv1``, ``maxpool`` and the stages
    ``stage2``..``stage4``; other families override the two name tuples. ``feature_info``
    describes the four feature maps that :meth:`forward_stages` returns (C2..C5, strides 4 to
    32), each the output of the stem or stage module it names, as detection necks expect.
    """

    stem_names: tuple[str, ...] = ("conv1", "maxpool")
    stage_names: tuple[str, ...] = ("stage2", "stage3", "stage4")

    def __init__(
        self, in_chans: int, num_classes: int, drop_rate: float, classifier_bias: bool = True
    ) -> None:
        super().__init__()
        check_positive(in_chans=in_chans)
        if in_chans > MAX_IN_CHANS:
            raise ValueError(f"in_chans must be within 1..{MAX_IN_CHANS}, got {in_chans}")
        _check_num_classes(num_classes)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.classifier_bias = classifier_bias  # False in Megvii's releases
        self.feature_info: list[dict[str, int | str]] = []
        self.num_features = 0
        # How to rebuild this model: set by ``create_model``, recorded by ``shufflenet.save``.
        self.model_config: dict[str, Any] = {}
        # Metadata of the weights file this model was loaded from (``shufflenet.load``).
        self.weights_metadata: dict[str, Any] = {}
        # Submodules whose BatchNorms stay in eval mode in training (models.backbone sets them).
        self.eval_norms: tuple[str, ...] = ()
        self.grad_checkpointing = False

    # -- construction helpers -------------------------------------------------------------
    def _build_head(self, num_features: int) -> None:
        self.num_features = num_features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.drop_rate) if self.drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = self._make_classifier(self.num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return nn.Linear(self.num_features, num_classes, bias=self.classifier_bias)

    def _set_feature_info(self, channels: list[int]) -> None:
        modules = ["maxpool", "stage2", "stage3", "stage4"]
        self.feature_info = [
            {"num_chs": c, "reduction": 4 * 2**i, "module": m}
            for i, (c, m) in enumerate(zip(channels, modules, strict=True))
        ]

    def init_weights(self) -> None:
        """He-normal (fan_out) convs, unit BN scale and zero shift, N(0, 0.01) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- public API -----------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it); the
        ``model_config`` that ``shufflenet.save`` records follows."""
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        if self.model_config:
            self.model_config["num_classes"] = num_classes
        self.fc = self._make_classifier(num_classes)
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
            if self.fc.bias is not None:
                nn.init.zeros_(self.fc.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing (timm's API): in training with gradients on, each unit of the
        stages runs through ``torch.utils.checkpoint``, trading a second forward pass of the
        units in backward for not storing their activations. Results, gradients and BatchNorm
        statistics are those without it."""
        if not isinstance(enable, bool):
            raise ValueError(f"enable must be True or False, got {enable!r}")
        self.grad_checkpointing = enable

    def _run_stage(self, name: str, x: Tensor) -> Tensor:
        """The stem or stage module ``name`` on ``x``; a stage unit by unit through
        :func:`run_checkpointed` while gradient checkpointing applies."""
        module = getattr(self, name)
        if not (
            self.grad_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and name in self.stage_names
        ):
            return module(x)
        for unit in module.children() if isinstance(module, nn.Sequential) else (module,):
            x = run_checkpointed(unit, x)
        return x

    def train(self, mode: bool = True) -> ShuffleNetBase:
        """Training mode, except the BatchNorms inside ``eval_norms`` (frozen stages,
        ``norm_eval``: see :mod:`shufflenet.models.backbone`), which stay in eval mode."""
        super().train(mode)
        if mode:
            set_norms_eval(self, self.eval_norms)
        return self

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature maps C2..C5 (strides 4, 8, 16, 32), described by ``feature_info``."""
        self._check_input(x)
        wanted = [str(info["module"]) for info in self.feature_info]
        outputs: dict[str, Tensor] = {}
        for name in (*self.stem_names, *self.stage_names):
            x = self._run_stage(name, x)
            if name in wanted:
                outputs[name] = x
                if len(outputs) == len(wanted):
                    break
        return [outputs[name] for name in wanted]

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map right before global pooling (after the last conv, if any)."""
        self._check_input(x)
        for name in (*self.stem_names, *self.stage_names):
            x = self._run_stage(name, x)
        return self._last_conv(x)

    def _last_conv(self, x: Tensor) -> Tensor:
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling, dropout and the classifier (skipped if ``pre_logits``)."""
        x = torch.flatten(self.global_pool(x), 1)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
