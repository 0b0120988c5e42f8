"""The choices of an int8 export, one vocabulary for every runtime: the calibration method (each
runtime's quantizer names them its own way: :data:`CALIB_METHODS` maps ours to theirs), how many
calibration images, weights per channel or per tensor, and the layers kept in float.

A layer is a convolution or the classifier, named as in the model (``conv1.0``,
``stage2.0.branch1.0``, ``fc``: :func:`quantizable_layers`), or ``first`` (the stem conv) and
``last`` (the classifier). The shuffle-free graphs keep the stem conv and the classifier as
they are but rebuild the convolutions in between; an int8 file that keeps one of those in float
is made from the plain BatchNorm-folded graph, whose layers carry the model's names
(:func:`needs_plain_graph`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "CALIB_METHODS",
    "DEFAULT_CALIB_IMAGES",
    "DEFAULT_FLOAT_LAYERS",
    "FIRST",
    "LAST",
    "MAX_CALIB_IMAGES",
    "PER_TENSOR",
    "Int8Options",
    "layer_of_scope",
    "needs_plain_graph",
    "pick_layers",
    "quantizable_layers",
    "resolve_float_layers",
]

# runtime -> {our method name: what that runtime's quantizer does for it}; the first one is
# ``auto``, the best-measured on this project's benchmark (docs/deployment/int8.md).
CALIB_METHODS: dict[str, dict[str, str]] = {
    "onnxruntime": {
        "percentile": "CalibrationMethod.Percentile: 99.999th percentile of |x|",
        "minmax": "CalibrationMethod.MinMax: the smallest and largest value seen",
        "entropy": "CalibrationMethod.Entropy: the clip that minimises the KL divergence",
    },
    "litert": {
        "histogram": "HistogramObserver: the clip that minimises the L2 error of a histogram",
        "minmax": "MinMaxObserver: the smallest and largest value seen",
        "percentile": "HistogramObserver's histogram cut at the 0.001th/99.999th percentiles",
    },
    "mnn": {
        "ema": "feature_quantize_method EMA: moving average of the min/max of batches of 64",
        "entropy": "feature_quantize_method KL: the clip that minimises the KL divergence",
    },
}
CALIB_METHODS["executorch"] = CALIB_METHODS["litert"]  # both PT2E quantizers, same observers

# The layers each runtime keeps in float when none are named: chosen by measurement
# (benchmarks/int8_accuracy.py).
DEFAULT_FLOAT_LAYERS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (),
    "litert": (),
    "executorch": (),
    "mnn": (),
}
# The runtimes whose quantizer also has one weight scale per tensor.
PER_TENSOR = ("onnxruntime", "litert", "executorch")
DEFAULT_CALIB_IMAGES = 256
MAX_CALIB_IMAGES = 10_000
FIRST, LAST = "first", "last"


@dataclass(frozen=True)
class Int8Options:
    """How an int8 file is made. ``method`` is a calibration method of the runtime's
    (:data:`CALIB_METHODS`; ``auto``: the first); ``calib_images`` how many images calibrate
    (spread evenly over the calibration set); ``per_channel`` one weight scale per output
    channel (else per tensor); ``float_layers`` the layers kept in float (names, ``first``,
    ``last``; None: :data:`DEFAULT_FLOAT_LAYERS`)."""

    method: str = "auto"
    calib_images: int = DEFAULT_CALIB_IMAGES
    per_channel: bool = True
    float_layers: tuple[str, ...] | None = None

    def checked(self, runtime: str) -> Int8Options:
        """A copy with ``method`` and ``float_layers`` resolved for ``runtime``; a
        ``ValueError`` naming the option that is out of range."""
        methods = CALIB_METHODS[runtime]
        method = next(iter(methods)) if self.method == "auto" else self.method
        if method not in methods:
            raise ValueError(
                f"calib_method for {runtime} must be auto or one of {', '.join(methods)}, got "
                f"{self.method!r}"
            )
        count = self.calib_images
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"calib_images must be an integer, got {count!r}")
        if not 1 <= count <= MAX_CALIB_IMAGES:
            raise ValueError(f"calib_images must be within 1..{MAX_CALIB_IMAGES}, got {count}")
        if not self.per_channel and runtime not in PER_TENSOR:
            raise ValueError(f"{runtime}'s quantizer has per-channel weights only")
        layers = DEFAULT_FLOAT_LAYERS[runtime] if self.float_layers is None else self.float_layers
        if isinstance(layers, str) or not all(isinstance(n, str) and n for n in layers):
            raise ValueError(f"float_layers must be a sequence of layer names, got {layers!r}")
        return Int8Options(method, count, bool(self.per_channel), tuple(dict.fromkeys(layers)))

    def record(self, runtime: str, layers: Sequence[str]) -> dict[str, Any]:
        """What a file's ``quantization`` metadata says of these choices (``layers``: the
        float layers resolved to the model's names)."""
        return {
            "calibration": f"{self.method} ({CALIB_METHODS[runtime][self.method]})",
            "per_channel": self.per_channel,
            "float_layers": list(layers),
        }


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Linear)


