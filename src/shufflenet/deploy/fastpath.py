"""Shuffle-free inference graphs: exact rewrites of V1 and V2 that move no data they need not.

**V2** (torchvision layout). A unit's concat + shuffle + split only reorders channels, and every
convolution that reads the result is a 1x1 or depthwise conv, which accepts its input channels in
any order once its weights are permuted to match. :class:`FastShuffleNetV2` therefore has no
Split, Transpose or Reshape at all:

* every channel of a stage is labelled by its *producer* (a branch of the stride-2 unit or of a
  stride-1 unit) and its index there; running the split/concat/shuffle semantics on these labels
  says which *consumer* reads each channel: the right half of a later stride-1 unit, or the stage
  output (read by the next stride-2 unit or Conv5). Each channel is read once within a stage;
* a producer's last 1x1 conv emits its rows grouped by consumer, as separate chunks. Chunks are
  padded with zero rows to ``chunk_align`` (ONNX Runtime keeps a Concat in its blocked NCHWc
  layout only when every input is 16-aligned). Consumers may share a chunk, each reading it
  whole: a cost model (multiply-adds of padded chunks plus a price per conv node) picks, for
  each producer, which runs of consumers share;
* a unit that reads a shared chunk may re-pack the channels later consumers need from it into
  one dense chunk (an exact copy: a 1x1 conv with unit rows, + ReLU in ReLU models) when that
  is cheaper than the later consumers reading the sparse chunks;
* a consumer concatenates the chunks it needs, in any order, and its first conv gets weight
  columns in that physical order (zero for padding and for channels meant for others). Its own
  output is in natural order again. The next stride-2 unit and Conv5 absorb the stage output's
  order the same way (the depthwise conv per channel, the 1x1 convs per column).

Zero rows stay zero through the activation, zero columns add exact zeros: the rewrite computes
the same function as the original; only BatchNorm folding (in float64) rounds differently.

**V1.** A depthwise conv commutes with a channel permutation (permute its per-channel weights),
so the paper unit's shuffle moves after the depthwise conv, where stride-2 units shuffle 4x fewer
values; it stays an explicit permutation because no order makes both group convs block
diagonal. In an ONNX export it is a Gather with a constant index (no shape subgraph).

Megvii-layout V2 is not rewritten (:func:`fastpath_support` says why); exports fall back to the
plain BatchNorm-folded graph for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import cpu
from ..models.v1 import ShuffleNetV1
from ..models.v2 import InvertedResidual, ShuffleNetV2
from .fuse import fuse_bn
from .static import static_shuffles

__all__ = [
    "EAGER",
    "ONNXRUNTIME",
    "OPENVINO",
    "FastPathOptions",
    "FastShuffleNetV2",
    "fast_model",
    "fastpath_support",
    "onnxruntime_layout",
    "stage_routes",
]


@dataclass(frozen=True)
class FastPathOptions:
    """How :class:`FastShuffleNetV2` lays out its channels (all layouts compute the same).

    Args:
        chunk_align: pad every emitted chunk to a multiple of this many channels.
        branch_align: pad the width inside each branch (1x1 -> depthwise -> 1x1).
        stem_align: pad Conv1's output channels (and so the MaxPool and Stage 2's input).
        node_cost: what one more chunk (one more conv node) costs, in multiply-adds at 224x224
            and batch 1. Each producer groups its consumers into the chunks that minimise the
            multiply-adds its padded chunks cost to make and to read, plus this per chunk.
        split: emit all chunks of a producer from one conv followed by a split, instead of one
            conv per chunk.
    """

    chunk_align: int = 16
    branch_align: int = 16
    stem_align: int = 32
    node_cost: float = 1e5
    split: bool = False

    def __post_init__(self) -> None:
        for name in ("chunk_align", "branch_align", "stem_align"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.node_cost < 0:
            raise ValueError(f"node_cost must be >= 0, got {self.node_cost}")


def onnxruntime_layout(cpu_flags: frozenset[str] | None = None) -> FastPathOptions:
    """The ONNX Runtime layout for a CPU (default: this one): every chunk padded to the channel
    block of ONNX Runtime's NCHWc kernels, so that the whole graph stays blocked. The block is 8
    channels on x86 with AVX2 but no AVX-512 (``benchmarks/cpu_inference.py --sections layouts``
    compares the two), else 16, with a stem of 32."""
    flags = cpu.cpu_flags() if cpu_flags is None else cpu_flags
    if flags is not None and "avx2" in flags and "avx512f" not in flags:
        return FastPathOptions(chunk_align=8, branch_align=8, stem_align=8)
    return FastPathOptions()


# Measured best on ONNX Runtime (all-NCHWc graph, for this CPU), OpenVINO (in-place concat/split:
# fewer, larger convs) and PyTorch eager (oneDNN: no padding, one conv per producer).
ONNXRUNTIME = onnxruntime_layout()
OPENVINO = FastPathOptions(chunk_align=1, node_cost=0, split=True)
EAGER = FastPathOptions(chunk_align=1, branch_align=1, stem_align=1, node_cost=0, split=True)


_ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.Hardswish)  # element-wise, 0 at 0: padding stays zero
# The layers the rewrites know how to move channels through.
_KNOWN_LAYERS = (
    nn.Conv2d,
    nn.BatchNorm2d,
    *_ACTIVATIONS,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
    nn.Linear,
)


def fastpath_support(model: nn.Module) -> str | None:
    """``None`` if :func:`fast_model` rewrites ``model``, else the reason it does not."""
    if not isinstance(model, (ShuffleNetV1, ShuffleNetV2)):
        return f"{type(model).__name__} is not a ShuffleNet V1 or V2 model"
    if isinstance(model, ShuffleNetV2) and model.layout != "torchvision":
        return "megvii-layout V2 units have no shuffle to absorb"
    other = {
        type(m).__name__
        for m in model.modules()
        if not any(m.children()) and not isinstance(m, _KNOWN_LAYERS)
    }
    if other:
        return f"layers the fast path does not rewrite: {', '.join(sorted(other))}"
    acts = {type(m).__name__ for m in model.modules() if isinstance(m, _ACTIVATIONS)}
    if isinstance(model, ShuffleNetV2) and len(acts) > 1:
        return f"activations of more than one kind: {', '.join(sorted(acts))}"
    if any(isinstance(m, InvertedResidual) and not m.shuffle_free_form for m in model.modules()):
        return "units with a squeeze-excitation layer"
    return None


def fast_model(model: nn.Module, options: FastPathOptions = ONNXRUNTIME) -> nn.Module:
    """An eval-mode, BatchNorm-folded, shuffle-free copy of ``model`` (V1 or V2; ``options``
    applies to V2 only). Raises ``ValueError`` for models :func:`fastpath_support` rejects."""
    reason = fastpath_support(model)
    if reason is not None:
        raise ValueError(f"no fast path: {reason}")
    if isinstance(model, ShuffleNetV2):
        return FastShuffleNetV2(model, options)
    return static_shuffles(fuse_bn(model))  # V1: the shuffle moved after the depthwise conv


# -- V2: the channel bookkeeping ----------------------------------------------------------------
Label = tuple[int, int]  # (producer, channel); producers 0/1: stride-2 branch1/2, k + 1: unit k
Chunk = tuple[int, list[Label | None]]  # a slot and the label of each channel (None: padding)


def stage_routes(half: int, units: int) -> tuple[list[list[Label]], list[Label]]:
    """A V2 stage of ``units`` units, ``half`` channels per producer (:data:`Label`): the labels
    each stride-1 unit's right half reads (unit ``k``: ``reads[k - 1]``) and the stage output's,
    in logical order, each read once; both shuffle-free forms (here, ``train.fast``) use it."""
    y = [label for i in range(half) for label in ((0, i), (1, i))]
    reads = []
    for k in range(1, units):
        left, right = y[:half], y[half:]
        reads.append(right)
        y = [label for i in range(half) for label in (left[i], (k + 1, i))]
    return reads, y


def _logical_indices(index: dict[Label, int], labels: Sequence[Label | None]) -> list[int]:
    """Each physical channel's position in a consumer's logical input (-1: not read)."""
    return [-1 if lab is None else index.get(lab, -1) for lab in labels]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _conv(weight: Tensor, bias: Tensor, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    out_channels, in_per_group, k, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_channels, k, stride, k // 2, groups=groups)
    conv.weight = nn.Parameter(weight.detach().clone())
    conv.bias = nn.Parameter(bias.detach().clone())
    return conv


def _conv_params(conv: object) -> tuple[Tensor, Tensor]:
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    return conv.weight.detach().clone(), conv.bias.detach().clone()


def _pad_rows(weight: Tensor, bias: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    extra = rows - weight.shape[0]
    return F.pad(weight, (0, 0, 0, 0, 0, 0, 0, extra)), F.pad(bias, (0, extra))


def _pad_columns(weight: Tensor, columns: int) -> Tensor:
    return F.pad(weight, (0, 0, 0, 0, 0, columns - weight.shape[1]))


def _gather_columns(weight: Tensor, physical: Sequence[int]) -> Tensor:
    """Input columns of a 1x1 conv in physical order; index -1 gives a zero column."""
    index = torch.tensor([max(i, 0) for i in physical])
    keep = torch.tensor([i >= 0 for i in physical], dtype=weight.dtype).view(1, -1, 1, 1)
    return weight[:, index] * keep


def _gather_channels(
    weight: Tensor, bias: Tensor, physical: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """A depthwise conv's per-channel weights in physical order (-1: zero channel)."""
    index = torch.tensor([max(i, 0) for i in physical])
    keep = torch.tensor([i >= 0 for i in physical], dtype=weight.dtype)
    return weight[index] * keep.view(-1, 1, 1, 1), bias[index] * keep


