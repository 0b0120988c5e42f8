"""ShuffleNet V2 (Ma et al., ECCV 2018), with torchvision's module names and shapes.

A stride-1 unit splits the channels in two, keeps one half as the identity and runs
1x1 conv -> 3x3 depthwise -> 1x1 conv on the other; the halves are concatenated and shuffled
with two groups. A stride-2 unit feeds the whole input to both branches and doubles the width.
``ours.load_state_dict(torchvision_model.state_dict())`` works with ``strict=True``.

``layout="megvii"`` builds the official (Megvii) release's variant instead, whose units differ in
structure (see :class:`MegviiInvertedResidual`) and whose classifier has no bias.

PaddleClas's ShuffleNetV2 adds two narrower widths (0.25x and 0.33x, with a 512-wide Conv5) and
a 1x "swish" variant with SiLU (``x * sigmoid(x)``) in place of every ReLU, Conv1's and Conv5's
included; its units are this module's (torchvision's) in structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..preprocessing import Preprocessing
from .base import (
    ConvNormAct,
    LayerFactory,
    ShuffleNetBase,
    check_positive,
    check_split_unit,
    depthwise_conv,
    make_act,
)
from .ops import channel_shuffle, channel_split, concat_shuffle_list
from .registry import ModelInfo, register_models

__all__ = [
    "V2_LAYOUTS",
    "V2_MODELS",
    "V2_WIDTHS",
    "InvertedResidual",
    "MegviiInvertedResidual",
    "ShuffleNetV2",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x0_25",
    "shufflenet_v2_x0_33",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_0_swish",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
]

# Output channels of Conv1, Stage2, Stage3, Stage4 and Conv5: Table 5, and PaddleClas's 0.25x
# and 0.33x.
V2_WIDTHS: dict[str, tuple[int, int, int, int, int]] = {
    "0_25": (24, 24, 48, 96, 512),
    "0_33": (24, 32, 64, 128, 512),
    "0_5": (24, 48, 96, 192, 1024),
    "1_0": (24, 116, 232, 464, 1024),
    "1_5": (24, 176, 352, 704, 1024),
    "2_0": (24, 244, 488, 976, 2048),
}
V2_REPEATS = (4, 8, 4)
# "torchvision": the paper's unit as torchvision builds it (the default). "megvii": the official
# release's unit (:class:`MegviiInvertedResidual`) and a bias-free classifier.
V2_LAYOUTS = ("torchvision", "megvii")


def _projection_branch(
    in_channels: int, out_channels: int, stride: int, norm: LayerFactory, act: LayerFactory
) -> nn.Sequential:
    """3x3 depthwise (stride) -> BN -> 1x1 conv -> BN -> ReLU: a stride-2 unit's left branch."""
    return nn.Sequential(
        depthwise_conv(in_channels, stride),
        norm(in_channels),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        norm(out_channels),
        make_act(act),
    )


