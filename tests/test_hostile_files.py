"""Hostile and careless files: weights, ONNX files, checkpoints and inputs crafted to
exhaust memory, forge output, hang, or end in a traceback. Each gets one clear ``ValueError``
(``error: ...`` and exit 2 on the command line) before anything large is allocated."""

import json
import os
import re
import threading
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import shufflenet
from shufflenet import data
from shufflenet.cli import main
from shufflenet.convert import convert_checkpoint
from shufflenet.evaluate import evaluate_weights
from shufflenet.export import export_model, export_onnx, read_onnx_metadata
from shufflenet.export.torchscript import TORCHSCRIPT_METADATA
from shufflenet.predict import predict
from shufflenet.preprocessing import MAX_CLASSES, MAX_IN_CHANS, MAX_INPUT_SIZE
from shufflenet.weights import (
    CONFIG_KEYS,
    FORMAT,
    MAX_RESIZE,
    validate_metadata,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "eel"]
TINY = "shufflenet_v1_g1_x0_25"  # the smallest registered model: fast to build, save and load
DROP = object()  # an edit that deletes the key
WITHIN = "must be an integer within"


class Raw(str):
    """A metadata value stored as it is, not as JSON."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def weights(folder):
    """A 3-class model trained (so to speak) at 32x32."""
    model = shufflenet.create_model("shufflenet_v2_x0_5", num_classes=3).eval()
    pre = data.make_preprocessing("x", 32)
    return shufflenet.save(model, folder / "w.safetensors", class_names=NAMES, preprocessing=pre)


@pytest.fixture(scope="module")
def image(folder):
    path = folder / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def onnx_file(weights, folder):
    return export_onnx(shufflenet.load(weights), folder / "w.onnx")


def _decoded(path):
    """(metadata with JSON values decoded, tensors) of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return {k: v if k == "format" else json.loads(v) for k, v in raw.items()}, tensors


def _encode(metadata):
    """Metadata as stored: JSON text, but a ``format`` string and ``Raw`` values as they are."""
    return {
        k: v if isinstance(v, Raw) or (k == "format" and isinstance(v, str)) else json.dumps(v)
        for k, v in metadata.items()
    }


def _craft(source, out, tensors=None, **edits):
    """A copy of the weights file ``source`` with its metadata edited (``DROP`` deletes a key)."""
    metadata, own = _decoded(source)
    for key, value in edits.items():
        if value is DROP:
            del metadata[key]
        else:
            metadata[key] = value
    save_file(own if tensors is None else tensors, str(out), metadata=_encode(metadata))
    return out


def _preprocessing(weights, **changes):
    return {**shufflenet.read_metadata(weights)["preprocessing"], **changes}


def _config(weights, **changes):
    return {**shufflenet.read_metadata(weights)["model_config"], **changes}


def _one_line_error(argv, capsys, match):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and match in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    return captured


# -- nothing a file asks for is allocated unbounded ----------------------------------------
def test_metadata_asking_for_huge_inputs_is_refused_before_allocating(
    weights, image, folder, capsys
):
    bomb = _craft(
        weights,
        folder / "bomb.safetensors",
        preprocessing=_preprocessing(weights, input_size=[20000, 20000], resize=20000),
    )
    for read in (shufflenet.load, shufflenet.read_metadata, lambda p: predict(p, [image])):
        with pytest.raises(ValueError, match=f"{bomb}: preprocessing input_size must be within"):
            read(bomb)
    with pytest.raises(ValueError, match="input_size"):
        evaluate_weights(bomb, "digits")
    for argv in (
        ["predict", "--weights", str(bomb), str(image)],
        ["eval", "--weights", str(bomb), "--data", "digits"],
        ["export", "--weights", str(bomb), "--out", str(folder / "bomb.onnx")],
    ):
        _one_line_error(argv, capsys, "input_size")
    assert not (folder / "bomb.onnx").exists()
    classes = 10**12
    many = _craft(
        weights,
        folder / "many.safetensors",
        model_config=_config(weights, num_classes=classes),
        num_classes=classes,
        class_names=None,
    )
    with pytest.raises(ValueError, match=f"{many}: model_config: num_classes must be an integer"):
        shufflenet.load(many)


def test_create_model_bounds_num_classes():
    with pytest.raises(ValueError, match=f"num_classes must be an integer within 0..{MAX_CLASSES}"):
        shufflenet.create_model(TINY, num_classes=10**12)
    model = shufflenet.create_model(TINY, num_classes=MAX_CLASSES)
    assert model.fc.out_features == MAX_CLASSES
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="num_classes"):
        shufflenet.create_model(TINY, num_classes=True)


