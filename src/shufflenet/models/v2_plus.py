"""ShuffleNetV2+ (Megvii's release: Small, Medium, Large), built on :class:`ShuffleNetBase`.

V2's Megvii unit with 3x3, 5x5 or 7x7 depthwise kernels, an Xception-style unit (three
depthwise-pointwise pairs), h-swish after the first stage, squeeze-excitation in the last two
stages and a larger head (1x1 conv to 1280, SE, a 1280-wide hidden FC). There is no max-pool and
there are four stages, ``stage1``..``stage4`` (strides 4 to 32 with the stride-2 stem), whose
outputs are the four feature maps of :meth:`forward_stages`.

The units' branches are flat ``nn.Sequential``s whose indices are those of the release
(``branch_main.N``, ``branch_proj.N``, the SE's ``gate.{1,2,4}`` for ``SE_opr.{1,2,4}``), so its
weights map onto these modules by renaming prefixes only. Input: BGR 0-255, not normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..preprocessing import MEGVII_PREPROCESSING
from .base import (
    ConvNormAct,
    LayerFactory,
    ShuffleNetBase,
    check_positive,
    check_split_unit,
    depthwise_conv,
    make_act,
    megvii_init,
)
from .registry import ModelInfo, register_models

__all__ = [
    "V2_PLUS_BLOCKS",
    "V2_PLUS_MODELS",
    "V2_PLUS_WIDTHS",
    "ShuffleNetV2Plus",
    "ShufflePlusUnit",
    "SqueezeExcite",
    "shufflenet_v2_plus_large",
    "shufflenet_v2_plus_medium",
    "shufflenet_v2_plus_small",
]

V2_PLUS_REPEATS = (4, 4, 8, 4)
# Output channels of the four stages.
V2_PLUS_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "small": (36, 104, 208, 416),
    "medium": (48, 128, 256, 512),
    "large": (68, 168, 336, 672),
}
# The unit at each of the 20 positions: 0/1/2 = shuffle unit with a 3x3/5x5/7x7 depthwise conv,
# 3 = Xception unit (the release's searched architecture).
V2_PLUS_BLOCKS = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)
STEM_WIDTH = 16
HEAD_WIDTH = 1280
XCEPTION = 3


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 conv C -> C/4 (no bias), BN, ReLU, 1x1 conv C/4 -> C (no bias),
    hard-sigmoid ``clamp(a + 3, 0, 6) / 6``; the input times that gate."""

    profile_category = "squeeze-excite"  # how shufflenet.profile files its ops

    def __init__(self, channels: int, norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        check_positive(channels=channels)
        reduced = max(channels // 4, 1)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1, bias=False),
            norm_layer(reduced),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, channels, 1, bias=False),
            nn.Hardsigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class ShufflePlusUnit(nn.Module):
    """One V2+ unit: ``block`` 0/1/2 is a shuffle unit with a 3x3/5x5/7x7 depthwise conv, 3 an
    Xception unit (three 3x3 depthwise, BN, 1x1, BN, act steps; stride on the first).

    Stride 1: the even channels are the identity and the odd ones go through ``branch_main``
    (Megvii's split; no shuffle after the concat). Stride 2: ``branch_proj`` (depthwise with the
    unit's kernel, BN, 1x1 in -> in, BN, act) keeps ``in_channels`` and ``branch_main`` makes
    ``out_channels - in_channels``. ``se`` appends :class:`SqueezeExcite` to ``branch_main``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        block: int,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        se: bool = False,
    ) -> None:
        super().__init__()
        check_split_unit(in_channels, out_channels, stride)
        if block not in (0, 1, 2, XCEPTION):
            raise ValueError(f"block must be 0, 1, 2 (3x3/5x5/7x7) or 3 (Xception), got {block}")
        if stride == 2 and out_channels <= in_channels:
            raise ValueError(f"a stride-2 unit must widen, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.block = block
        kernel = 3 if block == XCEPTION else 3 + 2 * block
        mid = out_channels // 2
        branch_in = in_channels if stride == 2 else in_channels // 2
        branch_out = out_channels - branch_in
        norm, act = norm_layer, partial(make_act, act_layer)
        layers: list[nn.Module]
        if block == XCEPTION:
            layers = []
            for i, (cin, cout) in enumerate(((branch_in, mid), (mid, mid), (mid, branch_out))):
                layers += [depthwise_conv(cin, stride if i == 0 else 1), norm(cin)]
                layers += [nn.Conv2d(cin, cout, 1, bias=False), norm(cout), act()]
        else:
            layers = [
                nn.Conv2d(branch_in, mid, 1, bias=False),
                norm(mid),
                act(),
                depthwise_conv(mid, stride, kernel),
                norm(mid),
                nn.Conv2d(mid, branch_out, 1, bias=False),
                norm(branch_out),
                act(),
            ]
        if se:
            layers.append(SqueezeExcite(branch_out, norm_layer))
        self.branch_main = nn.Sequential(*layers)
        self.branch_proj: nn.Sequential | None = None  # stride 2 only
        if stride == 2:
            self.branch_proj = nn.Sequential(
                depthwise_conv(in_channels, stride, kernel),
                norm(in_channels),
                nn.Conv2d(in_channels, in_channels, 1, bias=False),
                norm(in_channels),
                act(),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.branch_proj is None:  # stride 1
            # Megvii's even/odd split, as strided slices: an ONNX export needs no shape ops
            return torch.cat((x[:, 0::2], self.branch_main(x[:, 1::2])), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class ShuffleNetV2Plus(ShuffleNetBase):
    """ShuffleNetV2+: stem (3x3 s2 conv to 16, h-swish), four stages, 1x1 conv to 1280, head.

    The head (:meth:`forward_head`) is global pooling, SE(1280) on the pooled map, a bias-free
    Linear 1280 -> 1280 with h-swish, dropout and the bias-free classifier ``fc``; without
    pooling (``global_pool=''``) the Linears run at each position.

    Args:
        stages_out_channels: widths of the four stages (see ``V2_PLUS_WIDTHS``).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the hidden FC's).
        in_chans: input channels.
        drop_rate: dropout before the classifier (0.2 in the release).
        blocks: the unit code at each position (see ``V2_PLUS_BLOCKS``).
        stages_repeats: units per stage (the first of each has stride 2).
    """

    stem_names = ("conv1",)
    stage_names = ("stage1", "stage2", "stage3", "stage4")
    last_conv_name = "conv_last"
    if TYPE_CHECKING:  # TorchScript cannot read these annotations
        conv1: nn.Sequential
        stage1: nn.Sequential
        stage2: nn.Sequential
        stage3: nn.Sequential
        stage4: nn.Sequential

    def __init__(
        self,
        stages_out_channels: Sequence[int] = V2_PLUS_WIDTHS["medium"],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        blocks: Sequence[int] = V2_PLUS_BLOCKS,
        stages_repeats: Sequence[int] = V2_PLUS_REPEATS,
    ) -> None:
        super().__init__(in_chans, num_classes, drop_rate, classifier_bias=False)
        if len(stages_repeats) != 4 or len(stages_out_channels) != 4:
            raise ValueError(
                "stages_repeats and stages_out_channels need 4 values each, got "
                f"{list(stages_repeats)} and {list(stages_out_channels)}"
            )
        check_positive(**{f"stages_repeats[{i}]": r for i, r in enumerate(stages_repeats)})
        check_positive(
            **{f"stages_out_channels[{i}]": c for i, c in enumerate(stages_out_channels)}
        )
        if len(blocks) != sum(stages_repeats):
            raise ValueError(f"blocks needs {sum(stages_repeats)} values, got {len(blocks)}")
        hswish = nn.Hardswish
        self.conv1 = ConvNormAct(in_chans, STEM_WIDTH, 3, 2, act_layer=hswish)
        in_channels, position = STEM_WIDTH, 0
        for i, (repeats, width) in enumerate(zip(stages_repeats, stages_out_channels, strict=True)):
            act_layer, se = (nn.ReLU if i == 0 else hswish), i >= 2
            units = []
            for j in range(repeats):
                stride = 2 if j == 0 else 1
                unit_in = in_channels if j == 0 else width
                units.append(
                    ShufflePlusUnit(
                        unit_in, width, stride, blocks[position], act_layer=act_layer, se=se
                    )
                )
                position += 1
            setattr(self, f"stage{i + 1}", nn.Sequential(*units))
            in_channels = width
        self.conv_last = ConvNormAct(in_channels, HEAD_WIDTH, 1, act_layer=hswish)
        self.feature_info = [
            {"num_chs": c, "reduction": 4 * 2**i, "module": f"stage{i + 1}"}
            for i, c in enumerate(stages_out_channels)
        ]
        self._build_head(HEAD_WIDTH)
        self.head_se: nn.Module = SqueezeExcite(HEAD_WIDTH)
        self.head_fc: nn.Module = nn.Sequential(
            nn.Linear(HEAD_WIDTH, HEAD_WIDTH, bias=False), make_act(hswish)
        )
        self.init_weights()

    def init_weights(self) -> None:
        """The release's scheme: the stem's and SE convs N(0, 0.01), other convs
        N(0, 1 / input channels per group), BN scale 1 and shift 1e-4, Linear N(0, 0.01)."""
        megvii_init(self, lambda n: n.startswith(("conv1", "head_se")) or ".gate." in n)

    def _scripted_trunk(self, x: Tensor) -> Tensor:
        return self.stage4(self.stage3(self.stage2(self.stage1(self.conv1(x)))))

    def _last_conv(self, x: Tensor) -> Tensor:
        return self.conv_last(x)

    def _prune_head_layers(self) -> None:
        self.head_se = nn.Identity()
        self.head_fc = nn.Identity()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pool, SE, flatten, hidden FC + h-swish, dropout, classifier (skipped if
        ``pre_logits``); without pooling, SE on the map and the Linears at each position."""
        x = self.head_se(self.global_pool(x))
        if self.pool_type:
            x = self.head_fc(torch.flatten(x, 1))
        else:
            x = self.head_fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.dropout(x)
        return x if pre_logits else self._classify(x)


def shufflenet_v2_plus_small(**kwargs) -> ShuffleNetV2Plus:
    """ShuffleNetV2+ Small (see :class:`ShuffleNetV2Plus`)."""
    return ShuffleNetV2Plus(V2_PLUS_WIDTHS["small"], **kwargs)


def shufflenet_v2_plus_medium(**kwargs) -> ShuffleNetV2Plus:
    """ShuffleNetV2+ Medium (see :class:`ShuffleNetV2Plus`)."""
    return ShuffleNetV2Plus(V2_PLUS_WIDTHS["medium"], **kwargs)


def shufflenet_v2_plus_large(**kwargs) -> ShuffleNetV2Plus:
    """ShuffleNetV2+ Large (see :class:`ShuffleNetV2Plus`)."""
    return ShuffleNetV2Plus(V2_PLUS_WIDTHS["large"], **kwargs)


# Megvii's release: conv + FC multiply-adds at 224x224 (M), parameters (M), top-1 error in %.
V2_PLUS_MODELS = register_models(
    ModelInfo(
        "shufflenet_v2_plus_small",
        "v2_plus",
        shufflenet_v2_plus_small,
        "ShuffleNetV2+ Small",
        paper_mflops=155.8,
        paper_params_m=5.137116,
        paper_top1_err=25.9,
        preprocessing=MEGVII_PREPROCESSING,
    ),
    ModelInfo(
        "shufflenet_v2_plus_medium",
        "v2_plus",
        shufflenet_v2_plus_medium,
        "ShuffleNetV2+ Medium",
        paper_mflops=222.2,
        paper_params_m=5.679840,
        paper_top1_err=24.3,
        preprocessing=MEGVII_PREPROCESSING,
    ),
    ModelInfo(
        "shufflenet_v2_plus_large",
        "v2_plus",
        shufflenet_v2_plus_large,
        "ShuffleNetV2+ Large",
        paper_mflops=360.1,
        paper_params_m=6.768220,
        paper_top1_err=22.9,
        preprocessing=MEGVII_PREPROCESSING,
    ),
)
