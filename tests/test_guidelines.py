"""The G1-G4 experiments: FLOPs held constant by construction, schemas, plots (no timings)."""

import json

import pytest
import torch
from torch import nn

from shufflenet.cli import main
from shufflenet.complexity import profile
from shufflenet.speed.bench import SpeedResult
from shufflenet.speed.guidelines import (
    GUIDELINE_TABLES,
    INPUT_SIZE,
    NUM_BLOCKS,
    Bottleneck,
    GuidelinesConfig,
    ParallelFragments,
    build_benchmark,
    plot_table,
    run_guidelines,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _column_stats(key, column, size=8):
    stats = []
    for row in range(len(GUIDELINE_TABLES[key].rows)):
        net, c_in, _ = build_benchmark(key, row, column)
        stats.append(profile(net, (c_in, size, size)))
    return stats


@pytest.mark.parametrize("key", list(GUIDELINE_TABLES))
@pytest.mark.parametrize("column", [0, 1, 2])
def test_flops_are_held_constant_across_rows(key, column):
    # blocks keep the spatial size, so an 8x8 map has the same FLOPs ratios as 56x56 (the CLI
    # test below checks the 56x56 counts of the first column)
    flops = [s.flops for s in _column_stats(key, column)]
    # whole channel counts: rows match the first to within 1.2% (G3 parallel and G4 exactly)
    assert max(abs(f / flops[0] - 1) for f in flops) < 0.012
    if key == "G4":
        assert len(set(flops)) == 1


def test_mac_follows_the_guidelines_premises():
    g1 = [s.mac for s in _column_stats("G1", 0)]
    assert g1 == sorted(g1)  # unequal widths cost more memory access (G1)
    g2 = [s.mac for s in _column_stats("G2", 0)]
    assert g2 == sorted(g2)  # more groups cost more memory access (G2)
    g4 = [s.mac for s in _column_stats("G4", 0)]
    assert g4[0] == max(g4) and g4[3] == min(g4)  # removing element-wise ops saves MAC (G4)


def test_paper_settings():
    g1 = [r.paper_setting for r in GUIDELINE_TABLES["G1"].rows]
    assert g1 == ["(128,128)", "(90,180)", "(52,312)", "(36,432)"]
    # the x1 GPU columns as in the facts file
    assert [r.paper_gpu[0] for r in GUIDELINE_TABLES["G1"].rows] == [1480, 1296, 876, 748]
    assert [r.paper_gpu[0] for r in GUIDELINE_TABLES["G2"].rows] == [2451, 1725, 1026, 634]
    assert [r.paper_gpu[0] for r in GUIDELINE_TABLES["G3"].rows] == [2446, 1790, 752, 1537, 691]
    assert [r.paper_gpu[0] for r in GUIDELINE_TABLES["G4"].rows] == [2427, 2647, 2672, 2842]
    # our channel rule lands on the paper's widths where the FLOPs allow it
    assert build_benchmark("G1", 2, 0)[2] == "(52,312)"
    assert build_benchmark("G2", 2, 0)[2] == "c=256"
    assert build_benchmark("G2", 3, 0)[2] == "c=360"


def test_blocks():
    net, c_in, _ = build_benchmark("G3", 4, 0)
    assert len(net) == NUM_BLOCKS and c_in == 128
    assert isinstance(net[0], ParallelFragments) and len(net[0].branches) == 4
    assert net[0].branches[0].out_channels == 32
    assert net(torch.zeros(1, 128, 8, 8)).shape == (1, 128, 8, 8)
    series, c_in, _ = build_benchmark("G3", 2, 0)
    assert c_in == 64 and len(series[0]) == 4
    group = build_benchmark("G2", 3, 0)[0][0]
    assert isinstance(group, nn.Conv2d) and group.groups == 8
    plain = Bottleneck(32, relu=False, shortcut=False)
    assert isinstance(plain.relu, nn.Identity) and plain.conv2.in_channels == 8
    residual, full = Bottleneck(32, relu=False), Bottleneck(32)
    residual.load_state_dict(plain.state_dict())
    full.load_state_dict(plain.state_dict())
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), plain(x) + x)
        assert torch.all(full(x) >= 0) and not torch.all(plain(x) >= 0)
    with pytest.raises(ValueError, match="rows"):
        build_benchmark("G1", 4, 0)
    with pytest.raises(ValueError, match="unknown table"):
        build_benchmark("G5", 0, 0)


@pytest.mark.slow
def test_run_schema_and_plots(tmp_path):
    config = GuidelinesConfig(quick=True, runs=1, warmup=0, tables=("G4", "g2"), threads=1)
    result = run_guidelines(config)
    data = json.loads(json.dumps(result.to_dict()))
    assert isinstance(result, SpeedResult) and list(data) == ["machine", "config", "tables"]
    assert [t["key"] for t in data["tables"]] == ["G4", "G2"]
    assert data["config"]["runs"] == 1 and data["config"]["input_size"] == INPUT_SIZE
    for table in result.tables:
        assert table.columns == [GUIDELINE_TABLES[table.key].columns[0]]  # quick: x1 only
        for row in table.rows:
            assert len(row.images_per_s) == len(row.median_ms) == len(row.mflops) == 1
            assert len(row.paper_gpu) == len(row.paper_arm) == 3
        assert table.relative("ours", 0)[0] == 1.0
        assert table.relative("gpu", 0)[0] == 1.0
        path = plot_table(table, tmp_path / f"{table.key}.png")
        assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_cli_quick_writes_four_tables_and_plots(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["guidelines", "--quick", "--runs", "1", "--warmup", "0", "--threads", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for key in ("G1", "G2", "G3", "G4"):
        assert f"{key}:" in text
        assert (out / f"{key.lower()}.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((out / "guidelines.json").read_text())
    assert len(data["tables"]) == 4
    rows = [len(t["rows"]) for t in data["tables"]]
    assert rows == [4, 4, 5, 4]
    for table in data["tables"]:  # FLOPs at 56x56 held constant down each column
        flops = [row["mflops"][0] for row in table["rows"]]
        assert max(abs(f / flops[0] - 1) for f in flops) < 0.012


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tables": ("G9",)}, "unknown table"),
        ({"device": "tpu"}, "device"),
        ({"engine": "tensorrt"}, "engine"),
        ({"batch_size": 0}, "batch_size must be a positive"),
        ({"runs": 0}, "runs"),
    ],
)
def test_bad_config(changes, message):
    config = GuidelinesConfig()
    for key, value in changes.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        config.validate()