def test_reset_classifier_keeps_the_config_savable(tmp_path):
    model = shufflenet.create_model(TINY, num_classes=10)
    model.reset_classifier(5)  # as the README shows, before saving
    loaded = shufflenet.load(shufflenet.save(model, tmp_path / "m.safetensors"))
    assert loaded.num_classes == 5 and loaded.model_config["num_classes"] == 5


@pytest.mark.parametrize(
    "tensors,match",
    [
        ({"fc.weight": torch.empty(10**9, 0)}, f"num_classes {WITHIN} 0..{MAX_CLASSES}"),
        ({"conv1.0.weight": torch.empty(24, 10**9, 3, 0)}, f"in_chans {WITHIN} 1..{MAX_IN_CHANS}"),
    ],
    ids=["num_classes", "in_chans"],
)
def test_converted_tensor_shapes_are_bounded_before_building(tmp_path, capsys, tensors, match):
    src = tmp_path / "bomb.pth"
    torch.save(tensors, src)
    assert src.stat().st_size < 10_000
    dst = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=f"{src}: {match}"):
        convert_checkpoint(src, dst, "torchvision")
    _one_line_error(["convert", str(src), str(dst), "--from", "torchvision"], capsys, match)
    assert not dst.exists()


# -- class names cannot drive the terminal -------------------------------------------------
@pytest.mark.parametrize(
    "names",
    [
        ["\x1b[2J\x1b[H", "dog", "eel"],
        ["cat", "dog\nevil.jpg: trusted 100.0%", "eel"],
        ["cat", "dog", "e\u202eel"],  # right-to-left override
        ["cat", "dog", "\ud800"],  # a lone surrogate, which cannot even be printed
    ],
    ids=["ansi", "newline", "bidi", "surrogate"],
)
def test_class_names_with_control_characters_are_refused(
    weights, image, onnx_file, folder, capsys, names
):
    evil = _craft(weights, folder / "evil.safetensors", class_names=names)
    with pytest.raises(ValueError, match=rf"{evil}: class_names\[\d\] .* control character"):
        shufflenet.load(evil)
    captured = _one_line_error(
        ["predict", "--weights", str(evil), str(image)], capsys, "class_names"
    )
    assert "trusted" not in captured.out and "\x1b" not in captured.err + captured.out
    assert "\n" not in captured.err.strip() and "\u202e" not in captured.err
    proto = onnx.load(str(onnx_file))
    props = {p.key: p for p in proto.metadata_props}
    props["class_names"].value = json.dumps(names)
    onnx.save(proto, str(folder / "evil.onnx"))
    with pytest.raises(ValueError, match="class_names"):
        predict(folder / "evil.onnx", [image])
    model = shufflenet.create_model(TINY, num_classes=3)
    with pytest.raises(ValueError, match="control character"):
        shufflenet.save(model, folder / "never.safetensors", class_names=names)
    assert not (folder / "never.safetensors").exists()


