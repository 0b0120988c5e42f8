"""Hostile and careless inputs to ``shufflenet train``: each case, reproduced.

Every case ends in one ``error: ...`` line and exit 2 (no traceback, nothing lost), or works.
"""

import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors
import torch
from conftest import answering, image_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import shufflenet.weights
from shufflenet.cli import main
from shufflenet.data import check_image_folder, load_data
from shufflenet.train import CHECKPOINT_FORMAT, TrainConfig, fit
from shufflenet.train.files import lock_run_dir

TINY = "shufflenet_v1_g3_x0_25"
QUICK = {"image_size": 32, "batch_size": 32, "limit_train_batches": 2, "bn_recalibrate": 1}
QUICK_ARGS = ["--image-size", "32", "--batch-size", "32", "--limit-train-batches", "2"]
QUICK_ARGS += ["--bn-recalibrate", "1", "--no-progress", "--device", "cpu"]
# For the 2 x 4 images of _folder.
FOLDER_ARGS = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1"]
FOLDER_ARGS += ["--no-progress", "--device", "cpu"]
OUTPUTS = ["checkpoint.pt", "curves.png", "metrics.csv", "model.safetensors"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *parts: str) -> None:
    """Run the CLI; it must exit 2 with one ``error:`` line holding every part."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0]


# -- 4: a FIFO in the training tree ------------------------------------------------------
def test_fifo_in_training_tree_is_reported_never_opened(tmp_path, capsys):
    root = image_folder(tmp_path / "photos")
    fifo = root / "train" / "ant" / "pipe.jpg"
    os.mkfifo(fifo)
    args = ["train", TINY, "--data", str(root), "--out", str(tmp_path / "r"), *FOLDER_ARGS]
    with answering(fifo):
        _fails(args, capsys, "train/ant/pipe.jpg (not a regular file)", "skip_bad_images")
        assert not (tmp_path / "r").exists()
        assert main([*args, "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image" in out and "8 train / 8 val images" in out


# -- 6: two runs into one run dir --------------------------------------------------------
@pytest.mark.slow
def test_second_run_into_a_busy_run_dir_fails_at_once(tmp_path, capsys):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "shufflenet", "train", TINY, "--epochs", "1000"]
    first = subprocess.Popen(
        [*cmd, "--out", str(out), *QUICK_ARGS, "--threads", "1"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = first.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(f"training {TINY}"), line  # it holds the lock by now
        second = ["train", TINY, "--out", str(out), *QUICK_ARGS, "--epochs", "1"]
        _fails(second, capsys, f"another training run holds {out}", "choose another out")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    with lock_run_dir(out):  # the kernel released the killed run's lock
        pass


# -- 7: a symlink loop in the training tree ----------------------------------------------
def test_symlinked_folders_are_not_followed(tmp_path):
    root = image_folder(tmp_path / "photos", ("cat", "dog"))
    (root / "train" / "cat" / "up").symlink_to("..")  # a loop through every class
    (root / "train" / "dog" / "linked.jpg").symlink_to(root / "val" / "dog" / "0.jpg")
    assert check_image_folder(root).num_images == {"train": 9, "val": 8}
    data = load_data(str(root), 32)
    labels = [(Path(path).parent.name, data.classes[y]) for path, y in data.train.samples]  # type: ignore[attr-defined]
    assert len(labels) == 9 and all(folder == label for folder, label in labels)
    # a class folder that links to its split would label every other class's images
    for split in ("train", "val"):
        (root / split / "all").symlink_to(".")
    with pytest.raises(ValueError, match=r"link to a folder holding other classes.*train/all"):
        check_image_folder(root)


# -- 8: the classes change before --resume -----------------------------------------------
def test_resume_refuses_other_classes(tmp_path, capsys):
    root = image_folder(tmp_path / "photos")
    out = tmp_path / "r"
    assert main(["train", TINY, "--data", str(root), "--out", str(out), *FOLDER_ARGS]) == 0
    capsys.readouterr()
    resume = ["train", TINY, "--resume", "--out", str(out), "--no-progress"]
    for split in ("train", "val"):
        (root / split / "bee").rename(root / split / "wasp")
    _fails(resume, capsys, "only in the data: wasp; only in the checkpoint: bee")
    for split in ("train", "val"):
        (root / split / "wasp").rename(root / split / "bee")
    image_folder(tmp_path / "more", ("cicada",))
    for split in ("train", "val"):
        (tmp_path / "more" / split / "cicada").rename(root / split / "cicada")
    _fails(resume, capsys, "only in the data: cicada; only in the checkpoint: -")
    for split in ("train", "val"):
        shutil.rmtree(root / split / "cicada")
    assert main(resume) == 0


def test_resume_refuses_a_checkpoint_that_lacks_parts(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    config = {"model": TINY, "epochs": 1}
    torch.save({"format": CHECKPOINT_FORMAT, "config": config}, out / "checkpoint.pt")
    resume = ["train", TINY, "--resume", "--out", str(out), "--no-progress"]
    _fails(resume, capsys, f"checkpoint {out / 'checkpoint.pt'} is damaged: it lacks epoch")


# -- 10: temporary files of a killed writer ----------------------------------------------
def test_runs_remove_the_temp_files_of_a_killed_writer(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    stale = [out / f".{name}.k1ll3d.tmp" for name in OUTPUTS]
    stale[0].write_bytes(b"half a checkpoint")  # killed while writing the first checkpoint
    config = TrainConfig(model=TINY, epochs=1, out=str(out), progress=False, **QUICK)
    fit(config)
    assert sorted(p.name for p in out.iterdir()) == [*OUTPUTS, "notes.txt"]
    for path in stale:  # killed while writing each file, then resumed
        path.write_bytes(b"half")
    fit(replace(config, resume=True))
    assert sorted(p.name for p in out.iterdir()) == [*OUTPUTS, "notes.txt"]


# -- 12: a full disk ---------------------------------------------------------------------
def _torch_full(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 320 vs 0")


def _safetensors_full(*args, **kwargs):
    raise safetensors.SafetensorError("Error while serializing: I/O error (os error 28)")


@pytest.mark.parametrize(
    ("module", "writer", "full", "written"),
    [
        (torch, "save", _torch_full, "checkpoint.pt"),
        (shufflenet.weights, "save_file", _safetensors_full, "model.safetensors"),
    ],
)
def test_full_disk_is_one_clear_error(tmp_path, capsys, monkeypatch, module, writer, full, written):
    out = tmp_path / "r"
    monkeypatch.setattr(module, writer, full)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=1, used=1, free=0))
    argv = ["train", TINY, "--epochs", "1", "--out", str(out), *QUICK_ARGS]
    _fails(argv, capsys, f"no space left on the device writing {out / written}")
    assert not list(tmp_path.rglob("*.tmp"))


# -- 13, 14, 15: settings out of range, infinite or NaN ----------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "100000"], "image_size must be within 32..4096 pixels"),
        (["--warmup-epochs", "inf"], "warmup_epochs must be >= 0 and finite, got inf"),
        (["--warmup-epochs", "nan"], "warmup_epochs must be >= 0 and finite, got nan"),
        (["--lr", "inf"], "lr must be > 0 and finite, got inf"),
        (["--lr", "nan"], "lr must be > 0 and finite, got nan"),
        (["--weight-decay", "nan"], "weight_decay must be >= 0 and finite, got nan"),
        (["--weight-decay", "-1"], "weight_decay must be >= 0 and finite, got -1.0"),
        (["--momentum", "-0.5"], "momentum must be in [0, 1), got -0.5"),
        (["--momentum", "nan"], "momentum must be in [0, 1), got nan"),
        (["--label-smoothing", "nan"], "label_smoothing must be in [0, 1), got nan"),
        (["--drop-rate", "-0.1"], "drop_rate must be in [0, 1), got -0.1"),
        (["--drop-rate", "nan"], "drop_rate must be in [0, 1), got nan"),
        (["--bn-recalibrate", "-1"], "bn_recalibrate must be an integer >= 0"),
        (["--seed", str(2**64)], "seed must be an integer in 0..4294967295"),
        (["--threads", "100000"], "threads must be an integer in 1..1024"),
        (["--workers", "100000"], "workers must be an integer in 0..1024"),
    ],
)
def test_bad_settings_name_the_parameter(tmp_path, capsys, flags, message):
    _fails(["train", TINY, "--out", str(tmp_path / "r"), *flags], capsys, message)
    assert not (tmp_path / "r").exists()


def test_out_that_cannot_hold_a_run_fails_before_any_work(tmp_path, capsys, monkeypatch):
    file = tmp_path / "taken"
    file.write_text("keep me")
    for out in (file, file / "r"):
        argv = ["train", TINY, "--out", str(out), *QUICK_ARGS]
        _fails(argv, capsys, f"{file} is not a folder")
        assert capsys.readouterr().out == ""  # not one epoch, not even the data
    assert file.read_text() == "keep me"
    locked = tmp_path / "read-only"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    _fails(["train", TINY, "--out", str(locked / "r"), *QUICK_ARGS], capsys, "cannot write in")
    assert capsys.readouterr().out == "" and not (locked / "r").exists()


# -- property: TrainConfig validation raises ValueError or gives a usable config ---------
NUMERIC_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "warmup_epochs",
    "image_size",
    "drop_rate",
    "bn_recalibrate",
    "limit_train_batches",
    "seed",
    "workers",
    "threads",
    "freeze_stages",
)
ANY_NUMBER = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-2, 5000),
    st.floats(),
    st.floats(0, 1),
    st.text(max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(NUMERIC_FIELDS, ANY_NUMBER)))
def test_train_config_validation_raises_value_error_or_gives_a_usable_config(values):
    try:
        config = TrainConfig(model=TINY, **values).validated()
    except ValueError:
        return
    assert isinstance(config.image_size, int) and 32 <= config.image_size <= 4096
    assert isinstance(config.lr, float) and math.isfinite(config.lr) and config.lr > 0
    for name in ("momentum", "label_smoothing", "drop_rate"):
        assert 0 <= getattr(config, name) < 1
    for name in ("weight_decay", "warmup_epochs"):
        assert math.isfinite(getattr(config, name)) and getattr(config, name) >= 0
    for name in ("batch_size", "bn_recalibrate", "seed"):
        assert type(getattr(config, name)) is int and getattr(config, name) >= 0
    # None: the run chooses the length from the data
    assert config.epochs is None or (type(config.epochs) is int and config.epochs >= 1)
    assert config.freeze_stages == -1  # freezing needs init_weights, which is not given


def test_class_folders_named_with_control_characters_are_refused_up_front(tmp_path):
    from shufflenet.data import check_image_folder

    for split in ("train", "val"):
        folder = tmp_path / split / "cat\x1b[2J"
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(folder / "a.png")
    with pytest.raises(ValueError, match="control characters"):
        check_image_folder(tmp_path)
