"""Foreign checkpoints: torchvision and Megvii layouts, bad files, and torch.hub.

The Megvii checkpoints are built here from the official release's documented names and shapes,
and the official networks' outputs come from a functional forward over the raw state dict,
written independently of shufflenet's modules.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import (
    STAGE_UNITS,
    megvii_v1_checkpoint,
    megvii_v2_checkpoint,
    randomize_bn,
    rel_err,
    save_megvii,
)

import shufflenet
from shufflenet.cli import main
from shufflenet.convert import convert_checkpoint, megvii_v1_filter, read_checkpoint

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the official forward, from the documented layout ------------------------------------------
def _conv_bn(sd, x, conv, bn, stride=1, groups=1, relu=False):
    w = sd[f"{conv}.weight"]
    x = F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    x = F.batch_norm(
        x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"],
        sd[f"{bn}.bias"], False, 0.0, 1e-5,
    )  # fmt: skip
    return F.relu(x) if relu else x


def official_v2_forward(sd, x):
    x = _conv_bn(sd, x, "first_conv.0", "first_conv.1", stride=2, relu=True)
    x = F.max_pool2d(x, 3, 2, 1)
    for n in range(sum(STAGE_UNITS)):
        p = f"features.{n}"
        stride = 2 if f"{p}.branch_proj.0.weight" in sd else 1
        if stride == 1:  # the official split: even channels stay, odd ones go through
            b, c, h, w = x.shape
            pair = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, b, c // 2, h, w)
            proj, main = pair[0], pair[1]
        else:
            proj = _conv_bn(sd, x, f"{p}.branch_proj.0", f"{p}.branch_proj.1", 2, x.shape[1])
            proj = _conv_bn(sd, proj, f"{p}.branch_proj.2", f"{p}.branch_proj.3", relu=True)
            main = x
        main = _conv_bn(sd, main, f"{p}.branch_main.0", f"{p}.branch_main.1", relu=True)
        mid = main.shape[1]
        main = _conv_bn(sd, main, f"{p}.branch_main.3", f"{p}.branch_main.4", stride, mid)
        main = _conv_bn(sd, main, f"{p}.branch_main.5", f"{p}.branch_main.6", relu=True)
        x = torch.cat((proj, main), 1)
    x = _conv_bn(sd, x, "conv_last.0", "conv_last.1", relu=True)
    return F.linear(x.mean((2, 3)), sd["classifier.0.weight"])  # = AvgPool2d(7) at 224


def official_v1_forward(sd, x, groups):
    x = _conv_bn(sd, x, "first_conv.0", "first_conv.1", stride=2, relu=True)
    x = F.max_pool2d(x, 3, 2, 1)
    for n in range(sum(STAGE_UNITS)):
        p, stride = f"features.{n}", 2 if n in (0, 4, 12) else 1
        g1 = 1 if n == 0 else groups
        out = _conv_bn(sd, x, f"{p}.branch_main_1.0", f"{p}.branch_main_1.1", 1, g1, relu=True)
        mid = out.shape[1]
        out = _conv_bn(sd, out, f"{p}.branch_main_1.3", f"{p}.branch_main_1.4", stride, mid)
        if groups > 1:  # the official shuffle: reshape to (C/g, g), swap, flatten
            b, c, h, w = out.shape
            out = out.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4)
            out = out.reshape(b, c, h, w)
        out = _conv_bn(sd, out, f"{p}.branch_main_2.0", f"{p}.branch_main_2.1", 1, groups)
        if stride == 1:
            x = F.relu(x + out)
        else:
            x = torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(out)), 1)
    return F.linear(x.mean((2, 3)), sd["classifier.0.weight"])


def _bgr_images(batch=2, size=96):
    return torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "name,widths",
    [
        ("shufflenet_v2_x0_5", (24, 48, 96, 192, 1024)),
        ("shufflenet_v2_x1_0", (24, 116, 232, 464, 1024)),
    ],
)
def test_megvii_v2_reproduces_official_outputs(tmp_path, name, widths):
    sd = megvii_v2_checkpoint(widths)
    src = save_megvii(sd, tmp_path / "megvii.pth.tar")
    result = convert_checkpoint(src, tmp_path / "ours.safetensors", "megvii")
    assert (result.model, result.layout, result.num_classes) == (name, "megvii", 1000)
    model = shufflenet.load(result.path)
    assert model.model_config == {"name": name, "layout": "megvii", "num_classes": 1000,
                                  "in_chans": 3}  # fmt: skip
    meta = model.weights_metadata
    assert meta["preprocessing"]["channel_order"] == "BGR"
    assert meta["preprocessing"]["scale"] == 1.0 and meta["preprocessing"]["std"] == [1, 1, 1]
    assert meta["class_names"][0] == "tench" and len(meta["class_names"]) == 1000
    x = _bgr_images().float()
    with torch.no_grad():
        ours, ref = model(x), official_v2_forward(sd, x)
    assert ref.abs().max() > 0.1  # a forward that does real work
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize(
    "groups,widths", [(3, (12, 120, 240, 480)), (8, (16, 192, 384, 768))], ids=["g3", "g8"]
)
def test_megvii_v1_reproduces_official_outputs(tmp_path, groups, widths):
    sd = megvii_v1_checkpoint(groups, widths)
    src = save_megvii(sd, tmp_path / "megvii_v1.pth.tar")
    name = f"shufflenet_v1_g{groups}_x0_5"
    # g=3: the architecture is found from the shapes; g=8: named.
    result = convert_checkpoint(
        src, tmp_path / "v1.safetensors", "megvii", None if groups == 3 else name
    )
    assert result.model == name
    model = shufflenet.load(result.path)
    assert model.layout == "megvii" and model.fc.bias is None
    x = _bgr_images().float()
    with torch.no_grad():
        ours, ref = model(x), official_v1_forward(sd, x, groups)
    assert ref.abs().max() > 0.1
    assert rel_err(ours, ref) < 1e-4
    # The paper layout with the same weights is a different function: the layouts matter.
    paper = shufflenet.create_model(result.model).eval()
    paper.load_state_dict({**megvii_v1_filter(sd), "fc.bias": torch.zeros(1000)})
    with torch.no_grad():
        assert rel_err(paper(x), ref) > 1e-2


def test_torchvision_round_trip(tmp_path):
    reference = randomize_bn(torchvision.models.shufflenet_v2_x0_5()).eval()
    src = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), src)
    wrapped = tmp_path / "tv_wrapped.pth"  # a training checkpoint of a DataParallel model
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
                "epoch": torch.tensor(3)}, wrapped)  # fmt: skip
    unwrapped = read_checkpoint(wrapped)
    assert unwrapped.keys() == reference.state_dict().keys()
    result = convert_checkpoint(src, tmp_path / "ours.safetensors", "torchvision")
    assert (result.model, result.layout) == ("shufflenet_v2_x0_5", "torchvision")
    model = shufflenet.load(result.path)
    assert model.model_config == {"name": "shufflenet_v2_x0_5", "num_classes": 1000,
                                  "in_chans": 3}  # fmt: skip
    assert model.weights_metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-5


def test_mismatched_checkpoints_name_the_first_keys(tmp_path):
    sd = megvii_v2_checkpoint((24, 48, 96, 192, 1024))
    src = save_megvii(sd, tmp_path / "m.pth.tar")
    with pytest.raises(ValueError) as err:
        convert_checkpoint(src, tmp_path / "x.safetensors", "megvii", model="shufflenet_v2_x1_0")
    assert "does not fit shufflenet_v2_x1_0" in str(err.value)
    assert "shape: stage2.0.branch2.0.weight: file (24, 24, 1, 1) vs model (58, 24" in str(
        err.value
    )
    del sd["conv_last.0.weight"]
    sd["extra.weight"] = torch.zeros(3)
    save_megvii(sd, src)
    with pytest.raises(ValueError) as err:
        convert_checkpoint(src, tmp_path / "x.safetensors", "megvii")
    assert "missing: conv5.0.weight" in str(err.value)
    assert "unexpected: extra.weight" in str(err.value)
    torch.save({"fc.weight": torch.zeros(2, 2)}, src)
    with pytest.raises(ValueError, match="not a Megvii ShuffleNet"):
        convert_checkpoint(src, tmp_path / "x.safetensors", "megvii")
    assert not (tmp_path / "x.safetensors").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_corrupt_truncated_and_pickled_objects_are_refused(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04not a checkpoint" * 20)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": _Evil(marker)}}, evil)
    for path in (truncated, garbage, evil):
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
            read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pth")
    torch.save({"state_dict": {"w": torch.zeros(1), "step": 3}}, evil)
    with pytest.raises(ValueError, match="not tensors: step"):
        read_checkpoint(evil)


def test_cli_convert_ok_and_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "tv.pth"
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), src)
    assert (
        main(["convert", str(src), str(tmp_path / "o.safetensors"), "--from", "torchvision"]) == 0
    )
    assert "shufflenet_v2_x0_5 (layout torchvision, 1000 classes)" in capsys.readouterr().out
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    dst = str(tmp_path / "b.safetensors")
    for argv in (
        ["convert", str(tmp_path / "bad.pth"), dst, "--from", "megvii"],
        ["convert", str(src), dst, "--from", "torchvision", "--model", "shufflenet_v2_x2_0"],
        ["convert", str(tmp_path / "missing.pth"), dst, "--from", "torchvision"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    proc = subprocess.run(  # the installed command, end to end
        [sys.executable, "-m", "shufflenet", "convert", str(tmp_path / "bad.pth"), dst,
         "--from", "torchvision"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_torch_hub_entry_points(tmp_path):
    names = [n for n in dir(_hubconf()) if n.startswith("shufflenet_")]
    assert sorted(names) == sorted(shufflenet.list_models())
    model = torch.hub.load(str(REPO), "shufflenet_v1_g8_x0_5", source="local", num_classes=7)
    assert model.model_config == {"name": "shufflenet_v1_g8_x0_5", "num_classes": 7}
    path = shufflenet.save(model, tmp_path / "w.safetensors")
    loaded = torch.hub.load(str(REPO), "shufflenet_v1_g8_x0_5", source="local", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(ValueError, match="holds shufflenet_v1_g8_x0_5"):
        torch.hub.load(str(REPO), "shufflenet_v2_x1_0", source="local", weights=path)
    with pytest.raises(ValueError, match="no published weights for shufflenet_v1_g8_x0_5"):
        torch.hub.load(str(REPO), "shufflenet_v1_g8_x0_5", source="local", pretrained=True)


def _hubconf():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
