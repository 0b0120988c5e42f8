"""Hostile and careless LiteRT, ExecuTorch and MNN files: side-cars of other exports or edited
ones, damaged graphs that crash a runtime, FIFOs and endless files, inputs past what a runtime
survives, non-finite outputs and names that would drive the terminal. Each ends in the right
result or one clear error naming the file: no hang, no traceback, no native crash.

The files are exported once per module from the smallest model at 32x32 (MNN ~1 s, LiteRT
~10 s, ExecuTorch ~20 s).
"""

import hashlib
import importlib
import json
import os
import random
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import shufflenet
from shufflenet import runtimes
from shufflenet.cli import main
from shufflenet.export import export_model, open_executorch, open_litert, open_mnn
from shufflenet.export.edge import check_edge_metadata
from shufflenet.export.mnn import SIDECAR_HASH
from shufflenet.predict import Predictor
from shufflenet.weights import validate_metadata

TINY = "shufflenet_v1_g1_x0_25"
NAMES = ["cat", "dog", "eel"]
EXT = {"litert": ".tflite", "executorch": ".pte", "mnn": ".mnn"}
OPEN = {"litert": open_litert, "executorch": open_executorch, "mnn": open_mnn}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _weights(tmp, name="w.safetensors", **kwargs):
    torch.manual_seed(0)
    model = shufflenet.create_model(TINY, num_classes=3)
    return shufflenet.save(model, tmp / name, class_names=NAMES, **kwargs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """FORMAT -> an exported file of the tiny model at 32x32 (one folder each)."""
    root = tmp_path_factory.mktemp("edge")
    weights = _weights(root)
    files = {}
    for fmt, ext in EXT.items():
        folder = root / fmt
        folder.mkdir()
        path = folder / f"model{ext}"
        model = shufflenet.load(weights)
        assert export_model(model, path, fmt, input_size=(32, 32)).passed
        files[fmt] = path
    return files


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(path)
    return path


def _copy(path, folder):
    """An export's files (an .mnn with its side-car) copied into ``folder``."""
    folder.mkdir(exist_ok=True)
    for file in path.parent.glob(f"{path.stem}.*"):
        shutil.copy(file, folder / file.name)
    return folder / path.name


def _sidecar(path):
    return json.loads(path.with_suffix(".json").read_text())


def _write_sidecar(path, metadata):
    path.with_suffix(".json").write_text(json.dumps(metadata))


def _one_error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _within(seconds, call):
    """``call()``'s result or exception, failing the test if it blocks past ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- the side-car belongs to its graph --------------------------------------------------------
def test_another_exports_sidecar_is_refused(exported, tmp_path, image, capsys):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    other_weights = _weights(tmp_path, "other.safetensors", preprocessing=dict(
        input_size=[32, 32], resize=32, mean=[0.0] * 3, std=[1.0] * 3, scale=1.0,
        channel_order="BGR"))  # fmt: skip
    other = tmp_path / "other" / "model.mnn"
    torch.manual_seed(1)
    assert export_model(shufflenet.load(other_weights), other, "mnn", input_size=(32, 32)).passed
    shutil.copy(other.with_suffix(".json"), mine.with_suffix(".json"))
    with pytest.raises(ValueError, match=r"describes another \.mnn file"):
        open_mnn(mine)
    assert main(["predict", "--weights", str(mine), str(image)]) == 2
    assert "describes another .mnn file" in _one_error(capsys)


EDITS = {
    "class_names": lambda m: m.update(class_names=["eel", "dog", "cat"]),
    "channel_order": lambda m: m["preprocessing"].update(channel_order="BGR"),
    "std": lambda m: m["preprocessing"].update(std=[0.5] * 3),
    "in_chans": lambda m: m["model_config"].update(in_chans=1),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_sidecar_is_refused(exported, tmp_path, edit):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    metadata = _sidecar(mine)
    EDITS[edit](metadata)
    _write_sidecar(mine, metadata)
    with pytest.raises(ValueError, match=r"is not the metadata .* was exported with"):
        open_mnn(mine)


def test_an_mnn_file_changed_since_its_export_is_refused(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    data = bytearray(mine.read_bytes())
    data[len(data) // 2] ^= 0x10
    mine.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"describes another \.mnn file"):
        open_mnn(mine)


def test_a_sidecar_without_the_graphs_hash_is_refused(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    metadata = _sidecar(mine)
    del metadata[SIDECAR_HASH]
    _write_sidecar(mine, metadata)
    with pytest.raises(ValueError, match=f"no {SIDECAR_HASH}"):
        open_mnn(mine)


@pytest.mark.parametrize("std", [1e-300, 1e-9, 1e300])
def test_preprocessing_values_past_the_pixel_range_are_refused(std):
    metadata = {
        "format": "shufflenet/1",
        "model_config": {"name": TINY, "num_classes": 3},
        "num_classes": 3,
        "preprocessing": {
            "input_size": [32, 32],
            "mean": [0.5] * 3,
            "std": [std] * 3,
            "scale": 1 / 255,
        },
    }
    with pytest.raises(ValueError, match="std / scale must be within"):
        validate_metadata(metadata, "m.json")
    metadata["preprocessing"]["std"] = [0.25] * 3
    assert validate_metadata(metadata, "m.json")


# -- what MNN is asked to run -----------------------------------------------------------------
@pytest.mark.parametrize("batch,size", [(87381, 32), (5, 4096)])
def test_a_sidecar_asking_for_more_than_mnn_runs_is_refused(exported, tmp_path, batch, size):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    metadata = _sidecar(mine)
    metadata["batch"] = batch
    metadata["preprocessing"].update(input_size=[size, size], resize=size)
    _write_sidecar(mine, metadata)
    with pytest.raises(ValueError, match=r"too large|more than MNN runs"):
        open_mnn(mine)


def test_an_mnn_export_past_what_mnn_runs_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "big.mnn"
    args = ["export", "--model", TINY, "--format", "mnn", "--batch", "5", "--input-size", "4096"]
    assert main([*args, "--out", str(out)]) == 2
    assert "more than MNN runs" in _one_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_mnn_int8_with_a_relative_out(tmp_path, monkeypatch, capsys):
    model = shufflenet.create_model(TINY, num_classes=10)
    weights = shufflenet.save(model, tmp_path / "w.safetensors", class_names=list("0123456789"))
    monkeypatch.chdir(tmp_path)
    args = ["export", "--weights", str(weights), "--format", "mnn", "--input-size", "32"]
    code = main(
        [*args, "--int8", "--calib", "digits", "--int8-min-agreement", "0", "--out", "q/m3.mnn"]
    )
    assert code == 0, capsys.readouterr().err
    opened = open_mnn("q/m3.int8.mnn", first_in_child=False)
    assert opened.metadata["quantization"]["calibration_images"] > 0
    assert opened(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# -- runtimes that crash on a damaged file ------------------------------------------------------
CRASH = "import os, signal; os.kill(os.getpid(), signal.SIG{})"


@pytest.mark.parametrize("fmt,how", [("mnn", "SEGV"), ("executorch", "ABRT"), ("litert", "SEGV")])
def test_a_runtime_crash_on_a_file_is_an_error(
    exported, tmp_path, image, monkeypatch, capsys, fmt, how
):
    """The first open runs in a child process: a runtime that dies there (as MNN does on a
    damaged .mnn, XNNPACK's compiler on a damaged .pte) is one error line, and this process
    goes on."""
    module = importlib.import_module(f"shufflenet.export.{fmt}")
    monkeypatch.setattr(module, "PROBE", CRASH.format(how))
    path = exported[fmt]
    with pytest.raises(ValueError, match=f"{fmt} crashed opening or running it \\(SIG{how}\\)"):
        OPEN[fmt](path)
    assert main(["predict", "--weights", str(path), str(image)]) == 2
    assert f"crashed opening or running it (SIG{how})" in _one_error(capsys)


def _mutants(path, count, seed):
    """``count`` copies of ``path``'s bytes, each with 5 bits flipped in its first 2 KiB or last
    30 KiB (where the flatbuffers keep their tables, not the weights)."""
    data = path.read_bytes()
    rng = random.Random(seed)
    for _ in range(count):
        mutant = bytearray(data)
        for _ in range(5):
            i = rng.choice([rng.randrange(2048), len(data) - 1 - rng.randrange(30_000)])
            mutant[i] ^= 1 << rng.randrange(8)
        yield bytes(mutant)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,seed,count", [("mnn", 9, 8), ("litert", 0, 8), ("executorch", 0, 5)])
def test_damaged_files_never_crash_predict(exported, tmp_path, image, fmt, seed, count):
    """Mutated files end in predictions or one ValueError; a runtime crash would end this test
    process. A mutated .mnn gets its side-car's hash renewed, so that MNN itself reads it (with
    these seeds, the first MNN mutant segfaults MNN in the child on the machines tried)."""
    outcomes = {"predicted": 0, "refused": 0, "crashed": 0}
    for i, mutant in enumerate(_mutants(exported[fmt], count, seed)):
        path = _copy(exported[fmt], tmp_path / str(i))
        path.write_bytes(mutant)
        if fmt == "mnn":
            metadata = _sidecar(path)
            metadata[SIDECAR_HASH] = hashlib.sha256(mutant).hexdigest()
            _write_sidecar(path, metadata)
        try:
            results = Predictor(path).predict([image])
            assert len(results) == 1
            outcomes["predicted"] += 1
        except ValueError as e:
            outcomes["crashed" if "crashed" in str(e) else "refused"] += 1
    assert sum(outcomes.values()) == count, outcomes


# -- files that are not regular, and endless ones -----------------------------------------------
def test_a_fifo_sidecar_is_refused_without_blocking(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    mine.with_suffix(".json").unlink()
    os.mkfifo(mine.with_suffix(".json"))
    with pytest.raises(ValueError, match="not a regular file"):
        _within(20, lambda: open_mnn(mine))


def test_a_sidecar_linked_to_dev_zero_is_refused(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    mine.with_suffix(".json").unlink()
    mine.with_suffix(".json").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="not a regular file"):
        _within(20, lambda: open_mnn(mine))


@pytest.mark.parametrize("fmt", ["mnn", "litert"])
def test_a_fifo_for_the_model_file_is_refused_without_blocking(exported, tmp_path, fmt):
    mine = _copy(exported[fmt], tmp_path / "mine")
    mine.unlink()
    os.mkfifo(mine)
    with pytest.raises(ValueError, match="not a regular file"):
        _within(20, lambda: OPEN[fmt](mine))


def test_an_image_swapped_for_a_fifo_after_the_check_never_blocks(tmp_path, monkeypatch, image):
    """The check is made on the open file: a FIFO that replaces a checked image between the
    check and the read is refused, never waited on."""
    predictor = Predictor(_weights(tmp_path))
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    real_is_dir = type(fifo).is_dir
    monkeypatch.setattr(type(fifo), "is_dir", lambda self: real_is_dir(self))
    (result,) = _within(20, lambda: predictor.predict([fifo]))
    assert result.error == "not a regular file (a FIFO, socket or device): refused"


def test_weights_swapped_for_a_fifo_after_the_check_never_block(tmp_path, monkeypatch):
    from shufflenet import weights as weights_module

    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    monkeypatch.setattr(weights_module, "_check_file", lambda path: fifo)  # the check passed
    with pytest.raises(ValueError, match="not a regular file"):
        _within(20, lambda: shufflenet.load(fifo))


# -- data loss --------------------------------------------------------------------------------
def test_an_unrelated_json_is_never_overwritten_by_a_sidecar(tmp_path, capsys):
    settings = tmp_path / "settings.json"
    settings.write_text('{"theme": "dark"}\n')
    out = tmp_path / "settings.mnn"
    args = ["export", "--model", TINY, "--format", "mnn", "--input-size", "32"]
    assert main([*args, "--out", str(out)]) == 2
    assert "is not the metadata of a shufflenet export" in _one_error(capsys)
    assert settings.read_text() == '{"theme": "dark"}\n'
    assert not out.exists()


def test_a_sidecar_of_ours_is_replaced_by_a_new_export(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    torch.manual_seed(3)
    model = shufflenet.create_model(TINY, num_classes=4)
    assert export_model(model, mine, "mnn", input_size=(32, 32)).passed
    assert _sidecar(mine)["num_classes"] == 4


# -- tracebacks become errors -----------------------------------------------------------------
def test_a_deeply_nested_sidecar_is_an_error(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    mine.with_suffix(".json").write_text("[" * 200_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        open_mnn(mine)


def test_a_5000_digit_integer_in_a_sidecar_names_the_file(exported, tmp_path):
    mine = _copy(exported["mnn"], tmp_path / "mine")
    text = mine.with_suffix(".json").read_text().replace('"batch": 1', '"batch": ' + "9" * 5000)
    mine.with_suffix(".json").write_text(text)
    with pytest.raises(ValueError, match=r"model\.json: unreadable metadata"):
        open_mnn(mine)


@pytest.mark.parametrize("output", [[3], [1, 3, 1], [3, 1]])
def test_outputs_other_than_batch_by_classes_are_refused(output):
    metadata = {
        "format": "shufflenet/1",
        "model_config": {"name": TINY, "num_classes": 3},
        "num_classes": 3,
        "preprocessing": {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "scale": 1},
        "batch": 1,
        "input_layout": "NCHW",
    }
    assert check_edge_metadata(metadata, "m.pte", [1, 3, 32, 32], [1, 3])
    with pytest.raises(ValueError, match="do not fit 3 channels and 3 classes"):
        check_edge_metadata(metadata, "m.pte", [1, 3, 32, 32], output)


def test_a_foreign_tflite_file_names_itself(tmp_path):
    path = tmp_path / "foreign.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"foreign\.tflite"):
        open_litert(path)


def test_onnxruntime_on_an_edge_file_says_which_engine_runs_it(exported, image, capsys):
    code = main(
        ["predict", "--engine", "onnxruntime", "--weights", str(exported["mnn"]), str(image)]
    )
    assert code == 2
    assert "run this file with engine 'mnn'" in _one_error(capsys)


# -- non-finite outputs -------------------------------------------------------------------------
def test_non_finite_outputs_are_a_per_file_error(tmp_path, image, capsys):
    torch.manual_seed(0)
    model = shufflenet.create_model(TINY, num_classes=3)
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    weights = shufflenet.save(model, tmp_path / "nan.safetensors")
    assert main(["predict", "--json", "--weights", str(weights), str(image)]) == 1
    out, err = capsys.readouterr()
    (row,) = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert row["top"] == [] and "not finite" in row["error"]
    assert "not finite" in err


# -- terminal injection -----------------------------------------------------------------------
def test_file_names_with_control_characters_print_escaped(tmp_path, capsys):
    weights = _weights(tmp_path)
    name = tmp_path / "a\nb.png: cat 100.0%\x1b[2J.png"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(name, format="PNG")
    assert main(["predict", "--weights", str(weights), str(name)]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "\x1b" not in out
    assert "a\\nb.png" in out and "\\x1b[2J" in out


def test_error_lines_escape_what_comes_from_files(tmp_path, capsys):
    missing = tmp_path / "w\x1b]0;pwned\x07\nOK.safetensors"
    assert main(["predict", "--weights", str(missing), str(tmp_path)]) == 2
    line = _one_error(capsys)
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;pwned\\x07\\nOK" in line


def test_probe_reports_its_signal_by_name(tmp_path):
    code = CRASH.format("FPE")
    with pytest.raises(ValueError, match=r"x\.mnn: mnn crashed opening or running it \(SIGFPE\)"):
        runtimes.probe("mnn", code, tmp_path / "copy.mnn", "x.mnn", 10, ["1,3,32,32"])


def test_a_safetensors_header_with_escapes_prints_escaped(tmp_path, image, capsys):
    header = {"w": {"dtype": "\x1b]0;pwned\x07F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "evil.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    assert main(["predict", "--weights", str(path), str(image)]) == 2
    line = _one_error(capsys)
    assert "\x1b" not in line and "\x07" not in line and "evil.safetensors" in line


def test_one_mean_and_std_value_serve_every_channel(tmp_path, image):
    """What ``save`` accepts, ``predict`` and ``export`` take: one value for all channels."""
    pre = {"input_size": [32, 32], "resize": 32, "mean": [0.5], "std": [0.25], "scale": 1 / 255}
    torch.manual_seed(0)
    model = shufflenet.create_model(TINY, num_classes=3)
    weights = shufflenet.save(model, tmp_path / "one.safetensors", preprocessing=pre)
    (result,) = Predictor(weights).predict([image])
    assert result.error is None
    x = torch.from_numpy(np.asarray(Image.open(image).resize((32, 32)), np.float32))
    x = ((x.permute(2, 0, 1) - 127.5) / 63.75)[None]
    with torch.no_grad():
        expected = model.eval()(x).softmax(1)[0]
    assert result.top[0][1] == int(expected.argmax())
    assert result.top[0][2] == pytest.approx(float(expected.max()), abs=1e-5)
    assert export_model(model, tmp_path / "one.onnx", "onnx", input_size=(32, 32)).passed
