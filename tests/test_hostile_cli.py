"""Hostile and careless command lines: outputs over inputs, bad values, unwritable outputs.

Every bad value ends in one ``error: ...`` line naming the flag or file and exit 2, before any
work starts (the steps that would do the work are replaced by tripwires that fail the test),
and nothing is overwritten. Hypothesis fuzzes the argument types, the speed settings and a few
whole command lines that stop before any model is built.
"""

import argparse
import contextlib
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shufflenet
from shufflenet.cli import main
from shufflenet.cli.common import batch_arg, comma_list, input_size_arg, num_classes_arg
from shufflenet.limits import MAX_BATCH_ELEMENTS, MAX_RUNS, MAX_THREADS
from shufflenet.preprocessing import MAX_CLASSES, MAX_INPUT_SIZE, MIN_INPUT_SIZE
from shufflenet.speed.bench import BenchConfig
from shufflenet.speed.guidelines import GuidelinesConfig
from shufflenet.speed.selection import select_model

TINY = "shufflenet_v2_x0_5"


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse rejected a value
        return e.code


def refused(argv, capsys):
    """The one ``error: `` line of a command line that must exit 2."""
    code = _exit_code([str(a) for a in argv])
    err = capsys.readouterr().err.splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def tripwires(monkeypatch, *targets):
    """Replace each ``module.attribute`` with a function that fails the test if it is called."""

    def tripwire(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for target in targets:
        monkeypatch.setattr(target, tripwire)


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    shufflenet.save(shufflenet.create_model(TINY, num_classes=10), path)
    return path.read_bytes()


# -- an export never replaces its own input -----------------------------------------


@pytest.mark.parametrize(
    ("weights", "out", "extra"),
    [
        ("model.safetensors", "model.safetensors", []),
        ("model.safetensors", "sub/../model.safetensors", ["--format", "torchscript"]),
        ("model.json", "model.param", ["--format", "ncnn"]),  # ncnn writes FILE.json too
        ("model.bin", "model.param", ["--format", "ncnn"]),  # and FILE.bin
        ("model.int8.onnx", "model.onnx", ["--int8", "--calib", "digits"]),
    ],
)
def test_export_never_overwrites_its_weights(tmp_path, weights_bytes, capsys, weights, out, extra):
    (tmp_path / "sub").mkdir()
    source = tmp_path / weights
    source.write_bytes(weights_bytes)
    line = refused(["export", "--weights", source, "--out", tmp_path / out, *extra], capsys)
    assert "--out" in line and weights in line and "also an input" in line
    assert source.read_bytes() == weights_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["sub", weights])


# -- messages that say what to fix; output folders refused up front ----------------


@pytest.mark.parametrize("batch", ["abc", "1e9", "0", "-3", "", "dynamicc"])
def test_export_batch_says_what_to_fix(tmp_path, capsys, monkeypatch, batch):
    tripwires(monkeypatch, "shufflenet.models.create_model", "shufflenet.cli.deploy.export_model")
    argv = ["export", "--model", TINY, "--out", tmp_path / "m.onnx", f"--batch={batch}"]
    line = refused(argv, capsys)
    assert "--batch" in line and "'dynamic' or a positive integer" in line
    assert "invalid literal" not in line


def test_batch_arg():
    assert batch_arg("dynamic") is None and batch_arg("Dynamic") is None
    assert batch_arg("8") == 8
    with pytest.raises(argparse.ArgumentTypeError, match="dynamic"):
        batch_arg("eight")


@pytest.mark.parametrize(
    ("argv", "flag", "work"),
    [
        (["export", "--model", TINY, "--out", "{dir}"], "--out", "shufflenet.models.create_model"),
        (
            ["profile", TINY, "--timing", "--input-size", "32", "--plot", "{dir}"],
            "--plot",
            "shufflenet.speed.timing.time_layers",
        ),
        (
            ["select", "--budget-ms", "10", "--models", TINY, "--plot", "{dir}"],
            "--plot",
            "shufflenet.cli.speed.select_model",
        ),
        (
            ["guidelines", "--quick", "--tables", "G1", "--out", "{file}"],
            "--out",
            "shufflenet.cli.speed.run_guidelines",
        ),
        (
            ["guidelines", "--quick", "--tables", "G1", "--out", "{dir}"],  # dir/guidelines.json
            "--out",
            "shufflenet.cli.speed.run_guidelines",
        ),
    ],
)
def test_output_paths_are_checked_before_the_work(tmp_path, capsys, monkeypatch, argv, flag, work):
    tripwires(monkeypatch, work, "shufflenet.cli.deploy.export_model")
    folder = tmp_path / "folder"
    (folder / "guidelines.json").mkdir(parents=True)
    file = tmp_path / "file.txt"
    file.write_text("keep")
    line = refused([a.format(dir=folder, file=file) for a in argv], capsys)
    assert flag in line and ("is a folder" in line or "is a file" in line)
    assert file.read_text() == "keep"


# -- cases 13 and 15: sizes, class counts and timing settings bounded, no traceback ----------