def _main_branch(
    in_channels: int,
    mid: int,
    out_channels: int,
    stride: int,
    norm: LayerFactory,
    act: LayerFactory,
    se: LayerFactory | None,
) -> nn.Sequential:
    """1x1 conv -> BN -> ReLU -> 3x3 depthwise (stride) -> BN -> 1x1 conv -> BN -> ReLU, then
    ``se(out_channels)`` (squeeze-excitation) when given."""
    layers = [
        nn.Conv2d(in_channels, mid, 1, bias=False),
        norm(mid),
        make_act(act),
        depthwise_conv(mid, stride),
        norm(mid),
        nn.Conv2d(mid, out_channels, 1, bias=False),
        norm(out_channels),
        make_act(act),
    ]
    if se is not None:
        layers.append(se(out_channels))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """The V2 unit (Fig. 3 c/d): split or not, branch(es), concat, shuffle with 2 groups.

    ``norm_layer`` and ``act_layer`` are the branches' layers (see :mod:`.base`); ``se_layer``,
    called with the branch width, ends the main branch (none in the paper's unit).
    ``shuffle_free_form`` says whether :mod:`shufflenet.deploy.fastpath` can rewrite the unit
    without its shuffle: the paper's branches can, a branch ending in ``se_layer`` cannot.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        se_layer: LayerFactory | None = None,
    ) -> None:
        super().__init__()
        check_split_unit(in_channels, out_channels, stride)
        self.stride = stride
        half = out_channels // 2
        # Stride 2 only: None at stride 1 (TorchScript compiles both branches of forward).
        self.branch1: nn.Sequential = None  # type: ignore[assignment]
        if stride == 2:
            self.branch1 = _projection_branch(in_channels, half, stride, norm_layer, act_layer)
        branch_in = in_channels if stride == 2 else half
        self.branch2 = _main_branch(branch_in, half, half, stride, norm_layer, act_layer, se_layer)
        self.shuffle_free_form: bool = se_layer is None

    def forward(self, x: Tensor) -> Tensor:
        if self.branch1 is None:  # stride 1
            identity, x = channel_split(x)
            return concat_shuffle_list([identity, self.branch2(x)])
        return concat_shuffle_list([self.branch1(x), self.branch2(x)])


class MegviiInvertedResidual(nn.Module):
    """The official release's V2 unit, with this package's branch names.

    Stride 1: the even channels are the identity and the odd channels go through ``branch2``
    (the same as a shuffle with ``C/2`` groups followed by halves); the halves are concatenated
    and not shuffled. Stride 2 is asymmetric: ``branch1`` (depthwise, 1x1) keeps
    ``in_channels`` and ``branch2`` (1x1 to ``out_channels // 2``, depthwise, 1x1) makes
    ``out_channels - in_channels``; no shuffle either. Layers as in :class:`InvertedResidual`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        se_layer: LayerFactory | None = None,
    ) -> None:
        super().__init__()
        check_split_unit(in_channels, out_channels, stride)
        if stride == 2 and out_channels <= in_channels:
            raise ValueError(f"a stride-2 unit must widen, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.shuffle_groups = in_channels // 2  # stride 1: the even | odd split
        mid = out_channels // 2
        parts = (norm_layer, act_layer)
        self.branch1: nn.Sequential = None  # type: ignore[assignment]  # stride 2 only
        if stride == 2:
            self.branch1 = _projection_branch(in_channels, in_channels, stride, *parts)
            branch_out = out_channels - in_channels
            self.branch2 = _main_branch(in_channels, mid, branch_out, stride, *parts, se_layer)
        else:
            self.branch2 = _main_branch(mid, mid, mid, stride, *parts, se_layer)

    def forward(self, x: Tensor) -> Tensor:
        if self.branch1 is None:  # stride 1
            identity, x = channel_split(channel_shuffle(x, self.shuffle_groups))  # even | odd
            return torch.cat((identity, self.branch2(x)), 1)
        return torch.cat((self.branch1(x), self.branch2(x)), 1)


class ShuffleNetV2(ShuffleNetBase):
    """ShuffleNet V2: Conv1, MaxPool, three stages of units, Conv5, global pool, FC.

    Args:
        stages_repeats: units per stage (the first of each has stride 2).
        stages_out_channels: widths of Conv1, Stage2, Stage3, Stage4 and Conv5.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        layout: ``"torchvision"`` or ``"megvii"`` (see ``V2_LAYOUTS``).
        norm_layer, act_layer, se_layer: the blocks' layers (see :class:`InvertedResidual`).
    """

    last_conv_name = "conv5"
    if TYPE_CHECKING:  # TorchScript cannot read these annotations
        conv1: nn.Sequential
        maxpool: nn.Module
        stage2: nn.Sequential
        stage3: nn.Sequential
        stage4: nn.Sequential

    def __init__(
        self,
        stages_repeats: Sequence[int] = V2_REPEATS,
        stages_out_channels: Sequence[int] = V2_WIDTHS["1_0"],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        layout: str = "torchvision",
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        se_layer: LayerFactory | None = None,
    ) -> None:
        if layout not in V2_LAYOUTS:
            raise ValueError(f"layout must be one of {V2_LAYOUTS}, got {layout!r}")
        super().__init__(in_chans, num_classes, drop_rate, classifier_bias=layout != "megvii")
        self.layout = layout
        unit_type = InvertedResidual if layout == "torchvision" else MegviiInvertedResidual
        if len(stages_repeats) != 3:
            raise ValueError(f"stages_repeats needs 3 values, got {list(stages_repeats)}")
        if len(stages_out_channels) != 5:
            raise ValueError(f"stages_out_channels needs 5 values, got {list(stages_out_channels)}")
        check_positive(**{f"stages_repeats[{i}]": r for i, r in enumerate(stages_repeats)})
        check_positive(
            **{f"stages_out_channels[{i}]": c for i, c in enumerate(stages_out_channels)}
        )
        stem, *stage_widths, last = stages_out_channels

        unit = partial(unit_type, norm_layer=norm_layer, act_layer=act_layer, se_layer=se_layer)
        conv = partial(ConvNormAct, norm_layer=norm_layer, act_layer=act_layer)
        self.conv1 = conv(in_chans, stem, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = stem
        for i, (repeats, width) in enumerate(zip(stages_repeats, stage_widths, strict=True)):
            units = [unit(in_channels, width, 2)]
            units += [unit(width, width, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            in_channels = width
        self.conv5 = conv(in_channels, last, 1)
        self._set_feature_info([stem, *stage_widths])
        self._build_head(last)
        self.init_weights()

    def _scripted_trunk(self, x: Tensor) -> Tensor:
        return self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))

    def _last_conv(self, x: Tensor) -> Tensor:
        return self.conv5(x)


def _v2(width: str, **kwargs) -> ShuffleNetV2:
    if width == "2_0" and kwargs.get("layout") == "megvii":
        kwargs.setdefault("drop_rate", 0.2)  # the official 2.0x has dropout before its classifier
    return ShuffleNetV2(V2_REPEATS, V2_WIDTHS[width], **kwargs)


def shufflenet_v2_x0_25(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 0.25x, PaddleClas's (see :class:`ShuffleNetV2`)."""
    return _v2("0_25", **kwargs)


def shufflenet_v2_x0_33(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 0.33x, PaddleClas's (see :class:`ShuffleNetV2`)."""
    return _v2("0_33", **kwargs)


def shufflenet_v2_x0_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 0.5x (see :class:`ShuffleNetV2`)."""
    return _v2("0_5", **kwargs)


def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1x (see :class:`ShuffleNetV2`)."""
    return _v2("1_0", **kwargs)


def shufflenet_v2_x1_0_swish(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1x with SiLU (swish) activations, PaddleClas's ShuffleNetV2_swish (see
    :class:`ShuffleNetV2`)."""
    kwargs.setdefault("act_layer", nn.SiLU)
    return _v2("1_0", **kwargs)


def shufflenet_v2_x1_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x (see :class:`ShuffleNetV2`)."""
    return _v2("1_5", **kwargs)


def shufflenet_v2_x2_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 2x (see :class:`ShuffleNetV2`)."""
    return _v2("2_0", **kwargs)


# The paper's MFLOPs, parameters (M) and top-1 error in % (Table 5 / Table 8), torchvision's
# published top-1 and its resize for each width; PaddleClas's top-1 (resize 256). For PaddleClas's
# own widths and swish variant the paper columns are PaddleClas's model list: its top-1, and
# paddle.flops()'s counts, which add 2 operations per BatchNorm input element and the global
# pool's to the multiply-adds, and BatchNorm's running statistics to the parameters.
V2_MODELS = register_models(
    ModelInfo(
        "shufflenet_v2_x0_25",
        "v2",
        shufflenet_v2_x0_25,
        "ShuffleNet V2 0.25x (PaddleClas)",
        paper_mflops=18.95,
        paper_params_m=0.61,
        paper_top1_err=50.10,
        reference_top1={"paddleclas": 49.90},
        paper_source="PaddleClas",
    ),
    ModelInfo(
        "shufflenet_v2_x0_33",
        "v2",
        shufflenet_v2_x0_33,
        "ShuffleNet V2 0.33x (PaddleClas)",
        paper_mflops=24.04,
        paper_params_m=0.65,
        paper_top1_err=46.27,
        reference_top1={"paddleclas": 53.73},
        paper_source="PaddleClas",
    ),
    ModelInfo(
        "shufflenet_v2_x0_5",
        "v2",
        shufflenet_v2_x0_5,
        "ShuffleNet V2 0.5x",
        paper_mflops=41,
        paper_params_m=1.4,
        paper_top1_err=39.7,
        reference_top1={"torchvision": 60.552, "paddleclas": 60.32},
        preprocessing=Preprocessing(resize=256),
    ),
    ModelInfo(
        "shufflenet_v2_x1_0",
        "v2",
        shufflenet_v2_x1_0,
        "ShuffleNet V2 1.0x",
        paper_mflops=146,
        paper_params_m=2.3,
        paper_top1_err=30.6,
        reference_top1={"torchvision": 69.362, "paddleclas": 68.80},
        preprocessing=Preprocessing(resize=256),
    ),
    ModelInfo(
        "shufflenet_v2_x1_5",
        "v2",
        shufflenet_v2_x1_5,
        "ShuffleNet V2 1.5x",
        paper_mflops=299,
        paper_params_m=3.5,
        paper_top1_err=27.4,
        reference_top1={"torchvision": 72.996, "paddleclas": 71.63},
        preprocessing=Preprocessing(resize=232),
    ),
    ModelInfo(
        "shufflenet_v2_x2_0",
        "v2",
        shufflenet_v2_x2_0,
        "ShuffleNet V2 2.0x",
        paper_mflops=591,
        paper_params_m=7.4,
        paper_top1_err=25.1,
        reference_top1={"torchvision": 76.230, "paddleclas": 73.15},
        preprocessing=Preprocessing(resize=232),
    ),
    ModelInfo(
        "shufflenet_v2_x1_0_swish",
        "v2",
        shufflenet_v2_x1_0_swish,
        "ShuffleNet V2 1.0x, SiLU (PaddleClas's swish)",
        paper_mflops=148.86,
        paper_params_m=2.29,
        paper_top1_err=29.97,
        reference_top1={"paddleclas": 70.03},
        paper_source="PaddleClas",
    ),
)
