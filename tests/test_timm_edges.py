"""timm's create_model options, gradient checkpointing, and the data config of weights files
loaded through timm's checkpoint_path."""

import copy
import os
import warnings

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

import shufflenet
from shufflenet import data
from shufflenet.models import base

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

V2 = "shufflenet_v2_x0_5"
V1 = "shufflenet_v1_g1_x0_25"


# -- create_model options ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"global_pool": "avg"}, {"drop_path_rate": 0.0}, {}])
def test_timm_accepts_options_that_match_the_network(kwargs):
    torch.manual_seed(0)
    plain = timm.create_model(V2, num_classes=3).eval()
    torch.manual_seed(0)
    model = timm.create_model(V2, num_classes=3, drop_block_rate=0, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def test_timm_entry_point_takes_none_for_unset_options():
    entry = timm.models.model_entrypoint(V2)
    model = entry(drop_path_rate=None, global_pool=None, drop_block_rate=None)
    assert isinstance(model, shufflenet.ShuffleNetV2)


@pytest.mark.parametrize("pool", ["max", "avgmax", "token", "AVG", 1])
def test_timm_refuses_global_pools_the_head_lacks(pool):
    with pytest.raises(ValueError, match=r"global_pool must be 'avg'.*forward_features"):
        timm.create_model(V2, global_pool=pool)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("drop_path_rate", 0.1, "no stochastic depth: drop_path_rate must be 0, got 0.1"),
        ("drop_path_rate", "0", "drop_path_rate must be 0, got '0'"),
        ("drop_block_rate", 0.05, "no DropBlock: drop_block_rate must be 0"),
    ],
)
def test_timm_refuses_layers_shufflenet_lacks(key, value, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model(V1, **{key: value})


# -- gradient checkpointing -------------------------------------------------------------------
def _step(model, x, target):
    model.zero_grad()
    out = model(x)
    torch.nn.functional.cross_entropy(out, target).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("name", [V1, V2])
def test_grad_checkpointing_matches_plain_training(name, monkeypatch):
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=5).double().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    calls = []
    real = base.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(base, "checkpoint", spy)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    target = torch.tensor([1, 4])
    out, grads, buffers = _step(plain, x, target)
    assert calls == []
    out_c, grads_c, buffers_c = _step(checkpointed, x, target)
    units = [u for s in checkpointed.stage_names for u in getattr(checkpointed, s)]
    assert calls == units  # each unit of each stage, once
    torch.testing.assert_close(out_c, out)
    torch.testing.assert_close(grads_c, grads)
    # The recomputation in backward leaves the BatchNorm statistics updated once.
    torch.testing.assert_close(buffers_c, buffers, rtol=0, atol=0)


def test_grad_checkpointing_only_in_training_with_gradients(monkeypatch):
    model = shufflenet.create_model(V2, num_classes=5)
    model.set_grad_checkpointing(True)
    calls = []
    monkeypatch.setattr(base, "checkpoint", lambda fn, *a, **k: calls.append(fn) or fn(*a))
    x = torch.randn(1, 3, 64, 64)
    model.eval()(x)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 64, 64))
    assert calls == []
    model.train().forward_stages(torch.randn(2, 3, 64, 64))
    assert len(calls) == sum(len(getattr(model, s)) for s in model.stage_names)
    model.set_grad_checkpointing(False)
    model(torch.randn(2, 3, 64, 64))
    assert len(calls) == sum(len(getattr(model, s)) for s in model.stage_names)
    with pytest.raises(ValueError, match="enable must be True or False"):
        model.set_grad_checkpointing("yes")


# -- checkpoint_path: the file's preprocessing ------------------------------------------------
def _saved(tmp_path, preprocessing, name=V2, num_classes=10, **kwargs):
    model = shufflenet.create_model(name, num_classes=num_classes, **kwargs)
    return shufflenet.save(model, tmp_path / "model.safetensors", preprocessing=preprocessing)


def _image(width=50, height=40):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g)
    return Image.fromarray(pixels.numpy())


def _timm_input(model, image):
    config = timm.data.resolve_data_config({}, model=model)
    return config, timm.data.create_transform(**config)(image)


