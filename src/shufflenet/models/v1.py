"""ShuffleNet V1 (Zhang et al., CVPR 2018): pointwise group convolution and channel shuffle.

A unit is a residual bottleneck: 1x1 group conv, BN, ReLU, channel shuffle, 3x3 depthwise conv
(stride 1 or 2), BN, 1x1 group conv, BN; then the identity is added (stride 1) or a 3x3
average-pooled shortcut is concatenated (stride 2); then ReLU.

Widths (:func:`v1_widths`) follow one rule. Stage 2 is ``Table 1 width x s`` rounded to the
nearest multiple of ``4 * groups`` (so the bottleneck, a quarter of it, splits into the groups),
Stage 3 and 4 double it. Conv1 has 24 channels for 1x <= s < 2 and 48 from 2x; below 1x it has
``24 * s`` rounded up to a multiple of ``groups``, but no fewer than the largest multiple of
``groups`` up to 12 (so 0.25x keeps the paper's FLOPs). At 1x this is exactly Table 1,
and for g=3 and g=8 at 0.5x/1.5x/2x it gives the official release's widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import (
    ConvNormAct,
    LayerFactory,
    ShuffleNetBase,
    check_positive,
    depthwise_conv,
    make_act,
)
from .ops import channel_shuffle
from .registry import ModelInfo, register_models

__all__ = [
    "V1_LAYOUTS",
    "V1_MODELS",
    "V1_STAGE2_WIDTHS",
    "ShuffleNetV1",
    "ShuffleV1Unit",
    "shufflenet_v1",
    "v1_widths",
]

# Table 1: output channels of Stage 2 at 1x for each number of groups.
V1_STAGE2_WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
V1_REPEATS = (4, 8, 4)
# "paper": shuffle before the depthwise conv. "megvii": the official release's unit, which
# shuffles after the depthwise conv + BN with the inverse permutation (a (C/g, g) reshape), and
# a bias-free classifier; its weights load after `shufflenet convert --from megvii`.
V1_LAYOUTS = ("paper", "megvii")


def _check_layout(layout: str) -> None:
    if layout not in V1_LAYOUTS:
        raise ValueError(f"layout must be one of {V1_LAYOUTS}, got {layout!r}")


def v1_widths(groups: int, width_mult: float) -> tuple[int, int, int, int]:
    """Output channels of Conv1 and Stages 2-4 for ``groups`` and width multiplier ``s``."""
    if groups not in V1_STAGE2_WIDTHS:
        raise ValueError(f"groups must be one of {sorted(V1_STAGE2_WIDTHS)}, got {groups!r}")
    if not 0.0 < width_mult <= 4.0:
        raise ValueError(f"width_mult must be in (0, 4], got {width_mult!r}")
    quantum = 4 * groups
    stage2 = max(quantum, int(V1_STAGE2_WIDTHS[groups] * width_mult / quantum + 0.5) * quantum)
    if width_mult >= 2.0:
        stem = 48
    elif width_mult >= 1.0:
        stem = 24
    else:
        stem = max(math.ceil(24 * width_mult / groups), 12 // groups) * groups
    return stem, stage2, 2 * stage2, 4 * stage2


class ShuffleV1Unit(nn.Module):
    """The V1 unit (Fig. 2 b/c). Its bottleneck is a quarter of ``out_channels``.

    Args:
        in_channels, out_channels: unit widths; at stride 2 the branch makes
            ``out_channels - in_channels`` channels and the pooled input fills the rest.
        groups: groups of both 1x1 convs and of the shuffle.
        stride: 1 (add the identity) or 2 (concat an average-pooled shortcut).
        group_first_conv: ``False`` for the first unit of Stage 2, whose input is too narrow.
        layout: ``"paper"`` or ``"megvii"`` (see ``V1_LAYOUTS``).
        norm_layer, act_layer: the unit's normalisation and activation (see :mod:`.base`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        stride: int,
        group_first_conv: bool = True,
        layout: str = "paper",
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels, groups=groups)
        _check_layout(layout)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 unit keeps its width, got {in_channels} -> {out_channels}"
            )
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        mid = out_channels // 4
        first_groups = groups if group_first_conv else 1
        for what, channels, g in (
            ("input channels", in_channels, first_groups),
            ("bottleneck channels", mid, groups),
            ("branch output channels", branch_out, groups),
        ):
            if channels < 1 or channels % g:
                raise ValueError(
                    f"{what} ({channels}) must be a positive multiple of groups ({g}); "
                    f"unit {in_channels} -> {out_channels} channels"
                )
        self.groups = groups
        # Megvii's inverse permutation: a shuffle of the bottleneck with mid // groups groups.
        self.inverse_groups = mid // groups
        self.stride = stride
        self.layout = layout
        self.gconv1 = nn.Conv2d(in_channels, mid, 1, groups=first_groups, bias=False)
        self.bn1 = norm_layer(mid)
        self.dwconv = depthwise_conv(mid, stride)
        self.bn2 = norm_layer(mid)
        self.gconv2 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = norm_layer(branch_out)
        self.relu1 = make_act(act_layer)
        self.relu_out = make_act(act_layer)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.gconv1(x)))
        if self.layout == "paper":
            out = channel_shuffle(out, self.groups)
        out = self.bn2(self.dwconv(out))  # no ReLU after the depthwise conv
        if self.layout == "megvii" and self.groups > 1:  # inverse permutation: C/g groups
            out = channel_shuffle(out, self.inverse_groups)
        out = self.bn3(self.gconv2(out))
        # The input is a ReLU output, so its pooled shortcut needs no ReLU: ReLU after the
        # concat equals the official ReLU on the branch alone.
        out = out + x if self.stride == 1 else torch.cat((self.shortcut(x), out), 1)
        return self.relu_out(out)


