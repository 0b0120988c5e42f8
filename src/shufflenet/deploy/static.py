"""Shuffles and splits with constants only, so that an exported graph has no shape-computing
subgraph (``Shape -> Gather -> Reshape``) and works for any batch size.

A static unit replaces each unit type that shuffles or splits; :data:`STATIC_UNITS` maps the unit
type to its static form, and a new unit type is one entry there plus its class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..models.ops import channel_shuffle, shuffle_permutation
from ..models.v1 import ShuffleV1Unit
from ..models.v2 import InvertedResidual, MegviiInvertedResidual
from .fuse import fold_bn, set_submodule

__all__ = ["STATIC_UNITS", "StaticV1Unit", "static_shuffles"]

Size = tuple[int, int] | None  # a spatial size (height, width), or None: any


class _Shuffle(nn.Module):
    """A channel shuffle written with constants only.

    With ``size`` (the spatial size this point of the network sees) it is the paper's reshape ->
    transpose -> reshape with constant shapes and a free batch axis: exported to ONNX, the form
    every runtime recognises (OpenVINO miscomputes a constant Gather feeding a depthwise conv
    feeding a 1x1 conv: ``tests/test_export.py`` pins it). Without ``size`` it takes any input
    size: a gather by a constant index in an ONNX export (one op), :func:`channel_shuffle`
    otherwise (it keeps the channels_last memory format).
    """

    index: Tensor

    def __init__(self, channels: int, groups: int, size: Size = None) -> None:
        super().__init__()
        self.channels, self.groups, self.size = channels, groups, size
        self.register_buffer("index", torch.tensor(shuffle_permutation(channels, groups)), False)

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None:
            c, g, (h, w) = self.channels, self.groups, self.size
            return x.reshape(-1, g, c // g, h, w).transpose(1, 2).reshape(-1, c, h, w)
        if torch.onnx.is_in_onnx_export():
            return x.index_select(1, self.index)
        return channel_shuffle(x, self.groups)


class StaticV1Unit(nn.Module):
    """A V1 unit with its BatchNorms folded and its shuffle after the depthwise conv.

    In the paper layout ``dw(shuffle(x)) = shuffle(dw'(x))``, where ``dw'`` gives channel ``p``
    the weights of the shuffled position of ``p``; the Megvii layout shuffles there already. The
    shuffle then feeds a group conv, never a depthwise one (see :class:`_Shuffle`).
    """

    def __init__(self, unit: ShuffleV1Unit, size: Size = None) -> None:
        super().__init__()
        u = copy.deepcopy(unit)
        for conv, bn in ((u.gconv1, u.bn1), (u.dwconv, u.bn2), (u.gconv2, u.bn3)):
            if isinstance(bn, nn.BatchNorm2d):  # not yet folded by fuse_bn
                fold_bn(conv, bn)
        self.stride = u.stride
        self.gconv1, self.act1, self.gconv2 = u.gconv1, u.relu1, u.gconv2
        self.shortcut, self.act_out = u.shortcut, u.relu_out
        mid = u.dwconv.in_channels
        groups = u.groups if u.layout == "paper" else mid // u.groups
        self.dwconv = u.dwconv
        if u.layout == "paper":
            # shuffled position of unshuffled channel p: p = j * (mid / g) + k -> k * g + j
            position = torch.arange(mid).view(groups, -1).t().flatten().argsort()
            with torch.no_grad():
                self.dwconv.weight.copy_(self.dwconv.weight[position])
                if self.dwconv.bias is not None:
                    self.dwconv.bias.copy_(self.dwconv.bias[position])
        self.shuffle = _Shuffle(mid, groups, size) if groups > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle(self.dwconv(self.act1(self.gconv1(x))))
        out = self.gconv2(out)
        out = out + x if self.stride == 1 else torch.cat((self.shortcut(x), out), 1)
        return self.act_out(out)


class _StaticV2Unit(nn.Module):
    """A torchvision-layout V2 unit: constant slices, concat, :class:`_Shuffle`."""

    def __init__(self, unit: InvertedResidual, size: Size) -> None:
        super().__init__()
        self.unit = unit
        last_conv = unit.branch2[5]
        assert isinstance(last_conv, nn.Conv2d)
        self.split_at = last_conv.out_channels  # half of the unit's width
        self.shuffle = _Shuffle(2 * self.split_at, 2, size)

    def forward(self, x: Tensor) -> Tensor:
        u = self.unit
        if u.stride == 1:
            out = torch.cat((x[:, : self.split_at], u.branch2(x[:, self.split_at :])), 1)
        else:
            out = torch.cat((u.branch1(x), u.branch2(x)), 1)
        return self.shuffle(out)


class _StaticMegviiV2Unit(nn.Module):
    """A stride-1 Megvii-layout V2 unit splitting even/odd channels with strided slices."""

    def __init__(self, unit: MegviiInvertedResidual) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x[:, 0::2], self.unit.branch2(x[:, 1::2])), 1)


# unit type -> its static form, given the unit and the spatial sizes of its input and output
# (``None`` when no input size is fixed); a form may return ``None``: nothing to replace.
STATIC_UNITS: dict[type[nn.Module], Callable[[Any, Size, Size], nn.Module | None]] = {
    ShuffleV1Unit: lambda u, i, o: StaticV1Unit(u, o),  # shuffles after the depthwise conv
    InvertedResidual: lambda u, i, o: _StaticV2Unit(u, o),
    MegviiInvertedResidual: lambda u, i, o: _StaticMegviiV2Unit(u) if u.stride == 1 else None,
}


def _unit_sizes(model: nn.Module, input_size: tuple[int, int]) -> dict[str, tuple[Size, Size]]:
    """The spatial sizes of each unit's input and output for an ``input_size`` input."""
    sizes: dict[str, tuple[Size, Size]] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) in STATIC_UNITS:

            def record(_m: nn.Module, i: tuple[Tensor], o: Tensor, name: str = name) -> None:
                sizes[name] = (tuple(i[0].shape[2:]), tuple(o.shape[2:]))  # type: ignore[assignment]

            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, getattr(model, "in_chans", 3), *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def static_shuffles(model: nn.Module, input_size: tuple[int, int] | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` whose shuffles and splits use constants only.

    By default a shuffle is a gather with a constant index and the copy takes any input size.
    With ``input_size`` (height, width), every shuffle is reshape -> transpose -> reshape with
    the constant shapes of that size and only the batch may vary: the form for an ONNX file,
    whose spatial size is fixed anyway (see :class:`_Shuffle`).
    """
    static = copy.deepcopy(model).eval()
    sizes = {} if input_size is None else _unit_sizes(static, input_size)
    for name, module in list(static.named_modules()):
        form = STATIC_UNITS.get(type(module))
        replacement = form(module, *sizes.get(name, (None, None))) if form else None
        if replacement is not None:
            set_submodule(static, name, replacement)
    return static
