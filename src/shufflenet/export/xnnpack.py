"""Exact rewrites that keep a graph whole inside the XNNPACK delegate of ExecuTorch and LiteRT.

ExecuTorch's XNNPACK partitioner leaves out operators XNNPACK has no kernel for; each one cuts
the graph into separate delegate calls with ExecuTorch's portable (slow, single-threaded) kernels
between them. LiteRT's delegate does the same, with LiteRT's own kernels between its pieces.
Three patterns of this package's graphs are left out, and each has an equivalent that XNNPACK
takes:

* an average pool that counts its zero padding (V1's stride-2 shortcut): the depthwise conv with
  weights ``1 / kernel area`` that it equals (XNNPACK pools only without padding);
* a hard-sigmoid (V2+'s squeeze-excitation gate): ``hardtanh(x + 3, 0, 6) / 6``, its definition,
  from ops XNNPACK has (the decomposition ExecuTorch applies makes scalar tensors it does not);
* Megvii's even/odd channel split ``x[:, 0::2]``, ``x[:, 1::2]`` (Megvii-layout V2, V2+): one
  reshape -> transpose -> reshape per split tensor, then two contiguous slices (XNNPACK slices
  only with step 1).

All three move or add the same values in the same order up to float rounding of the pooling sum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..deploy.fuse import set_submodule

__all__ = [
    "hardsigmoids_as_hardtanh",
    "pools_as_convs",
    "strided_splits_as_slices",
    "xnnpack_graph",
]


def xnnpack_graph(module: nn.Module, example: Tensor) -> nn.Module:
    """``module`` (modified in place where it has modules to replace) with all three rewrites;
    an exported graph module when it has a strided split. ``example``: an input it runs."""
    module = hardsigmoids_as_hardtanh(pools_as_convs(module, example))
    return strided_splits_as_slices(module, example)


def pools_as_convs(module: nn.Module, example: Tensor) -> nn.Module:
    """``module`` with each average pool that counts its zero padding replaced, in place, by the
    depthwise conv it equals (weights ``1 / kernel area``, no bias). ``example`` is run once to
    learn each pool's channels."""
    pools = {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, nn.AvgPool2d)
        and m.count_include_pad
        and m.padding not in (0, (0, 0))
        and not m.ceil_mode
        and m.divisor_override is None
    }
    channels: dict[str, int] = {}
    hooks = [
        pool.register_forward_hook(
            lambda _m, i, _o, name=name: channels.__setitem__(name, int(i[0].shape[1]))
        )
        for name, pool in pools.items()
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, pool in pools.items():
        c, kernel = channels[name], _pair(pool.kernel_size)
        stride = _pair(pool.stride or pool.kernel_size)
        conv = nn.Conv2d(c, c, kernel, stride, _pair(pool.padding), groups=c, bias=False)
        with torch.no_grad():
            conv.weight.fill_(1.0 / (kernel[0] * kernel[1]))
        set_submodule(module, name, conv)
    return module


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _Hardsigmoid(nn.Module):
    """``clamp(x + 3, 0, 6) / 6``, as :class:`torch.nn.Hardsigmoid` defines it."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.hardtanh(x + 3.0, 0.0, 6.0) / 6.0


def hardsigmoids_as_hardtanh(module: nn.Module) -> nn.Module:
    """``module`` with each :class:`torch.nn.Hardsigmoid` replaced, in place, by its definition
    in ops XNNPACK has."""
    for name, m in list(module.named_modules()):
        if isinstance(m, nn.Hardsigmoid):
            set_submodule(module, name, _Hardsigmoid())
    return module


def strided_splits_as_slices(module: nn.Module, example: Tensor) -> nn.Module:
    """``module`` captured by ``torch.export`` with each channel slice of step 2 (``x[:, 0::2]``,
    ``x[:, 1::2]`` of an NCHW tensor with an even channel count) read from one channel-sorted
    copy of ``x`` (evens, then odds: reshape -> transpose -> reshape) by a contiguous slice.
    ``module`` itself if it has none."""
    aten = torch.ops.aten
    graph_module = torch.export.export(module, (example,)).module()
    graph = graph_module.graph
    sorted_copies: dict[Any, Any] = {}
    for node in list(graph.nodes):
        split = _even_odd_split(node)
        if split is None:
            continue
        x, start, (_, c, h, w) = split
        with graph.inserting_before(node):
            if x not in sorted_copies:
                pairs = graph.call_function(aten.view.default, (x, [-1, c // 2, 2, h, w]))
                moved = graph.call_function(aten.permute.default, (pairs, [0, 2, 1, 3, 4]))
                dense = graph.call_function(
                    aten.clone.default, (moved,), {"memory_format": torch.contiguous_format}
                )
                sorted_copies[x] = graph.call_function(aten.view.default, (dense, [-1, c, h, w]))
            half = c // 2
            sliced = graph.call_function(
                aten.slice.Tensor, (sorted_copies[x], 1, start * half, (start + 1) * half)
            )
        node.replace_all_uses_with(sliced)
        graph.erase_node(node)
    if not sorted_copies:
        return module
    graph.lint()
    graph_module.recompile()
    return graph_module  # type: ignore[no-any-return]


def _even_odd_split(node: Any) -> tuple[Any, int, tuple[int, int, int, int]] | None:
    """(input, 0 or 1, its NCHW shape) if ``node`` is ``x[:, start::2]`` over all channels."""
    if node.op != "call_function" or node.target is not torch.ops.aten.slice.Tensor:
        return None
    if node.kwargs or len(node.args) > 5:
        return None
    x, dim, start, end, step = list(node.args) + [None] * (5 - len(node.args))
    dim, start, step = dim or 0, start or 0, 1 if step is None else step
    value = getattr(x, "meta", {}).get("val")
    if value is None or value.dim() != 4 or dim != 1 or step != 2 or start not in (0, 1):
        return None
    n, c, h, w = (int(d) for d in value.shape)
    if c % 2 or (end is not None and end < c):
        return None
    return x, int(start), (n, c, h, w)