def quantizable_layers(model: nn.Module) -> list[str]:
    """The names of ``model``'s convolutions and linear layers, in definition order."""
    return [name for name, module in model.named_modules() if _is_layer(module)]


def resolve_float_layers(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as ``model``'s layer names: ``first`` is its first conv, ``last`` its last
    linear layer (the classifier); a ``ValueError`` for a name that is not a conv or linear
    layer of ``model``."""
    layers = quantizable_layers(model)
    linear = [n for n in layers if isinstance(model.get_submodule(n), nn.Linear)]
    aliases = {FIRST: layers[0] if layers else None, LAST: linear[-1] if linear else None}
    resolved = []
    for name in names:
        layer = aliases.get(name, name)
        if layer is None or layer not in layers:
            sample = ", ".join([FIRST, LAST, *layers[:3]])
            raise ValueError(
                f"int8 float layer {name!r} is not a conv or linear layer of the model (names "
                f"as in its state dict, without .weight: {sample}, ...)"
            )
        resolved.append(layer)
    return tuple(dict.fromkeys(resolved))


def _ends(model: nn.Module) -> tuple[str | None, str | None]:
    """The layers a shuffle-free graph keeps: the first conv and the last linear layer."""
    layers = quantizable_layers(model)
    linear = [n for n in layers if isinstance(model.get_submodule(n), nn.Linear)]
    return (layers[0] if layers else None), (linear[-1] if linear else None)


def needs_plain_graph(model: nn.Module, layers: Sequence[str]) -> bool:
    """Whether keeping ``layers`` (resolved names) in float needs the plain graph: any layer
    but the stem conv and the classifier."""
    return bool(set(layers) - set(_ends(model)))


def layer_of_scope(name: str) -> str | None:
    """The module name in an ONNX node name of PyTorch's TorchScript exporter, whose scopes
    name each module relative to its parent (``/stage2/stage2.0/branch1/branch1.0/Conv`` ->
    ``stage2.0.branch1.0``; MNN names its ops after their output, ``.../Conv_output_0``);
    None for a name without one."""
    path: list[str] = []
    for part in [p for p in name.split("/") if p][:-1]:  # the last one is the op
        if path and part.startswith(path[-1] + "."):
            path[-1] = part  # ``stage2`` then ``stage2.0``: one module, indexed
        else:
            path.append(part)
    return ".".join(path) or None


def pick_layers(
    model: nn.Module, nodes: Sequence[tuple[str | None, str]], layers: Sequence[str]
) -> list[int]:
    """Which of a graph's ``nodes`` compute ``layers`` (resolved names). ``nodes`` are its
    convolutions and linear layers in order, each (its module name or None, ``conv`` or
    ``linear``). A node is found by its name, or, in a graph whose names are not the model's,
    as the first conv (the stem) or the last linear node (the classifier). A ``ValueError``
    if a layer has no node."""
    first, last = _ends(model)
    convs = [i for i, (_, kind) in enumerate(nodes) if kind == "conv"]
    linears = [i for i, (_, kind) in enumerate(nodes) if kind == "linear"]
    picked = []
    for layer in layers:
        found = [i for i, (name, _) in enumerate(nodes) if name == layer]
        if not found and layer == first and convs:
            found = convs[:1]
        elif not found and layer == last and linears:
            found = linears[-1:]
        if not found:
            raise ValueError(f"int8 float layer {layer} is not in the graph being quantized")
        picked += found
    return sorted(set(picked))
