import pytest
import torch
from safetensors.torch import save_file

import shufflenet
from shufflenet.weights import load_state_dict_checked


def test_save_load_round_trip(tmp_path):
    model = shufflenet.create_model("shufflenet_v1_g3_x0_5", num_classes=4, in_chans=1).eval()
    path = shufflenet.save(model, tmp_path / "m.safetensors", class_names=list("abcd"), epoch=3)
    loaded = shufflenet.load(path)
    assert not loaded.training
    x = torch.randn(2, 1, 40, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    meta = shufflenet.read_metadata(path)
    assert meta["class_names"] == ["a", "b", "c", "d"]
    assert meta["model_config"] == {
        "name": "shufflenet_v1_g3_x0_5",
        "num_classes": 4,
        "in_chans": 1,
    }
    assert meta["preprocessing"]["input_size"] == [224, 224]
    assert meta["epoch"] == 3
    assert loaded.weights_metadata["num_classes"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_save_needs_config_and_matching_class_names(tmp_path):
    with pytest.raises(ValueError, match="create_model"):
        shufflenet.save(shufflenet.ShuffleNetV2(), tmp_path / "x.safetensors")
    model = shufflenet.create_model("shufflenet_v2_x0_5", num_classes=3)
    with pytest.raises(ValueError, match="2 class names"):
        shufflenet.save(model, tmp_path / "x.safetensors", class_names=["a", "b"])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        shufflenet.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        shufflenet.load(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="shufflenet convert"):
        shufflenet.load(foreign)
    good = shufflenet.save(
        shufflenet.create_model("shufflenet_v2_x0_5"), tmp_path / "g.safetensors"
    )
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"corrupt or truncated|not a readable"):
        shufflenet.load(truncated)


def test_mismatch_names_first_keys():
    model = shufflenet.create_model("shufflenet_v2_x0_5")
    state = model.state_dict()
    state["fc.weight"] = torch.zeros(10, 1024)
    state["extra.weight"] = torch.zeros(1)
    del state["conv1.0.weight"]
    with pytest.raises(ValueError) as err:
        load_state_dict_checked(model, state)
    text = str(err.value)
    assert "missing: conv1.0.weight" in text
    assert "unexpected: extra.weight" in text
    assert "fc.weight: file (10, 1024) vs model (1000, 1024)" in text
