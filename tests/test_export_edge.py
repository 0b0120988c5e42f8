"""LiteRT, ExecuTorch and MNN exports: each converts, verifies in its own runtime and predicts
with the preprocessing and class names it carries, for V1, V2 and V2+; int8 agreement; what a
missing package, a mismatch and a foreign file give.

Converters are slow (LiteRT ~10 s, ExecuTorch ~20 s per model on 2 shared cores, twice that
for int8; MNN ~1 s): V1 and V2 convert once per format, int8 once per format that has it, and
the models without a fast path (Megvii-layout V2, V2+) go through MNN only; LiteRT and
ExecuTorch see their rewrites in test_xnnpack_rewrites_are_exact.
"""

import importlib
import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import digits_model, randomize_bn, varied_model
from PIL import Image

import shufflenet
from shufflenet import data
from shufflenet.cli import main
from shufflenet.export import (
    FORMATS,
    ExportOptions,
    export_model,
    open_executorch,
    open_litert,
    open_mnn,
    read_tflite_metadata,
    verify_executorch,
    verify_litert,
    verify_mnn,
)
from shufflenet.export.edge import edge_graph
from shufflenet.export.mnn import MNN_RUNTIME
from shufflenet.export.xnnpack import xnnpack_graph
from shufflenet.predict import Predictor
from shufflenet.runtimes import installed
from shufflenet.speed.worker import measure_in_process

