"""SE-ShuffleNet v2-164 (ShuffleNet V2 paper, Table 8; Megvii's release "ShuffleNetV2.Large"),
built on :class:`ShuffleNetBase`.

A deep, wide V2 with residual units and squeeze-excitation: a three-conv stem (64, 64, 128) and
max-pool, four stages ``stage2``..``stage5`` of 10, 10, 23 and 10 units (outputs 256, 512, 1024
and 2048 channels at strides 4 to 32), a 3x3 conv to 1280 and the classifier (with bias, dropout
0.2).

In training mode three auxiliary classifiers, after ``stage2``, ``stage3`` and ``stage4``, add
their losses with weights 0.7 (after ``stage4``), 0.5 and 0.3 (after ``stage2``) to the main
one: ``forward`` then returns :class:`~shufflenet.models.base.AuxOutputs` (torchvision's
Inception v3 convention) and the model's ``aux_loss_weights`` give the weights in the order of
``AuxOutputs.aux``. In eval mode, with ``aux_logits=False`` (no auxiliary heads, timm's default:
see :mod:`.timm_interop`) or compiled by TorchScript, ``forward`` returns the logits tensor.

Every conv is bias-free and followed by BatchNorm with eps 1e-9, as in the release, whose
weights map onto these modules by renaming keys only (``shufflenet convert --from megvii``).
Input: BGR 0-255, not normalised (:data:`~shufflenet.preprocessing.MEGVII_PREPROCESSING`).
"""

# No ``from __future__ import annotations``: FX copies ``forward``'s annotations into its graphs,
# which TorchScript then compiles, and it cannot read them as strings.
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..preprocessing import MEGVII_PREPROCESSING
from .base import (
    AuxOutputs,
    ConvNormAct,
    LayerFactory,
    ShuffleNetBase,
    check_input,
    check_positive,
    make_act,
    megvii_init,
)
from .registry import ModelInfo, register_models

__all__ = [
    "V2_LARGE_MODELS",
    "V2_LARGE_REPEATS",
    "V2_LARGE_WIDTHS",
    "AuxHead",
    "LinearSqueezeExcite",
    "SEShuffleUnit",
    "ShuffleNetV2Large",
    "shufflenet_v2_large",
]

V2_LARGE_REPEATS = (10, 10, 23, 10)
# The width of each stage's branches; a unit outputs twice that (the two halves concatenated).
V2_LARGE_WIDTHS = (128, 256, 512, 1024)
STEM_WIDTHS = (64, 64, 128)
HEAD_WIDTH = 1280
GROUPS = 8  # of the 3x3 convs in the main branches
# Loss weights of the auxiliary classifiers after stage4, stage3 and stage2 (main: 1.0).
AUX_LOSS_WEIGHTS = (0.7, 0.5, 0.3)
MEGVII_BN = partial(nn.BatchNorm2d, eps=1e-9)