# -- a FIFO never hangs predict ------------------------------------------------------------
def test_a_fifo_among_the_inputs_is_refused_without_blocking(weights, image, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    inside = tmp_path / "dir"
    inside.mkdir()
    os.mkfifo(inside / "pipe.jpg")
    (inside / "b.png").write_bytes(image.read_bytes())
    results = []
    worker = threading.Thread(
        target=lambda: results.extend(predict(weights, [image, fifo, inside])), daemon=True
    )
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # blocked opening the FIFO: give it a writer so that the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
        pytest.fail("predict blocked on a FIFO")
    assert [r.path for r in results] == [str(image), str(fifo), str(inside / "b.png")]
    good, pipe, other = results
    assert good.error is None and other.error is None and good.top == other.top
    assert pipe.error == "not a regular file (a FIFO, socket or device): refused"


# -- exports record the size their graph was made for -------------------------------------
@pytest.mark.slow
def test_exports_at_another_size_record_it(weights, image, folder):
    model = shufflenet.load(weights)
    out = folder / "at64.onnx"
    assert export_model(model, out, input_size=(64, 64)).passed
    pre = read_onnx_metadata(out)["preprocessing"]
    assert pre["input_size"] == [64, 64] and pre["resize"] == 74  # 37 at 32: the same crop fraction
    (result,) = predict(out, [image])
    assert result.error is None and result.top[0][0] in NAMES
    script = folder / "at64.pt"
    assert export_model(model, script, "torchscript", input_size=(64, 64)).passed
    files = {TORCHSCRIPT_METADATA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        torch.jit.load(str(script), _extra_files=files)
    assert json.loads(files[TORCHSCRIPT_METADATA])["preprocessing"]["input_size"] == [64, 64]
    ncnn = export_model(model, folder / "at64.param", "ncnn", input_size=(64, 48))
    assert ncnn.passed
    sidecar = json.loads((folder / "at64.json").read_text())
    assert sidecar["input_size"] == sidecar["preprocessing"]["input_size"] == [64, 48]
    # A file whose metadata disagrees with its graph (as exports before this fix wrote them)
    proto = onnx.load(str(out))
    props = {p.key: p for p in proto.metadata_props}
    props["preprocessing"].value = json.dumps(_preprocessing(weights))
    onnx.save(proto, str(folder / "stale.onnx"))
    with pytest.raises(ValueError, match=r"graph takes 64x64 .* 32x32.*export it again"):
        predict(folder / "stale.onnx", [image])


# -- crafted metadata and ONNX files ------------------------------------------------------
V2 = "shufflenet_v2_x0_5"
CRAFTED = [
    pytest.param({"num_classes": 5}, "num_classes 5 does not match the 3 classes of", id="classes"),
    pytest.param(
        {"model_config": {"name": V2, "num_classes": 5}, "num_classes": 5, "class_names": None},
        "checkpoint does not fit the model: shape: fc.weight",
        id="config_classes",
    ),
    pytest.param(
        {"model_config": {"name": V2, "num_classes": 3, "evil": 1}},
        "model_config: unknown keys 'evil'",
        id="unknown_key",
    ),
    pytest.param({"model_config": {"num_classes": 3}}, "model_config needs a name", id="no_name"),
    pytest.param({"preprocessing": DROP}, "metadata lacks preprocessing", id="no_preprocessing"),
    pytest.param(
        {"preprocessing": {"scale": 0}},
        "preprocessing scale must be a finite number > 0",
        id="scale_zero",
    ),
    pytest.param(
        {"preprocessing": {"mean": "0.5"}}, "preprocessing mean must be a list", id="string_mean"
    ),
    pytest.param(
        {"preprocessing": {"std": [float("nan")] * 3}},
        "preprocessing std must hold finite",
        id="nan_std",
    ),
    pytest.param(
        {"preprocessing": {"mean": [10**400, 0, 0]}},
        "preprocessing mean must hold finite",
        id="huge_int_mean",
    ),
    pytest.param(
        {"preprocessing": {"input_size": [True, 64]}},
        "input_size must hold integers",
        id="bool_size",
    ),
    pytest.param(
        {"model_config": {"name": V2, "num_classes": 3, "layout": "evil"}},
        "model_config: layout must be one of",
        id="bad_layout",
    ),
    pytest.param(
        {"model_config": {"name": "resnet50", "num_classes": 3}},
        "unknown model 'resnet50'",
        id="unknown_model",
    ),
    pytest.param(
        {"preprocessing": {"channel_order": "GBR"}},
        "channel_order must be RGB or BGR",
        id="channel_order",
    ),
]


@pytest.mark.parametrize("edits,match", CRAFTED)
def test_crafted_metadata_gives_one_clear_error(weights, image, folder, capsys, edits, match):
    if isinstance(edits.get("preprocessing"), dict):
        edits = {**edits, "preprocessing": _preprocessing(weights, **edits["preprocessing"])}
    crafted = _craft(weights, folder / "crafted.safetensors", **edits)
    with pytest.raises(ValueError, match=re.escape(f"{crafted}: ")) as error:
        shufflenet.load(crafted)
    assert match in str(error.value)
    with pytest.raises(ValueError, match=re.escape(match)):
        predict(crafted, [image])
    _one_line_error(["predict", "--weights", str(crafted), str(image)], capsys, match)


def _with_two_outputs(onnx_file, out):
    proto = onnx.load(str(onnx_file))
    logits = proto.graph.output[0].name
    proto.graph.node.append(onnx.helper.make_node("Identity", [logits], ["extra"]))
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, ["batch", 3])
    )
    onnx.save(proto, str(out))
    return out