class _Step(nn.Module):
    """Concatenate some slots, run ``body``, then ``heads`` (conv + activation each) into slots.

    Without heads the body's output fills the single output slot. With ``split`` a single head
    makes all chunks and a channel split cuts it.
    """

    def __init__(
        self,
        inputs: Sequence[int],
        body: nn.Module,
        outputs: Sequence[int],
        heads: Sequence[nn.Module] = (),
        split: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.body = body
        self.heads = nn.ModuleList(heads)
        self.split = tuple(split)
        self.release: tuple[int, ...] = ()  # slots read for the last time here

    def forward(self, slots: list[Tensor | None]) -> None:
        parts = [slots[i] for i in self.inputs]
        for i in self.release:
            slots[i] = None
        x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # type: ignore[arg-type]
        x = self.body(x)
        if not self.heads:
            chunks = [x]
        elif self.split:
            chunks = list(torch.split(self.heads[0](x), list(self.split), 1))
        else:
            chunks = [head(x) for head in self.heads]
        for i, chunk in zip(self.outputs, chunks, strict=True):
            slots[i] = chunk


def _conv_act(weight: Tensor, bias: Tensor, act: type[nn.Module], stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(weight, bias, stride), act(inplace=True))


@dataclass
class _StagePlan:
    """Who reads each channel of a stage, and what reading costs (multiply-adds per pixel)."""

    consumer_of: dict[Label, int]  # stride-1 unit k reads (k >= 1), ``end``: the stage output
    end: int
    width: int  # rows of a stride-1 unit's first conv
    end_cost: float
    pixels: int

    def read_cost(self, consumer: int) -> float:
        return self.end_cost if consumer == self.end else self.width


class _Planner:
    """Builds the steps of :class:`FastShuffleNetV2` stage by stage; ``act``: the activation."""

    def __init__(self, options: FastPathOptions, act: type[nn.Module]) -> None:
        self.options = options
        self.act = act
        self.steps: list[_Step] = []
        self.slots = 1  # slot 0 holds the network input

    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def add(
        self,
        inputs: Sequence[int],
        body: nn.Module,
        heads: Sequence[nn.Module] = (),
        split: Sequence[int] = (),
        count: int = 1,
    ) -> list[int]:
        """Append a step writing ``count`` new slots; returns them."""
        outputs = [self.new_slot() for _ in range(count)]
        self.steps.append(_Step(inputs, body, outputs, heads, split))
        return outputs

    def join(self, chunks: Sequence[Chunk]) -> Chunk:
        """One slot holding the concatenation of ``chunks`` (slot, physical labels)."""
        if len(chunks) == 1:
            return chunks[0]
        (slot,) = self.add([s for s, _ in chunks], nn.Identity())
        return slot, [label for _, labels in chunks for label in labels]

    def emit(
        self,
        inputs: Sequence[int],
        body: nn.Module,
        weight: Tensor,
        bias: Tensor,
        producer: int,
        stage: _StagePlan,
        routes: dict[int, list[Chunk]],
    ) -> None:
        """A producer: ``body`` then its last 1x1 conv (logical rows), emitted as chunks."""
        opts = self.options
        by_consumer: dict[int, list[int]] = defaultdict(list)
        for row in range(weight.shape[0]):
            by_consumer[stage.consumer_of[(producer, row)]].append(row)
        consumers = sorted(by_consumer)
        chunks = []
        for group in self._grouping(consumers, by_consumer, weight.shape[1], stage):
            rows = [row for consumer in group for row in by_consumer[consumer]]
            size = _round_up(len(rows), opts.chunk_align)
            w, b = _pad_rows(weight[rows], bias[rows], size)
            labels: list[Label | None] = [(producer, r) for r in rows] + [None] * (size - len(rows))
            chunks.append((w, b, labels))
        if opts.split and len(chunks) > 1:
            weight, bias = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
            sizes = [len(labels) for _, _, labels in chunks]
            slots = self.add(inputs, body, [_conv_act(weight, bias, self.act)], sizes, len(chunks))
        else:
            heads = [_conv_act(w, b, self.act) for w, b, _ in chunks]
            slots = self.add(inputs, body, heads, count=len(chunks))
        for slot, (_, _, labels) in zip(slots, chunks, strict=True):
            for consumer in sorted({stage.consumer_of[lab] for lab in labels if lab is not None}):
                routes[consumer].append((slot, labels))

    def _grouping(
        self, consumers: list[int], rows: dict[int, list[int]], columns: int, stage: _StagePlan
    ) -> list[list[int]]:
        """The cheapest split of ``consumers`` (in order) into runs that share a chunk.

        Cost per output pixel: a padded chunk costs ``columns`` multiply-adds per channel to make
        and each consumer's read cost per channel to read; each chunk adds ``node_cost``.
        """
        align, node = self.options.chunk_align, self.options.node_cost / stage.pixels
        best: tuple[float, list[list[int]]] = (float("inf"), [])
        for cuts in range(2 ** (len(consumers) - 1)):  # bit i: a chunk ends after consumer i
            groups, start = [], 0
            for i in range(len(consumers)):
                if i == len(consumers) - 1 or cuts >> i & 1:
                    groups.append(consumers[start : i + 1])
                    start = i + 1
            cost = sum(
                _round_up(sum(len(rows[c]) for c in g), align)
                * (columns + sum(stage.read_cost(c) for c in g))
                + node
                for g in groups
            )
            if cost < best[0]:
                best = (cost, groups)
        return best[1]

    def stage(
        self, units: nn.Sequential, slot: int, physical: list[int], pixels: int, end_cost: float
    ) -> tuple[int, list[int]]:
        """Plan one stage whose input is ``slot`` with logical channel ``physical[j]`` (-1: pad).

        ``pixels`` is the stage's output size at 224x224 and ``end_cost`` what reading one
        channel of the stage output costs per pixel. Returns the slot of the stage output and
        its physical-to-logical channel map.
        """
        first = units[0]
        assert isinstance(first, InvertedResidual) and first.branch1 is not None
        width = self.branch_width(units)
        reads, output = stage_routes(_conv_params(first.branch2[5])[0].shape[0], len(units))
        end = len(units)
        consumer_of = {lab: k + 1 for k, right in enumerate(reads) for lab in right}
        consumer_of.update({lab: end for lab in output})
        plan = _StagePlan(consumer_of, end, width, end_cost, pixels)
        routes: dict[int, list[Chunk]] = defaultdict(list)

        # stride-2 unit: branch1 = dw (per physical channel) -> 1x1; branch2 = 1x1 -> dw -> 1x1
        dw_w, dw_b = _gather_channels(*_conv_params(first.branch1[0]), physical)
        w, b = _conv_params(first.branch1[2])
        dw = _conv(dw_w, dw_b, 2, groups=len(physical))
        self.emit([slot], dw, _gather_columns(w, physical), b, 0, plan, routes)
        w, b = _conv_params(first.branch2[0])
        body = self._branch_body(_gather_columns(w, physical), b, first.branch2[3], width, 2)
        w, b = _conv_params(first.branch2[5])
        self.emit([slot], body, _pad_columns(w, width), b, 1, plan, routes)

        for k in range(1, len(units)):
            unit = units[k]
            assert isinstance(unit, InvertedResidual)
            index = {lab: i for i, lab in enumerate(reads[k - 1])}
            joined, labels = self.join(routes[k])
            self.repack(k, joined, labels, plan, routes)
            physical_k = _logical_indices(index, labels)
            w, b = _conv_params(unit.branch2[0])
            body = self._branch_body(_gather_columns(w, physical_k), b, unit.branch2[3], width, 1)
            w, b = _conv_params(unit.branch2[5])
            self.emit([joined], body, _pad_columns(w, width), b, k + 1, plan, routes)

        index = {lab: i for i, lab in enumerate(output)}
        slot, labels = self.join(routes[end])
        return slot, _logical_indices(index, labels)

    def repack(
        self,
        k: int,
        slot: int,
        labels: list[Label | None],
        plan: _StagePlan,
        routes: dict[int, list[Chunk]],
    ) -> None:
        """Let unit ``k`` copy the channels that later consumers need from the chunks it
        shares with them into one dense chunk, when that costs less than their reading the
        shared chunks. The copy is a 1x1 conv with unit rows (exact), followed by a ReLU in
        ReLU models (exact too: every channel is a ReLU output, >= 0)."""
        later = {c: chunks for c, chunks in routes.items() if c > k}
        shared = {s for s, _ in routes[k]} & {s for cs in later.values() for s, _ in cs}
        keep = [(j, lab) for j, lab in enumerate(labels) if lab and plan.consumer_of[lab] > k]
        if not keep:
            return
        readers = {plan.consumer_of[lab] for _, lab in keep}
        size = _round_up(len(keep), self.options.chunk_align)
        before = sum(
            len(labs) * plan.read_cost(c)
            for c, cs in later.items()
            for s, labs in cs
            if s in shared
        )
        after = size * (len(labels) + sum(plan.read_cost(c) for c in readers))
        if after + self.options.node_cost / plan.pixels >= before:
            return
        weight = torch.zeros(size, len(labels), 1, 1)
        for row, (j, _) in enumerate(keep):
            weight[row, j] = 1.0
        head = _conv_act(weight, torch.zeros(size), nn.ReLU if self.act is nn.ReLU else nn.Identity)
        (packed,) = self.add([slot], nn.Identity(), [head])
        chunk: Chunk = (packed, [lab for _, lab in keep] + [None] * (size - len(keep)))
        for c, chunks in later.items():
            routes[c] = [ch for ch in chunks if ch[0] not in shared] + [chunk] * (c in readers)

    def branch_width(self, units: nn.Sequential) -> int:
        """The padded width inside the branches of a stage."""
        half = _conv_params(units[0].branch2[5])[0].shape[0]  # type: ignore[index]
        return _round_up(half, self.options.branch_align)

    def _branch_body(
        self, w1: Tensor, b1: Tensor, depthwise: nn.Module, width: int, stride: int
    ) -> nn.Sequential:
        """1x1 conv + activation -> depthwise conv, padded to ``width`` channels."""
        dw_w, dw_b = _pad_rows(*_conv_params(depthwise), width)
        return nn.Sequential(
            *_conv_act(*_pad_rows(w1, b1, width), self.act), _conv(dw_w, dw_b, stride, groups=width)
        )


class FastShuffleNetV2(nn.Module):
    """The shuffle-free form of a torchvision-layout :class:`ShuffleNetV2` (see module doc).

    The network is a list of steps over numbered slots: slot 0 is the input, each step
    concatenates some slots, runs convolutions and writes its chunks into new slots.
    """

    def __init__(self, model: ShuffleNetV2, options: FastPathOptions = ONNXRUNTIME) -> None:
        super().__init__()
        if model.layout != "torchvision":
            raise ValueError("FastShuffleNetV2 needs a torchvision-layout ShuffleNetV2")
        fused = cast(ShuffleNetV2, fuse_bn(model))
        planner = _Planner(options, act=type(fused.conv1[2]))  # type: ignore[index]
        w, b = _conv_params(fused.conv1[0])  # type: ignore[index]
        stem = _round_up(w.shape[0], options.stem_align)
        stem_conv = _conv_act(*_pad_rows(w, b, stem), planner.act, 2)
        (slot,) = planner.add([0], nn.Sequential(*stem_conv, nn.MaxPool2d(3, 2, 1)))
        physical = list(range(w.shape[0])) + [-1] * (stem - w.shape[0])
        stages = [fused.stage2, fused.stage3, fused.stage4]
        w5, b5 = _conv_params(fused.conv5[0])  # type: ignore[index]
        for i, stage in enumerate(stages):
            if i + 1 < len(stages):  # the next stride-2 unit: dw (s2) + 1x1 (s2) and 1x1
                half = _conv_params(stages[i + 1][0].branch1[2])[0].shape[0]  # type: ignore[index]
                end_cost = (9 + half) / 4 + planner.branch_width(stages[i + 1])
            else:
                end_cost = w5.shape[0]
            pixels = (224 // 2 ** (i + 3)) ** 2
            slot, physical = planner.stage(stage, slot, physical, pixels, end_cost)
        conv5 = _conv_act(_gather_columns(w5, physical), b5, planner.act)
        (self.features_slot,) = planner.add([slot], conv5)
        self.steps = nn.ModuleList(planner.steps)
        self.slots = planner.slots
        last_read = {i: n for n, step in enumerate(planner.steps) for i in step.inputs}
        for n, step in enumerate(planner.steps):
            step.release = tuple(i for i in step.inputs if last_read[i] == n)
        self.global_pool = fused.global_pool
        self.dropout = fused.dropout
        self.fc = fused.fc
        self.options = options

    def forward(self, x: Tensor) -> Tensor:
        slots: list[Tensor | None] = [None] * self.slots
        slots[0] = x
        for step in self.steps:
            step(slots)
        features = slots[self.features_slot]
        assert features is not None
        return self.fc(self.dropout(torch.flatten(self.global_pool(features), 1)))