class LinearSqueezeExcite(nn.Module):
    """Squeeze-excitation without reduction: global average pool, ``fc1`` (with bias), ReLU,
    ``fc2`` (with bias), sigmoid; the input times that gate."""

    profile_category = "squeeze-excite"  # how shufflenet.profile files its ops

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class SEShuffleUnit(nn.Module):
    """One SE-ShuffleNet v2-164 unit on an input of ``in_channels`` (two halves).

    The odd channels go through ``branch_main`` (1x1 conv + act, 3x3 grouped conv with the
    unit's stride + act, 1x1 conv), which is scaled by ``se``, a squeeze-excitation without
    reduction (:class:`LinearSqueezeExcite`). With ``has_proj`` (the first unit of a
    stage) the even channels go through ``proj`` (3x3 conv with the stride, BN, no act);
    otherwise they pass through and the odd half is added to the main branch (a residual,
    which needs ``in_channels / 2 == branch_channels`` and stride 1). The halves are
    concatenated and activated: ``2 * branch_channels`` outputs. A stride-2 unit ends with
    ``down``, a 1x1 conv + act on the concatenation.
    """

    def __init__(
        self,
        in_channels: int,
        branch_channels: int,
        stride: int,
        has_proj: bool,
        groups: int = GROUPS,
        norm_layer: LayerFactory = MEGVII_BN,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive(in_channels=in_channels, branch_channels=branch_channels, groups=groups)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if in_channels % 2:
            raise ValueError(f"in_channels must be even to split in halves, got {in_channels}")
        if branch_channels % groups:
            raise ValueError(
                f"branch_channels {branch_channels} must be a multiple of groups {groups}"
            )
        half = in_channels // 2
        if not has_proj and (stride != 1 or half != branch_channels):
            raise ValueError(
                "a unit without projection adds its input half: it needs stride 1 and "
                f"in_channels == 2 * branch_channels, got stride {stride}, {in_channels} -> "
                f"{branch_channels}"
            )
        self.stride = stride
        self.has_proj = has_proj
        conv = partial(ConvNormAct, norm_layer=norm_layer, act_layer=act_layer)
        self.proj = conv(half, branch_channels, 3, stride, act_layer=None) if has_proj else None
        self.branch_main = nn.Sequential(
            conv(half, branch_channels, 1),
            conv(branch_channels, branch_channels, 3, stride, groups=groups),
            conv(branch_channels, branch_channels, 1, act_layer=None),
        )
        self.se = LinearSqueezeExcite(branch_channels)
        self.act = make_act(act_layer)
        width = 2 * branch_channels
        self.down = conv(width, width, 1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        # Megvii's split (even channels, odd channels) as strided slices: no shape ops in ONNX
        even, odd = x[:, 0::2], x[:, 1::2]
        main = self.se(self.branch_main(odd))
        if self.proj is not None:
            even = self.proj(even)
        else:
            main = odd + main
        out = self.act(torch.cat((even, main), 1))
        return out if self.down is None else self.down(out)


class AuxHead(nn.Module):
    """An auxiliary classifier on a ``channels``-wide feature map: 3x3 stride-2 max-pool, 1x1
    and 3x3 conv + act (``channels`` wide), global average pool, ``fc`` (with bias)."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        norm_layer: LayerFactory = MEGVII_BN,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        check_positive(channels=channels, num_classes=num_classes)
        conv = partial(ConvNormAct, norm_layer=norm_layer, act_layer=act_layer)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv = nn.Sequential(conv(channels, channels, 1), conv(channels, channels, 3))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.global_pool(self.conv(self.pool(x))), 1))


class ShuffleNetV2Large(ShuffleNetBase):
    """SE-ShuffleNet v2-164: stem (three 3x3 convs, max-pool), four stages of
    :class:`SEShuffleUnit`, a 3x3 conv to 1280, and the head; auxiliary classifiers
    (``aux_heads``, an :class:`AuxHead` per stage name) while training.

    Args:
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features,
            and there are no auxiliary heads).
        in_chans: input channels.
        drop_rate: dropout before the classifier (0.2 in the release).
        aux_logits: build the auxiliary classifiers after ``stage2``..``stage4`` (used in
            training mode only; ``False`` drops them and their parameters).
        stages_repeats: units per stage (the first of each has the projection).
        stages_widths: the branch width of each stage (units output twice as many channels).
    """

    stage_names = ("stage2", "stage3", "stage4", "stage5")
    last_conv_name = "conv_last"
    aux_loss_weights = AUX_LOSS_WEIGHTS  # of ``AuxOutputs.aux``: after stage4, stage3, stage2
    if TYPE_CHECKING:  # TorchScript cannot read these annotations
        aux_heads: nn.ModuleDict | None
        conv1: nn.Sequential
        maxpool: nn.Module
        stage2: nn.Sequential
        stage3: nn.Sequential
        stage4: nn.Sequential
        stage5: nn.Sequential

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        aux_logits: bool = True,
        stages_repeats: Sequence[int] = V2_LARGE_REPEATS,
        stages_widths: Sequence[int] = V2_LARGE_WIDTHS,
    ) -> None:
        super().__init__(in_chans, num_classes, drop_rate, classifier_bias=True)
        if not isinstance(aux_logits, bool):
            raise ValueError(f"aux_logits must be True or False, got {aux_logits!r}")
        if len(stages_repeats) != 4 or len(stages_widths) != 4:
            raise ValueError(
                "stages_repeats and stages_widths need 4 values each, got "
                f"{list(stages_repeats)} and {list(stages_widths)}"
            )
        check_positive(**{f"stages_repeats[{i}]": r for i, r in enumerate(stages_repeats)})
        check_positive(**{f"stages_widths[{i}]": c for i, c in enumerate(stages_widths)})
        self.aux_logits = aux_logits
        conv = partial(ConvNormAct, norm_layer=MEGVII_BN)
        s1, s2, s3 = STEM_WIDTHS
        self.conv1 = nn.Sequential(conv(in_chans, s1, 3, 2), conv(s1, s2, 3), conv(s2, s3, 3))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = s3
        for name, repeats, width in zip(
            self.stage_names, stages_repeats, stages_widths, strict=True
        ):
            first_stride = 1 if name == "stage2" else 2
            units = [SEShuffleUnit(channels, width, first_stride, has_proj=True)]
            units += [SEShuffleUnit(2 * width, width, 1, has_proj=False) for _ in range(1, repeats)]
            setattr(self, name, nn.Sequential(*units))
            channels = 2 * width
        self.conv_last = conv(channels, HEAD_WIDTH, 3)
        self.feature_info = [
            {"num_chs": 2 * width, "reduction": 4 * 2**i, "module": name}
            for i, (name, width) in enumerate(zip(self.stage_names, stages_widths, strict=True))
        ]
        self._build_head(HEAD_WIDTH)
        self.aux_heads = None
        self._build_aux_heads()
        self.init_weights()

    def _aux_channels(self) -> dict[str, int]:
        """Stage name -> the width of its output, for the stages that get an auxiliary head."""
        return {str(i["module"]): int(i["num_chs"]) for i in self.feature_info[:3]}

    def _build_aux_heads(self) -> None:
        """Auxiliary heads exist while ``aux_logits`` is set and there is a classifier; those
        that exist keep their convs and get fresh classifiers for ``num_classes``. New modules
        take the model's device, dtype and mode."""
        if not (self.aux_logits and self.num_classes):
            self.aux_heads = None
            return
        channels, classes = self._aux_channels(), self.num_classes
        if self.aux_heads is None:
            self.aux_heads = self._like_model(
                lambda: nn.ModuleDict({n: AuxHead(c, classes) for n, c in channels.items()})
            )
            self._init_modules(self.aux_heads, prefix="aux_heads")
            return
        for name, c in channels.items():
            head = self.aux_heads[name]
            assert isinstance(head, AuxHead)
            head.fc = self._like_model(partial(nn.Linear, c, classes))
            self._init_modules(head.fc)

    def init_weights(self) -> None:
        """The release's scheme: the stem's convs N(0, 0.01), other convs N(0, 1 / input channels
        per group), BN scale 1 and shift 1e-4, Linear N(0, 0.01) and bias 0."""
        self._init_modules(self)

    @staticmethod
    def _init_modules(root: nn.Module, prefix: str = "") -> None:
        megvii_init(root, lambda name: name.startswith("conv1."), prefix)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes``, and fresh classifiers in the auxiliary heads
        (0 removes the heads; a later non-zero count builds new ones if ``aux_logits``)."""
        super().reset_classifier(num_classes, global_pool)
        self._build_aux_heads()

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """As :meth:`ShuffleNetBase.prune_intermediate_layers`; the auxiliary heads go with the
        head or with any stage."""
        chosen = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head or max(chosen) < len(self.feature_info) - 1:
            self.aux_logits = False
            self._build_aux_heads()
        return chosen

    def _scripted_trunk(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        return self.stage5(self.stage4(self.stage3(self.stage2(x))))

    def _last_conv(self, x: Tensor) -> Tensor:
        return self.conv_last(x)

    def forward(self, x: Tensor) -> Tensor | AuxOutputs:  # type: ignore[override]
        """The logits; in training mode with auxiliary heads, :class:`AuxOutputs`."""
        if torch.jit.is_scripting() or self.aux_heads is None or not self.training:
            return self.forward_head(self.forward_features(x))
        return self._forward_with_aux(x)

    @torch.jit.unused
    def _forward_with_aux(self, x: Tensor) -> AuxOutputs:
        heads = self.aux_heads
        assert heads is not None
        check_input(x, self.in_chans)
        aux = []
        for name in (*self.stem_names, *self.stage_names):
            x = self._run_stage(name, x)
            if name in heads:
                aux.append(heads[name](x))
        logits = self.forward_head(self._last_conv(x))
        return AuxOutputs(logits, aux[::-1])


def shufflenet_v2_large(**kwargs) -> ShuffleNetV2Large:
    """SE-ShuffleNet v2-164 (ShuffleNetV2.Large; see :class:`ShuffleNetV2Large`).
    ``aux_logits=False`` drops the auxiliary heads."""
    return ShuffleNetV2Large(**kwargs)


# The V2 paper's Table 8 (FLOPs, top-1 error in %; Megvii's release reached the same
# error); parameters (M) without the auxiliary heads, as in deployment (with them: 140.685664M).
V2_LARGE_MODELS = register_models(
    ModelInfo(
        "shufflenet_v2_large",
        "v2_large",
        shufflenet_v2_large,
        "SE-ShuffleNet v2-164 (ShuffleNetV2.Large)",
        paper_mflops=12700.0,
        paper_params_m=125.120936,
        paper_top1_err=18.56,
        preprocessing=MEGVII_PREPROCESSING,
    ),
)
