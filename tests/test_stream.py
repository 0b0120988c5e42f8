"""Streaming prediction: the fast decoder against today's preprocessing, row files (CSV, JSON
Lines, Parquet), error rows, lists and folders, decoding workers, resume after kills, and the
same job on a local Ray instance."""

import dataclasses
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import THREE_CLASSES as NAMES
from conftest import answering, digits_model
from PIL import Image

import shufflenet
from shufflenet import data
from shufflenet.cli import main
from shufflenet.predict import find_images, predict
from shufflenet.stream import iter_images, iter_predictions, predict_to_file, read_rows
from shufflenet.stream.decode import FastDecoder
from shufflenet.stream.files import columns, open_writer

FORMATS = ("csv", "jsonl", "parquet")

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth(rng, height, width):
    """A smooth RGB image (colour gradients), like a photo at the model's scale."""
    field = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    return Image.fromarray(field).resize((width, height), Image.BICUBIC)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub" / "deeper").mkdir(parents=True)
    for n in range(9):
        name = ("sub/" if n in (3, 6) else "") + f"{n}." + ("png" if n % 2 else "jpg")
        _smooth(rng, 40 + 9 * n, 90 - 5 * n).save(folder / name)
    _smooth(rng, 300, 400).save(folder / "sub" / "deeper" / "large.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (folder / "1.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 3])
    (folder / "notes.txt").write_text("not an image, not listed")
    (folder / ".hidden.jpg").write_bytes((folder / "0.jpg").read_bytes())
    return folder


def _same_rows(rows, expected):
    """The same rows in any order: probabilities and features as computed in other batches."""
    assert len(rows) == len(expected)
    by_path = {row["path"]: row for row in expected}
    for row in rows:
        other = by_path[row["path"]]
        assert row.keys() == other.keys()
        for key, value in row.items():
            if value is not None and (key == "features" or key.endswith("_probability")):
                np.testing.assert_allclose(value, other[key], rtol=1e-5, atol=1e-6)
            else:
                assert value == other[key], (row["path"], key)


