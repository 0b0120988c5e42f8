"""ShuffleNetV2+ (Megvii's release) against the facts of its official network code."""

import pytest
import torch

import shufflenet
from shufflenet.deploy.fastpath import fastpath_support
from shufflenet.models.v2_plus import V2_PLUS_BLOCKS, ShuffleNetV2Plus, ShufflePlusUnit
from shufflenet.preprocessing import MEGVII_PREPROCESSING

NAMES = [f"shufflenet_v2_plus_{size}" for size in ("small", "medium", "large")]
# name -> (parameters, paper MFLOPs, paper top-1 error)
RELEASE = {
    "shufflenet_v2_plus_small": (5_137_116, 155.8, 25.9),
    "shufflenet_v2_plus_medium": (5_679_840, 222.2, 24.3),
    "shufflenet_v2_plus_large": (6_768_220, 360.1, 22.9),
}


def test_v2_plus_registry_metadata():
    assert shufflenet.list_models("shufflenet_v2_plus_*") == NAMES
    for name, (params, mflops, err) in RELEASE.items():
        info = shufflenet.get_model_info(name)
        assert info.family == "v2_plus"
        assert info.paper_mflops == mflops
        assert info.paper_params_m == pytest.approx(params / 1e6)
        assert info.paper_top1_err == err
        assert info.preprocessing == MEGVII_PREPROCESSING


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_params_exact_and_flops_near_release(name):
    params, mflops, _ = RELEASE[name]
    model = shufflenet.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params
    # profile counts multiply-adds of every conv (SE's 1x1 convs included) and matrix product
    # (the two Linear layers), the release's convention.
    result = shufflenet.profile(model)
    assert result.params == params
    assert result.flops == pytest.approx(mflops * 1e6, rel=2e-3)


def test_v2_plus_structure_follows_the_release():
    model = shufflenet.create_model("shufflenet_v2_plus_large")
    assert isinstance(model, ShuffleNetV2Plus)
    assert not hasattr(model, "maxpool") and model.stem_names == ("conv1",)
    assert model.conv1[0].stride == (2, 2) and model.conv1[0].out_channels == 16
    assert isinstance(model.conv1[2], torch.nn.Hardswish)
    units = [u for i in range(1, 5) for u in getattr(model, f"stage{i}")]
    assert [len(getattr(model, f"stage{i}")) for i in range(1, 5)] == [4, 4, 8, 4]
    assert [u.block for u in units] == list(V2_PLUS_BLOCKS)
    assert all(isinstance(u, ShufflePlusUnit) for u in units)
    for u in model.stage1:
        assert not any(isinstance(m, torch.nn.Hardswish) for m in u.modules())
    assert not any(hasattr(m, "gate") for m in model.stage2.modules())
    assert all(hasattr(u.branch_main[-1], "gate") for u in [*model.stage3, *model.stage4])
    sd = model.state_dict()
    assert sd["stage1.0.branch_main.5.weight"].shape == (52, 34, 1, 1)
    assert sd["stage3.0.branch_main.3.weight"].shape == (168, 1, 7, 7)
    assert sd["stage3.0.branch_main.8.gate.1.weight"].shape == (42, 168, 1, 1)
    assert sd["head_se.gate.1.weight"].shape == (320, 1280, 1, 1)
    assert len(sd) == 549  # as many as the release's checkpoint
    assert model.fc.bias is None and model.head_fc[0].bias is None
    assert model.dropout.p == 0.2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(224, 224), (96, 128), (32, 32)])
def test_forward_shapes(name, size):
    model = shufflenet.create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 1000)


def test_features_stages_head_and_classifier():
    model = shufflenet.create_model("shufflenet_v2_plus_small", num_classes=5).eval()
    x = torch.randn(1, 3, 96, 128)
    stages = model.forward_stages(x)
    assert [info["module"] for info in model.feature_info] == [f"stage{i}" for i in range(1, 5)]
    for feat, info in zip(stages, model.feature_info, strict=True):
        assert feat.shape[1] == info["num_chs"]
        assert feat.shape[2:] == (96 // info["reduction"], 128 // info["reduction"])
    features = model.forward_features(x)
    assert features.shape[1:] == (1280, 3, 4)
    assert torch.equal(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (1, 1280)
    model.reset_classifier(3)
    assert model(x).shape == (1, 3) and model.model_config["num_classes"] == 3
    model.reset_classifier(0)
    assert model(x).shape == (1, 1280)


def test_stride_one_unit_keeps_even_channels():
    unit = ShufflePlusUnit(8, 8, 1, 1, act_layer=torch.nn.Hardswish, se=True).eval()
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(unit(x)[:, :4], x[:, 0::2])


def test_v2_plus_save_load_round_trip(tmp_path):
    model = shufflenet.create_model("shufflenet_v2_plus_small", num_classes=10).eval()
    path = tmp_path / "v2_plus.safetensors"
    shufflenet.save(model, path)
    loaded = shufflenet.load(path).eval()
    assert isinstance(loaded, ShuffleNetV2Plus)
    assert loaded.weights_metadata["model_config"] == {
        "name": "shufflenet_v2_plus_small",
        "num_classes": 10,
    }
    assert loaded.weights_metadata["preprocessing"]["channel_order"] == "BGR"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_fastpath_declines():
    model = shufflenet.create_model("shufflenet_v2_plus_small")
    assert fastpath_support(model) is not None


def test_onnx_export_is_static_and_verified(tmp_path):
    onnx = pytest.importorskip("onnx")
    from shufflenet.export import export_model

    model = shufflenet.create_model("shufflenet_v2_plus_small").eval()
    path = tmp_path / "m.onnx"
    result = export_model(model, path, input_size=(96, 96))
    assert result.verification.passed
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "Size", "NonZero"}, ops  # the even/odd split is strided slices


def test_profile_files_se_and_hswish_in_their_own_categories():
    model = shufflenet.create_model("shufflenet_v2_plus_small")
    result = shufflenet.profile(model, (3, 64, 64))
    categories = result.by_category()
    se = [row for row in result.layers if row.category == "squeeze-excite"]
    # every SE row sits in an SE block (units of stages 3-4 and the head), and each SE block's
    # two convs, BN, ReLU, gate, pooling and multiply are all there
    se_paths = [n for n, m in model.named_modules() if type(m).__name__ == "SqueezeExcite"]
    module_path = [row.name.split(":")[0] for row in se]
    assert se and all(any(p.startswith(s) for s in se_paths) for p in module_path)
    se_blocks = 8 + 4 + 1
    assert sum(row.kind == "Conv2d" for row in se) == 2 * se_blocks
    assert sum(row.kind == "mul" for row in se) == se_blocks
    hswish = [row for row in result.layers if row.category == "h-swish"]
    assert hswish and all(row.kind == "Hardswish" for row in hswish)
    assert (
        "h-swish"
        not in shufflenet.profile(shufflenet.create_model("shufflenet_v2_x0_5")).by_category()
    )
    assert categories["squeeze-excite"]["flops"] > 0
