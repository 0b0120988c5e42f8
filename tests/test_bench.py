"""Structure and invariants of the timing tools (never the timings themselves)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import shufflenet
from shufflenet.cli import main
from shufflenet.complexity import profile
from shufflenet.export.onnx import to_onnx
from shufflenet.speed.baselines import (
    BASELINES,
    build_model,
    build_torchvision_counterpart,
    expand_model_names,
    has_torchvision_counterpart,
    model_card,
)
from shufflenet.speed.bench import BenchConfig, SpeedResult, run_bench
from shufflenet.speed.checks import WrongOutputs
from shufflenet.speed.engines import (
    RuntimeEngine,
    available_engines,
    make_engine,
    resolve_engine,
    time_engine,
)
from shufflenet.speed.timing import plot_timing, time_layers
from shufflenet.speed.worker import measure_in_process
from shufflenet.timer import Timing, measure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def export_onnx(model, path, example):
    path.write_bytes(to_onnx(model, example))
    return path


def test_timing_statistics():
    t = Timing((4.0, 1.0, 3.0, 2.0, 5.0))
    assert t.median_ms == 3.0
    assert (t.p25_ms, t.p75_ms, t.iqr_ms) == (2.0, 4.0, 2.0)
    assert t.images_per_s(6) == pytest.approx(2000.0)
    with pytest.raises(ValueError):
        Timing(())


def test_measure_interleaves_and_counts_every_call():
    calls = {"a": 0, "b": 0}

    def fake(key, ms):
        def run():
            calls[key] += 1
            return ms

        return run

    timings = measure({"a": fake("a", 1.0), "b": fake("b", 2.0)}, runs=7, warmup=2, rounds=3)
    assert len(timings["a"].samples_ms) == len(timings["b"].samples_ms) == 7
    assert timings["b"].median_ms == 2.0
    assert calls == {"a": 2 + 3 + 7, "b": 2 + 3 + 7}  # warm-up, one re-warm per round, runs
    with pytest.raises(ValueError, match="runs"):
        measure({"a": fake("a", 1.0)}, runs=0, warmup=0)


@pytest.mark.slow
def test_bench_records_schema_and_torchvision_ratio():
    engines = [e for e in ("eager", "onnxruntime", "openvino") if e in available_engines()]
    config = BenchConfig(
        models=["shufflenet_v2_x0_5"],
        engines=engines,
        batch_sizes=[1, 2],
        input_size=(32, 32),
        threads=1,
        runs=2,
        warmup=0,
        compare="torchvision",
    )
    result = run_bench(config)
    data = json.loads(json.dumps(result.to_dict()))
    assert isinstance(result, SpeedResult) and list(data) == ["machine", "config", "records"]
    assert {"cpu", "simd", "torch", "onnxruntime"} <= set(data["machine"])
    records = data["records"]
    keys = {(r["implementation"], r["engine"], r["batch_size"]) for r in records}
    assert len(records) == len(keys) == 2 * len(engines) * 2  # one per (impl, engine, batch)
    for r in records:
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["p25_ms"] <= r["p75_ms"]
        assert r["images_per_s"] == pytest.approx(1000 * r["batch_size"] / r["median_ms"])
        assert r["threads"] == 1 and r["input_size"] == [32, 32] and r["runs"] == 2
        assert r["top1"] == pytest.approx(60.3)
        ours = r["implementation"] == "shufflenet"
        assert (r["speedup_vs_torchvision"] is not None) == ours
    by = {(r["implementation"], r["engine"], r["batch_size"]): r for r in records}
    ours, theirs = by["shufflenet", "eager", 2], by["torchvision", "eager", 2]
    assert ours["mflops"] == theirs["mflops"]  # the same architecture
    assert ours["speedup_vs_torchvision"] == pytest.approx(theirs["median_ms"] / ours["median_ms"])


def test_onnx_export_runs_the_same_model(tmp_path):
    import onnxruntime as ort

    model = shufflenet.create_model("shufflenet_v1_g3_x0_25").eval()
    x = torch.randn(3, 3, 32, 32)
    path = export_onnx(model, tmp_path / "m.onnx", x[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})  # batch 3 through the dynamic axis
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnxruntime_timing_process_shares_one_pool(tmp_path):
    model = shufflenet.create_model("shufflenet_v1_g3_x0_25").eval()
    path = str(export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32)))
    x1, x2 = (np.zeros((b, 3, 32, 32), np.float32) for b in (1, 2))
    jobs = [{"a": (path, x1), "b": (path, x1)}, {("a", 2): (path, x2)}]
    results = measure_in_process("onnxruntime", jobs, threads=1, runs=4, warmup=1, rounds=2)
    assert [set(r) for r in results] == [{"a", "b"}, {("a", 2)}]
    assert all(len(t.samples_ms) == 4 and t.median_ms > 0 for r in results for t in r.values())
    bad = [{"a": (path, np.zeros((1, 3, 32, 31), np.float32))}]  # the model's width is fixed
    with pytest.raises(RuntimeError, match="dimensions"):
        measure_in_process("onnxruntime", bad, threads=1, runs=1, warmup=0)


@pytest.mark.parametrize(
    "engine", [e for e in ("eager", "onnxruntime", "optimized_jit") if e in available_engines()]
)
def test_time_engine_gives_one_result_per_job(engine):
    models = {k: nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval() for k in ("p", "q")}
    x = torch.randn(1, 3, 8, 8)
    jobs = [{"p": x, "q": x}, {"q": torch.randn(3, 3, 8, 8)}]
    results = time_engine(engine, models, dict.fromkeys(models, x), jobs, runs=3, warmup=0)
    assert [set(r) for r in results] == [{"p", "q"}, {"q"}]
    assert all(len(t.samples_ms) == 3 for r in results for t in r.values())


@pytest.mark.parametrize(
    "engine", [e for e in ("onnxruntime", "openvino") if e in available_engines()]
)
@pytest.mark.slow
def test_an_engine_that_computes_wrong_is_refused_before_timing(engine, monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()  # other weights
    real = RuntimeEngine.export
    monkeypatch.setattr(RuntimeEngine, "export", lambda self, m, *args: real(self, other, *args))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(WrongOutputs, match=f"{engine} computes p wrong, not timing it"):
        time_engine(engine, {"p": model}, {"p": x}, [{"p": x}], runs=2, warmup=0)
    monkeypatch.setattr(RuntimeEngine, "export", real)
    (result,) = time_engine(engine, {"p": model}, {"p": x}, [{"p": x}], runs=2, warmup=0)
    assert len(result["p"].samples_ms) == 2


def test_engines_leave_the_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    run = make_engine(model, "channels_last", example=x)(x)
    assert run() >= 0
    assert model[0].weight.is_contiguous()  # the engine worked on a copy


@pytest.mark.slow
def test_compile_engine_runs():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        t = measure({"c": make_engine(model, "compile", example=x)(x)}, runs=2, warmup=1)
    assert len(t["c"].samples_ms) == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engines": ["tensorrt"]}, "unknown engine"),
        ({"batch_sizes": [0]}, "batch_size must be a positive"),
        ({"input_size": (16, 16)}, "within 32..4096"),
        ({"threads": 0}, "threads"),
        ({"device": "tpu"}, "device"),
        ({"runs": 0}, "runs"),
        ({"compare": "timm"}, "compare"),
        ({"models": []}, "at least one model"),
    ],
)
def test_bad_bench_config(changes, message):
    config = BenchConfig(models=["shufflenet_v2_x0_5"])
    for key, value in changes.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_cuda_request_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA"):
        BenchConfig(models=["shufflenet_v2_x0_5"], device="cuda").validate()


def test_compare_needs_a_v2_model():
    config = BenchConfig(models=["shufflenet_v1_g3_x0_25"], compare="torchvision", runs=1)
    with pytest.raises(ValueError, match="V2"):
        run_bench(config)


def test_baselines_metadata_and_names():
    for name, info in BASELINES.items():
        card = model_card(name)
        assert card.family == "baseline" and card.top1 is not None
        assert 50 < info.torchvision_top1 < 80  # read from torchvision's weights metadata
    assert model_card("alexnet").top1 == pytest.approx(100 - 42.8)  # V1 paper, Table 8
    assert model_card("mobilenet_v2").top1 == pytest.approx(100 - 28.0)  # V2 paper, Table 8
    assert model_card("resnet18").top1_source == "torchvision"
    assert model_card("shufflenet_v2_x1_0").top1 == pytest.approx(69.4)
    assert expand_model_names(["mobilenet*", "shufflenet_v2_x0_5", "mobilenet_v2"]) == [
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "shufflenet_v2_x0_5",
    ]
    with pytest.raises(ValueError, match="baselines"):
        expand_model_names(["mobilenet_v9"])
    out = build_model("mobilenet_v3_small", num_classes=7)(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 7)


def test_layer_times_add_up_and_match_the_profile(tmp_path):
    model = shufflenet.create_model("shufflenet_v2_x0_5")
    result = time_layers(model, (3, 32, 32), batch_size=2, runs=4, warmup=1, threads=1)
    stats = profile(model, (3, 32, 32))
    rows = {layer.name: layer for layer in result.layers}
    for row in stats.layers:  # every profiled row is timed, with the same FLOPs and MAC
        assert (rows[row.name].flops, rows[row.name].mac) == (row.flops, row.mac)
        assert rows[row.name].category == row.category
    assert all(layer.time_ms >= 0 for layer in result.layers)
    cats = result.by_category()
    assert sum(c["time_ms"] for c in cats.values()) == pytest.approx(result.layers_ms)
    assert sum(c["flops"] for c in cats.values()) == stats.flops
    # categories + what the op timers could not see = the measured total, overhead >= 0
    assert result.layers_ms + result.overhead_ms == pytest.approx(result.total_ms)
    assert result.overhead_ms >= 0
    blocks = result.by_block()
    assert {"conv1", "stage2", "stage4", "conv5", "fc"} <= set(blocks)
    assert sum(sum(b.values()) for b in blocks.values()) == pytest.approx(result.layers_ms)
    for category in ("1x1 conv", "depthwise conv", "element-wise", "shuffle/concat/split"):
        assert category in cats
    json.dumps(result.to_dict())
    path = plot_timing(result, tmp_path / "t.png", "v2")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_profile_timing_json(tmp_path, capsys):
    plot = tmp_path / "p.png"
    argv = ["profile", "shufflenet_v1_g3_x0_25", "--timing", "--input-size", "32"]
    assert main([*argv, "--runs", "2", "--threads", "1", "--plot", str(plot), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "shufflenet_v1_g3_x0_25" and plot.exists()
    assert "group conv" in data["categories"]
    total = sum(c["time_ms"] for c in data["categories"].values()) + data["overhead_ms"]
    assert total == pytest.approx(data["total_ms"])


@pytest.mark.slow
def test_cli_bench_table_and_json(capsys):
    # the default engine (auto): ONNX Runtime where installed; alexnet's pool does not export
    argv = ["bench", "shufflenet_v2_x0_5", "mobilenet_v3_small", "--input-size", "64"]
    argv += ["--runs", "2", "--warmup", "0", "--threads", "1"]
    assert main([*argv, "--batch-size", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small" in out and "median ms" in out
    assert f"engine: {resolve_engine('auto')} (auto)" in out  # the default
    assert main([*argv, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert [(r["model"], r["batch_size"]) for r in records] == [
        ("shufflenet_v2_x0_5", 1),
        ("mobilenet_v3_small", 1),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "shufflenet_v2_x0_5", "--engines", "tensorrt"], "unknown engine"),
        (["bench", "shufflenet_v2_x0_5", "--batch-size", "1,x"], "comma-separated"),
        (["bench", "shufflenet_v2_x0_5", "--batch-size", "0"], "batch_size must be a positive"),
        (["bench", "nosuchnet"], "unknown model"),
        (["profile", "shufflenet_v2_x0_5", "--timing", "--runs", "0"], "runs"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects the value itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_compare_pairs_exactly_the_models_torchvision_builds():
    import torchvision

    built = set(torchvision.models.list_models())
    for name in shufflenet.list_models():
        assert has_torchvision_counterpart(name) == (name in built), name
    assert model_card("shufflenet_v2_x0_25").top1_source == "PaddleClas"
    with pytest.raises(ValueError, match="torchvision has no implementation"):
        build_torchvision_counterpart("shufflenet_v2_x1_0_swish")
