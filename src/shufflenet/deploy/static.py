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

from ..models.ops import shuffle_permutation
from ..models.v1 import ShuffleV1Unit
from ..models.v2 import InvertedResidual, MegviiInvertedResidual
from .fuse import set_submodule

__all__ = ["STATIC_UNITS", "static_shuffles"]

Size = tuple[int, int] | None  # a spatial size (height, width), or None: any


class _Shuffle(nn.Module):
    """A channel shuffle written with constants only.

    Without ``size`` it is a gather by a constant index, which works at any input size. With
    ``size`` (the spatial size this point of the network sees) it is the paper's reshape ->
    transpose -> reshape with constant shapes and a free batch axis: exported to ONNX, the
    Reshape/Transpose form is the one every runtime recognises, while OpenVINO 2026.4 was seen
    to miscompute a constant Gather that feeds a depthwise conv feeding a 1x1 conv.
    """

    index: Tensor

    def __init__(self, channels: int, groups: int, size: Size = None) -> None:
        super().__init__()
        self.channels, self.groups, self.size = channels, groups, size
        self.register_buffer("index", torch.tensor(shuffle_permutation(channels, groups)), False)

    def forward(self, x: Tensor) -> Tensor:
        if self.size is None:
            return x.index_select(1, self.index)
        c, g, (h, w) = self.channels, self.groups, self.size
        return x.reshape(-1, g, c // g, h, w).transpose(1, 2).reshape(-1, c, h, w)


class _StaticV1Unit(nn.Module):
    """A V1 unit whose shuffle is a :class:`_Shuffle` (either layout)."""

    def __init__(self, unit: ShuffleV1Unit, size: Size) -> None:
        super().__init__()
        self.unit = unit
        mid = unit.dwconv.in_channels
        groups = unit.groups if unit.layout == "paper" else mid // unit.groups
        self.shuffle = _Shuffle(mid, groups, size)

    def forward(self, x: Tensor) -> Tensor:
        u = self.unit
        out = u.relu1(u.bn1(u.gconv1(x)))
        if u.layout == "paper":
            out = self.shuffle(out)
        out = u.bn2(u.dwconv(out))
        if u.layout == "megvii":
            out = self.shuffle(out)
        out = u.bn3(u.gconv2(out))
        out = out + x if u.stride == 1 else torch.cat((u.shortcut(x), out), 1)
        return u.relu_out(out)


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
    # V1's paper layout shuffles before the depthwise conv (input size), Megvii's after it
    ShuffleV1Unit: lambda u, i, o: _StaticV1Unit(u, i if u.layout == "paper" else o),
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
