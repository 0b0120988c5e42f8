"""Quantization-aware training (``TrainConfig.qat``): the network trains with its int8 rounding
simulated, then exports to int8 with the scales it learned.

**The graph.** The shuffle-free training form (:func:`~shufflenet.train.train_model`) where
the model has one, else the model, captured by ``torch.export`` (batch axis free) and prepared
by PyTorch 2 export QAT (torchao's ``prepare_qat_pt2e``) with ExecuTorch's XNNPACK quantizer:
int8 weights per output channel, int8 activations per tensor, each BatchNorm simulated as
folded into its convolution. The form has no channel shuffle, so no fake-quantizer reads a
shuffle's non-contiguous output (the trap of QAT on shuffled graphs), and each concat shares
one grid across its inputs.

**The schedule**, as torchvision's QAT recipe, in optimizer steps: BatchNorm statistics update
for the first :data:`BN_FREEZE` of the run, then freeze (BatchNorm then uses its running
statistics: the fold a deployed file has); the fake-quantizers' ranges (moving averages of
min/max) update for the first :data:`OBSERVER_FREEZE`, then freeze.

**In the training loop** :class:`QATNet` takes the fast form's place and speaks its protocol:
its ``state_dict()`` is the standard network's, and the optimizer given to
:meth:`~QATNet.register_optimizer` saves its state in the standard layout plus a ``qat`` entry
(the fake-quantizers' ranges and switches, the step count), which its ``load_state_dict``
takes back: a checkpoint resumes exactly, and ``model.safetensors`` holds the trained float
network. The run's validation is that float network's.

**Export** (:func:`qat_int8`): the checkpoint's graph converted (``convert_pt2e``) keeps the
learned scales; ExecuTorch and LiteRT lower it as it is, and ONNX takes it as QDQ through
PyTorch's ``torch.export``-based ONNX exporter (:func:`export_qat`). MNN's converter reads no
such graph: its int8 file is MNN's own calibration of the QAT weights.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..deploy.fastpath import ONNXRUNTIME
from ..export import FORMATS, ExportResult, compare_int8, export_model
from ..export.calibration import model_calibration_data
from ..export.edge import compare_edge_int8
from ..export.executorch import EXECUTORCH_EXTRA, to_pte
from ..export.formats import DEFAULT_INT8_MIN_AGREEMENT, check_suffix
from ..export.int8 import pt2e_onnx
from ..export.int8_report import Int8Result
from ..export.litert import to_tflite_pt2e
from ..export.metadata import model_metadata, sample_inputs
from ..export.onnx import DEFAULT_OPSET
from ..export.spec import ExportOptions
from ..io import write_bytes
from ..models.base import ShuffleNetBase
from ..runtimes import require
from ..weights import load
from .fast import TrainFastModel, train_model, train_model_support
from .files import RunFiles, read_checkpoint

__all__ = ["BN_FREEZE", "OBSERVER_FREEZE", "QATNet", "export_qat", "qat_graph", "qat_int8"]

BN_FREEZE = 0.5  # share of the steps after which BatchNorm statistics freeze
OBSERVER_FREEZE = 0.75  # share of the steps after which the quantization ranges freeze
MAX_BATCH = 1 << 14  # the captured graph's largest batch
STATE_KEY = "qat"  # the optimizer state's entry for the graph's own state


def _quantizer() -> Any:
    """ExecuTorch's XNNPACK quantizer for QAT, its fake-quantizers unfused: the fused ones
    compute their scales without the observers' ``eps`` floor (2**-12), which the converted
    graph applies, so that a channel of small weights trained on a finer grid than it is
    deployed on."""
    from torchao.quantization.pt2e import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    module = require(
        EXECUTORCH_EXTRA,
        "quantization-aware training",
        "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
    )
    config = module.get_symmetric_quantization_config(is_per_channel=True, is_qat=True)

    def unfused(spec: Any, observer: Any) -> Any:
        ctr = FakeQuantize.with_args(observer=observer, eps=2**-12)
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)

    activations = MovingAverageMinMaxObserver
    config = dataclasses.replace(
        config,
        input_activation=unfused(config.input_activation, activations),
        output_activation=unfused(config.output_activation, activations),
        weight=unfused(config.weight, MovingAveragePerChannelMinMaxObserver),
    )
    return module.XNNPACKQuantizer().set_global(config)


def qat_graph(form: nn.Module, example: Tensor) -> torch.fx.GraphModule:
    """``form`` captured with a free batch axis and prepared for QAT (see the module doc)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = example.expand(2, *example.shape[1:]).contiguous()
    captured = torch.export.export(form, (example,), dynamic_shapes=({0: batch},)).module()
    return prepare_qat_pt2e(captured, _quantizer())  # type: ignore[arg-type]


