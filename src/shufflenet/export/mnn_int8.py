"""MNN's offline int8 quantizer, configured and corrected (no MNN import: the tools run in a
child process, :func:`~shufflenet.export.mnn.quantize_mnn`).

**What made MNN's int8 disagree with fp32** (89 to 95% top-1 agreement on the digits models,
where the other runtimes keep 99% or more), measured on MNN 3.6.1 on an x86 CPU with
AVX-512, layer by layer against the fp32 file:

* *Its int8 max-pool compares int8 values as unsigned bytes.* The quantizer's EMA method grids
  activations asymmetrically, so a ReLU output's zero point is -127 and a window holding
  values on both sides of int8 0 (real 0 and 1.5, say) picks the negative byte: the stem's
  max-pool output was off by 17% (its relative L2 error), and an unsigned comparison
  reproduces MNN's output exactly. The fix: every max-pool stays float
  (:func:`keep_float`), a conversion each way around one small tensor.
* *EMA over single images clips.* The quantizer averages the min/max of each batch, by default
  of one image: ranges settle near a typical image's, and larger values clip (the last
  stage's error grew to 19%). Batches of :data:`EMA_BATCH` give ranges near the calibration
  set's own.

Together these bring the digits V2 0.5x from 95.0% to 100% agreement. Mixed precision works
the same way as the max-pool fix: a layer kept in float gets its float weights back from the
fp32 file and loses the int8 parameters of its tensors. Both edits go through MNN's own JSON
form of a model (``MNNConvert --JsonFile`` and back), which writes floats with six decimals:
the scales it carries round by at most 5e-7 (relative 1e-3 for the smallest weight scales,
a tenth of int8's own rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .int8_options import Int8Options, layer_of_scope, pick_layers

__all__ = ["EMA_BATCH", "MNN_METHODS", "keep_float", "quantizer_config"]

# Our calibration methods as MNN's ``feature_quantize_method``.
MNN_METHODS = {"ema": "EMA", "entropy": "KL"}
EMA_BATCH = 64  # images per EMA step (MNN's default, 1, clips)
_CONVS = {"Convolution": "conv", "ConvolutionDepthwise": "conv"}
_LINEAR_SUFFIX = "__matmul_converted"  # MNN's name for a Gemm it made a 1x1 convolution


def quantizer_config(
    preprocessing: dict[str, Any],
    channels: int,
    size: Sequence[int],
    folder: str,
    images: int,
    int8: Int8Options,
) -> dict[str, Any]:
    """The JSON config of MNN's quantizer for ``images`` calibration files in ``folder``
    (``size``: height, width; ``int8`` checked for ``mnn``)."""
    pre = preprocessing
    order = "GRAY" if channels == 1 else pre.get("channel_order", "RGB")
    return {
        "format": order,
        "mean": [m / pre["scale"] for m in pre["mean"][:channels]],
        "normal": [pre["scale"] / s for s in pre["std"][:channels]],
        "width": int(size[1]),
        "height": int(size[0]),
        "path": folder,
        "used_image_num": images,
        "feature_quantize_method": MNN_METHODS[int8.method],
        "weight_quantize_method": "MAX_ABS",
        "batch_size": min(EMA_BATCH, images),
    }


def _layer_ops(net: dict[str, Any]) -> list[tuple[int, str | None, str]]:
    """(op index, module name, ``conv`` or ``linear``) of each layer op of an MNN JSON net."""
    found = []
    for i, op in enumerate(net["oplists"]):
        if op["type"] in _CONVS:
            name = str(op.get("name", ""))
            linear = name.endswith(_LINEAR_SUFFIX)
            found.append((i, None if linear else layer_of_scope(name), _CONVS[op["type"]]))
            if linear:
                found[-1] = (i, None, "linear")
    return found


def keep_float(
    quantized: dict[str, Any],
    fp32: dict[str, Any],
    model: nn.Module | None = None,
    layers: Sequence[str] = (),
) -> list[str]:
    """Edit ``quantized`` (MNN's JSON form of the int8 file that its quantizer made from the
    fp32 file ``fp32``, in the same form) so that its max-pools and ``layers`` (resolved names
    of ``model``'s layers) run in float; returns the names (fp32's) of the ops kept float.

    The two nets list the same ops in the same order (the quantizer renames some); a layer
    gets its fp32 parameters back, and every op kept float loses the int8 grids of its input
    and output tensors, so that MNN converts at its edges."""
    ops, originals = quantized["oplists"], fp32["oplists"]
    if [op["type"] for op in ops] != [op["type"] for op in originals]:
        raise ValueError("MNN's quantizer changed the graph: its ops no longer match the fp32 file")
    chosen = [
        i
        for i, op in enumerate(originals)
        if op["type"] == "Pooling" and op.get("main", {}).get("type") == "MAXPOOL"
    ]
    if layers:
        if model is None:
            raise ValueError("float layers need the model they name")
        found = _layer_ops(fp32)
        picked = pick_layers(model, [(name, kind) for _, name, kind in found], layers)
        for k in picked:
            i = found[k][0]
            ops[i]["main"] = originals[i]["main"]
            chosen.append(i)
    tensors = {
        t for i in chosen for t in [*ops[i].get("inputIndexes", []), *ops[i]["outputIndexes"]]
    }
    quantized["extraTensorDescribe"] = [
        d for d in quantized.get("extraTensorDescribe", []) if d.get("index") not in tensors
    ]
    return [str(originals[i].get("name", "")) for i in sorted(chosen)]
