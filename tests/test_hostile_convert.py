"""Hostile foreign checkpoints (``convert``) and training checkpoints (``train --resume``).

Each case ends in one ``error: ...`` line (exit 2) that quotes nothing from the file
unescaped, and writes nothing; pickled objects are never executed.
"""

import io
import os
import pickle
import zipfile

import pytest
import torch
from conftest import megvii_v2_checkpoint, save_megvii

import shufflenet
from shufflenet.cli import main
from shufflenet.convert import convert_checkpoint, read_checkpoint
from shufflenet.train import CHECKPOINT_FORMAT
from shufflenet.train.files import read_checkpoint as read_training_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

V2_WIDTHS = (24, 48, 96, 192, 1024)  # Megvii's V2 0.5x
# A global's name that would set the terminal's title and forge a line if printed as it is.
ESCAPES = "\x1b]0;pwned\x07\rOK: checkpoint fine\x85"


def _one_line_error(argv, capsys, *parts):
    """Run the CLI: exit 2 and a single ``error:`` line holding every part and no control
    characters, nor torch's advice to load unsafely."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, repr(err)
    line = err.strip()
    assert line.isprintable() and "\x1b" not in err and "weights_only" not in err, repr(err)
    assert "Traceback" not in err
    for part in parts:
        assert part in line, (part, line)
    return line


def _convert_fails(src, dst, source, capsys, *parts):
    with pytest.raises(ValueError) as err:
        convert_checkpoint(src, dst, source)
    for part in parts:
        assert part in str(err.value), (part, str(err.value))
    _one_line_error(["convert", str(src), str(dst), "--from", source], capsys, *parts)
    assert not os.path.exists(dst)


def _our_state_dict():
    return shufflenet.create_model("shufflenet_v2_x0_5", num_classes=3).state_dict()


# -- 1: keys that collide once the DataParallel prefix is stripped --------------------------
def test_keys_equal_once_module_prefix_is_stripped_are_refused(tmp_path, capsys):
    sd = megvii_v2_checkpoint(V2_WIDTHS, classes=10)
    both = {f"module.{k}": v for k, v in sd.items()}
    both.update({k: torch.zeros_like(v) for k, v in sd.items()})  # the last would win
    src = tmp_path / "twice.pth.tar"
    torch.save({"state_dict": both}, src)
    parts = ("module.first_conv.0.weight and first_conv.0.weight", "'module.' is stripped")
    _convert_fails(src, tmp_path / "out.safetensors", "megvii", capsys, *parts)
    # the prefix alone is still stripped
    result = convert_checkpoint(
        save_megvii(sd, tmp_path / "once.pth.tar"), tmp_path / "ok.safetensors", "megvii"
    )
    assert result.model == "shufflenet_v2_x0_5"


# -- 2: values no trained network holds ----------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path, capsys, bad):
    sd = _our_state_dict()
    sd["conv1.0.weight"][0, 0, 0, 0] = bad
    sd["fc.weight"][1:] = bad
    src = tmp_path / "nan.pth"
    torch.save(sd, src)
    parts = (
        "NaN or infinite values in 2 tensor(s)",
        "conv1.0.weight (1 of 648 values)",
        "fc.weight (2048 of 3072 values)",
    )
    _convert_fails(src, tmp_path / "out.safetensors", "torchvision", capsys, *parts)


def test_non_finite_tensors_are_counted_and_the_first_named(tmp_path, capsys):
    sd = {
        k: v.fill_(float("nan")) if v.is_floating_point() else v
        for k, v in _our_state_dict().items()
    }
    src = tmp_path / "nan.pth"
    torch.save(sd, src)
    total = sum(v.is_floating_point() for v in sd.values())
    parts = (f"in {total} tensor(s): conv1.0.weight", f"(+{total - 3} more)")
    _convert_fails(src, tmp_path / "out.safetensors", "torchvision", capsys, *parts)


def test_negative_running_variance_is_refused_naming_the_file_key(tmp_path, capsys):
    sd = megvii_v2_checkpoint(V2_WIDTHS, classes=10)
    sd["features.3.branch_main.4.running_var"][5] = -0.5
    src = save_megvii(sd, tmp_path / "negvar.pth.tar")
    parts = ("negative BatchNorm running variance in features.3.branch_main.4.running_var",)
    _convert_fails(src, tmp_path / "out.safetensors", "megvii", capsys, *parts)


# -- 3: tensors without dense data in memory -----------------------------------------------
@pytest.mark.parametrize(
    "make,kind",
    [
        (lambda t: torch.empty(t.shape, device="meta"), "is a meta tensor"),
        (lambda t: torch.empty(10**12, device="meta"), "is a meta tensor"),  # nothing allocated
        (lambda t: t.to_sparse(), "is a sparse tensor (layout sparse_coo)"),
        (lambda t: t.flatten(1).to_sparse_csr(), "is a sparse tensor (layout sparse_csr)"),
        (
            lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8),
            "is a quantized tensor (qint8)",
        ),
    ],
    ids=["meta", "huge-meta", "sparse-coo", "sparse-csr", "quantized"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tensors_without_dense_cpu_data_are_refused(tmp_path, capsys, make, kind):
    sd = _our_state_dict()
    sd["conv1.0.weight"] = make(sd["conv1.0.weight"])
    src = tmp_path / "odd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    parts = (f"module.conv1.0.weight {kind}", "only dense tensors")
    with pytest.raises(ValueError) as err:
        read_checkpoint(src)
    assert all(part in str(err.value) for part in parts), str(err.value)
    _convert_fails(src, tmp_path / "out.safetensors", "torchvision", capsys, *parts)


# -- 4: pickles that ask for more than tensors, or that quote escapes back ------------------
def _with_pickle(path, payload):
    """A torch zip checkpoint whose ``data.pkl`` is ``payload``."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(name, payload if name.endswith("/data.pkl") else data)
    return path


