import json
import subprocess
import sys

import pytest

import shufflenet
from shufflenet.cli import main, parse_input_size


@pytest.mark.slow
def test_models_json_lists_every_model_with_paper_numbers(capsys):
    assert main(["models", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == shufflenet.list_models()
    v2 = {r["name"]: r for r in records}["shufflenet_v2_x1_0"]
    assert v2["paper_mflops"] == 146 and v2["paper_top1_err"] == 30.6
    assert v2["flops"] == pytest.approx(146e6, rel=0.02)


@pytest.mark.slow
def test_models_table(capsys):
    assert main(["models", "shufflenet_v2_*"]) == 0
    out = capsys.readouterr().out
    assert "shufflenet_v2_x2_0" in out and "shufflenet_v1" not in out


def test_profile_table_and_json(capsys):
    assert main(["profile", "shufflenet_v2_x0_5", "--input-size", "160x192"]) == 0
    out = capsys.readouterr().out
    assert "stage2.0:stack" in out or "stage2.0:cat" in out
    assert "@ 160x192" in out
    assert main(["profile", "shufflenet_v1_g3_x0_5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["flops"] == sum(layer["flops"] for layer in data["layers"])
    assert data["input_size"] == [3, 224, 224]


def test_parse_input_size():
    assert parse_input_size("224") == (224, 224)
    assert parse_input_size("160x192") == (160, 192)
    with pytest.raises(ValueError):
        parse_input_size("0x3")


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "nosuchmodel"],
        ["profile", "shufflenet_v2_x0_5", "--input-size", "abc"],
        ["models", "nothing*"],
        ["frobnicate"],
    ],
)
def test_errors_are_one_line_exit_2(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "shufflenet", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