class ShuffleNetV1(ShuffleNetBase):
    """ShuffleNet V1: Conv1, MaxPool, Stages 2-4 (1 + 3, 1 + 7, 1 + 3 units), global pool, FC.

    Args:
        groups: groups of the pointwise convolutions (1, 2, 3, 4 or 8).
        width_mult: the paper's scale factor ``s``; widths follow :func:`v1_widths`.
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        layout: ``"paper"`` or ``"megvii"`` (official unit, bias-free classifier).
        norm_layer, act_layer: normalisation and activation of every block (see :mod:`.base`).
    """

    if TYPE_CHECKING:  # TorchScript cannot read these annotations
        conv1: nn.Sequential
        maxpool: nn.Module
        stage2: nn.Sequential
        stage3: nn.Sequential
        stage4: nn.Sequential

    def __init__(
        self,
        groups: int = 3,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        layout: str = "paper",
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        _check_layout(layout)
        super().__init__(in_chans, num_classes, drop_rate, classifier_bias=layout != "megvii")
        stem, *stage_widths = v1_widths(groups, width_mult)
        self.groups = groups
        self.width_mult = width_mult
        self.layout = layout
        self.conv1 = ConvNormAct(in_chans, stem, 3, 2, norm_layer=norm_layer, act_layer=act_layer)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = stem
        for i, (repeats, width) in enumerate(zip(V1_REPEATS, stage_widths, strict=True)):
            unit = partial(
                ShuffleV1Unit,
                groups=groups,
                layout=layout,
                norm_layer=norm_layer,
                act_layer=act_layer,
            )
            units = [unit(in_channels, width, stride=2, group_first_conv=i > 0)]
            units += [unit(width, width, stride=1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            in_channels = width
        self._set_feature_info([stem, *stage_widths])
        self._build_head(in_channels)
        self.init_weights()

    def _scripted_trunk(self, x: Tensor) -> Tensor:
        return self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))


def shufflenet_v1(groups: int = 3, width_mult: float = 1.0, **kwargs) -> ShuffleNetV1:
    """ShuffleNet V1 with ``groups`` groups at width ``width_mult`` (see :class:`ShuffleNetV1`)."""
    return ShuffleNetV1(groups, width_mult, **kwargs)


def _v1(groups: int, width_mult: float) -> Callable[..., ShuffleNetV1]:
    """The builder of the V1 model with ``groups`` groups at width ``width_mult``."""
    return partial(shufflenet_v1, groups, width_mult)


# Every V1 model: name, family, builder (groups, width multiplier), description, the paper's
# MFLOPs (Table 1 at 1x, Table 2 at 0.5x/0.25x, Table 5 at 1.5x/2x with g=3), parameters (not
# reported) and top-1 error in % (Tables 2 and 5); None: not reported.
V1_MODELS = register_models(
    ModelInfo(
        "shufflenet_v1_g1_x0_25", "v1", _v1(1, 0.25), "ShuffleNet V1 0.25x, g=1", 13, None, 57.1
    ),
    ModelInfo(
        "shufflenet_v1_g1_x0_5", "v1", _v1(1, 0.5), "ShuffleNet V1 0.5x, g=1", 38, None, 45.1
    ),
    ModelInfo(
        "shufflenet_v1_g1_x1_0", "v1", _v1(1, 1.0), "ShuffleNet V1 1.0x, g=1", 143, None, 33.6
    ),
    ModelInfo("shufflenet_v1_g1_x1_5", "v1", _v1(1, 1.5), "ShuffleNet V1 1.5x, g=1"),
    ModelInfo("shufflenet_v1_g1_x2_0", "v1", _v1(1, 2.0), "ShuffleNet V1 2.0x, g=1"),
    ModelInfo(
        "shufflenet_v1_g2_x0_25", "v1", _v1(2, 0.25), "ShuffleNet V1 0.25x, g=2", 13, None, 56.8
    ),
    ModelInfo(
        "shufflenet_v1_g2_x0_5", "v1", _v1(2, 0.5), "ShuffleNet V1 0.5x, g=2", 38, None, 44.4
    ),
    ModelInfo(
        "shufflenet_v1_g2_x1_0", "v1", _v1(2, 1.0), "ShuffleNet V1 1.0x, g=2", 140, None, 32.7
    ),
    ModelInfo("shufflenet_v1_g2_x1_5", "v1", _v1(2, 1.5), "ShuffleNet V1 1.5x, g=2"),
    ModelInfo("shufflenet_v1_g2_x2_0", "v1", _v1(2, 2.0), "ShuffleNet V1 2.0x, g=2"),
    ModelInfo(
        "shufflenet_v1_g3_x0_25", "v1", _v1(3, 0.25), "ShuffleNet V1 0.25x, g=3", 13, None, 55.0
    ),
    ModelInfo(
        "shufflenet_v1_g3_x0_5", "v1", _v1(3, 0.5), "ShuffleNet V1 0.5x, g=3", 38, None, 43.2
    ),
    ModelInfo(
        "shufflenet_v1_g3_x1_0", "v1", _v1(3, 1.0), "ShuffleNet V1 1.0x, g=3", 137, None, 32.6
    ),
    ModelInfo(
        "shufflenet_v1_g3_x1_5", "v1", _v1(3, 1.5), "ShuffleNet V1 1.5x, g=3", 292, None, 28.5
    ),
    ModelInfo(
        "shufflenet_v1_g3_x2_0", "v1", _v1(3, 2.0), "ShuffleNet V1 2.0x, g=3", 524, None, 26.3
    ),
    ModelInfo(
        "shufflenet_v1_g4_x0_25", "v1", _v1(4, 0.25), "ShuffleNet V1 0.25x, g=4", 13, None, 54.2
    ),
    ModelInfo(
        "shufflenet_v1_g4_x0_5", "v1", _v1(4, 0.5), "ShuffleNet V1 0.5x, g=4", 38, None, 41.6
    ),
    ModelInfo(
        "shufflenet_v1_g4_x1_0", "v1", _v1(4, 1.0), "ShuffleNet V1 1.0x, g=4", 133, None, 32.8
    ),
    ModelInfo("shufflenet_v1_g4_x1_5", "v1", _v1(4, 1.5), "ShuffleNet V1 1.5x, g=4"),
    ModelInfo("shufflenet_v1_g4_x2_0", "v1", _v1(4, 2.0), "ShuffleNet V1 2.0x, g=4"),
    ModelInfo(
        "shufflenet_v1_g8_x0_25", "v1", _v1(8, 0.25), "ShuffleNet V1 0.25x, g=8", 13, None, 52.7
    ),
    ModelInfo(
        "shufflenet_v1_g8_x0_5", "v1", _v1(8, 0.5), "ShuffleNet V1 0.5x, g=8", 38, None, 42.3
    ),
    ModelInfo(
        "shufflenet_v1_g8_x1_0", "v1", _v1(8, 1.0), "ShuffleNet V1 1.0x, g=8", 137, None, 32.4
    ),
    ModelInfo("shufflenet_v1_g8_x1_5", "v1", _v1(8, 1.5), "ShuffleNet V1 1.5x, g=8"),
    ModelInfo("shufflenet_v1_g8_x2_0", "v1", _v1(8, 2.0), "ShuffleNet V1 2.0x, g=8"),
)
