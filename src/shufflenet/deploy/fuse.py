"""BatchNorm folding: an eval-mode copy of a model with every BatchNorm folded into its conv."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["fold_bn", "fuse_bn", "set_submodule"]


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


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
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


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
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
        fold_bn(conv, bn)
        set_submodule(fused, bn_name, nn.Identity())
    return fused