def _with_external_data(onnx_file, out, location):
    """``onnx_file`` with its largest weight read from ``location``, relative to ``out``."""
    proto = onnx.load(str(onnx_file))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    target = out.parent / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(tensor.raw_data)
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def test_onnx_files_with_two_outputs_or_outside_data_are_refused(
    onnx_file, image, tmp_path, capsys
):
    two = _with_two_outputs(onnx_file, tmp_path / "two.onnx")
    with pytest.raises(ValueError, match=f"{two} has 2 outputs"):
        predict(two, [image])
    _one_line_error(["predict", "--weights", str(two), str(image)], capsys, "2 outputs")
    outside = _with_external_data(onnx_file, tmp_path / "sub" / "m.onnx", "../secret.bin")
    with pytest.raises(ValueError, match=r"external data '\.\./secret\.bin' outside its folder"):
        predict(outside, [image])
    absolute = str(tmp_path / "secret.bin")
    elsewhere = _with_external_data(onnx_file, tmp_path / "abs" / "m.onnx", absolute)
    with pytest.raises(ValueError, match="outside its folder"):
        predict(elsewhere, [image])
    inside = _with_external_data(onnx_file, tmp_path / "ok" / "m.onnx", "weights.bin")
    (result,) = predict(inside, [image])  # external data beside the file is fine
    assert result.error is None and result.top[0][0] in NAMES


# -- messages say what to fix -------------------------------------------------------------
@pytest.mark.parametrize(
    "config,match",
    [
        (Raw("{not json"), "model_config must be a JSON object such as"),
        ([V2], "model_config must be a JSON object such as"),
        ({"name": 3}, "model_config needs a name"),
        ({"name": V2, "num_classes": "3"}, "num_classes must be an integer"),
        ({"name": V2, "num_classes": 3, "drop_rate": 2}, "drop_rate must be in [0, 1)"),
        ({"name": V2, "num_classes": 3, "in_chans": 10**6}, "in_chans must be an integer within"),
    ],
    ids=["not_json", "list", "name_type", "string_classes", "drop_rate", "in_chans"],
)
def test_a_malformed_model_config_says_what_to_fix(weights, folder, config, match):
    crafted = _craft(weights, folder / "config.safetensors", model_config=config)
    with pytest.raises(ValueError, match=re.escape(f"{crafted}: ")) as error:
        shufflenet.read_metadata(crafted)
    assert match in str(error.value)


def test_resize_zero_is_blamed_on_the_metadata(weights, image, folder, capsys):
    crafted = _craft(
        weights, folder / "resize0.safetensors", preprocessing=_preprocessing(weights, resize=0)
    )
    with pytest.raises(ValueError, match=f"{crafted}: preprocessing resize must be an integer"):
        predict(crafted, [image])
    _one_line_error(["predict", "--weights", str(crafted), str(image)], capsys, str(crafted))


def test_int8_calibration_data_is_checked_before_the_fp32_file_is_written(tmp_path, capsys):
    empty = tmp_path / "calib"
    empty.mkdir()
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", TINY, "--num-classes", "3", "--out", str(out), "--int8"]
    _one_line_error([*argv, "--calib", str(empty)], capsys, str(empty))
    assert not out.exists()


# -- weights of the wrong type are refused, not cast --------------------------------------
@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.uint8, torch.complex64])
def test_non_float_weights_are_refused(weights, folder, tmp_path, dtype):
    _, tensors = _decoded(weights)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    crafted = _craft(weights, folder / "cast.safetensors", tensors=cast)
    with pytest.raises(ValueError, match=rf"{crafted}: .*dtype: conv1\.0\.weight: {dtype}"):
        shufflenet.load(crafted)
    src = tmp_path / "cast.pth"
    torch.save(cast, src)
    with pytest.raises(ValueError, match="floating point"):
        convert_checkpoint(src, tmp_path / "cast.safetensors", "torchvision")


def test_half_precision_weights_still_load(weights, folder):
    _, tensors = _decoded(weights)
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    model = shufflenet.load(_craft(weights, folder / "half.safetensors", tensors=half))
    assert model.conv1[0].weight.dtype == torch.float32


# -- convert never replaces its source -----------------------------------------------------
def test_convert_refuses_to_write_over_its_source(tmp_path, capsys):
    src = tmp_path / "x.pth"
    torch.save(shufflenet.create_model("shufflenet_v2_x0_5", num_classes=3).state_dict(), src)
    before = src.read_bytes()
    with pytest.raises(ValueError, match=r"dst .* is also an input"):
        convert_checkpoint(src, src, "torchvision")
    _one_line_error(
        ["convert", str(src), str(src), "--from", "torchvision"], capsys, "also an input"
    )
    assert src.read_bytes() == before


