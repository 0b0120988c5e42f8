"""predict: preprocessing from metadata, engines, class names, and bad files."""

import json

import numpy as np
import pytest
import torch
from conftest import THREE_CLASSES as NAMES
from PIL import Image

import shufflenet
from shufflenet import data
from shufflenet.cli import main
from shufflenet.export import export_onnx
from shufflenet.predict import Predictor, class_names_of, predict
from shufflenet.preprocessing import MEGVII_PREPROCESSING, imagenet_classes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name, size in (("a.png", (50, 40)), ("b.jpg", (64, 64)), ("sub/c.png", (30, 90))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 3])
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_directory_with_bad_images(weights, images):
    results = predict(weights, [images], topk=2)
    by_name = {r.path.split("images/")[1]: r for r in results}
    assert sorted(by_name) == ["a.png", "b.jpg", "broken.jpg", "sub/c.png", "truncated.png"]
    for bad in ("broken.jpg", "truncated.png"):
        assert by_name[bad].error.startswith("not a readable image") and not by_name[bad].top
    model = shufflenet.load(weights)
    transform = data.build_eval_transform(model.weights_metadata["preprocessing"])
    for good in ("a.png", "b.jpg", "sub/c.png"):
        result = by_name[good]
        assert result.error is None and len(result.top) == 2
        with Image.open(images / good) as image, torch.no_grad():
            probs = model(transform(image)[None]).softmax(1)[0]
        best = int(probs.argmax())
        assert result.top[0][:2] == (NAMES[best], best)
        assert result.top[0][2] == pytest.approx(float(probs[best]), abs=1e-6)
        assert result.top[0][2] >= result.top[1][2]


def test_engines_and_onnx_files_agree(weights, images, tmp_path):
    files = [images / "a.png", images / "b.jpg", images / "sub" / "c.png"]
    onnx_file = export_onnx(shufflenet.load(weights), tmp_path / "w.onnx")
    runs = [
        Predictor(weights).predict(files, topk=3),
        Predictor(weights, engine="onnxruntime").predict(files, topk=3),
        Predictor(onnx_file).predict(files, topk=3),
    ]
    assert Predictor(onnx_file).engine == "onnxruntime"
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert [t[1] for t in a.top] == [t[1] for t in b.top]
            assert np.allclose([t[2] for t in a.top], [t[2] for t in b.top], atol=1e-5)
    with pytest.raises(ValueError, match="engine='onnxruntime'"):
        Predictor(onnx_file, engine="torch")


def test_cli_predict_names_the_engine_flag(weights, images, tmp_path, capsys):
    onnx_file = export_onnx(shufflenet.load(weights), tmp_path / "w.onnx")
    argv = ["predict", "--weights", str(onnx_file), "--engine", "torch", str(images / "a.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "predict it with --engine onnxruntime" in err


def test_megvii_preprocessing_feeds_bgr_0_255(weights):
    predictor = Predictor(weights)
    predictor.transform = data.build_eval_transform(
        {**MEGVII_PREPROCESSING.__dict__, "input_size": [224, 224]}
    )
    red = Image.new("RGB", (300, 260), (255, 0, 0))
    x = predictor.transform(red)
    assert x.shape == (3, 224, 224)
    assert torch.all(x[0] == 0) and torch.all(x[2] == 255)  # B, G, R; pixel values


def test_class_names():
    assert class_names_of({"num_classes": 3, "class_names": NAMES}) == NAMES
    assert class_names_of({"num_classes": 2, "class_names": None}) == ["0", "1"]
    names = class_names_of({"num_classes": 1000, "class_names": None})
    assert names == imagenet_classes() and len(set(names)) == 1000
    assert names[0] == "tench" and names[207] == "golden retriever" and names[-1] == "toilet tissue"


def test_cli_predict_reports_bad_files_and_exits_non_zero(weights, images, capsys):
    argv = ["predict", "--weights", str(weights), "--topk", "2"]
    assert main([*argv, str(images), str(images / "missing.png")]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 3
    assert all(name in captured.out for name in ("a.png", "b.jpg", "c.png"))
    assert "broken.jpg: not a readable image" in captured.err
    assert "missing.png: no such file" in captured.err
    assert "3 of 6 file(s) failed" in captured.err and "Traceback" not in captured.err
    assert main([*argv, "--json", str(images / "a.png")]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["top"][0]["class"] in NAMES
    assert main(["predict", "--weights", str(images / "broken.jpg"), str(images)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
