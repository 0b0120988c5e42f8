"""Shuffle-free training: a trainable form of V1 and V2 that computes the same function as the
model without the copies its shuffles cost, and maps back exactly to the ordinary layout.

**V2** (torchvision layout). As in :mod:`shufflenet.deploy.fastpath` (its
:func:`~shufflenet.deploy.fastpath.stage_routes`), every channel of a stage is labelled by its
*producer* (a branch's last 1x1 conv) and the one *consumer* that reads it (the right half of a
later stride-1 unit, or the stage output). BatchNorm stays BatchNorm: a producer's last 1x1 conv
and the BatchNorm after it get their rows in consumer order (exact in training mode too, since
batch statistics are per channel), and a split cuts the output into one chunk per consumer
(views; in the backward pass, one concat). A consumer concatenates its chunks, and its first
conv takes its input columns in that order: a stride-1 unit's 1x1 conv, the next stride-2
unit's depthwise conv, BatchNorm and 1x1 convs, or Conv5. There is no shuffle, no split of a
unit's input and no concat of a unit's output: a stride-1 unit copies half of its channels
(forward and backward) where the original copies all of them in the concat + shuffle and in the
split's backward, and feeds strided gradients to the activation and BatchNorm backward kernels.
Any element-wise activation commutes with these permutations (ReLU, SiLU, h-swish).

**V1.** A depthwise conv and its BatchNorm commute with a channel permutation, so the paper
unit's shuffle moves after them (stride-2 units shuffle 4x fewer values); it stays a copy, since
no channel order makes both group convs block diagonal. The Megvii layout shuffles there already.

Every parameter and buffer keeps its name, shape and place in ``parameters()``; only its entries
are permuted along channel axes (no padding, each original entry in one place). An optimizer
that updates every entry on its own (SGD with momentum and weight decay, Adam, ...) commutes
with these permutations: one built on the fast module's parameters (same groups, same order)
trains it as the original would be trained. ``state_dict()``/``load_state_dict()`` of the fast
module use the standard layout, :meth:`TrainFastModel.to_standard` gives the standard model, and
:meth:`~TrainFastModel.register_optimizer` has an optimizer's state (momentum) saved and loaded
in the standard layout too.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deploy.fastpath import fastpath_support, stage_routes
from ..models.base import set_norms_eval
from ..models.ops import channel_shuffle, shuffle_permutation
from ..models.v1 import ShuffleNetV1, ShuffleV1Unit
from ..models.v2 import InvertedResidual, ShuffleNetV2

__all__ = ["TrainFastModel", "train_model", "train_model_support"]

# entries of a tensor of the fast form: the standard tensor, index_select-ed along each (dim, index)
Permutation = list[tuple[int, Tensor]]


def train_model_support(model: nn.Module) -> str | None:
    """``None`` if :func:`train_model` rewrites ``model``, else the reason it does not."""
    return fastpath_support(model)


def train_model(model: nn.Module) -> TrainFastModel:
    """A trainable, shuffle-free copy of ``model`` (torchvision-layout V2, or V1) computing the
    same function, in the same train/eval mode; ``model`` is not modified.

    Build the optimizer on the copy's parameters; :meth:`TrainFastModel.to_standard` gives back
    an ordinary model. Raises ``ValueError`` for models :func:`train_model_support` rejects.
    """
    reason = train_model_support(model)
    if reason is not None:
        raise ValueError(f"model has no shuffle-free training form: {reason}")
    if isinstance(model, ShuffleNetV2):
        return _v2(model)
    assert isinstance(model, ShuffleNetV1)
    return _v1(model)


class TrainFastModel(nn.Module):
    """The training form of a V1 or V2 model: the original's module names and parameter order,
    some tensors' channels permuted (:attr:`permutations`), stages that move no data they need
    not. Only ``forward`` runs the network; features and heads are the standard model's.

    ``state_dict()`` and ``load_state_dict()`` speak the standard layout (checkpoints see the
    usual model); ``parameters()``, their gradients and an optimizer's state are in the fast
    layout (:meth:`standard_tensor`, :meth:`standard_optimizer_state` map them, and an
    optimizer given to :meth:`register_optimizer` speaks the standard layout itself). The
    global pool hands its gradient back in its input's memory format (the same values).
    """

    global_pool: nn.Module
    dropout: nn.Module
    fc: nn.Module

    def __init__(self, model: ShuffleNetV1 | ShuffleNetV2, stages: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.in_chans = model.in_chans
        self.num_classes = model.num_classes
        for name, child in model.named_children():  # the original's order: same parameters()
            self.add_module(name, stages[name] if name in stages else copy.deepcopy(child))
        head = ("global_pool", "dropout", "fc")
        self._body = tuple(name for name, _ in model.named_children() if name not in head)
        # key of a parameter or buffer -> how its entries are permuted from the standard layout
        self.permutations: dict[str, Permutation] = {}
        self._template = [copy.deepcopy(model).to("meta")]  # a list: not a submodule
        # BatchNorms that stay in eval mode in training (frozen stages, ``norm_eval``)
        self.eval_norms: tuple[str, ...] = tuple(getattr(model, "eval_norms", ()))
        own = dict(self.named_modules())
        for name, module in model.named_modules():  # per-module train/eval flags
            if name in own:
                own[name].training = module.training
        self.register_state_dict_post_hook(_state_dict_to_standard)
        self.register_load_state_dict_pre_hook(_state_dict_from_standard)
        # optimizers whose state_dict()/load_state_dict() map the layout (register_optimizer)
        self._standard_optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()

    def train(self, mode: bool = True) -> TrainFastModel:
        """Training mode, except the BatchNorms inside ``eval_norms``, as the original's."""
        super().train(mode)
        if mode:
            set_norms_eval(self, self.eval_norms)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        for name in self._body:
            x = getattr(self, name)(x)
        pool = self.global_pool
        if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)):
            x = _GlobalAvgPool.apply(x)
        else:
            x = pool(x)
        return self.fc(self.dropout(torch.flatten(x, 1)))

    # -- the permutations -------------------------------------------------------------------
    def _permute(self, name: str, dim: int, index: Sequence[int]) -> None:
        """Permute the tensors of module ``name`` along ``dim`` (0: output channels or a
        depthwise conv's channels, 1: a conv's input channels): ``new = old.index_select``."""
        if list(index) == list(range(len(index))):
            return
        module = self.get_submodule(name)
        idx = torch.tensor(list(index))
        tensors: list[tuple[str, Tensor]] = [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]
        for key, tensor in tensors:
            if tensor.dim() <= dim:
                continue  # num_batches_tracked, or a bias when permuting columns
            if tensor.shape[dim] != len(idx):
                raise ValueError(f"{name}.{key} has {tensor.shape[dim]} channels, not {len(idx)}")
            with torch.no_grad():
                permuted = _index(tensor, dim, idx)
            if isinstance(tensor, nn.Parameter):
                tensor.data = permuted
            else:
                setattr(module, key, permuted)
            self.permutations.setdefault(f"{name}.{key}", []).append((dim, idx))

    def _map(self, key: str, value: Tensor, inverse: bool) -> Tensor:
        for dim, idx in self.permutations.get(key, ()):
            value = _index(value, dim, torch.argsort(idx) if inverse else idx)
        return value

    def standard_tensor(self, key: str, value: Tensor) -> Tensor:
        """``value``, laid out like this module's tensor ``key`` (a parameter, its gradient or
        optimizer state, a buffer), in the standard model's layout."""
        return self._map(key, value, inverse=True)

    def fast_tensor(self, key: str, value: Tensor) -> Tensor:
        """The inverse of :meth:`standard_tensor`."""
        return self._map(key, value, inverse=False)

    def to_standard(self) -> nn.Module:
        """A fresh model of the original's class and configuration, with this module's weights,
        running statistics, ``requires_grad`` flags and train/eval modes (on its device, in its
        dtype and memory format); they share no memory."""
        standard = copy.deepcopy(self._template[0])  # on the meta device
        state = {k: v.clone() for k, v in self.state_dict().items()}
        standard.load_state_dict(state, assign=True)
        params = dict(self.named_parameters())
        for name, p in standard.named_parameters():
            p.requires_grad_(params[name].requires_grad)
        own = dict(self.named_modules())
        for name, module in standard.named_modules():
            if name in own:
                module.training = own[name].training
        if hasattr(standard, "eval_norms"):
            standard.eval_norms = self.eval_norms
        return standard

    # -- optimizer state ----------------------------------------------------------------------
    def _optimizer_keys(self, optimizer: torch.optim.Optimizer) -> list[str]:
        names = {id(p): name for name, p in self.named_parameters()}
        try:
            return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        except KeyError:
            raise ValueError("optimizer has parameters that are not this module's") from None

    def _map_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], inverse: bool
    ) -> dict[str, Any]:
        keys = self._optimizer_keys(optimizer)
        params = dict(self.named_parameters())
        state = {}
        for index, entry in state_dict["state"].items():
            key = keys[index]
            state[index] = {
                k: self._map(key, v, inverse)
                if isinstance(v, Tensor) and v.shape == params[key].shape
                else v
                for k, v in entry.items()
            }
        return {**state_dict, "state": state}

    def standard_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()`` (an optimizer on this module's parameters) with every
        per-parameter tensor (SGD's momentum buffers, ...) in the standard layout: the state of
        the same optimizer built on ``to_standard()``'s parameters in the same groups."""
        state = optimizer.state_dict()
        if optimizer in self._standard_optimizers:
            return state
        return self._map_optimizer_state(optimizer, state, inverse=True)

    def load_standard_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> None:
        """Load a standard-layout optimizer state (the inverse of
        :meth:`standard_optimizer_state`) into ``optimizer``, built on this module."""
        if optimizer not in self._standard_optimizers:
            state_dict = self._map_optimizer_state(optimizer, state_dict, inverse=False)
        optimizer.load_state_dict(state_dict)

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Have ``optimizer`` (built on this module's parameters) save and load its state in the
        standard layout, as this module's ``state_dict()`` does: its ``state_dict()`` is then
        :meth:`standard_optimizer_state` and its ``load_state_dict()`` takes one, so a
        checkpoint is the same whichever form trained. Raises ``ValueError`` for an optimizer
        on other parameters."""
        self._optimizer_keys(optimizer)
        if optimizer in self._standard_optimizers:
            return
        optimizer.register_state_dict_post_hook(
            lambda opt, state: self._map_optimizer_state(opt, state, inverse=True)
        )
        optimizer.register_load_state_dict_pre_hook(
            lambda opt, state: self._map_optimizer_state(opt, state, inverse=False)
        )
        self._standard_optimizers.add(optimizer)


def _state_dict_to_standard(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """``state_dict`` post-hook: this module's entries in the standard layout."""
    assert isinstance(module, TrainFastModel)
    for key, value in list(state_dict.items()):
        if key.startswith(prefix) and key[len(prefix) :] in module.permutations:
            state_dict[key] = module.standard_tensor(key[len(prefix) :], value.detach())


def _state_dict_from_standard(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """``load_state_dict`` pre-hook: a standard-layout state dict into the fast layout."""
    assert isinstance(module, TrainFastModel)
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for key, value in list(state_dict.items()):
        local = key[len(prefix) :]
        if not (key.startswith(prefix) and local in module.permutations):
            continue
        if isinstance(value, Tensor) and value.shape == own[local].shape:  # else: reported
            state_dict[key] = module.fast_tensor(local, value)


class _GlobalAvgPool(torch.autograd.Function):
    """``adaptive_avg_pool2d(x, 1)`` whose gradient has ``x``'s memory format, so that the
    activation backward before it (Conv5's, Stage 4's) runs its contiguous kernel, not a strided one
    several times slower."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.size = x.shape
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.format = torch.channels_last if channels_last else torch.contiguous_format
        return F.adaptive_avg_pool2d(x, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        n, c, h, w = ctx.size
        return (grad / h / w).expand(n, c, h, w).contiguous(memory_format=ctx.format)


def _index(tensor: Tensor, dim: int, idx: Tensor) -> Tensor:
    """``tensor.index_select(dim, idx)`` in the tensor's memory format."""
    return torch.empty_like(tensor).copy_(tensor.index_select(dim, idx.to(tensor.device)))


# -- V1 -------------------------------------------------------------------------------------------
class _TrainV1Unit(nn.Module):
    """A V1 unit with its shuffle after the depthwise conv and its BatchNorm (same children)."""

    gconv1: nn.Module
    bn1: nn.Module
    relu1: nn.Module
    dwconv: nn.Module
    bn2: nn.Module
    gconv2: nn.Module
    bn3: nn.Module
    shortcut: nn.Module
    relu_out: nn.Module

    def __init__(self, unit: ShuffleV1Unit) -> None:
        super().__init__()
        for name, child in unit.named_children():
            self.add_module(name, copy.deepcopy(child))
        self.stride = unit.stride
        mid = unit.dwconv.in_channels
        self.shuffle_groups = 1 if unit.groups == 1 else unit.groups
        if unit.layout == "megvii" and unit.groups > 1:
            self.shuffle_groups = mid // unit.groups  # its inverse permutation

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.dwconv(self.relu1(self.bn1(self.gconv1(x)))))
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.bn3(self.gconv2(out))
        out = out + x if self.stride == 1 else torch.cat((self.shortcut(x), out), 1)
        return self.relu_out(out)


def _v1(model: ShuffleNetV1) -> TrainFastModel:
    stages = {
        name: nn.Sequential(*[_TrainV1Unit(u) for u in getattr(model, name)])
        for name in model.stage_names
    }
    fast = TrainFastModel(model, stages)
    for name in model.stage_names:
        for i, unit in enumerate(getattr(model, name)):
            if unit.layout == "paper" and unit.groups > 1:
                # unshuffled channel q gets the weights of its shuffled position
                mid = unit.dwconv.in_channels
                position = torch.tensor(shuffle_permutation(mid, unit.groups)).argsort()
                for part in ("dwconv", "bn2"):
                    fast._permute(f"{name}.{i}.{part}", 0, position.tolist())
    return fast


# -- V2 -------------------------------------------------------------------------------------------
class _Branches(nn.Module):
    """A V2 unit's branches (``branch1`` at stride 2, ``branch2``), run by the stage."""

    def __init__(self, unit: InvertedResidual) -> None:
        super().__init__()
        for name, child in unit.named_children():
            self.add_module(name, copy.deepcopy(child))


class _TrainV2Stage(nn.Module):
    """A stage's units (children ``0``..``n-1``), run over chunks: producer ``p`` (0, 1: the
    stride-2 unit's branches, ``k + 1``: unit ``k``) splits its output into ``sizes[p]``
    channels, and consumer ``k`` (unit ``k``, or ``n``: the stage output) concatenates the
    chunks numbered ``reads[k - 1]``."""

    def __init__(
        self, units: Iterable[_Branches], sizes: list[list[int]], reads: list[list[int]]
    ) -> None:
        super().__init__()
        for i, unit in enumerate(units):
            self.add_module(str(i), unit)
        self.sizes, self.reads = sizes, reads

    def forward(self, x: Tensor) -> Tensor:
        units: list[Any] = list(self.children())
        chunks = [*self._split(units[0].branch1(x), 0), *self._split(units[0].branch2(x), 1)]
        for k in range(1, len(units)):
            chunks += self._split(units[k].branch2(self._join(chunks, k)), k + 1)
        return self._join(chunks, len(units))

    def _split(self, x: Tensor, producer: int) -> Sequence[Tensor]:
        sizes = self.sizes[producer]
        return torch.split(x, sizes, 1) if len(sizes) > 1 else (x,)

    def _join(self, chunks: list[Tensor], consumer: int) -> Tensor:
        parts = [chunks[i] for i in self.reads[consumer - 1]]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _v2_stage_plan(
    half: int, units: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[int]]]:
    """For a stage of ``units`` units, ``half`` channels per producer: each producer's row
    order and chunk sizes, and for each consumer the chunks it reads and the logical input
    channel of each of its physical channels."""
    reads, output = stage_routes(half, units)
    inputs = [*reads, output]  # consumer k's logical input is inputs[k - 1]
    consumer_of = {label: k + 1 for k, labels in enumerate(inputs) for label in labels}
    orders: list[list[int]] = []
    sizes: list[list[int]] = []
    chunk_reads: list[list[int]] = [[] for _ in inputs]
    chunk_labels: list[list[tuple[int, int]]] = []
    for p in range(units + 1):
        order = [r for _, r in sorted((consumer_of[(p, r)], r) for r in range(half))]
        orders.append(order)
        consumers = [consumer_of[(p, r)] for r in order]
        sizes.append([consumers.count(c) for c in sorted(set(consumers))])
        for c in sorted(set(consumers)):
            chunk_reads[c - 1].append(len(chunk_labels))
            chunk_labels.append([(p, r) for r in order if consumer_of[(p, r)] == c])
    columns = []
    for k, chunk_ids in enumerate(chunk_reads):
        position = {label: j for j, label in enumerate(inputs[k])}
        columns.append([position[lab] for i in chunk_ids for lab in chunk_labels[i]])
    return orders, sizes, chunk_reads, columns


def _v2(model: ShuffleNetV2) -> TrainFastModel:
    plans = {}
    stages = {}
    for name in model.stage_names:
        units = getattr(model, name)
        half = units[0].branch2[5].out_channels
        orders, sizes, reads, columns = _v2_stage_plan(half, len(units))
        stages[name] = _TrainV2Stage([_Branches(u) for u in units], sizes, reads)
        plans[name] = (orders, columns)
    fast = TrainFastModel(model, stages)
    physical: list[int] = []  # the stage input's logical channel per physical one ([]: same)
    for name in model.stage_names:
        orders, columns = plans[name]
        if physical:  # the stride-2 unit reads the previous stage's output order
            for part, dim in (("branch1.0", 0), ("branch1.1", 0), ("branch1.2", 1)):
                fast._permute(f"{name}.0.{part}", dim, physical)
            fast._permute(f"{name}.0.branch2.0", 1, physical)
        for part, producer in (("branch1", 0), ("branch2", 1)):
            last = "2" if part == "branch1" else "5"
            fast._permute(f"{name}.0.{part}.{last}", 0, orders[producer])
            fast._permute(f"{name}.0.{part}.{int(last) + 1}", 0, orders[producer])
        for k in range(1, len(orders) - 1):
            fast._permute(f"{name}.{k}.branch2.0", 1, columns[k - 1])
            fast._permute(f"{name}.{k}.branch2.5", 0, orders[k + 1])
            fast._permute(f"{name}.{k}.branch2.6", 0, orders[k + 1])
        physical = columns[-1]
    fast._permute("conv5.0", 1, physical)
    return fast
