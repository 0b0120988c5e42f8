"""The shuffle-free rewrites compute the same function as the models they come from."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import varied_model

import shufflenet.deploy.inference as inference
from shufflenet.deploy import optimize
from shufflenet.deploy.fastpath import (
    EAGER,
    ONNXRUNTIME,
    OPENVINO,
    FastPathOptions,
    FastShuffleNetV2,
    fast_model,
    fastpath_support,
    onnxruntime_layout,
    stage_routes,
)
from shufflenet.export import onnx_bytes, read_onnx_metadata

TOL = 1e-4
LAYOUTS = {"onnxruntime": ONNXRUNTIME, "openvino": OPENVINO, "eager": EAGER}


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("half,units", [(24, 4), (116, 8), (7, 5)])
def test_stage_routes_read_every_channel_once(half: int, units: int) -> None:
    reads, output = stage_routes(half, units)
    labels = [lab for right in reads for lab in right] + output
    produced = [(p, i) for p in range(units + 1) for i in range(half)]
    assert sorted(labels) == produced  # each producer channel has exactly one consumer
    assert all(len(right) == half for right in reads) and len(output) == 2 * half


@pytest.mark.parametrize(
    "width,layouts", [("0_5", list(LAYOUTS)), ("1_5", ["onnxruntime"]), ("2_0", ["openvino"])]
)
def test_v2_rewrite_is_exact(width: str, layouts: list[str]) -> None:
    model = varied_model(f"shufflenet_v2_x{width}", scaled_logits=False)
    x = torch.randn(2, 3, 64, 80)
    for layout in layouts:
        assert _max_diff(fast_model(model, LAYOUTS[layout]), model, x) < TOL


def test_v2_rewrite_options_and_heads() -> None:
    model = varied_model("shufflenet_v2_x0_5", num_classes=0, in_chans=1, scaled_logits=False)
    x = torch.randn(3, 1, 48, 48)
    for options in (
        FastPathOptions(chunk_align=8, branch_align=4, stem_align=8, node_cost=1e9),
        FastPathOptions(chunk_align=32, node_cost=0, split=True),
    ):
        assert _max_diff(fast_model(model, options), model, x) < TOL
    with pytest.raises(ValueError, match="node_cost"):
        FastPathOptions(node_cost=-1)


def test_onnxruntime_layout_follows_the_nchwc_block() -> None:
    avx2 = onnxruntime_layout(frozenset({"avx2", "fma"}))
    assert (avx2.chunk_align, avx2.branch_align, avx2.stem_align) == (8, 8, 8)
    avx512 = onnxruntime_layout(frozenset({"avx2", "avx512f"}))
    assert (avx512.chunk_align, avx512.branch_align, avx512.stem_align) == (16, 16, 32)
    assert onnxruntime_layout(frozenset()) == avx512  # ARM, or x86 without AVX2
    assert onnxruntime_layout() == ONNXRUNTIME  # this machine's


def test_v2_padding_and_chunks_follow_the_options() -> None:
    model = varied_model("shufflenet_v2_x1_0", scaled_logits=False)
    fast = fast_model(model, onnxruntime_layout(frozenset({"avx512f"})))
    assert isinstance(fast, FastShuffleNetV2)
    assert _max_diff(fast, model, torch.randn(1, 3, 64, 64)) < TOL
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    heads = [
        c for step in fast.steps for h in step.heads for c in h if isinstance(c, torch.nn.Conv2d)
    ]
    assert all(c.out_channels % 16 == 0 for c in heads)
    assert all(c.out_channels % 16 == 0 for c in convs[:-1])  # every conv but Conv5's 1024 too
    # 19 producers (two branches per stride-2 unit, one per stride-1 unit)
    assert sum(len(step.heads) for step in fast.steps) > 19
    repacks = [s for s in fast.steps if isinstance(s.body, torch.nn.Identity) and s.heads]
    assert repacks  # dense re-packed chunks replace shared tails somewhere
    eager = fast_model(model, EAGER)
    assert sum(len(step.heads) for step in eager.steps) == 19  # one conv each, then a split


@pytest.mark.parametrize(
    "name,layout",
    [
        ("shufflenet_v1_g1_x0_25", "paper"),
        ("shufflenet_v1_g3_x0_5", "paper"),
        ("shufflenet_v1_g8_x0_25", "paper"),
        ("shufflenet_v1_g3_x0_5", "megvii"),
    ],
)
def test_v1_rewrite_is_exact(name: str, layout: str) -> None:
    model = varied_model(name, layout=layout, scaled_logits=False)
    x = torch.randn(2, 3, 64, 64)
    assert _max_diff(fast_model(model), model, x) < TOL
    assert _max_diff(fast_model(model).to(memory_format=torch.channels_last), model, x) < TOL


def test_megvii_v2_has_no_fast_path() -> None:
    model = varied_model("shufflenet_v2_x0_5", layout="megvii", scaled_logits=False)
    assert "megvii" in (fastpath_support(model) or "")
    with pytest.raises(ValueError, match="no fast path"):
        fast_model(model)
    metadata = read_onnx_metadata(onnx_bytes(model, input_size=(64, 64)))
    assert metadata["graph"].startswith("plain")


def _run_onnx(data: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5"])
def test_onnx_export_is_shuffle_free_exact_and_batch_dynamic(name: str) -> None:
    model = varied_model(name, scaled_logits=False)
    data = onnx_bytes(model, input_size=(96, 96))
    ops = collections.Counter(n.op_type for n in onnx.load_from_string(data).graph.node)
    assert "Shape" not in ops
    if name.startswith("shufflenet_v2"):
        assert not {"Split", "Transpose", "Reshape", "Slice"} & set(ops)
    else:
        assert ops["Gather"] == 16  # one shuffle per unit, after the depthwise conv
    assert read_onnx_metadata(data)["graph"].startswith("shuffle-free")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 96, 96)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(_run_onnx(data, x) - expected).max() < TOL
    plain = onnx.load_from_string(onnx_bytes(model, input_size=(96, 96), fastpath=None))
    assert "shuffle-free" not in read_onnx_metadata(plain.SerializeToString())["graph"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,backend",
    [
        ("shufflenet_v2_x0_5", "jit"),
        ("shufflenet_v1_g3_x0_25", "eager"),
        ("shufflenet_v2_x0_5", "inductor"),  # compiles C++: the machine has a compiler
    ],
)
def test_optimize_is_exact(name: str, backend: str) -> None:
    model = varied_model(name, scaled_logits=False)
    x = torch.randn(2, 3, 64, 64)
    fast = optimize(model, example=x, backend=backend)
    assert _max_diff(fast, model, x) < TOL
    assert _max_diff(fast, model, torch.randn(1, 3, 64, 64)) < TOL
    with pytest.raises(ValueError, match="backend"):
        optimize(model, backend="tvm")


def test_optimize_auto_backend_needs_a_compiler_for_inductor(monkeypatch) -> None:
    model = varied_model("shufflenet_v1_g3_x0_25", scaled_logits=False)
    monkeypatch.setattr(inference, "has_cxx_compiler", lambda: False)
    assert isinstance(optimize(model), torch.jit.ScriptModule)  # TorchScript: nothing to compile
    monkeypatch.setattr(inference, "has_cxx_compiler", lambda: True)
    assert isinstance(optimize(model), inference._Inductor)  # compiles on its first call
