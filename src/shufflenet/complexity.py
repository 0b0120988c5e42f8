"""Parameters, FLOPs and memory access cost (MAC), counted by running the real model.

One forward pass runs under a ``TorchDispatchMode`` that sees every ATen op, while module hooks
say which module is running. Each op is charged to the innermost module that calls it:

* FLOPs are multiply-adds of convolutions and matrix products (the papers' convention);
* MAC is what the op reads plus what it writes, in elements and bytes (ShuffleNet V2, Sec. 2):
  input feature maps and weights plus the output. Views (split, reshape of a contiguous tensor,
  transpose) move no data and cost nothing; a copying concat or shuffle is charged in full.

Ops that a module calls directly, not through a child (the concat of a V2 unit, the add of a V1
unit), get their own row named ``module:op``. Rows fall in categories as in V2's Figure 2; a
module with a ``profile_category`` attribute (the squeeze-excitation blocks) puts every row
inside it in that category, and h-swish has its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .preprocessing import MAX_INPUT_SIZE

__all__ = ["LayerProfile", "ModelProfile", "module_category", "op_category", "profile"]

_aten = torch.ops.aten
_FREE_OPS = {_aten._unsafe_view.default, _aten.detach.default, _aten.lift_fresh.default}
_COPY_OPS = {"cat", "stack", "clone", "copy_", "contiguous", "_to_copy", "permute", "transpose"}


@dataclass
class LayerProfile:
    """One row: a leaf module, or the ops a module calls itself (``name`` = ``module:op``)."""

    name: str
    kind: str
    category: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int = 0
    flops: int = 0
    mac: int = 0
    mac_bytes: int = 0


@dataclass
class ModelProfile:
    """Per-layer rows and totals for one input size (batch 1).

    ``params`` counts the parameters of the modules that the eval-mode forward runs (the
    network that is deployed); ``total_params`` also counts training-only modules such as
    SE-ShuffleNet v2-164's auxiliary classifiers.
    """

    input_size: tuple[int, int, int]
    layers: list[LayerProfile] = field(default_factory=list)
    params: int = 0
    total_params: int = 0

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def mac(self) -> int:
        return sum(layer.mac for layer in self.layers)

    @property
    def mac_bytes(self) -> int:
        return sum(layer.mac_bytes for layer in self.layers)

    def by_category(self) -> dict[str, dict[str, int]]:
        """FLOPs, MAC and row count summed per category."""
        totals: dict[str, dict[str, int]] = {}
        for layer in self.layers:
            t = totals.setdefault(layer.category, {"layers": 0, "flops": 0, "mac": 0})
            t["layers"] += 1
            t["flops"] += layer.flops
            t["mac"] += layer.mac
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "totals": {
                "params": self.params,
                "total_params": self.total_params,
                "flops": self.flops,
                "mac": self.mac,
                "mac_bytes": self.mac_bytes,
            },
            "categories": self.by_category(),
            "layers": [asdict(layer) for layer in self.layers],
        }


def module_category(module: nn.Module) -> str:
    """The op category of a leaf module, as in V2's Figure 2 time breakdown."""
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size
        if module.groups == module.in_channels and module.groups > 1:
            return "depthwise conv"
        if module.groups > 1:
            return "group conv"
        return "1x1 conv" if k == (1, 1) else "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, nn.Hardswish):
        return "h-swish"
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid, nn.Dropout)):
        return "element-wise"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "pooling"
    return "other"


def op_category(op_name: str) -> str:
    """The category of an ATen op that a module calls directly (concat, add, ...)."""
    base = op_name.rstrip("_")
    if base in {"cat", "stack", "split", "chunk", "clone", "copy", "contiguous", "_to_copy"}:
        return "shuffle/concat/split"
    if base in {"add", "mul", "relu", "silu", "sub", "div", "hardtanh", "sigmoid", "clamp"}:
        return "element-wise"
    if "pool" in base or base in {"mean", "sum"}:
        return "pooling"
    if base in {"convolution", "addmm", "mm", "linear"}:
        return "conv"
    return "data movement"


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


