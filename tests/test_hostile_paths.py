"""Hostile paths: no temporary folder outlives a benchmark however it ends, long file names,
output paths that cannot be written (checked before any work) and a FIFO among the
calibration images, named where it is.

Each case ends in the right result or one ``error: ...`` line, never a traceback or a hang.
"""

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import answering
from PIL import Image

import shufflenet
from shufflenet import io
from shufflenet.cli import main
from shufflenet.cli import speed as cli_speed
from shufflenet.data import load_eval_data, make_preprocessing
from shufflenet.speed import engines
from shufflenet.speed.engines import make_engine, time_engine

TINY = "shufflenet_v1_g1_x0_25"
ORT = pytest.mark.skipif("onnxruntime" not in engines.available_engines(), reason="no ORT")


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *parts: str) -> None:
    """Run the CLI; it must exit 2 with one ``error:`` line holding every part."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], lines[0]


# -- 1: temporary folders of the bench -------------------------------------------------------
@pytest.fixture
def own_temp(tmp_path, monkeypatch):
    """The system's temporary folder, for this test: a fresh folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("shufflenet-"))


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux; none found elsewhere)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _timing_processes(pid: int) -> list[int]:
    """The children of ``pid`` running the timing process (once it has started)."""
    found = []
    for child in _children(pid):
        try:
            if b"shufflenet.speed.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return shufflenet.create_model(TINY, num_classes=10).eval()


@ORT
@pytest.mark.parametrize("error", [ValueError("refused"), KeyboardInterrupt()])
def test_a_failed_timing_leaves_no_temporary_folder(error, tiny, own_temp, monkeypatch):
    seen = []

    def fail(engine, jobs, **kwargs):
        (job,) = jobs
        seen.extend(Path(path) for path, _ in job.values())
        raise error

    monkeypatch.setattr(engines, "measure_in_process", fail)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(type(error)):
        time_engine("onnxruntime", {"m": tiny}, {"m": x}, [{"m": x}], runs=1, warmup=0)
    assert seen and own_temp in seen[0].parents  # the ONNX file was written there
    assert _leftovers(own_temp) == []


@ORT
def test_an_onnx_binder_leaves_no_temporary_folder(tiny, own_temp):
    x = torch.randn(1, 3, 32, 32)
    run = make_engine(tiny, "onnxruntime", example=x)(x)
    assert run.output().shape == (1, 10)  # the session holds the model, not the file
    assert _leftovers(own_temp) == []


@pytest.mark.slow
@ORT
def test_sigterm_to_bench_removes_its_temporary_folders(tmp_path):
    """``shufflenet bench`` killed by SIGTERM while it times: it ends with one error line, its
    folders (the exported model's, the timing process's) are gone and so is its timing
    process."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    argv = ["bench", TINY, "--engines", "onnxruntime", "--input-size", "224"]
    argv += ["--runs", "100000", "--warmup", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shufflenet", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        linux = Path(f"/proc/{proc.pid}/task").is_dir()
        # until the model is exported and (on Linux) timed in its own process
        while not list(tmp_path.glob("shufflenet-bench-*/**/model.onnx")) or (
            linux and not _timing_processes(proc.pid)
        ):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the bench never started timing"
            time.sleep(0.1)
        workers = _timing_processes(proc.pid)
        time.sleep(0.5)  # the bench has seen its timing process start
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "error: terminated" and "Traceback" not in err
    assert _leftovers(tmp_path) == []
    assert not [pid for pid in workers if _alive(pid)]


# -- 2: a long output file name ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["a" * 240 + ".onnx", "é" * 122 + ".onnx"])  # 245, 249 bytes
def test_a_long_file_name_is_written_atomically(tmp_path, name):
    target = tmp_path / name
    with io.atomic_path(target) as tmp:
        assert len(os.fsencode(tmp.name)) <= 255
        tmp.write_bytes(b"partial")
        # a killed writer's temporary file is found again by its target's name
        assert io.remove_stale_temps(target) == [tmp]
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_stale_temps_of_another_long_name_are_left_alone(tmp_path):
    target = tmp_path / ("a" * 240 + ".onnx")
    other = tmp_path / ("a" * 240 + ".onnb")  # the same start
    with io.atomic_path(other) as tmp:
        tmp.write_bytes(b"other")
        assert io.remove_stale_temps(target) == [] and tmp.exists()


def test_a_name_too_long_for_the_file_system_is_named_as_such(tmp_path, capsys):
    target = tmp_path / ("b" * 260 + ".onnx")
    with pytest.raises(OSError, match="--out file name too long") as err:
        io.check_output_path(target, "--out")
    assert err.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError, match="file name too long") as err, io.atomic_path(target):
        pass
    assert ".tmp" not in str(err.value)  # the path named is the user's, not a temporary one
    argv = ["export", "--model", TINY, "--num-classes", "10", "--input-size", "32"]
    _fails([*argv, "--out", str(target)], capsys, "--out file name too long (265 bytes")
    assert list(tmp_path.iterdir()) == []


# -- 3: output paths checked before any work ---------------------------------------------------
PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc")


@PROC
def test_an_output_path_is_tried_not_inferred_from_permissions():
    # root's permissions allow writing in /proc; the file system does not
    with pytest.raises(PermissionError, match=r"--plot /proc/x\.png: cannot write in /proc"):
        io.check_output_path("/proc/x.png", "--plot")


def test_a_read_only_file_system_is_refused_up_front(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError, match=r"(?i)--out .*: cannot write in .*read-only"):
        io.check_output_path(tmp_path / "f.onnx", "--out")


@PROC
@pytest.mark.parametrize(
    ("argv", "work"),
    [
        (["select", "--budget-ms", "5", "--models", TINY, "--plot", "/proc/x.png"], "select_model"),
        (["guidelines", "--quick", "--out", "/proc/x"], "run_guidelines"),
    ],
)
def test_unwritable_outputs_are_refused_before_the_benchmark(argv, work, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran before the output path was checked")

    monkeypatch.setattr(cli_speed, work, never)
    _fails(argv, capsys, "/proc/x", "cannot write in /proc")


# -- 4: a FIFO among the calibration images ----------------------------------------------------


@pytest.fixture
def calib(tmp_path):
    """``calib/{ant,bee}/*.png`` (no train/ or val/), with a FIFO ``ant/pipe.jpg``."""
    root = tmp_path / "calib"
    for c, name in enumerate(("ant", "bee")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 36), (60 * c, 20 * i, 100)).save(root / name / f"{i}.png")
    os.mkfifo(root / "ant" / "pipe.jpg")
    return root


def test_a_fifo_in_a_folder_of_classes_is_named_with_its_folder(calib, monkeypatch):
    monkeypatch.chdir(calib.parent)
    pre = make_preprocessing("calib", 32)
    with answering(calib / "ant" / "pipe.jpg"):
        for given in ("calib", str(calib)):
            with pytest.raises(ValueError) as err:
                load_eval_data(given, pre)
            text = str(err.value)
            assert text.startswith(f"data folder {given}: "), text
            assert "ant/pipe.jpg (not a regular file)" in text


def test_export_int8_names_the_calibration_folder_holding_a_fifo(calib, capsys, monkeypatch):
    monkeypatch.chdir(calib.parent)
    argv = ["export", "--model", TINY, "--num-classes", "2", "--input-size", "32", "--int8"]
    argv += ["--calib", "calib", "--out", "q.onnx"]
    with answering(calib / "ant" / "pipe.jpg"):
        _fails(argv, capsys, "data folder calib: ", "ant/pipe.jpg (not a regular file)")
    assert not (calib.parent / "q.onnx").exists()
