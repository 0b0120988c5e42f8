"""Backbone use (features_only, out_indices, frozen_stages, norm_eval) for every family, and the
timm interop (skipped without timm)."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from conftest import randomize_bn
from torch import nn

import shufflenet
from shufflenet.models import ShuffleNetFeatures
from shufflenet.models.registry import _REGISTRY
from shufflenet.models.timm_interop import install, register_timm_models
from shufflenet.weights import check_model_kwargs, validate_metadata

pytestmark = pytest.mark.usefixtures("one_thread")

# The first model each family registers (its smallest), found through the registry alone.
FAMILY_MODELS = list({info.family: name for name, info in reversed(_REGISTRY.items())}.values())
V2 = "shufflenet_v2_x0_5"
V1 = "shufflenet_v1_g3_x0_25"
PLUS = "shufflenet_v2_plus_small"


def _meta(name, **kwargs):
    with torch.device("meta"):  # shapes only: no memory, no init cost (V2.Large is 125M)
        return shufflenet.create_model(name, **kwargs)


def _bns(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def _under(names, key):
    return any(key == n or key.startswith(n + ".") for n in names)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_features_only_for_every_family(name):
    full = _meta(name)
    feats = _meta(name, features_only=True, out_indices=(1, 2, 3))
    info = full.feature_info
    assert feats.feature_info == [{**info[i], "index": i} for i in (1, 2, 3)]
    outs = feats(torch.empty(2, 3, 64, 64, device="meta"))
    assert [o.shape for o in outs] == [
        (2, info[i]["num_chs"], 64 // info[i]["reduction"], 64 // info[i]["reduction"])
        for i in (1, 2, 3)
    ]
    # Only the stem and the stages up to C5's module, under the classification model's names.
    order = [*full.stem_names, *full.stage_names]
    kept = order[: order.index(info[3]["module"]) + 1]
    assert [n for n, _ in feats.named_children()] == kept
    full_state = full.state_dict()
    state = feats.state_dict()
    assert set(state) == {k for k in full_state if _under(kept, k)}
    assert all(state[k].shape == full_state[k].shape for k in state)
    assert not any(k.startswith(("fc.", "conv5.", "conv_last.")) for k in state)
    # Up to C3 only: no later stage is kept.
    short = _meta(name, features_only=True, out_indices=(0, 1))
    assert [n for n, _ in short.named_children()] == order[: order.index(info[1]["module"]) + 1]
    assert len(short(torch.empty(1, 3, 64, 64, device="meta"))) == 2


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_frozen_stages_for_every_family(name):
    stages = _meta(name).stage_names
    for k in range(-1, len(stages) + 1):
        model = _meta(name, frozen_stages=k)
        frozen_names = [] if k < 0 else [*model.stem_names, *stages[:k]]
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {n for n, _ in model.named_parameters() if _under(frozen_names, n)}
        model.train()
        for module_name, module in model.named_children():
            for bn in _bns(module):
                assert bn.training == (module_name not in frozen_names), (k, module_name)
    with pytest.raises(
        ValueError, match=rf"frozen_stages must be an integer within -1..{len(stages)}"
    ):
        _meta(name, frozen_stages=len(stages) + 1)


@pytest.fixture(scope="module")
def v2():
    """A V2 0.5x with non-trivial BN statistics, in eval mode."""
    torch.manual_seed(0)
    return randomize_bn(shufflenet.create_model(V2, num_classes=10)).eval()


@pytest.mark.parametrize("name", [V1, V2, PLUS])
def test_features_match_forward_stages_with_the_same_weights(name):
    model = randomize_bn(shufflenet.create_model(name)).eval()
    feats = shufflenet.create_model(name, features_only=True, out_indices=(0, 2, 3))
    missing, unexpected = feats.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected  # the head's keys are left over
    feats.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_stages(x)
        got = feats(x)
    assert len(got) == 3
    for e, g in zip([expected[i] for i in (0, 2, 3)], got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_feature_info_is_a_list_and_timm_style(v2):
    feats = ShuffleNetFeatures(v2, out_indices=(1, 3))
    fi = feats.feature_info
    assert isinstance(fi, list) and len(fi) == 2
    assert [d["num_chs"] for d in fi] == fi.channels() == [48, 192]
    assert fi.reduction() == [8, 32] and fi.module_name() == ["stage2", "stage4"]
    assert fi.out_indices == (1, 3)
    # With an index, timm's FeatureInfo looks at all the maps, chosen or not.
    assert fi.channels(0) == 24 and fi.reduction([0, 2]) == [4, 16]
    assert fi.get_dicts(keys=["num_chs"]) == [{"num_chs": 48}, {"num_chs": 192}]
    assert feats.out_indices == (1, 3)
    assert [n for n, _ in feats.named_children()] == [
        "conv1",
        "maxpool",
        "stage2",
        "stage3",
        "stage4",
    ]
    # The V1/V2 C2 is the stem's max-pool: the stem alone is kept.
    stem_only = ShuffleNetFeatures(v2, out_indices=(0,))
    assert [n for n, _ in stem_only.named_children()] == ["conv1", "maxpool"]
    assert stem_only(torch.randn(1, 3, 64, 64))[0].shape == (1, 24, 16, 16)


def test_features_from_a_weights_file(v2, tmp_path):
    path = shufflenet.save(v2, tmp_path / "v2.safetensors")
    feats = ShuffleNetFeatures(shufflenet.load(path), out_indices=(1, 2, 3), frozen_stages=0)
    assert feats.model_config == {
        "name": V2,
        "num_classes": 10,
        "features_only": True,
        "out_indices": [1, 2, 3],
        "frozen_stages": 0,
    }
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(feats(x), v2.forward_stages(x)[1:], rtol=0, atol=0)
    assert not feats.training  # load gives eval mode, and the backbone keeps the model's mode
    # Backbones are not saved: their weights are the classification model's.
    with pytest.raises(ValueError, match="cannot save a features_only backbone"):
        shufflenet.save(feats, tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="features_only and out_indices are not stored"):
        check_model_kwargs({"features_only": True, "out_indices": [1]})


def _train_step(model, x):
    model.train()
    out = model(x)
    loss = sum(o.square().mean() for o in out) if isinstance(out, list) else out.square().mean()
    loss.backward()


def test_frozen_stages_keep_weights_and_statistics():
    model = randomize_bn(shufflenet.create_model(V2, num_classes=5))
    feats = ShuffleNetFeatures(model, out_indices=(1, 2, 3), frozen_stages=1)
    before = {k: v.clone() for k, v in feats.state_dict().items()}
    _train_step(feats, torch.randn(4, 3, 64, 64))
    after = feats.state_dict()
    frozen = ("conv1.", "stage2.")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))
    assert all(p.grad is None for n, p in feats.named_parameters() if n.startswith(frozen))
    assert all(p.grad is not None for n, p in feats.named_parameters() if n.startswith("stage3."))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith(("stage3.", "stage4.")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)


def test_norm_eval_keeps_every_batchnorm_in_eval_mode():
    model = randomize_bn(shufflenet.create_model(PLUS, norm_eval=True, num_classes=3))
    assert model.model_config == {"name": PLUS, "norm_eval": True, "num_classes": 3}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    _train_step(model, torch.randn(2, 3, 64, 64))
    assert model.training and not any(bn.training for bn in _bns(model))
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in stats.items())
    assert all(p.requires_grad for p in model.parameters())  # trained, with fixed statistics
    model.eval().train()
    assert not any(bn.training for bn in _bns(model))


def test_backbone_options_round_trip_through_save_and_load(tmp_path):
    model = shufflenet.create_model(V1, num_classes=4, frozen_stages=0, norm_eval=True)
    assert model.model_config == {
        "name": V1,
        "num_classes": 4,
        "frozen_stages": 0,
        "norm_eval": True,
    }
    path = shufflenet.save(model, tmp_path / "v1.safetensors")
    loaded = shufflenet.load(path)
    assert loaded.model_config == model.model_config
    assert {n for n, p in loaded.named_parameters() if not p.requires_grad} == {
        n for n, p in model.named_parameters() if not p.requires_grad
    } and not loaded.conv1[0].weight.requires_grad
    assert not any(bn.training for bn in _bns(loaded.train()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features_only": True, "out_indices": (4,)}, r"within 0..3"),
        ({"features_only": True, "out_indices": (-1,)}, r"within 0..3"),
        ({"features_only": True, "out_indices": (1, 1)}, "duplicates"),
        ({"features_only": True, "out_indices": (2, 1)}, "increasing order"),
        ({"features_only": True, "out_indices": ()}, "non-empty tuple"),
        ({"features_only": True, "out_indices": 3}, "non-empty tuple"),
        ({"features_only": True, "out_indices": (1.0,)}, "integers"),
        ({"features_only": True, "out_indices": (True,)}, "integers"),
        ({"out_indices": (1, 2)}, "needs features_only=True"),
        ({"features_only": "yes"}, "features_only must be True or False"),
        ({"frozen_stages": -2}, r"frozen_stages must be an integer within -1..3"),
        ({"frozen_stages": 4}, r"within -1..3"),
        ({"frozen_stages": True}, "frozen_stages must be"),
        ({"frozen_stages": 1.0}, "frozen_stages must be"),
        ({"features_only": True, "frozen_stages": 9}, "frozen_stages must be"),
        ({"norm_eval": 1}, "norm_eval must be True or False"),
        ({"features_only": True, "norm_eval": "no"}, "norm_eval must be True or False"),
    ],
)
def test_bad_backbone_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _meta(V2, **kwargs)


def test_bad_backbone_options_in_a_file_are_refused():
    config = {"format": "shufflenet/1", "num_classes": 10}
    pre = {"input_size": [224, 224], "mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1.0}
    for bad, message in (
        ({"frozen_stages": -2}, "frozen_stages must be an integer"),
        ({"norm_eval": "true"}, "norm_eval must be true or false"),
        ({"features_only": True}, "not stored"),
    ):
        metadata = {**config, "model_config": {"name": V2, **bad}, "preprocessing": pre}
        with pytest.raises(ValueError, match=message):
            validate_metadata(metadata, "f.safetensors")


# -- timm ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_import_shufflenet_leaves_timm_alone_until_it_is_imported():
    code = (
        "import sys, shufflenet\n"
        "assert 'timm' not in sys.modules\n"
        "import timm\n"
        "assert set(timm.list_models('shufflenet*')) == set(shufflenet.list_models())\n"
        "assert type(timm.__spec__.loader).__name__ == 'SourceFileLoader'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_install_without_timm_does_nothing(monkeypatch):
    for name in ("timm", "timm.models"):  # as if timm were not installed
        monkeypatch.setitem(sys.modules, name, None)
    finders = list(sys.meta_path)
    install()
    assert sys.meta_path == finders
    with pytest.raises(ImportError):
        register_timm_models()


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def test_timm_creates_our_models(timm, v2, tmp_path):
    assert set(timm.list_models("shufflenet_v2_plus*")) == set(
        shufflenet.list_models("shufflenet_v2_plus*")
    )
    model = timm.create_model(V2, pretrained=False, num_classes=7)
    assert isinstance(model, shufflenet.ShuffleNetV2)
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    # Our weights files load through timm's checkpoint_path.
    path = shufflenet.save(v2, tmp_path / "v2.safetensors")
    loaded = timm.create_model(V2, num_classes=10, checkpoint_path=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), v2(x), rtol=0, atol=0)
    # pretrained=True goes through shufflenet.hub's table (tests/test_pretrained.py fetches)
    with pytest.raises(ValueError, match="no published weights for shufflenet_v2_plus_small"):
        timm.create_model(PLUS, pretrained=True)


def test_timm_features_only(timm):
    feats = timm.create_model(PLUS, features_only=True, out_indices=(1, 2, 3))
    ours = shufflenet.create_model(PLUS, features_only=True, out_indices=(1, 2, 3))
    assert feats.feature_info.channels() == ours.feature_info.channels() == [104, 208, 416]
    assert feats.feature_info.reduction() == [8, 16, 32]
    outs = feats.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [104, 208, 416]


def test_timm_data_config(timm):
    config = timm.data.resolve_data_config({}, model=timm.create_model(V2))
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert config["interpolation"] == "bilinear"
    # Megvii's preprocessing: 0-255 values (the channel order is documented, not expressible).
    plus = timm.create_model(PLUS, features_only=True)
    config = timm.data.resolve_data_config({}, model=plus)
    assert config["mean"] == (0.0, 0.0, 0.0) and config["std"] == pytest.approx((1 / 255,) * 3)
    assert "BGR" in plus.pretrained_cfg["notes"][0] and plus.pretrained_cfg["num_classes"] == 0
    from PIL import Image

    image = Image.new("RGB", (300, 260), (10, 128, 250))
    x = timm.data.create_transform(**config)(image)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 100, 100], torch.tensor([10.0, 128.0, 250.0]))
    assert timm.models.get_pretrained_cfg(PLUS).std == pytest.approx((1 / 255,) * 3)