# -- the fast decoder ------------------------------------------------------------------------
def test_fast_decoder_matches_the_eval_transform(tmp_path):
    pre = data.make_preprocessing("x", 224)  # resize 256, crop 224
    transform = data.build_eval_transform(pre)
    decoder = FastDecoder(pre)
    rng = np.random.default_rng(1)
    cases = {
        "large.jpg": _smooth(rng, 1200, 1600),  # decoded at 1/4 scale (draft)
        "portrait.jpg": _smooth(rng, 640, 480),  # decoded whole
        "gray.jpg": _smooth(rng, 300, 500).convert("L"),
        "rgba.png": _smooth(rng, 260, 300).convert("RGBA"),
        "small.png": _smooth(rng, 100, 120),  # upsampled
    }
    for name, image in cases.items():
        image.save(tmp_path / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        with Image.open(tmp_path / name) as reference:
            expected = transform(reference)
        crop = decoder(tmp_path / name)
        assert crop.dtype == torch.uint8 and crop.shape == (3, 224, 224), name
        got = decoder.normalize(crop[None])[0]
        steps = (got - expected).abs() * torch.tensor(pre["std"]).view(3, 1, 1) * 255
        assert steps.mean() < 1.0 and steps.max() < 16, (name, steps.mean(), steps.max())


def test_fast_decoder_megvii_order_and_errors(tmp_path):
    from shufflenet.preprocessing import MEGVII_PREPROCESSING

    pre = {**dataclasses.asdict(MEGVII_PREPROCESSING), "input_size": [8, 8], "resize": 8}
    decoder = FastDecoder(pre)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    x = decoder.normalize(decoder(tmp_path / "red.png")[None])[0]
    assert x[2].min() > 200 and x[0].abs().max() < 1  # BGR, 0-255
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    for path, reason in ((tmp_path / "bad.jpg", "not a readable image"), (tmp_path, "directory")):
        with pytest.raises(ValueError, match=reason):
            decoder(path)


@pytest.mark.slow
def test_top1_agrees_with_todays_predict_on_digits(tmp_path):
    """A trained digits model on digits drawn large as JPEGs and PNGs: the streaming path's
    top-1 is today's predict's on (nearly) every image."""
    model, pre = digits_model()
    weights = shufflenet.save(model, tmp_path / "digits.safetensors", preprocessing=pre)
    digits = data.digits_datasets(None, None)[1]
    folder = tmp_path / "digits"
    folder.mkdir()
    for n in range(120):
        image, _ = digits[n]
        pixels = np.asarray(image.permute(1, 2, 0))
        wide = np.pad(pixels, ((0, 0), (2, 2), (0, 0)))  # 8x12: cropped back by the model
        big = Image.fromarray(wide).resize((30 * 12, 30 * 8), Image.BICUBIC)
        big.save(folder / f"{n:03d}.{'jpg' if n % 2 else 'png'}", quality=90)
    today = predict(weights, [folder], topk=1)
    streamed = list(iter_predictions(weights, [folder], topk=1, batch_size=32))
    assert [r.path for r in streamed] == [r.path for r in today]
    agree = np.mean([a.top[0][1] == b.top[0][1] for a, b in zip(today, streamed, strict=True)])
    labels = [int(digits[n][1]) for n in range(120)]
    accuracy = np.mean([r.top[0][1] == y for r, y in zip(streamed, labels, strict=True)])
    assert agree >= 0.97 and accuracy >= 0.8, (agree, accuracy)


# -- rows ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FORMATS)
def test_rows_in_each_format(weights, images, tmp_path, kind):
    out = tmp_path / f"rows.{kind}"
    result = predict_to_file(weights, [images], out, topk=2, batch_size=4)
    rows = read_rows(out)
    today = predict(weights, [images], topk=2)
    assert [r["path"] for r in rows] == [r.path for r in today]  # the same order
    assert list(rows[0]) == columns(2, False)
    assert result.images == len(rows) == 12 and result.errors == 2
    for row, old in zip(rows, today, strict=True):
        assert bool(row["error"]) == bool(old.error)
        if not old.error:
            assert row["top1_class"] in NAMES and row["top1_index"] == NAMES.index(
                row["top1_class"]
            )
            assert abs(row["top1_probability"] - old.top[0][2]) < 0.05
            assert row["top1_probability"] >= row["top2_probability"]
            assert row["error"] is None
    assert not any(".hidden" in r["path"] for r in rows)


def test_error_rows_and_the_cli(weights, images, tmp_path, capsys):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "rows.jsonl"
    argv = ["predict", str(images), str(fifo), str(empty), str(tmp_path / "missing.png")]
    with answering(fifo):
        assert main([*argv, "--weights", str(weights), "--out", str(out), "--workers", "0"]) == 1
    captured = capsys.readouterr()
    assert "wrote 15 rows" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("error: 5 of 15 image(s) failed")
    errors = {os.path.basename(r["path"]): r["error"] for r in read_rows(out) if r["error"]}
    assert errors["broken.jpg"].startswith("not a readable image")
    assert errors["truncated.png"].startswith("not a readable image")
    assert errors["fifo.jpg"] == "not a regular file (a FIFO, socket or device): refused"
    assert errors["empty"] == "a directory without image files"
    assert errors["missing.png"] == "no such file"


def test_list_file_and_recursion(weights, images, tmp_path):
    listed = tmp_path / "list.txt"
    lines = [str(images / "1.png"), "", str(images / "sub"), str(images / "broken.jpg")]
    listed.write_text("\n".join(lines) + "\n")
    got = list(iter_images([images / "2.jpg"], listed))
    sub = [str(p) for p in find_images([images / "sub"])]
    assert got == [str(images / "2.jpg"), str(images / "1.png"), *sub, str(images / "broken.jpg")]
    assert str(images / "sub" / "deeper" / "large.jpg") in sub
    assert [str(p) for p in find_images([images])] == list(iter_images([images]))
    out = tmp_path / "rows.csv"
    argv = ["predict", "--list", str(listed), "--weights", str(weights), "--out", str(out)]
    assert main(argv) == 1  # broken.jpg
    assert [r["path"] for r in read_rows(out)] == got[1:]
    with pytest.raises(FileNotFoundError):
        iter_images([], tmp_path / "no-list.txt")


def test_two_workers_give_the_same_rows(weights, images, tmp_path):
    rows = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.jsonl"
        predict_to_file(weights, [images, images / "0.jpg"], out, workers=workers, batch_size=3)
        rows[workers] = read_rows(out)
    assert rows[0] == rows[2]
    assert len(rows[0]) == 12  # 0.jpg, repeated, is written once


def test_features_are_the_pooled_embedding(weights, images, tmp_path):
    out = tmp_path / "rows.parquet"
    predict_to_file(weights, [images / "0.jpg"], out, features=True)
    (row,) = read_rows(out)
    model = shufflenet.load(weights)
    decoder = FastDecoder(model.weights_metadata["preprocessing"])
    x = decoder.normalize(decoder(images / "0.jpg")[None])
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)[0]
    assert len(row["features"]) == model.num_features == 1024
    np.testing.assert_allclose(row["features"], expected.numpy(), rtol=1e-4, atol=1e-5)
    csv_out = tmp_path / "rows.csv"
    predict_to_file(weights, [images / "0.jpg"], csv_out, features=True)
    np.testing.assert_allclose(read_rows(csv_out)[0]["features"], row["features"], rtol=1e-6)
    onnx = tmp_path / "w.onnx"
    shufflenet.export.export_model(model, onnx, "onnx")
    with pytest.raises(ValueError, match="features need engine 'torch'"):
        predict_to_file(onnx, [images], tmp_path / "x.csv", features=True)


