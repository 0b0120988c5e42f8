"""Latency-budget selection: Pareto fronts and the choice rule (no timing assertions)."""

import json

import pytest

from shufflenet.cli import main
from shufflenet.models.registry import get_model_info
from shufflenet.speed.engines import resolve_engine
from shufflenet.speed.selection import (
    default_candidates,
    pareto_front,
    plot_selection,
    select_model,
)

MODELS = ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_25", "shufflenet_v1_g8_x0_5"]


def test_pareto_front():
    points = [(1.0, 60.0), (2.0, 55.0), (2.0, 70.0), (3.0, 70.0), (0.5, 40.0), (4.0, 75.0)]
    assert pareto_front(points) == [4, 0, 2, 5]  # by increasing cost; (2, 55) and (3, 70) lose
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0]


def _dominated(c, others, attr):
    return any(
        getattr(o, attr) <= getattr(c, attr)
        and o.top1 >= c.top1
        and (getattr(o, attr), o.top1) != (getattr(c, attr), c.top1)
        for o in others
    )


@pytest.mark.slow
def test_selection_invariants(tmp_path):
    names = [*MODELS, "shufflenet_v1_g1_x1_5"]
    sel = select_model(1e9, names, input_size=(32, 32), runs=2, warmup=0, threads=1)
    assert [c.name for c in sel.candidates] == MODELS
    assert sel.skipped == ["shufflenet_v1_g1_x1_5"]  # no published top-1
    assert sel.chosen == max(sel.candidates, key=lambda c: c.top1).name  # everything fits
    for attr, front in (("median_ms", sel.pareto_latency), ("mflops", sel.pareto_flops)):
        for c in sel.candidates:
            assert (c.name in front) == (not _dominated(c, sel.candidates, attr))
    data = json.loads(json.dumps(sel.to_dict()))
    assert data["settings"]["engines"] == [resolve_engine("auto")] and data["budget_ms"] == 1e9
    assert plot_selection(sel, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_budget_rule():
    sel = select_model(1e-9, MODELS[:2], input_size=(32, 32), runs=1, warmup=0, threads=1)
    assert sel.chosen is None  # nothing runs in a picosecond
    with pytest.raises(ValueError, match="positive"):
        select_model(0, MODELS)
    with pytest.raises(ValueError, match="published top-1"):
        select_model(1.0, ["shufflenet_v1_g1_x1_5"])


def test_default_candidates_have_paper_accuracy():
    names = default_candidates()
    assert {f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")} <= set(names)
    assert "shufflenet_v1_g3_x2_0" in names and "shufflenet_v1_g1_x2_0" not in names
    assert all(get_model_info(n).paper_top1 is not None for n in names)
    assert "shufflenet_v2_plus_small" in names
    assert "shufflenet_v2_large" not in names  # 12.7 GFLOPs: timed only when named


@pytest.mark.slow
def test_cli_select(tmp_path, capsys):
    plot = tmp_path / "sel.png"
    argv = ["select", "--models", *MODELS, "--input-size", "32", "--runs", "1", "--threads", "1"]
    assert main([*argv, "--budget-ms", "1e9", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "within 1e+09 ms" in out and "front(ms)" in out and plot.exists()
    assert f"{resolve_engine('auto')} (auto) on cpu" in out
    assert main([*argv, "--budget-ms", "1e-9", "--plot", str(plot), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"] is None and len(data["candidates"]) == len(MODELS)
    assert main([*argv, "--budget-ms", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