# -- fuzzing: the metadata reader only ever raises ValueError --------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
TOP_KEYS = ["format", "model_config", "num_classes", "class_names", "preprocessing", "data"]
NESTED_KEYS = [*CONFIG_KEYS, "resize", "input_size", "mean", "std", "scale", "channel_order"]
NEAR = st.sampled_from(
    [0, 1, 3, -1, 31, 32, 4096, 4097, 10**12, 0.5, 1.0, -0.0, float("inf"), float("nan"), True,
     "RGB", "megvii", "shufflenet_v2_x0_5", [32, 32], [1, 2, 3], [0.5], [], {}, None, "\x1b[2J"]
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(folder):
    model = shufflenet.create_model(TINY, num_classes=3)
    path = shufflenet.save(model, folder / "tiny.safetensors", class_names=NAMES)
    return _decoded(path)


def _only_value_error(call):
    try:
        return call()
    except ValueError:
        return None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metadata=st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=6), JSON, max_size=6),
    raw_format=st.booleans(),
)  # fmt: skip
def test_random_metadata_only_ever_raises_value_error(folder, metadata, raw_format):
    if raw_format:
        metadata = {**metadata, "format": FORMAT, "model_config": metadata.get("model_config")}
    _only_value_error(lambda: validate_metadata(metadata, "fuzz"))
    path = folder / "fuzz.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata=_encode(metadata))
    _only_value_error(lambda: shufflenet.read_metadata(path))


MUTATION = st.tuples(
    st.sampled_from(["", "model_config", "preprocessing"]),
    st.sampled_from(TOP_KEYS) | st.sampled_from(NESTED_KEYS) | st.text(max_size=4),
    st.just(DROP) | NEAR | JSON,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_metadata_loads_or_raises_value_error(folder, tiny, mutations):
    metadata, tensors = tiny
    metadata = json.loads(json.dumps(metadata))
    for where, key, value in mutations:
        target = metadata if not where else metadata.get(where)
        if not isinstance(target, dict):
            continue
        if value is DROP:
            target.pop(key, None)
        else:
            target[key] = value
    path = folder / "mutated.safetensors"
    save_file(tensors, str(path), metadata=_encode(metadata))
    model = _only_value_error(lambda: shufflenet.load(path))
    event("loaded" if model is not None else "refused")
    if model is not None:  # what loads is what the schema promises
        meta = model.weights_metadata
        assert meta["num_classes"] == model.num_classes == 3
        assert 32 <= min(meta["preprocessing"]["input_size"]) <= MAX_INPUT_SIZE


PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), max_size=10)
LAYOUTS = {TINY: ["paper", "megvii"], V2: ["torchvision", "megvii"]}
FINITE = st.floats(-1e3, 1e3, allow_nan=False)


@st.composite
def valid_metadata(draw):
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    config = {"name": name}
    for key, values in (
        ("num_classes", st.integers(0, 5)),
        ("in_chans", st.integers(1, 4)),
        ("drop_rate", st.floats(0.0, 0.99)),
        ("layout", st.sampled_from(LAYOUTS[name])),
    ):
        if draw(st.booleans()):
            config[key] = draw(values)
    num_classes, in_chans = config.get("num_classes", 1000), config.get("in_chans", 3)
    if num_classes == 1000:
        config["num_classes"] = num_classes = draw(st.integers(0, 5))
    height, width = draw(st.integers(32, 4096)), draw(st.integers(32, 4096))
    counts = st.sampled_from(sorted({1, 3, in_chans}))
    scale = draw(st.floats(1e-6, 1e3))
    # mean and std within the pixel range: in pixel units (value / scale), as the schema bounds
    mean = draw(counts.flatmap(lambda n: st.lists(FINITE, min_size=n, max_size=n)))
    std = draw(counts.flatmap(lambda n: st.lists(st.floats(0.02, 1e4), min_size=n, max_size=n)))
    preprocessing = {
        "input_size": [height, width],
        "resize": draw(st.none() | st.integers(min(height, width), MAX_RESIZE)),
        "mean": [m * scale for m in mean],
        "std": [v * scale for v in std],
        "scale": scale,
        "channel_order": draw(st.sampled_from(["RGB", "BGR"])),
    }
    names = draw(st.none() | st.lists(PRINTABLE, min_size=num_classes, max_size=num_classes))
    return config, names, preprocessing


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(valid_metadata())
def test_valid_metadata_round_trips_through_save_and_load(folder, drawn):
    config, names, preprocessing = drawn
    model = shufflenet.create_model(**config)
    path = shufflenet.save(model, folder / "valid.safetensors", class_names=names,
                           preprocessing=preprocessing, epoch=1)  # fmt: skip
    loaded = shufflenet.load(path)
    meta = loaded.weights_metadata
    assert meta["model_config"] == config and loaded.model_config == config
    assert meta["class_names"] == names and meta["preprocessing"] == preprocessing
    assert meta["num_classes"] == model.num_classes and meta["epoch"] == 1
    assert validate_metadata(meta, path) == meta