def test_onnx_engine_rows_match_torch(weights, images, tmp_path):
    outs = []
    for engine in ("torch", "onnxruntime"):
        outs.append(tmp_path / f"{engine}.csv")
        predict_to_file(weights, [images], outs[-1], engine=engine, topk=3)
    torch_rows, ort_rows = (read_rows(out) for out in outs)
    for a, b in zip(torch_rows, ort_rows, strict=True):
        assert a["path"] == b["path"] and a["top1_index"] == b["top1_index"]
        if a["top1_probability"] is not None:
            assert abs(a["top1_probability"] - b["top1_probability"]) < 1e-4


def test_existing_file_needs_resume_and_the_same_columns(weights, images, tmp_path):
    for kind in FORMATS:
        out = tmp_path / f"rows.{kind}"
        predict_to_file(weights, [images / "0.jpg"], out, topk=2)
        with pytest.raises(ValueError, match="continue it with resume"):
            predict_to_file(weights, [images], out, topk=2)
        with pytest.raises(ValueError, match="with these columns"):
            predict_to_file(weights, [images], out, topk=3, resume=True)
        result = predict_to_file(weights, [images], out, topk=2, resume=True)
        assert result.skipped == 1 and result.images == 11
        assert sorted(r["path"] for r in read_rows(out)) == sorted(
            str(p) for p in find_images([images])
        )
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl or \.parquet"):
        predict_to_file(weights, [images], tmp_path / "rows.txt")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_writer_resumes_after_the_last_whole_row(tmp_path, kind):
    names = columns(1, False)
    rows = [
        {"path": p, "error": None, "top1_class": "cat", "top1_index": 0, "top1_probability": 0.5}
        for p in ("a.jpg", 'b "x",\ny.jpg', "c.jpg")
    ]
    out = tmp_path / f"rows.{kind}"
    writer = open_writer(out, names)
    writer.write(rows)
    writer.close()
    whole = out.read_bytes()
    second = whole.index(b"b ")
    inside = whole.index(b"\n", second) + 1  # CSV: in the quoted field; JSON: the line's end
    two = {"a.jpg", rows[1]["path"]}
    cuts = [(second + 3, {"a.jpg"}), (inside, {"a.jpg"} if kind == "csv" else two)]
    for cut, done in [*cuts, (len(whole) - 1, two)]:
        out.write_bytes(whole[:cut])  # killed in the middle of a row
        writer = open_writer(out, names, resume=True)
        assert writer.done == done, cut
        writer.write([r for r in rows if r["path"] not in done])
        writer.close()
        assert out.read_bytes() == whole, cut
    assert read_rows(out)[1]["path"] == rows[1]["path"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_resume_drops_a_row_cut_short(weights, images, tmp_path, kind):
    """A row cut short at any byte (a process killed in a write) is dropped and redone."""
    odd = images / 'a "quoted",\nname.png'  # quotes, a comma and a newline in a CSV field
    Image.new("RGB", (30, 30), (10, 200, 30)).save(odd)
    full = tmp_path / f"full.{kind}"
    predict_to_file(weights, [images], full, batch_size=1)  # the same numbers in any run
    data_bytes = full.read_bytes()
    header = data_bytes.index(b"\n") + 1 if kind == "csv" else 0
    inside = data_bytes.index(b"\n", data_bytes.index(b"quoted")) + 1  # in CSV: in the field
    for cut in (header, random.Random(0).randrange(inside, len(data_bytes) - 1), inside):
        out = tmp_path / f"cut.{kind}"
        out.write_bytes(data_bytes[:cut])
        predict_to_file(weights, [images], out, resume=True, batch_size=1)
        assert out.read_bytes() == data_bytes, cut


def test_resume_refuses_damage_before_the_end(weights, images, tmp_path):
    out = tmp_path / "rows.jsonl"
    predict_to_file(weights, [images], out)
    lines = out.read_bytes().split(b"\n")
    lines[2] = b'{"path": broken'
    out.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 3 cannot be read"):
        predict_to_file(weights, [images], out, resume=True)


def test_parquet_parts_are_merged_once(weights, images, tmp_path):
    out = tmp_path / "rows.parquet"
    names = columns(1, False)
    writer = open_writer(out, names, part_rows=2)
    rows = [{**dict.fromkeys(names), "path": f"p{n}", "error": "e"} for n in range(5)]
    writer.write(rows[:3])
    writer.abort()  # a part of 3 rows kept
    parts = out.with_name("rows.parquet.parts")
    assert [p.name for p in parts.iterdir()] == ["part-000000.parquet"] and not out.exists()
    (parts / ".part-000001.parquet.abc123.tmp").write_bytes(b"half")  # a killed atomic write
    writer = open_writer(out, names, resume=True, part_rows=2)
    assert writer.done == {"p0", "p1", "p2"}
    writer.write(rows[3:])
    writer.close()
    assert [r["path"] for r in read_rows(out)] == ["p0", "p1", "p2", "p3", "p4"]
    assert not parts.exists()


def _kill_and_resume(command, written, step, seed, kills=4):
    """Run ``command`` (with --resume after the first) until it finishes: killed (SIGKILL or
    SIGTERM) once while it starts, then ``kills`` times after ``written()`` grew by a random
    1..``step`` and a random moment more; how much was written at each kill."""
    rng = random.Random(seed)
    found = []
    for attempt in range(kills + 2):
        args = command + (["--resume"] if attempt else [])
        before = written()
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt <= kills:
            target = before + rng.randint(1, step)
            start = time.monotonic()
            while process.poll() is None and time.monotonic() - start < 300:
                if attempt == 0 and time.monotonic() - start > rng.uniform(0.2, 1.0):
                    break
                if attempt and written() >= target:
                    time.sleep(rng.uniform(0.0, 0.2))
                    break
                time.sleep(0.01)
            process.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
        _, err = process.communicate(timeout=300)
        found.append(written())
        if process.returncode in (0, 1):  # done (1: the error rows)
            return found
        killed = (2, 128 + signal.SIGTERM, -signal.SIGTERM, -signal.SIGKILL)
        assert process.returncode in killed, err
    raise AssertionError(f"not finished: {found}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", FORMATS)
def test_killed_and_resumed_runs_write_every_image_once(weights, tmp_path, kind):
    rng = np.random.default_rng(3)
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(240):
        _smooth(rng, 60, 80).save(folder / f"{n:03d}.jpg")
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff nope")
    out = tmp_path / f"rows.{kind}"
    if kind == "parquet":  # small parts, through the API: the CLI keeps 4096 rows a part
        script = (
            "import sys; from shufflenet.stream import predict_to_file as p; "
            f"p({str(weights)!r}, [{str(folder)!r}], {str(out)!r}, batch_size=4, part_rows=8, "
            "resume='--resume' in sys.argv)"
        )
        command = [sys.executable, "-c", script]
    else:
        command = [sys.executable, "-m", "shufflenet", "predict", str(folder), "--weights"]
        command += [str(weights), "--out", str(out), "--batch-size", "4", "--workers", "1"]

    def written():
        if kind == "parquet":
            parts = out.with_name(out.name + ".parts")
            return len(list(parts.glob("part-*"))) if parts.exists() else 0
        return out.read_bytes().count(b"\n") if out.exists() else 0

    step = 4 if kind == "parquet" else 50
    found = _kill_and_resume(command, written, step, seed=len(kind))
    assert len(found) >= 4 and found[1] > 0, found  # killed with rows written
    rows = read_rows(out)
    expected = [str(p) for p in find_images([folder])]
    assert sorted(r["path"] for r in rows) == sorted(expected)  # each exactly once
    whole = tmp_path / f"whole.{kind}"
    predict_to_file(weights, [folder], whole, batch_size=4)
    _same_rows(rows, read_rows(whole))


def test_progress_lines_off_a_terminal(weights, images, tmp_path, capsys, monkeypatch):
    from shufflenet.cli import stream as cli_stream

    monkeypatch.setattr(cli_stream, "PROGRESS_SECONDS", 0.0)
    argv = ["predict", str(images / "0.jpg"), "--weights", str(weights), "--json"]
    assert main([*argv, "--out", str(tmp_path / "r.csv"), "--batch-size", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 1
    assert "predict: 1 images (0 errors, 0 skipped)" in captured.err


def test_cli_options_that_need_out(weights, images, capsys):
    for extra in (["--workers", "2"], ["--resume"], ["--ray"], ["--features"]):
        assert main(["predict", str(images), "--weights", str(weights), *extra]) == 2
        assert "only with --out FILE" in capsys.readouterr().err
    assert main(["predict", "--weights", str(weights)]) == 2
    assert "or --list FILE" in capsys.readouterr().err
    listed = images / "list.txt"
    listed.write_text(f"{images / '0.jpg'}\n")
    assert main(["predict", "--weights", str(weights), "--list", str(listed)]) == 0
    assert capsys.readouterr().out.startswith(f"{images / '0.jpg'}: ")


def test_decoded_bytes_are_bounded(monkeypatch, tmp_path):
    from shufflenet import predict as predict_module

    monkeypatch.setattr(predict_module, "MAX_IMAGE_BYTES", 10)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        FastDecoder(data.make_preprocessing("x", 8))(tmp_path / "a.png")


# -- Ray -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_writes_the_same_rows(weights, images, tmp_path, local_ray, capsys):
    from shufflenet.stream import predict_on_ray

    local = {}
    for kind in FORMATS:
        predict_to_file(weights, [images], tmp_path / f"local.{kind}", features=True)
        local[kind] = read_rows(tmp_path / f"local.{kind}")
    for kind in FORMATS:
        out = tmp_path / f"ray.{kind}"
        result = predict_on_ray(weights, [images], out, actors=2, batch_size=4, features=True)
        assert (result.images, result.errors) == (12, 2)
        assert out.is_dir()
        _same_rows(read_rows(out), local[kind])
    with pytest.raises(ValueError, match="exists"):
        predict_on_ray(weights, [images], tmp_path / "ray.csv")
    out = tmp_path / "cli.parquet"
    argv = ["predict", str(images), "--weights", str(weights), "--out", str(out), "--ray"]
    assert main([*argv, "--actors", "1"]) == 1
    assert "wrote 12 rows" in capsys.readouterr().out
    assert len(read_rows(out)) == 12