@pytest.mark.parametrize("size", ["1", "31", "16x224", "100000", "224x5000"])
@pytest.mark.parametrize("verb", ["profile", "bench", "select", "export"])
def test_input_size_is_bounded_everywhere(tmp_path, capsys, monkeypatch, verb, size):
    tripwires(
        monkeypatch,
        "shufflenet.models.create_model",
        "shufflenet.complexity.profile",
        "shufflenet.speed.bench.build_model",
    )
    argv = {
        "profile": ["profile", TINY],
        "bench": ["bench", TINY],
        "select": ["select", "--budget-ms", "10", "--plot", tmp_path / "s.png"],
        "export": ["export", "--model", TINY, "--out", tmp_path / "m.onnx"],
    }[verb]
    line = refused([*argv, "--input-size", size], capsys)
    assert "--input-size" in line and f"{MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}" in line


def test_smallest_input_size_runs(capsys):
    assert main(["profile", TINY, "--input-size", str(MIN_INPUT_SIZE)]) == 0
    assert f"@ {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}" in capsys.readouterr().out


@pytest.mark.parametrize("classes", ["1000000000000", str(MAX_CLASSES + 1), "-1", "1.5", "nan"])
@pytest.mark.parametrize("verb", ["profile", "export"])
def test_num_classes_is_bounded(tmp_path, capsys, monkeypatch, verb, classes):
    tripwires(monkeypatch, "shufflenet.models.create_model", "shufflenet.complexity.profile")
    argv = {
        "profile": ["profile", TINY],
        "export": ["export", "--model", TINY, "--out", tmp_path / "m.onnx"],
    }[verb]
    line = refused([*argv, f"--num-classes={classes}"], capsys)
    assert "--num-classes" in line and f"0..{MAX_CLASSES}" in line


BENCH = ["bench", TINY, "--input-size", "32"]
PROFILE = ["profile", TINY, "--timing", "--input-size", "32"]
SELECT = ["select", "--models", TINY, "--input-size", "32", "--budget-ms", "10"]
GUIDELINES = ["guidelines", "--quick", "--tables", "G4"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ([*BENCH, "--runs", "0"], "runs"),
        ([*BENCH, "--runs", str(MAX_RUNS + 1)], "runs"),
        ([*BENCH, "--warmup", "-1"], "warmup"),
        ([*BENCH, "--threads", "0"], "threads"),
        ([*BENCH, "--threads", "100000"], "threads"),  # OpenMP crashes on this many
        ([*BENCH, "--batch-size", "1,0"], "batch_size"),
        ([*BENCH, "--batch-size", "100000000"], "batch_size"),
        ([*BENCH, "--runs", "inf"], "--runs"),
        ([*PROFILE, "--runs", "-1"], "runs"),
        ([*PROFILE, "--threads", "100000"], "threads"),
        ([*PROFILE, "--batch-size", "1000000000"], "batch_size"),
        ([*PROFILE, "--batch-size", "nan"], "--batch-size"),
        ([*SELECT, "--runs", "0"], "runs"),
        ([*SELECT, "--threads", "100000"], "threads"),
        ([*SELECT, "--batch-size", "100000000"], "batch_size"),
        ([*SELECT, "--budget-ms", "inf"], "budget_ms"),
        ([*SELECT, "--budget-ms", "nan"], "budget_ms"),
        ([*SELECT, "--budget-ms", "-1"], "budget_ms"),
        ([*SELECT, "--budget-ms", "0"], "budget_ms"),
        ([*GUIDELINES, "--threads", "100000"], "threads"),
        ([*GUIDELINES, "--batch-size", "1000000"], "batch_size"),
        ([*GUIDELINES, "--runs", str(MAX_RUNS + 1)], "runs"),
    ],
)
def test_timing_settings_are_bounded(tmp_path, capsys, monkeypatch, argv, named):
    tripwires(
        monkeypatch,
        "shufflenet.speed.bench.build_model",
        "shufflenet.speed.timing.torch_threads",
        "shufflenet.speed.guidelines.torch_threads",
        "shufflenet.speed.guidelines.build_benchmark",
    )
    out = ["--plot", tmp_path / "p.png"] if argv[0] in ("select", "profile") else []
    out = ["--out", tmp_path / "g"] if argv[0] == "guidelines" else out
    line = refused([*argv, *out], capsys)
    assert named in line


def test_a_failed_allocation_is_one_line(capsys, monkeypatch):
    def allocate(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 240000000000 bytes. Error code 12"
        )

    monkeypatch.setattr("shufflenet.complexity.profile", allocate)
    line = refused(["profile", TINY], capsys)
    assert "not enough memory" in line and "240000000000 bytes" in line
    monkeypatch.setattr("shufflenet.complexity.profile", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as bad input
        main(["profile", TINY])


# -- property-based fuzzing -----------------------------------------------------------------

SPECIAL = ["inf", "-inf", "nan", "NaN", "-1", "0", "1", "", " ", "1e9", "0x10", "1_000", "dynamic"]
INTEGERS = st.integers(min_value=-(10**20), max_value=10**20)
TEXT = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=12),
    INTEGERS.map(str),
    st.floats().map(str),
    st.tuples(INTEGERS, INTEGERS).map(lambda hw: f"{hw[0]}x{hw[1]}"),
)
FUZZ = settings(max_examples=100, deadline=None)