def _global_named(name):
    """A pickle that calls the global ``__main__.NAME`` (GLOBAL opcode, then REDUCE)."""
    return b"\x80\x02c__main__\n" + name.encode() + b"\n)R."


class _Storage(pickle.Pickler):
    """Pickles the string ``"STORAGE"`` as a reference to a storage record named ``key``."""

    def __init__(self, file, key):
        super().__init__(file, protocol=2)
        self.key = key

    def persistent_id(self, obj):
        if obj == "STORAGE":
            return ("storage", torch.FloatStorage, self.key, "cpu", 4)
        return None


def _missing_record_named(key):
    buf = io.BytesIO()
    _Storage(buf, key).dump({"format": CHECKPOINT_FORMAT, "model": "STORAGE"})
    return buf.getvalue()


class _Runs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resume(out):
    return ["train", "shufflenet_v1_g1_x0_25", "--resume", "--out", str(out), "--no-progress"]


@pytest.mark.parametrize("where", ["convert", "resume"])
def test_foreign_globals_are_refused_without_quoting_them(tmp_path, capsys, where):
    out = tmp_path / "run"
    out.mkdir()
    path = _with_pickle(out / "checkpoint.pt", _global_named(ESCAPES))
    with pytest.raises(pickle.UnpicklingError, match="pwned"):  # what torch would print
        torch.load(path, weights_only=True)
    reader = read_checkpoint if where == "convert" else read_training_checkpoint
    with pytest.raises(ValueError) as err:
        reader(path)
    assert "pwned" not in str(err.value) and "weights_only" not in str(err.value)
    if where == "convert":
        argv = ["convert", str(path), str(tmp_path / "o.safetensors"), "--from", "megvii"]
        part = f"{path} is not a readable PyTorch checkpoint: it is corrupt or holds objects"
    else:
        argv, part = _resume(out), f"{path} is not a shufflenet training checkpoint"
    line = _one_line_error(argv, capsys, part, "which are never unpickled")
    assert "pwned" not in line and "OK: checkpoint fine" not in line


def test_resume_never_runs_a_pickled_payload(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "config": _Runs(marker)}, out / "checkpoint.pt")
    _one_line_error(_resume(out), capsys, "which are never unpickled")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["convert", "resume"])
def test_torch_errors_quoting_the_file_are_escaped(tmp_path, capsys, where):
    out = tmp_path / "run"
    out.mkdir()
    path = _with_pickle(out / "checkpoint.pt", _missing_record_named(ESCAPES))
    reader = read_checkpoint if where == "convert" else read_training_checkpoint
    with pytest.raises(ValueError) as err:
        reader(path)
    assert str(err.value).isprintable() and r"data/\x1b]0;pwned\x07" in str(err.value)
    if where == "convert":
        argv = ["convert", str(path), str(tmp_path / "o.safetensors"), "--from", "torchvision"]
    else:
        argv = _resume(out)
    line = _one_line_error(argv, capsys, "(truncated or corrupt)", r"data/\x1b]0;pwned\x07")
    assert "OK: checkpoint fine" not in line  # only the first line of torch's text
