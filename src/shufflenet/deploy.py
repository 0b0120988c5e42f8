"""Inference-time rewrites: copies of a model that compute the same function, faster or in a form
that graph exporters handle well. The original model is never modified.

* :func:`fuse_bn` folds every BatchNorm into the convolution that feeds it.
* :func:`static_shuffles` replaces the channel shuffles and splits of every unit by gathers (or
  reshapes for a fixed spatial size) and slices with constant indices, so an exported graph has
  no shape-computing subgraph (``Shape -> Gather -> Reshape``) and works for any batch size.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings

import torch
from torch import Tensor, nn

from .ops import shuffle_permutation
from .v1 import ShuffleV1Unit
from .v2 import InvertedResidual, MegviiInvertedResidual

__all__ = ["OPTIMIZE_BACKENDS", "fuse_bn", "has_cxx_compiler", "optimize", "static_shuffles"]


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) for every BatchNorm2d whose input is a Conv2d's output.

    Found by running the model once on a small input, so the pairs follow the data flow.
    """
    produced: dict[int, tuple[str, Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def record(_m: nn.Module, _i: tuple[Tensor], out: Tensor, name: str = name) -> None:
                produced[id(out)] = (name, out)  # keep ``out`` alive so its id stays unique

            handles.append(module.register_forward_hook(record))
        elif isinstance(module, nn.BatchNorm2d):

            def match(_m: nn.Module, inputs: tuple[Tensor], name: str = name) -> None:
                source = produced.get(id(inputs[0]))
                if source is not None and (source[0], name) not in pairs:
                    pairs.append((source[0], name))

            handles.append(module.register_forward_pre_hook(match))
    try:
        with torch.no_grad():
            model(torch.zeros(1, getattr(model, "in_chans", 3), 32, 32))  # the smallest input
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place, computing in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    dtype = conv.weight.dtype
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    conv.weight = nn.Parameter(weight.to(dtype))
    conv.bias = nn.Parameter(bias.to(dtype))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into its preceding conv.

    A folded BatchNorm becomes ``nn.Identity`` (state-dict indices of Sequentials stay put)
    and its conv gains a bias. BatchNorms that do not directly follow a convolution are kept.
    """
    fused = copy.deepcopy(model).eval()
    for conv_name, bn_name in _conv_bn_pairs(fused):
        conv, bn = fused.get_submodule(conv_name), fused.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        _fold(conv, bn)
        _set_submodule(fused, bn_name, nn.Identity())
    return fused


class _Shuffle(nn.Module):
    """A channel shuffle written with constants only.

    Without ``size`` it is a gather by a constant index, which works at any input size. With
    ``size`` (the spatial size this point of the network sees) it is the paper's reshape ->
    transpose -> reshape with constant shapes and a free batch axis: exported to ONNX, the
    Reshape/Transpose form is the one every runtime recognises, while OpenVINO 2026.4 was seen
    to miscompute a constant Gather that feeds a depthwise conv feeding a 1x1 conv.
    """

    index: Tensor

    def __init__(self, channels: int, groups: int, size: tuple[int, int] | None = None) -> None:
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

    def __init__(self, unit: ShuffleV1Unit, size: tuple[int, int] | None) -> None:
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

    def __init__(self, unit: InvertedResidual, size: tuple[int, int] | None) -> None:
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


def _shuffle_sizes(model: nn.Module, input_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """The spatial size at each unit's shuffle for an ``input_size`` input, by unit name."""
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (ShuffleV1Unit, InvertedResidual)):
            # V1's paper layout shuffles before the depthwise conv (the input's size); the
            # others shuffle after it (the output's size)
            before = isinstance(module, ShuffleV1Unit) and module.layout == "paper"

            def record(
                _m: nn.Module, i: tuple[Tensor], o: Tensor, name: str = name, before: bool = before
            ) -> None:
                sizes[name] = tuple((i[0] if before else o).shape[2:])  # type: ignore[assignment]

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
    sizes = {} if input_size is None else _shuffle_sizes(static, input_size)
    for name, module in list(static.named_modules()):
        if isinstance(module, ShuffleV1Unit):
            _set_submodule(static, name, _StaticV1Unit(module, sizes.get(name)))
        elif isinstance(module, InvertedResidual):
            _set_submodule(static, name, _StaticV2Unit(module, sizes.get(name)))
        elif isinstance(module, MegviiInvertedResidual) and module.stride == 1:
            _set_submodule(static, name, _StaticMegviiV2Unit(module))
    return static


OPTIMIZE_BACKENDS = ("auto", "inductor", "jit", "eager")


class _ChannelsLast(nn.Module):
    """Runs ``model`` on a channels_last copy of the input (NCHW tensors work as they are)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _Inductor(nn.Module):
    """``torch.compile`` of ``model`` with weight freezing (constant-folded, prepacked oneDNN
    convolutions) and the C++ wrapper. The two settings are global; they apply around every call,
    since a graph compiles on a call, and ``torch.compile(options=...)`` leaves freezing off."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(model)

    def forward(self, x: Tensor) -> Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True, cpp_wrapper=True):
            return self.compiled(x)  # type: ignore[no-any-return]


def has_cxx_compiler() -> bool:
    """Whether TorchInductor finds a C++ compiler (``$CXX``, g++, clang++ or c++) on the PATH."""
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return any(shutil.which(name) for name in names if name)


def optimize(
    model: nn.Module, *, example: Tensor | None = None, backend: str = "auto"
) -> nn.Module:
    """A copy of ``model`` for fast CPU inference in PyTorch, same outputs within 1e-4.

    BatchNorms folded, shuffles absorbed (:func:`shufflenet.fastpath.fast_model` with the
    ``EAGER`` layout; other models only get the folding), channels_last memory format, then
    ``backend``: ``"inductor"`` is ``torch.compile`` with weight freezing and the C++ wrapper
    (the fastest; the first call of each input shape compiles, about half a minute on 2 cores);
    ``"jit"`` traces on ``example`` (default: one 224x224 image), freezes and applies
    ``torch.jit.optimize_for_inference`` (ready in a second; other input shapes work, tuned for
    this one); ``"auto"`` is inductor where a C++ compiler is found, else jit; ``"eager"`` stops
    before either. Run the result under ``torch.inference_mode()`` or ``no_grad``.
    """
    from .fastpath import EAGER, fast_model, fastpath_support

    if backend not in OPTIMIZE_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(OPTIMIZE_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "inductor" if has_cxx_compiler() else "jit"
    fast = fast_model(model, EAGER) if fastpath_support(model) is None else fuse_bn(model)
    wrapped = _ChannelsLast(fast).eval()
    if backend == "eager":
        return wrapped
    if backend == "inductor":
        return _Inductor(wrapped).eval()
    if example is None:
        example = torch.randn(1, getattr(model, "in_chans", 3), 224, 224)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input checks: constants
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