@FUZZ
@given(text=TEXT)
def test_argument_types_return_bounded_values_or_argparse_errors(text):
    def parsed(kind):
        try:
            return kind(text)
        except argparse.ArgumentTypeError as e:
            assert "\n" not in str(e)  # the text is quoted, never printed raw
            return None

    size = parsed(input_size_arg)
    assert size is None or all(MIN_INPUT_SIZE <= s <= MAX_INPUT_SIZE for s in size)
    classes = parsed(num_classes_arg)
    assert classes is None or 0 <= classes <= MAX_CLASSES
    batch = parsed(batch_arg)
    assert batch is None or batch >= 1
    batches = parsed(comma_list(int))
    assert batches is None or (batches and all(isinstance(b, int) for b in batches))


SETTING = st.one_of(st.none(), st.integers(min_value=-5, max_value=10**9))


@FUZZ
@given(runs=SETTING, warmup=SETTING, threads=SETTING, batch=SETTING, side=SETTING)
def test_speed_settings_validate_or_raise_value_error(runs, warmup, threads, batch, side):
    batch = 1 if batch is None else batch
    side = 224 if side is None else side
    timing = (
        (runs is None or 1 <= runs <= MAX_RUNS)
        and (warmup is None or 0 <= warmup <= MAX_RUNS)
        and (threads is None or 1 <= threads <= MAX_THREADS)
    )
    bench = BenchConfig(
        models=[TINY],
        batch_sizes=[batch],
        input_size=(side, side),
        threads=threads,
        runs=30 if runs is None else runs,
        warmup=5 if warmup is None else warmup,
    )
    valid = (
        timing
        and MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE
        and 1 <= batch <= MAX_BATCH_ELEMENTS // (3 * side * side)
    )
    guidelines = GuidelinesConfig(
        quick=True, batch_size=batch, threads=threads, runs=runs, warmup=warmup
    )
    for config, ok in ((bench, valid), (guidelines, timing and batch == 1)):
        try:
            config.validate()
        except ValueError as e:
            assert not ok, e
            named = ("runs", "warmup", "threads", "batch_size", "input_size")
            assert any(name in str(e) for name in named), e
        else:
            assert ok or config is guidelines  # larger batches of guidelines' inputs may fit
            assert timing


@FUZZ
@given(budget=st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, 1e-300]))
def test_select_refuses_any_budget_but_a_positive_finite_one(budget):
    with pytest.raises(ValueError) as e:
        select_model(budget, ["nosuchnet"])  # a valid budget stops at the unknown model
    assert ("budget_ms" in str(e.value)) == (not 0 < budget < math.inf)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


COMMAND_LINES = {  # each stops before any model is built: the model is unknown
    "bench": (
        ["bench", "nosuchnet"],
        ["--runs", "--warmup", "--threads", "--batch-size", "--input-size", "--engines"],
    ),
    "profile": (
        ["profile", "nosuchnet", "--timing"],
        ["--runs", "--threads", "--batch-size", "--input-size", "--num-classes"],
    ),
    "select": (
        ["select", "--models", "nosuchnet", "--budget-ms", "1"],
        ["--budget-ms", "--runs", "--threads", "--batch-size", "--input-size"],
    ),
    "export": (
        ["export", "--model", "nosuchnet"],
        ["--batch", "--input-size", "--num-classes", "--opset"],
    ),
}


@FUZZ
@given(
    verb=st.sampled_from(sorted(COMMAND_LINES)),
    pick=st.integers(min_value=0, max_value=10),
    value=TEXT,
)
def test_fuzzed_command_lines_end_in_one_error_line(scratch, verb, pick, value):
    argv, flags = COMMAND_LINES[verb]
    out = ["--plot", scratch / "p.png"] if verb in ("select", "profile") else []
    out = ["--out", scratch / "m.onnx"] if verb == "export" else out
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = _exit_code([*argv, *map(str, out), f"{flags[pick % len(flags)]}={value}"])
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not list(scratch.iterdir())  # nothing written


def test_eval_workers_and_export_batch_are_bounded(tmp_path, capsys):
    weights = shufflenet.save(
        shufflenet.create_model("shufflenet_v1_g3_x0_25", num_classes=3), tmp_path / "w.safetensors"
    )
    assert main(["eval", "--weights", str(weights), "--data", "digits", "--workers", "100000"]) == 2
    assert "workers must be an integer within 0..1024" in capsys.readouterr().err
    out = tmp_path / "big.onnx"
    argv = ["export", "--weights", str(weights), "--out", str(out), "--batch", "4097"]
    assert main([*argv, "--input-size", "4096"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: batch_size 4097") and len(err.splitlines()) == 1
    assert not out.exists()