EXT = {"litert": ".tflite", "executorch": ".pte", "mnn": ".mnn"}
OPEN = {"litert": open_litert, "executorch": open_executorch, "mnn": open_mnn}
VERIFY = {"litert": verify_litert, "executorch": verify_executorch, "mnn": verify_mnn}
CONVERTER = {"litert": "litert_torch", "executorch": "executorch.exir", "mnn": "MNN"}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _needs(fmt):
    """Skip without ``fmt``'s converter and runtime (imported as the library does: MNN prints
    to standard output when imported otherwise)."""
    extra = FORMATS[fmt].runtime.extra
    if importlib.util.find_spec(CONVERTER[fmt].split(".")[0]) is None or not installed(extra):
        pytest.skip(f"no {fmt} converter or runtime: pip install 'shufflenet[{fmt}]'")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A V2 0.5x trained on digits (32x32), saved with its class names, and 12 digit images."""
    from sklearn.datasets import load_digits

    model, pre = digits_model()
    root = tmp_path_factory.mktemp("digits")
    weights = shufflenet.save(
        model, root / "d.safetensors", preprocessing=pre, class_names=data.DIGITS_CLASSES
    )
    images = root / "images"
    images.mkdir()
    digits = load_digits()
    for i in range(12):
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(images / f"{i:02d}-{digits.target[i]}.png")
    return weights, images


def _predict_json(capsys, weights, images, *extra):
    assert main(["predict", str(images), "--weights", str(weights), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("fmt", ["litert", "executorch", "mnn"])
def test_v2_exports_verifies_predicts_and_quantizes(fmt, digits, tmp_path, capfd):
    _needs(fmt)
    weights, images = digits
    out = tmp_path / f"d{EXT[fmt]}"
    argv = ["export", "--weights", str(weights), "--format", fmt, "--out", str(out), "--json"]
    int8 = FORMATS[fmt].int8
    if int8:
        argv += ["--int8", "--calib", "digits"]
    assert main(argv) == 0
    report = json.loads(capfd.readouterr().out)  # standard output, native writes included
    check = report["verification"]
    assert check["engine"] == fmt and check["passed"] and check["batch_sizes"] == [1]
    files = [out, out.with_suffix(".json")] if fmt == "mnn" else [out]
    assert report["files"] == [str(f) for f in files]

    # The file's own metadata: what the app must feed it, and the class names.
    opened = OPEN[fmt](out)
    meta = opened.metadata
    assert meta["class_names"] == data.DIGITS_CLASSES and meta["batch"] == 1
    assert meta["preprocessing"] == data.make_preprocessing("digits", 32)
    assert meta["input_layout"] == ("NHWC" if fmt == "litert" else "NCHW")
    assert meta["graph"].startswith("shuffle-free")

    # predict reads it: the same classes and probabilities as the weights in PyTorch.
    ours = _predict_json(capfd, out, images)
    reference = _predict_json(capfd, weights, images, "--engine", "torch")
    for got, want in zip(ours, reference, strict=True):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        p, q = (np.array([t["probability"] for t in r["top"]]) for r in (got, want))
        assert np.abs(p - q).max() < 1e-4
    truth = [r["path"].rsplit("-", 1)[1][0] for r in reference]
    assert np.mean([r["top"][0]["class"] == t for r, t in zip(ours, truth, strict=True)]) > 0.8

    if int8:
        report_int8 = report["int8"]
        assert report_int8["images"] == 360 and report_int8["fp32_top1"] > 0.9
        # MNN's quantizer grids activations symmetrically: 89.4% measured, the others 99%
        assert report_int8["agreement"] >= (0.85 if fmt == "mnn" else 0.95), report_int8
        assert report_int8["int8_bytes"] < 0.5 * report_int8["fp32_bytes"]
        quantized = OPEN[fmt](report_int8["path"])
        assert quantized.metadata["quantization"]["calibration_images"] == 256
        assert quantized.metadata["class_names"] == data.DIGITS_CLASSES
        int8_top = _predict_json(capfd, report_int8["path"], images)
        pairs = zip(int8_top, ours, strict=True)
        assert np.mean([a["top"][0]["class"] == b["top"][0]["class"] for a, b in pairs]) >= 0.75
        # bench's timing process runs the int8 file too (LiteRT's int8 input quantized there)
        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        (timings,) = measure_in_process(
            fmt, [{"int8": (report_int8["path"], x)}], threads=1, runs=2, warmup=1, rounds=1
        )
        assert len(timings["int8"].samples_ms) == 2


@pytest.mark.parametrize("fmt", ["litert", "executorch", "mnn"])
def test_v1_at_a_fixed_batch_and_a_wrong_model_fails(fmt, tmp_path):
    _needs(fmt)
    model = varied_model("shufflenet_v1_g3_x0_5", num_classes=4)
    out = tmp_path / f"v1{EXT[fmt]}"
    result = export_model(model, out, fmt, batch=2, input_size=(64, 64))
    assert result.passed and result.verification.batch_sizes == (2,), result.verification
    opened = OPEN[fmt](out)
    x = torch.randn(3, 3, 64, 64)  # 3 images: one full batch of 2, one padded
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(opened(x) - expected).max() <= 1e-4 * np.abs(expected).max()
    other = randomize_bn(varied_model("shufflenet_v1_g3_x0_5", num_classes=4), seed=1)
    wrong = VERIFY[fmt](out, other)
    assert not wrong.passed and "FAILED" in wrong.summary()


@pytest.mark.parametrize(
    "fmt,name",
    [
        ("mnn", "shufflenet_v2_plus_small"),
        ("mnn", "shufflenet_v2_x0_5-megvii"),
    ],
)
def test_models_without_a_fast_path_export_their_plain_graph(fmt, name, tmp_path):
    _needs(fmt)
    name, _, layout = name.partition("-")
    model = varied_model(name, num_classes=5, **({"layout": layout} if layout else {}))
    out = tmp_path / f"m{EXT[fmt]}"
    result = export_model(model, out, fmt, input_size=(64, 64))
    assert result.passed, result.verification
    assert OPEN[fmt](out).metadata["graph"].startswith("plain BN-folded (no fast path: ")


@pytest.mark.parametrize(
    "name,layout,pools,hardsigmoids,splits",
    [
        ("shufflenet_v1_g3_x0_5", None, 3, 0, 0),  # the stride-2 shortcuts
        ("shufflenet_v2_x0_5", "megvii", 0, 0, 26),  # 13 stride-1 units, even and odd
        ("shufflenet_v2_plus_small", None, 0, 13, 32),  # the SE gates, 16 stride-1 units
    ],
)
def test_xnnpack_rewrites_are_exact(name, layout, pools, hardsigmoids, splits):
    model = varied_model(name, num_classes=4, **({"layout": layout} if layout else {}))
    # the plain graph (no fastpath), without the XNNPACK formats' rewrites: MNN's
    graph = edge_graph(model, ExportOptions(17, 2, (64, 64), None), MNN_RUNTIME)

    def count(module):
        kinds = (torch.nn.AvgPool2d, torch.nn.Hardsigmoid)
        modules = [sum(isinstance(m, k) for m in module.modules()) for k in kinds]
        program = torch.export.export(module, (graph.example,))
        slices = [
            n for n in program.graph.nodes
            if n.target is torch.ops.aten.slice.Tensor and len(n.args) == 5 and n.args[4] == 2
        ]  # fmt: skip
        return [*modules, len(slices)]

    assert count(graph.module) == [pools, hardsigmoids, splits]
    with torch.no_grad():
        expected = graph.module(graph.example)
        rewritten = xnnpack_graph(graph.module, graph.example)
        assert count(rewritten) == [0, 0, 0]
        assert (rewritten(graph.example) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_cli_edge_export_fails_with_numbers_when_the_graph_is_wrong(tmp_path, capsys, monkeypatch):
    _needs("mnn")
    import shufflenet.export.onnx as onnx_export
    from shufflenet.deploy import fuse_bn, static_shuffles

    def broken(model, input_size=None):  # a graph that drops the even/odd split
        graph = static_shuffles(fuse_bn(model), input_size)
        graph.stage2[1].forward = lambda x: torch.cat(x.chunk(2, 1)[::-1], 1)
        return graph

    monkeypatch.setattr(onnx_export, "plain_graph", broken)
    out = tmp_path / "bad.mnn"
    argv = ["export", "--model", "shufflenet_v2_x0_5", "--layout", "megvii", "--format", "mnn"]
    assert main([*argv, "--input-size", "64", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "mnn vs PyTorch" in err and "max |diff|" in err and "FAILED" in err
    assert out.exists() and out.with_suffix(".json").exists()  # kept for inspection


@pytest.mark.parametrize("fmt", ["litert", "executorch", "mnn"])
def test_a_missing_runtime_is_one_line_naming_the_extra(fmt, tmp_path, capsys, monkeypatch):
    real = importlib.import_module
    extra = FORMATS[fmt].runtime.extra
    top = {name.split(".")[0] for name in (CONVERTER[fmt], extra.module)}
    top |= {"ai_edge_litert"} if fmt == "litert" else set()

    def missing(name, *args, **kwargs):
        if name.split(".")[0] in top:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert not installed(extra)
    out = tmp_path / f"x{EXT[fmt]}"
    argv = ["export", "--model", "shufflenet_v2_x0_5", "--format", fmt, "--out", str(out)]
    assert main([*argv, "--input-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"pip install 'shufflenet[{fmt}]'" in err
    out.write_bytes(b"\0" * 64)
    out.with_suffix(".json").write_text("{}")
    assert main(["predict", str(tmp_path), "--weights", str(out)]) == 2
    assert f"pip install 'shufflenet[{fmt}]'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["litert", "executorch", "mnn"])
def test_foreign_and_truncated_files_are_refused(fmt, tmp_path, capsys):
    _needs(fmt)
    rng = np.random.default_rng(0)
    path = tmp_path / f"junk{EXT[fmt]}"
    path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    if fmt == "mnn":
        with pytest.raises(ValueError, match=r"junk\.json"):
            Predictor(path)
        path.with_suffix(".json").write_text('{"format": "shufflenet/1"}')
    with pytest.raises(ValueError, match="junk"):
        Predictor(path)
    assert main(["predict", str(tmp_path), "--weights", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    with pytest.raises(ValueError, match="exported file"):
        Predictor(path, engine="torch")


def test_tflite_metadata_without_running_the_file(tmp_path):
    _needs("litert")
    from shufflenet.export.litert import _with_metadata

    meta = {"format": "shufflenet/1", "names": ["é", "x" * 1000]}
    with pytest.raises(ValueError, match=r"not a readable \.tflite"):
        read_tflite_metadata(_write(tmp_path / "a.tflite", b"TFL3" * 8))
    empty = _empty_tflite()
    with pytest.raises(ValueError, match="no shufflenet metadata"):
        read_tflite_metadata(_write(tmp_path / "b.tflite", empty))
    tagged = _with_metadata(_with_metadata(empty, {"old": 1}), meta)  # replaces, not appends
    assert read_tflite_metadata(_write(tmp_path / "c.tflite", tagged)) == meta


def _write(path, data):
    path.write_bytes(data)
    return path


def _empty_tflite():
    """A valid flatbuffer model with no subgraph, built with LiteRT's own schema."""
    from ai_edge_litert.tools import flatbuffer_utils as utils

    model = utils.ModelT()
    model.version, model.buffers, model.subgraphs = 3, [utils.BufferT()], []
    return bytes(utils.convert_object_to_bytearray(model))