@pytest.mark.parametrize(
    ("size", "resize", "crop_pct", "crop_mode"),
    [
        (32, 32, 1.0, "center"),  # digits: the whole image, no crop
        (34, 50, pytest.approx(34 / 50), "center"),  # floor(34 / (34 / 50)) is 49 in floats
        (32, None, 1.0, "squash"),  # no resize: straight to input_size
    ],
)
def test_timm_checkpoint_path_gives_the_files_preprocessing(
    tmp_path, size, resize, crop_pct, crop_mode
):
    pre = {**data.make_preprocessing("digits", size), "resize": resize}
    path = _saved(tmp_path, pre)
    model = timm.create_model(V2, num_classes=10, checkpoint_path=str(path))
    assert model.default_cfg is model.pretrained_cfg
    config, x = _timm_input(model, _image())
    assert config["input_size"] == (3, size, size)
    assert config["mean"] == pytest.approx(data.DIGITS_MEAN)
    assert config["std"] == pytest.approx(data.DIGITS_STD)
    assert (config["crop_pct"], config["crop_mode"]) == (crop_pct, crop_mode)
    assert model.pretrained_cfg["num_classes"] == 10
    # timm's pipeline makes what ours makes from the file.
    torch.testing.assert_close(x, data.build_eval_transform(pre)(_image()), atol=1e-5, rtol=0)


def test_timm_checkpoint_path_scales_other_units(tmp_path):
    pre = {
        "input_size": [48, 48],
        "resize": 56,
        "mean": [120.0, 110.0, 100.0],  # pixel values 0-255: scale 1
        "std": [60.0, 50.0, 40.0],
        "scale": 1.0,
    }
    model = timm.create_model(V2, num_classes=10, checkpoint_path=str(_saved(tmp_path, pre)))
    config, x = _timm_input(model, _image(70, 60))
    assert config["mean"] == pytest.approx((120 / 255, 110 / 255, 100 / 255))
    assert config["std"] == pytest.approx((60 / 255, 50 / 255, 40 / 255))
    torch.testing.assert_close(x, data.build_eval_transform(pre)(_image(70, 60)), atol=1e-4, rtol=0)


def test_timm_checkpoint_path_of_a_bgr_file_warns_and_orders_for_rgb(tmp_path):
    pre = {
        "input_size": [32, 32],
        "resize": 36,
        "mean": [0.1, 0.2, 0.3],  # B, G, R
        "std": [0.5, 0.6, 0.7],
        "scale": 1 / 255,
        "channel_order": "BGR",
    }
    path = _saved(tmp_path, pre)
    with pytest.warns(UserWarning, match=r"model\.safetensors: .*BGR.*x\.flip\(1\)"):
        model = timm.create_model(V2, num_classes=10, checkpoint_path=str(path))
    assert "BGR" in model.pretrained_cfg["notes"][0]
    config, x = _timm_input(model, _image())
    assert config["mean"] == pytest.approx((0.3, 0.2, 0.1))
    # timm's pipeline, then the channels reversed, is ours.
    ours = data.build_eval_transform(pre)(_image())
    torch.testing.assert_close(x.flip(0), ours, atol=1e-5, rtol=0)


def test_timm_checkpoint_path_of_an_rgb_file_drops_the_bgr_note(tmp_path):
    plus = "shufflenet_v2_plus_small"  # Megvii's BGR 0-255 by default
    path = _saved(tmp_path, data.make_preprocessing("digits", 32), name=plus)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = timm.create_model(plus, num_classes=10, checkpoint_path=str(path))
    assert "notes" not in model.pretrained_cfg
    assert timm.data.resolve_data_config({}, model=model)["mean"] == pytest.approx(data.DIGITS_MEAN)


def test_timm_checkpoint_path_must_fit_the_model(tmp_path):
    path = _saved(tmp_path, None)
    with pytest.raises(ValueError, match="holds 10 classes, the model has 1000: pass num_classes"):
        timm.create_model(V2, checkpoint_path=str(path))
    with pytest.raises(ValueError, match=f"holds a {V2} model, not shufflenet_v2_x1_0"):
        timm.create_model("shufflenet_v2_x1_0", num_classes=10, checkpoint_path=str(path))


def test_timm_checkpoint_path_without_our_metadata_keeps_the_defaults(tmp_path):
    from safetensors.torch import save_file

    model = shufflenet.create_model(V2, num_classes=10)
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = timm.create_model(V2, num_classes=10, checkpoint_path=str(path))
    assert loaded.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize(
    ("suffix", "refusal"), [(".pth", RuntimeError), (".safetensors", SafetensorError)]
)
def test_timm_checkpoint_path_never_runs_a_pickle(tmp_path, suffix, refusal):
    marker = tmp_path / "ran"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": _Payload(marker)}, path)
    with pytest.raises(refusal):  # timm's own loaders: weights_only torch.load, safetensors
        timm.create_model(V2, checkpoint_path=str(path))
    assert not marker.exists()
