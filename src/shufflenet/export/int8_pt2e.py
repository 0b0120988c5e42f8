"""int8 choices in PyTorch 2 export quantization (PT2E), which LiteRT's and ExecuTorch's
quantizers share: the activation observer of each calibration method (:func:`pt2e_config`), a
percentile observer PT2E does not ship (:func:`percentile_observer`), and layers kept in float
(:class:`FloatLayers`, a quantizer that leaves them unannotated).

The runtime modules pass their own quantizer and config factory in; this module imports
neither runtime.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .int8_options import Int8Options, pick_layers

__all__ = ["FloatLayers", "fx_layers", "percentile_observer", "pt2e_config"]

PERCENTILE = 99.999  # the share of values inside the range, as ONNX Runtime's default


def _observer(method: str) -> Any:
    """The activation observer class of ``method`` (``histogram``: None, the config's own)."""
    from torchao.quantization.pt2e import MinMaxObserver

    if method == "percentile":
        return percentile_observer()
    return {"histogram": None, "minmax": MinMaxObserver}[method]


@functools.cache
def percentile_observer() -> type:
    """A PT2E histogram observer whose range keeps :data:`PERCENTILE` percent of the values
    seen, the same share cut from both tails (built on first use: torchao loads slowly)."""
    from torchao.quantization.pt2e import HistogramObserver

    class PercentileObserver(HistogramObserver):  # type: ignore[misc]
        def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
            width = (self.max_val - self.min_val) / self.bins
            cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum().clamp_min(1)
            tail = torch.tensor((100 - PERCENTILE) / 200, dtype=cdf.dtype)
            low = int(torch.searchsorted(cdf, tail))
            high = min(int(torch.searchsorted(cdf, 1 - tail)), self.bins - 1)
            return self.min_val + width * low, self.min_val + width * (high + 1)

    return PercentileObserver


def pt2e_config(factory: Callable[..., Any], options: Int8Options) -> Any:
    """A runtime's PT2E quantization config (``factory``: its
    ``get_symmetric_quantization_config``) with ``options``' weights per channel or per tensor
    and the activation observer of ``options.method`` (int8 per tensor, the factory's grid)."""
    config = factory(is_per_channel=options.per_channel)
    observer = _observer(options.method)
    if observer is None:
        return config

    def with_observer(spec: Any) -> Any:
        if spec is None:
            return None
        ctr = observer.with_args(eps=2**-12)
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)

    return dataclasses.replace(
        config,
        input_activation=with_observer(config.input_activation),
        output_activation=with_observer(config.output_activation),
    )


# -- float layers ---------------------------------------------------------------------------------
_CONVS = {"conv2d", "conv1d", "_convolution", "convolution"}
_LINEARS = {"linear", "addmm", "mm"}


def _kind(node: torch.fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return "conv" if name in _CONVS else "linear" if name in _LINEARS else None


def _module_name(node: torch.fx.Node) -> str | None:
    """The qualified name of the innermost module ``node`` was traced in."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self___", "") or None


def fx_layers(graph: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, str | None, str]]:
    """The convolutions and linear layers of an exported graph, in order: (node, the module
    name it was traced in, ``conv`` or ``linear``)."""
    found = []
    for node in graph.graph.nodes:
        kind = _kind(node)
        if kind is not None:
            found.append((node, _module_name(node), kind))
    return found


def _strip(name: str | None, prefix: str) -> str | None:
    return name[len(prefix) :] if name and prefix and name.startswith(prefix) else name


class FloatLayers:
    """A PT2E quantizer that annotates as ``inner`` does, then takes the annotations off the
    convolutions and linear layers of ``layers`` (resolved names of ``model``: see
    :func:`~shufflenet.export.int8_options.pick_layers`): those layers run in float on float
    weights. Their outputs stay on the grid the next int8 op reads (the activation fused into
    a conv keeps its annotation: other annotations share it). ``prefix``: what the traced
    module's names put before the model's (a wrapper's attribute, ``model.``)."""

    def __init__(
        self, inner: Any, model: nn.Module, layers: Sequence[str], prefix: str = ""
    ) -> None:
        self.inner, self.model, self.layers, self.prefix = inner, model, tuple(layers), prefix

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return self.inner.transform_for_annotation(model)  # type: ignore[no-any-return]

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = self.inner.annotate(model)
        if not self.layers:
            return model
        nodes = fx_layers(model)
        described = [(_strip(name, self.prefix), kind) for _, name, kind in nodes]
        for i in pick_layers(self.model, described, self.layers):
            nodes[i][0].meta.pop("quantization_annotation", None)
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        self.inner.validate(model)

    def prepare_obs_or_fq_callback(self, model: Any, edge_or_node_to_obs_or_fq: Any) -> None:
        self.inner.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)
