"""mmpretrain's ShuffleNet V1/V2 checkpoint names -> ours (``convert --from mmpretrain``).

mmpretrain (formerly mmclassification) builds every conv + BN pair as an mmcv ``ConvModule``
(``.conv``, ``.bn``), keeps the stages in ``backbone.layers.0..2`` (V2's Conv5 is
``backbone.layers.3``) and the classifier in ``head.fc``. Its units compute what ours do:

* **V2** is torchvision's unit: the first half of the channels is the identity of a stride-1
  unit, the projection branch comes first in the concat, then a shuffle with two groups. The
  keys are renamed; nothing else changes (default layout).
* **V1** (``ShuffleUnit``) differs in one place: it shuffles after the depthwise conv + BN,
  where the paper (and our default ``"paper"`` layout) shuffles before it. Both are per-channel,
  so moving the shuffle before them only permutes their channels: our ``dwconv`` and ``bn2``
  take mmpretrain's tensors indexed by the shuffle's permutation
  (:func:`~shufflenet.models.ops.shuffle_permutation`, the same ``(g, C/g)`` transpose as
  mmpretrain's ``channel_shuffle``), which is exact. The first unit of Stage 2 has an
  ungrouped first 1x1 conv and still shuffles, as ours; a stride-2 unit concatenates the
  pooled input first and applies ReLU to the branch alone, which equals our ReLU after the
  concat since the pooled input is a ReLU output.

=============================================  =============================================
mmpretrain                                      ours
=============================================  =============================================
``backbone.conv1.{conv,bn}``                    ``conv1.{0,1}``
V2 ``backbone.layers.{s-2}.i.branch1.{0,1}``    ``stage{s}.{i}.branch1.{0,1 / 2,3}``
V2 ``backbone.layers.{s-2}.i.branch2.{0,1,2}``  ``stage{s}.{i}.branch2.{0,1 / 3,4 / 5,6}``
V2 ``backbone.layers.3.{conv,bn}``              ``conv5.{0,1}``
V1 ``...g_conv_1x1_compress.{conv,bn}``         ``stage{s}.{i}.gconv1``, ``.bn1``
V1 ``...depthwise_conv3x3_bn.{conv,bn}``        ``stage{s}.{i}.dwconv``, ``.bn2`` (permuted)
V1 ``...g_conv_1x1_expand.{conv,bn}``           ``stage{s}.{i}.gconv2``, ``.bn3``
``head.fc.{weight,bias}``                       ``fc.{weight,bias}``
=============================================  =============================================
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

from .models.ops import shuffle_permutation

__all__ = ["mmpretrain_kind", "mmpretrain_v1_filter", "mmpretrain_v2_filter"]

# ConvModule k of a V2 branch (conv, bn) -> the indices of our Sequential
_V2_BRANCHES = {
    "branch1": {"0": ("0", "1"), "1": ("2", "3")},
    "branch2": {"0": ("0", "1"), "1": ("3", "4"), "2": ("5", "6")},
}
_V1_LAYERS = {
    "g_conv_1x1_compress": ("gconv1", "bn1"),
    "depthwise_conv3x3_bn": ("dwconv", "bn2"),
    "g_conv_1x1_expand": ("gconv2", "bn3"),
}
_PART = {"conv": 0, "bn": 1}
_BN_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


def mmpretrain_kind(
    keys: list[str],
) -> tuple[str, str, str, Callable[[dict[str, Tensor]], dict[str, Tensor]]]:
    """What an mmpretrain checkpoint with ``keys`` holds: its description, the pattern of the
    models it may fit, their layout and its key filter (a ``convert.Detected``)."""
    if any(".g_conv_1x1_compress." in k for k in keys):
        return "mmpretrain ShuffleNet V1", "shufflenet_v1_*", "paper", mmpretrain_v1_filter
    return "mmpretrain ShuffleNet V2", "shufflenet_v2_x*", "torchvision", mmpretrain_v2_filter


def _rename(key: str) -> str:
    """One mmpretrain key as ours; keys of no known layer stay as they are (the strict load
    then names them)."""
    key = key.removeprefix("backbone.")
    if key.startswith("head.fc."):
        return key.removeprefix("head.")
    m = re.match(r"^(conv1|layers\.3)\.(conv|bn)\.(.+)$", key)
    if m:
        module = "conv1" if m[1] == "conv1" else "conv5"
        return f"{module}.{_PART[m[2]]}.{m[3]}"
    m = re.match(r"^layers\.([0-2])\.(\d+)\.(branch[12])\.(\d)\.(conv|bn)\.(.+)$", key)
    if m and m[4] in _V2_BRANCHES[m[3]]:
        index = _V2_BRANCHES[m[3]][m[4]][_PART[m[5]]]
        return f"stage{int(m[1]) + 2}.{m[2]}.{m[3]}.{index}.{m[6]}"
    m = re.match(r"^layers\.([0-2])\.(\d+)\.(\w+)\.(conv|bn)\.(.+)$", key)
    if m and m[3] in _V1_LAYERS:
        return f"stage{int(m[1]) + 2}.{m[2]}.{_V1_LAYERS[m[3]][_PART[m[4]]]}.{m[5]}"
    return key


def mmpretrain_v2_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmpretrain's ShuffleNet V2 names -> ours (default layout); see the module docstring."""
    return {_rename(k): v for k, v in state_dict.items()}


def mmpretrain_v1_filter(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmpretrain's ShuffleNet V1 names -> ours (``layout="paper"``), the depthwise conv and
    its BN permuted by the unit's shuffle; see the module docstring."""
    out = {_rename(k): v for k, v in state_dict.items()}
    units = sorted({k.rsplit(".", 2)[0] for k in out if re.match(r"^stage\d\.\d+\.dwconv\.", k)})
    for unit in units:
        dw, expand = out.get(f"{unit}.dwconv.weight"), out.get(f"{unit}.gconv2.weight")
        if dw is None or expand is None or expand.dim() != 4 or expand.shape[1] < 1:
            continue  # the strict load names what is missing
        channels = dw.shape[0]
        if channels % expand.shape[1]:
            raise ValueError(
                f"{unit}: {channels} depthwise channels do not split into groups of "
                f"{expand.shape[1]} (the expanding 1x1 conv's input per group)"
            )
        order = torch.tensor(shuffle_permutation(channels, channels // expand.shape[1]))
        for key in (f"{unit}.dwconv.weight", *(f"{unit}.bn2.{p}" for p in _BN_PER_CHANNEL)):
            value = out.get(key)
            if value is not None and value.dim() >= 1 and value.shape[0] == channels:
                out[key] = value[order]
    return out
