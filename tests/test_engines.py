"""Engines time themselves: an engine joins through its row alone, an engine kind owns where it is
timed, and a file engine is timed in its own runtime only (never the timings themselves)."""

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from shufflenet.cli import main
from shufflenet.export import FORMATS, RUNTIMES
from shufflenet.export.onnx_format import OPENVINO_RUNTIME
from shufflenet.predict import ENGINES as PREDICT_ENGINES
from shufflenet.speed import engines
from shufflenet.speed.bench import BenchConfig
from shufflenet.speed.engines import (
    ENGINES,
    EngineSpec,
    RuntimeEngine,
    TorchEngine,
    available_engines,
    runtime_engine,
    time_engine,
)
from shufflenet.timer import TimedRun, Timing


def _toy(model, example, device):
    """A binder: eager PyTorch under another name."""

    def bind(x):
        return TimedRun(lambda: model(x), device, lambda out: out.detach().numpy())

    return bind


def test_a_toy_engine_joins_through_its_row_alone(monkeypatch):
    monkeypatch.setitem(ENGINES, "toy", TorchEngine(run=_toy, devices=("cpu",)))
    assert "toy" in available_engines()
    BenchConfig(models=["shufflenet_v2_x0_5"], engines=["toy"]).validate()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    (result,) = time_engine("toy", {"m": model}, {"m": x}, [{"m": x}], runs=2, warmup=0)
    assert len(result["m"].samples_ms) == 2


def test_an_engine_kind_owns_how_it_is_timed(monkeypatch):
    seen = []

    @dataclass(frozen=True, kw_only=True)
    class Elsewhere(EngineSpec):
        def bind(self, model, example, device, threads, workdir):
            raise AssertionError("time_engine leaves binding to the engine")

        def time(self, task):
            seen.append((task.engine, task.device.type, [sorted(w) for w in task.expected]))
            return [{key: Timing((1.0,)) for key in job} for job in task.jobs]

    monkeypatch.setitem(ENGINES, "elsewhere", Elsewhere())
    model = nn.Sequential(nn.Conv2d(3, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    (result,) = time_engine("elsewhere", {"m": model}, {"m": x}, [{"m": x}])
    assert result["m"].median_ms == 1.0 and seen == [("elsewhere", "cpu", [["m"]])]


def test_a_file_engine_is_timed_in_its_own_runtime(monkeypatch):
    """The worker process is handed the engine's own runtime, found by its name in RUNTIMES:
    an engine whose runtime is not that row cannot be made."""
    for name, spec in ENGINES.items():
        if isinstance(spec, RuntimeEngine) and spec.runtime.own_process:
            assert RUNTIMES[spec.runtime.name] is spec.runtime, name
    impostor = dataclasses.replace(RUNTIMES["onnxruntime"], layout=None)  # the name, not the row
    with pytest.raises(ValueError, match="add it to RUNTIMES"):
        runtime_engine(impostor)
    asked = []
    monkeypatch.setattr(
        engines, "measure_in_process", lambda runtime, jobs, **kw: asked.append(runtime) or []
    )
    model = nn.Sequential(nn.Conv2d(3, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    for engine in ("onnxruntime", "onnxruntime_fast"):
        time_engine(engine, {"m": model}, {"m": x}, [], runs=1, warmup=0)
    assert asked == ["onnxruntime", "onnxruntime"]
    assert not OPENVINO_RUNTIME.own_process  # timed in this process: no worker to ask


def test_each_runtime_is_one_row_that_every_part_reads(capsys):
    """A runtime-backed format's row reaches predict's engines, the bench's (for a fixed batch)
    and the CLI's help, with nothing else naming it."""
    for spec in FORMATS.values():
        if spec.runtime is None:
            continue
        name = spec.runtime.name
        assert RUNTIMES[name] is spec.runtime and name in PREDICT_ENGINES
        if spec.runtime.fixed_batch:
            assert ENGINES[name].runtime is spec.runtime and ENGINES[name].shuffle_free
    for verb in ("export", "predict"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for spec in FORMATS.values():
            if spec.runtime is not None:
                assert all(suffix in text for suffix in spec.suffixes), (verb, spec.suffixes)
