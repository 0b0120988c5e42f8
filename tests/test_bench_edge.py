"""The bench's edge engines (LiteRT, ExecuTorch, MNN) and ``auto`` (never the timings)."""

import pytest
import torch

import shufflenet
from shufflenet.speed import engines
from shufflenet.speed.bench import BenchConfig, run_bench
from shufflenet.speed.checks import WrongOutputs
from shufflenet.speed.engines import (
    AUTO_ORDER,
    ENGINES,
    RuntimeEngine,
    available_engines,
    engine_spec,
    resolve_engine,
    time_engine,
)

EDGE = [e for e in ("litert", "executorch", "mnn") if e in available_engines()]

pytestmark = pytest.mark.slow  # converts to the edge runtimes and times them


@pytest.fixture(scope="module")
def v2():
    torch.manual_seed(0)
    return shufflenet.create_model("shufflenet_v2_x0_5").eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def converted(v2, x, tmp_path_factory):
    """Each engine's file of V2 0.5x at batch 2, 32 px: converted once (ExecuTorch takes ~10 s)."""
    cache = {}

    def get(engine):
        if engine not in cache:
            spec = ENGINES[engine]
            cache[engine] = spec.export(v2, x, tmp_path_factory.mktemp(engine))
        return cache[engine]

    return get


@pytest.mark.parametrize("engine", EDGE)
def test_edge_engine_times_its_file(engine, v2, x, converted, monkeypatch):
    path = converted(engine)
    assert path.stat().st_size > 100_000  # V2 0.5x's 1.4 M weights, fp32
    monkeypatch.setattr(RuntimeEngine, "export", lambda self, model, example, workdir: path)
    (result,) = time_engine(engine, {"v2": v2}, {"v2": x[:1]}, [{"v2": x}], runs=2, warmup=0)
    assert len(result["v2"].samples_ms) == 2 and result["v2"].median_ms > 0


@pytest.mark.skipif(not EDGE, reason="no edge runtime installed")
def test_a_wrong_file_is_refused_before_timing(x, converted, monkeypatch):
    # The check is the timing process's, the same for every runtime: one (the quickest) is tried.
    engine = "mnn" if "mnn" in EDGE else EDGE[0]
    path = converted(engine)  # V2 0.5x with the fixture's weights
    monkeypatch.setattr(RuntimeEngine, "export", lambda self, model, example, workdir: path)
    torch.manual_seed(1)  # other random weights (whatever seeded the global RNG before)
    other = shufflenet.create_model("shufflenet_v2_x0_5").eval()
    with pytest.raises(WrongOutputs, match=f"{engine} computes p wrong, not timing it"):
        time_engine(engine, {"p": other}, {"p": x[:1]}, [{"p": x}], runs=1, warmup=0)


@pytest.mark.parametrize("engine", EDGE)
def test_edge_engine_runs_on_the_cpu_only(engine):
    spec = engine_spec(engine)
    assert spec.devices == ("cpu",) and spec.shuffle_free
    config = BenchConfig(models=["shufflenet_v2_x0_5"], engines=[engine], device="cuda")
    with pytest.raises(ValueError, match=r"(?i)cuda"):  # no GPU here, or "runs on cpu only"
        config.validate()


@pytest.mark.skipif("mnn" not in EDGE, reason="MNN is not installed")
def test_compare_converts_torchvisions_v2_with_the_same_converter():
    config = BenchConfig(
        models=["shufflenet_v2_x0_5"],
        engines=["mnn"],
        input_size=(32, 32),
        threads=1,
        runs=1,
        warmup=0,
        compare="torchvision",
    )
    records = run_bench(config).records
    assert {(r.implementation, r.engine) for r in records} == {
        ("shufflenet", "mnn"),
        ("torchvision", "mnn"),
    }
    assert all(r.median_ms > 0 for r in records)
    assert records[0].speedup_vs_torchvision is not None


def test_a_missing_runtime_is_skipped_or_named(monkeypatch):
    monkeypatch.setattr(engines, "_installed", lambda package: package not in ("MNN",))
    assert "mnn" not in available_engines() and "litert" in available_engines()
    with pytest.raises(ValueError, match="the mnn engine needs the MNN package"):
        engine_spec("mnn")


def test_auto_is_the_first_installed_engine_of_the_measured_order(monkeypatch):
    assert AUTO_ORDER["cpu"] == ("onnxruntime", "eager") and AUTO_ORDER["cuda"] == ("eager",)
    assert resolve_engine("mnn") == "mnn"  # an explicit engine stays
    installed = "onnxruntime" in available_engines()
    assert resolve_engine("auto") == ("onnxruntime" if installed else "eager")
    monkeypatch.setattr(engines, "_installed", lambda package: package != "onnxruntime")
    assert resolve_engine("auto", "cpu") == "eager"
    assert engine_spec("auto") is ENGINES["eager"]
    assert BenchConfig(models=["shufflenet_v2_x0_5"]).engines == ("auto",)  # the default
