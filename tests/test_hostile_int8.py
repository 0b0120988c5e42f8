"""int8 reports and export paths under careless input: top-1 counted in the model's class order
whatever order the calibration folder sorts its classes in, an int8 file that agrees too little
with fp32 fails the export, and an output path must carry its format's suffix.

Models are the smallest V1 with two classes and a classifier that always says class 0 (zero
weights, a bias), so that top-1 is the share of that class's images: known without training.
"""

import json

import pytest
import torch
from PIL import Image

import shufflenet
from shufflenet import data
from shufflenet.cli import main
from shufflenet.data import match_classes
from shufflenet.export import FORMATS, calibration_data, export_model, output_files
from shufflenet.export import int8 as int8_module
from shufflenet.export.formats import DEFAULT_INT8_MIN_AGREEMENT

TINY = "shufflenet_v1_g1_x0_25"
PRE = data.make_preprocessing("photos", 32)


def _exit_code(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse rejected a value
        return e.code


def _one_error_line(argv, capsys, code=2):
    assert _exit_code(argv) == code
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _folder(root, counts):
    """ROOT/CLASS/N.png: ``counts`` images per class, distinct colours."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 36), (60 * c, 30 * i, 100)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def says_b(tmp_path):
    """A weights file whose classes are ["b", "a"] and whose classifier always says "b"."""
    model = shufflenet.create_model(TINY, num_classes=2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([4.0, 0.0]))
    return shufflenet.save(model, tmp_path / "w.safetensors", class_names=["b", "a"],
                           preprocessing=PRE)  # fmt: skip


def _tripwire(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


# -- case 1: top-1 in the model's class order ------------------------------------------------------
def test_match_classes_maps_the_data_order_to_the_models():
    assert match_classes(["a", "b"], ["b", "a"], 2, "d", "m") == (["b", "a"], [1, 0])
    assert match_classes(["a", "b"], ["a", "b"], 2, "d", "m") == (["a", "b"], None)
    assert match_classes(["x", "y"], None, 2, "d", "m") == (["x", "y"], None)  # its own order
    assert match_classes(["c", "a"], ["a", "b", "c"], 3, "d", "m", subset=True)[1] == [2, 0]
    with pytest.raises(ValueError, match=r"classes of d \(x, y\) are not those of m \(b, a\)"):
        match_classes(["x", "y"], ["b", "a"], 2, "d", "m")
    with pytest.raises(ValueError, match=r"not those of m"):  # all of the model's, not some
        match_classes(["a"], ["b", "a"], 2, "d", "m")
    with pytest.raises(ValueError, match=r"m has 3 classes and no class names.* not 2"):
        match_classes(["x", "y"], None, 3, "d", "m")


def test_calibration_labels_are_the_models_indices(tmp_path):
    root = _folder(tmp_path / "calib", {"a": 3, "b": 1})
    _, _, own = calibration_data(str(root), PRE)  # the folder's order: a=0, b=1
    assert own.tolist() == [0, 0, 0, 1]
    _, _, labels = calibration_data(str(root), PRE, class_names=["b", "a"], num_classes=2)
    assert labels.tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match=r"calib .*calib \(a, b\) are not among .*\(x, y\)"):
        calibration_data(str(root), PRE, class_names=["x", "y"], num_classes=2)


def test_int8_report_counts_top1_in_the_models_class_order(tmp_path, says_b):
    # "a" sorts first in the folder, "b" is the model's class 0: 1 of the 4 images is a hit.
    root = _folder(tmp_path / "calib", {"a": 3, "b": 1})
    result = export_model(shufflenet.load(says_b), tmp_path / "m.onnx", calib=str(root))
    report = result.int8.report
    assert report.images == 4 and report.agreement == 1.0
    assert report.fp32_top1 == pytest.approx(0.25) and report.int8_top1 == pytest.approx(0.25)
    assert result.passed and result.int8.min_agreement == DEFAULT_INT8_MIN_AGREEMENT


def test_int8_calibration_of_other_classes_is_refused_before_writing(tmp_path, says_b, capsys):
    root = _folder(tmp_path / "calib", {"cat": 1, "dog": 1})
    out = tmp_path / "m.onnx"
    argv = ["export", "--weights", says_b, "--out", out, "--int8", "--calib", root]
    line = _one_error_line(argv, capsys)
    assert "(cat, dog)" in line and "(b, a)" in line, line
    assert not out.exists()


# -- case 2: too little agreement fails the export -------------------------------------------------
def test_int8_below_the_agreement_threshold_exits_1_and_keeps_the_files(
    tmp_path, says_b, capsys, monkeypatch
):
    compare = int8_module.compare_int8

    def disagreeing(*args, **kwargs):
        report = compare(*args, **kwargs)
        report.agreement = 0.34
        return report

    monkeypatch.setattr(int8_module, "compare_int8", disagreeing)
    root = _folder(tmp_path / "calib", {"a": 2, "b": 2})
    out = tmp_path / "m.onnx"
    argv = ["export", "--weights", says_b, "--out", out, "--int8", "--calib", root]
    assert _exit_code([*argv, "--int8-min-agreement", "0.5", "--json"]) == 1
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["int8"]["min_agreement"] == 0.5 and record["int8"]["passed"] is False
    assert record["verification"]["passed"] and record["passed"] is False
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "34.00%" in err[0], err
    assert "--int8-min-agreement 0.5" in err[0] and "kept for inspection" in err[0]
    assert out.exists() and (tmp_path / "m.int8.onnx").exists()


@pytest.mark.parametrize("value", ["80", "-0.1", "nan", "abc"])
def test_int8_min_agreement_is_a_fraction(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setattr("shufflenet.cli.deploy.export_model", _tripwire)
    argv = ["export", "--model", TINY, "--out", tmp_path / "m.onnx", "--int8", "--calib"]
    line = _one_error_line([*argv, "digits", f"--int8-min-agreement={value}"], capsys)
    assert "--int8-min-agreement" in line and "fraction within 0..1" in line


def test_int8_min_agreement_goes_with_int8(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shufflenet.cli.deploy.export_model", _tripwire)
    argv = ["export", "--model", TINY, "--out", tmp_path / "m.onnx", "--int8-min-agreement", "1"]
    assert "goes with --int8" in _one_error_line(argv, capsys)
    model = shufflenet.create_model(TINY, num_classes=2)
    with pytest.raises(ValueError, match=r"int8_min_agreement must be a fraction within 0\.\.1"):
        export_model(model, tmp_path / "m.onnx", int8_min_agreement=1.5)
    assert not list(tmp_path.iterdir())


# -- case 3: each format's suffix ------------------------------------------------------------------
def test_every_format_declares_its_suffixes():
    suffixes = {name: spec.suffixes for name, spec in FORMATS.items()}
    assert suffixes == {
        "onnx": (".onnx",),
        "torchscript": (".pt", ".ts"),
        "ncnn": (".param",),
        "litert": (".tflite",),
        "executorch": (".pte",),
        "mnn": (".mnn",),
    }


@pytest.mark.parametrize(
    ("format", "out", "expected"),
    [
        ("litert", "x.onnx", ".tflite"),
        ("executorch", "x.tflite", ".pte"),
        ("onnx", "x.tflite", ".onnx"),
        ("onnx", "x", ".onnx"),
        ("torchscript", "x.onnx", ".pt or .ts"),
    ],
)
def test_an_out_of_another_suffix_is_refused_before_the_work(
    tmp_path, capsys, monkeypatch, format, out, expected
):
    monkeypatch.setattr("shufflenet.models.create_model", _tripwire)
    monkeypatch.setattr("shufflenet.cli.deploy.export_model", _tripwire)
    with pytest.raises(ValueError, match=f"a {format} export must be named FILE{expected}"):
        output_files(tmp_path / out, format)
    argv = ["export", "--model", TINY, "--format", format, "--out", tmp_path / out]
    line = _one_error_line(argv, capsys)
    assert f"FILE{expected}" in line and out in line
    assert not list(tmp_path.iterdir())


def test_export_model_checks_the_suffix_first(tmp_path):
    model = shufflenet.create_model(TINY, num_classes=2)
    with pytest.raises(ValueError, match=r"a torchscript export must be named FILE\.pt or \.ts"):
        export_model(model, tmp_path / "m.onnx", "torchscript", input_size=(32, 32))
    assert not list(tmp_path.iterdir())
    assert output_files(tmp_path / "M.ONNX", "onnx", int8=True)[0].name == "M.ONNX"