def _flops(func: Any, args: tuple, out: Any) -> int:
    packet = func.overloadpacket
    if packet is _aten.convolution:
        weight = args[1]
        return out.numel() * weight[0].numel()  # outputs x (in/groups * kh * kw)
    if packet in (_aten.addmm, _aten.mm, _aten.bmm):
        a = args[-2]
        return out.numel() * a.shape[-1]
    return 0


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: dict[str, LayerProfile] = {}
        self.leaves: set[str] = set()
        self.modules: dict[str, nn.Module] = {}
        self.ran: set[str] = set()
        # path -> the category of its nearest module with ``profile_category`` (SE blocks)
        self.overrides: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if func.is_view or func in _FREE_OPS or not self.stack:
            return out
        path = self.stack[-1]
        op = func.overloadpacket.__name__
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        reads = sum(t.numel() for t in inputs)
        writes = sum(t.numel() for t in outputs)
        nbytes = sum(t.numel() * t.element_size() for t in inputs + outputs)
        if path in self.leaves:
            key, module = path, self.modules[path]
            kind, category = type(module).__name__, module_category(module)
        else:
            key, kind, category = f"{path}:{op}", op, op_category(op)
        category = self.overrides.get(path, category)
        row = self.rows.get(key)
        if row is None:
            shape_in = tuple(inputs[0].shape) if inputs else ()
            shape_out = tuple(outputs[0].shape) if outputs else ()
            row = LayerProfile(key, kind, category, shape_in, shape_out)
            self.rows[key] = row
        row.flops += _flops(func, args, out)
        row.mac += reads + writes
        row.mac_bytes += nbytes
        return out


@contextmanager
def _track_modules(model: nn.Module, counter: _Counter) -> Iterator[None]:
    handles = []
    for name, module in model.named_modules():
        path = name or "model"
        counter.modules[path] = module
        parent = path.rpartition(".")[0] if name and "." in name else ("model" if name else "")
        override = getattr(module, "profile_category", None) or counter.overrides.get(parent)
        if override:
            counter.overrides[path] = override
        if not any(True for _ in module.children()):
            counter.leaves.add(path)

        def pre(_m: nn.Module, _inp: Any, path: str = path) -> None:
            counter.stack.append(path)
            counter.ran.add(path)

        def post(_m: nn.Module, inp: Any, out: Any, path: str = path) -> None:
            counter.stack.pop()
            row = counter.rows.get(path)
            if row is not None:  # a leaf module: record the shapes it saw
                ins, outs = _tensors(inp), _tensors(out)
                row.input_shape = tuple(ins[0].shape) if ins else ()
                row.output_shape = tuple(outs[0].shape) if outs else ()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    dtype: torch.dtype = torch.float32,
) -> ModelProfile:
    """Count parameters, FLOPs and MAC of ``model`` for one image of ``input_size`` (C, H, W).

    The model runs once in eval mode on a zero input and is returned to its previous mode.
    H and W are at most :data:`~shufflenet.preprocessing.MAX_INPUT_SIZE`.
    """
    if (
        len(input_size) != 3
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in input_size)
        or max(input_size[1:]) > MAX_INPUT_SIZE
    ):
        raise ValueError(
            "input_size must be three positive integers (C, H, W), H and W at most "
            f"{MAX_INPUT_SIZE}, got {input_size}"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), dtype=dtype, device=device)
    counter = _Counter()
    try:
        with torch.no_grad(), _track_modules(model, counter), counter:
            model(x)
    finally:
        model.train(was_training)
    result = ModelProfile(input_size=tuple(input_size))  # type: ignore[arg-type]
    for row in counter.rows.values():
        if row.name in counter.leaves:
            row.params = sum(p.numel() for p in counter.modules[row.name].parameters(recurse=False))
        result.layers.append(row)
    result.params = sum(
        p.numel() for path in counter.ran for p in counter.modules[path].parameters(recurse=False)
    )
    result.total_params = sum(p.numel() for p in model.parameters())
    return result