class QATNet(nn.Module):
    """The QAT graph of ``model`` (a standard network, its weights the start) for inputs of
    ``image_size``, over a run of ``steps`` optimizer steps. ``train()``/``eval()`` switch its
    BatchNorm and dropout (BatchNorm stays in eval once frozen); the fake-quantizers simulate
    int8 in both. Each forward pass in training mode is a step of the schedule."""

    def __init__(self, model: nn.Module, image_size: int, steps: int) -> None:
        super().__init__()
        self._fast: list[TrainFastModel] = []  # a list: not a submodule
        form: nn.Module = model
        if train_model_support(model) is None:
            form = train_model(model)
            self._fast.append(form)
        self._keys = tuple(form.state_dict())
        device = next(model.parameters()).device
        example = torch.zeros(1, getattr(model, "in_chans", 3), image_size, image_size)
        self.graph = qat_graph(form.train(), example.to(device))
        self.steps, self.total = 0, max(1, steps)
        self.train()

    # -- the schedule ---------------------------------------------------------------------
    @property
    def bn_frozen(self) -> bool:
        return self.steps >= math.ceil(BN_FREEZE * self.total)

    def train(self, mode: bool = True) -> QATNet:
        from torchao.quantization.pt2e import (
            disable_observer,
            enable_observer,
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )

        self.training = mode
        if mode and not self.bn_frozen:
            move_exported_model_to_train(self.graph)
        else:
            move_exported_model_to_eval(self.graph)
        observe = self.steps < math.ceil(OBSERVER_FREEZE * self.total)
        self.graph.apply(enable_observer if observe else disable_observer)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            frozen = self.bn_frozen, self.steps >= math.ceil(OBSERVER_FREEZE * self.total)
            self.steps += 1
            if frozen != (self.bn_frozen, self.steps >= math.ceil(OBSERVER_FREEZE * self.total)):
                self.train()  # a freeze point: from this step on
        return self.graph(x)  # type: ignore[no-any-return]

    # -- the fast form's protocol: the standard layout outside ----------------------------
    def _standard(self, key: str, value: Tensor) -> Tensor:
        return self._fast[0].standard_tensor(key, value) if self._fast else value

    def _own(self, key: str, value: Tensor) -> Tensor:
        return self._fast[0].fast_tensor(key, value) if self._fast else value

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The network's weights and BatchNorm statistics, in the standard layout."""
        own = self.graph.state_dict()
        return {k: self._standard(k, own[k].detach()).clone() for k in self._keys}

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load standard-layout weights (:meth:`state_dict`'s) into the graph."""
        missing = [k for k in self._keys if k not in state_dict]
        extra = [k for k in state_dict if k not in self._keys]
        if strict and (missing or extra):
            raise ValueError(f"QAT weights: missing {missing[:3]}, unexpected {extra[:3]}")
        own = {k: self._own(k, v) for k, v in state_dict.items() if k in self._keys}
        return self.graph.load_state_dict(own, strict=False)

    def graph_state(self) -> dict[str, Any]:
        """What the graph holds besides the weights (ranges, switches) and the step count."""
        own = self.graph.state_dict()
        state = {k: v.detach().clone() for k, v in own.items() if k not in self._keys}
        return {"buffers": state, "steps": self.steps, "total": self.total}

    def load_graph_state(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`graph_state`'s buffers as they are (``load_state_dict`` would read
        a dict without version metadata as an old observer's and reset its ``eps``)."""
        own = self.graph.state_dict()
        for key, value in state["buffers"].items():
            if key not in own or key in self._keys:
                raise ValueError(f"QAT state: {key} is not a buffer of this graph")
            module, _, name = key.rpartition(".")
            setattr(self.graph.get_submodule(module), name, value.to(own[key].device).clone())
        self.steps, self.total = int(state["steps"]), int(state["total"])
        self.train(self.training)

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Have ``optimizer`` (on this module's parameters) save its state in the standard
        layout, with :meth:`graph_state` under ``qat``, and load such a state back."""
        names = {id(p): n.removeprefix("graph.") for n, p in self.named_parameters()}
        keys = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]

        def save(opt: Any, state: dict[str, Any]) -> dict[str, Any]:
            mapped = {
                i: {k: self._standard(keys[i], v) if _per_param(v) else v for k, v in s.items()}
                for i, s in state["state"].items()
            }
            return {**state, "state": mapped, STATE_KEY: self.graph_state()}

        def load(opt: Any, state: dict[str, Any]) -> dict[str, Any]:
            self.load_graph_state(state.pop(STATE_KEY))
            state["state"] = {
                i: {k: self._own(keys[i], v) if _per_param(v) else v for k, v in s.items()}
                for i, s in state["state"].items()
            }
            return state

        optimizer.register_state_dict_post_hook(save)
        optimizer.register_load_state_dict_pre_hook(load)


def _per_param(value: Any) -> bool:
    """Whether an optimizer state entry is a tensor laid out like its parameter."""
    return isinstance(value, Tensor) and value.dim() > 0


def qat_int8(
    run_dir: str | os.PathLike[str], *, fold_quantize: bool = True
) -> tuple[ShuffleNetBase, torch.fx.GraphModule]:
    """The standard network of a QAT run (its ``model.safetensors``) and its int8 graph: the
    run's last checkpoint, with the ranges it learned, converted by ``convert_pt2e`` (quantize
    and dequantize pairs around float operators, BatchNorm folded; weights stored in int8 with
    ``fold_quantize``, else in float with their quantize op, as LiteRT's converter reads
    them), in eval mode."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    files = RunFiles(Path(run_dir))
    checkpoint = read_checkpoint(files.checkpoint)
    state = checkpoint["optimizer"].get(STATE_KEY)
    if not checkpoint["config"].get("qat") or not isinstance(state, dict):
        raise ValueError(f"{run_dir} holds no quantization-aware training run (train with --qat)")
    model = load(files.model)
    size = model.weights_metadata["preprocessing"]["input_size"]
    net = QATNet(model.train(), int(size[0]), int(state["total"]))
    net.load_state_dict(checkpoint["model"])
    net.load_graph_state(state)
    graph = move_exported_model_to_eval(net.eval().graph)
    converted = convert_pt2e(graph, fold_quantize=fold_quantize)
    return model.eval(), move_exported_model_to_eval(converted)


# -- export ------------------------------------------------------------------------------------
def export_qat(
    run_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    calib: str,
    batch: int | None = None,
    int8_min_agreement: float = DEFAULT_INT8_MIN_AGREEMENT,
) -> ExportResult:
    """A QAT run's network exported to ``path`` in ``format`` (the fp32 file, verified, as
    :func:`~shufflenet.export.export_model` writes it) and its int8 ``FILE.int8.EXT``: the
    graph with the learned scales (:func:`qat_int8`) for onnx (QDQ), litert and executorch;
    for mnn, whose converter reads no quantized graph, MNN's calibration of the QAT weights
    on ``calib``. The int8 file is compared with the fp32 one on ``calib``'s evaluation
    images, and must agree on ``int8_min_agreement`` of them for ``result.passed``."""
    spec = FORMATS.get(format)
    if spec is None or spec.quantize is None or spec.runtime is None:
        int8_formats = ", ".join(name for name, f in FORMATS.items() if f.int8)
        raise ValueError(f"QAT int8 needs format {int8_formats}, got {format!r}")
    model = load(RunFiles(Path(run_dir)).model)
    check_suffix(path, format)
    data = model_calibration_data(model, calib)
    result = export_model(model, path, format, batch=batch)
    if not result.verified:
        return result
    target = spec.int8_files(Path(path))[0]
    if format == "mnn":
        options = ExportOptions(DEFAULT_OPSET, batch, None, ONNXRUNTIME)
        result.int8 = spec.quantize(model, Path(path), calib, options, data)
    else:
        result.int8 = _write_learned(run_dir, Path(path), target, format, calib, batch, data)
    result.int8.min_agreement = float(int8_min_agreement)
    return result


def _write_learned(
    run_dir: str | os.PathLike[str],
    path: Path,
    target: Path,
    format: str,
    calib: str,
    batch: int | None,
    data: tuple[Tensor, Tensor, Tensor],
) -> Int8Result:
    """The int8 file of a QAT run's learned graph in ``format`` (onnx, litert, executorch),
    compared with the fp32 file at ``path``."""
    model, graph = qat_int8(run_dir, fold_quantize=format != "litert")
    runtime = FORMATS[format].runtime
    assert runtime is not None
    metadata = model_metadata(model)
    example = sample_inputs(batch or 1, model.in_chans, metadata["preprocessing"])
    metadata["graph"] = "QAT training form (shufflenet.train.qat), BatchNorm folded"
    metadata["quantization"] = {
        "method": "quantization-aware training (PT2E, XNNPACKQuantizer), learned ranges",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 per-tensor, ranges learned in training",
    }
    if runtime.fixed_batch:
        metadata.update(batch=len(example), input_layout=runtime.input_layout)
    writers: dict[str, Callable[[Any, Tensor, dict[str, Any]], bytes]] = {
        "onnx": pt2e_onnx,
        "litert": to_tflite_pt2e,
        "executorch": to_pte,
    }
    write_bytes(target, writers[format](graph, example, metadata))
    _, images, labels = data
    if format == "onnx":
        report = compare_int8(path, target, images, labels)
    else:
        fp32, int8 = (runtime.open(p, 1, first_in_child=False) for p in (path, target))
        report = compare_edge_int8(fp32, int8, images, labels)
    return Int8Result(target, calib, metadata["quantization"]["weights"], report, [])
