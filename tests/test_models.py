import inspect
import re

import pytest
import torch
import torchvision
from conftest import randomize_bn
from torch.utils.flop_counter import FlopCounterMode

import shufflenet
from shufflenet.models import AuxOutputs, v1, v2, v2_large, v2_plus
from shufflenet.models.v1 import V1_STAGE2_WIDTHS, ShuffleNetV1, ShuffleV1Unit, v1_widths
from shufflenet.models.v2 import InvertedResidual, ShuffleNetV2

ALL = shufflenet.list_models()
V2_NAMES = shufflenet.list_models("shufflenet_v2_x*")
TORCHVISION_V2 = [f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")]


def test_registry_has_the_25_v1_and_7_v2_models():
    v1 = [f"shufflenet_v1_g{g}_x{w}" for g in (1, 2, 3, 4, 8) for w in ("0_25", "0_5", "1_0")]
    v1 += ["shufflenet_v1_g3_x1_5", "shufflenet_v1_g3_x2_0"]
    assert set(v1) <= set(ALL)
    assert len(shufflenet.list_models("shufflenet_v1_*")) == 25
    paddleclas = ["shufflenet_v2_x0_25", "shufflenet_v2_x0_33"]
    assert [*paddleclas, *TORCHVISION_V2, "shufflenet_v2_x1_0_swish"] == V2_NAMES


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_non_square(name):
    model = shufflenet.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 48, 64, requires_grad=True)
    out = model(x)
    # training mode: models with auxiliary classifiers return their logits too
    outputs = [out.logits, *out.aux] if isinstance(out, AuxOutputs) else [out]
    assert all(o.shape == (2, 7) for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["shufflenet_v1_g8_x0_5", "shufflenet_v2_x1_0"])
def test_features_stages_and_head(name):
    model = shufflenet.create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, 96, 128)
    stages = model.forward_stages(x)
    assert len(stages) == len(model.feature_info) == 4
    for feat, info in zip(stages, model.feature_info, strict=True):
        assert feat.shape[1] == info["num_chs"]
        assert feat.shape[2:] == (96 // info["reduction"], 128 // info["reduction"])
    features = model.forward_features(x)
    assert features.shape[1] == model.num_features
    assert torch.equal(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (1, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (1, 3)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)


def test_in_chans_and_smallest_input():
    model = shufflenet.create_model("shufflenet_v2_x0_5", in_chans=1, num_classes=10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"groups": 5}, "groups must be one of"),
        ({"width_mult": 0}, "width_mult"),
        ({"num_classes": -1}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
        ({"drop_rate": 1.5}, "drop_rate"),
    ],
)
def test_v1_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShuffleNetV1(**kwargs)


def test_v1_unit_and_v2_bad_arguments():
    with pytest.raises(ValueError, match="multiple of groups"):
        ShuffleV1Unit(30, 30, groups=4, stride=1)
    with pytest.raises(ValueError, match="stride"):
        ShuffleV1Unit(24, 24, groups=3, stride=3)
    with pytest.raises(ValueError, match="5 values"):
        ShuffleNetV2(stages_out_channels=(24, 116, 232))
    with pytest.raises(ValueError, match="even"):
        ShuffleNetV2(stages_out_channels=(24, 117, 232, 464, 1024))


def test_registry_rows_are_the_one_place_of_the_papers_numbers():
    families = {"v1", "v2", "v2_plus", "v2_large"}
    assert {shufflenet.get_model_info(n).family for n in ALL} == families
    tables = [v1.V1_MODELS, v2.V2_MODELS, v2_large.V2_LARGE_MODELS, v2_plus.V2_PLUS_MODELS]
    assert [info.name for table in tables for info in table] == ALL  # one shape, every family
    assert all(info is shufflenet.get_model_info(info.name) for t in tables for info in t)
    for name in ALL:
        builder = shufflenet.get_model_info(name).builder
        doc = inspect.getdoc(getattr(builder, "func", builder)) or ""
        assert not re.search(r"\d\s*(MFLOPs|GFLOPs|M weights|%)", doc), (name, doc)


def test_fastpath_support_reads_the_units_declaration():
    from shufflenet.deploy.fastpath import fastpath_support

    model = ShuffleNetV2([1, 1, 1], [16, 32, 64, 128, 256])
    assert all(u.shuffle_free_form for u in model.modules() if isinstance(u, InvertedResidual))
    assert fastpath_support(model) is None
    model.stage3[0].shuffle_free_form = False
    assert fastpath_support(model) == "units with a squeeze-excitation layer"


def test_unknown_model_suggests_names():
    with pytest.raises(ValueError, match=r"did you mean .*shufflenet_v2_x1_0"):
        shufflenet.create_model("shufflenet_v2_x1_O")


def _mflops(model, size=(224, 224)):
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, *size))
    return counter.get_total_flops() / 2 / 1e6  # multiply-adds


@pytest.mark.parametrize("groups", sorted(V1_STAGE2_WIDTHS))
def test_v1_1x_is_table_1(groups):
    assert v1_widths(groups, 1.0)[1:] == tuple(V1_STAGE2_WIDTHS[groups] * k for k in (1, 2, 4))
    name = f"shufflenet_v1_g{groups}_x1_0"
    paper = shufflenet.get_model_info(name).paper_mflops
    assert _mflops(shufflenet.create_model(name)) == pytest.approx(paper, rel=0.02)


def test_v1_width_rule_gives_official_widths():
    official = {
        (3, 0.5): (12, 120, 240, 480),
        (3, 1.0): (24, 240, 480, 960),
        (3, 1.5): (24, 360, 720, 1440),
        (3, 2.0): (48, 480, 960, 1920),
        (8, 0.5): (16, 192, 384, 768),
        (8, 1.0): (24, 384, 768, 1536),
        (8, 1.5): (24, 576, 1152, 2304),
        (8, 2.0): (48, 768, 1536, 3072),
    }
    for (g, s), widths in official.items():
        assert v1_widths(g, s) == widths


@pytest.mark.parametrize("name", shufflenet.list_models("shufflenet_v1_*"))
def test_v1_complexity_near_paper(name):
    info = shufflenet.get_model_info(name)
    model = shufflenet.create_model(name)
    if info.paper_mflops is not None:
        expected = info.paper_mflops
    else:  # paper: complexity is about s^2 times that of 1x
        s = model.width_mult
        expected = s**2 * shufflenet.get_model_info(name[:-4] + "x1_0").paper_mflops
    assert _mflops(model) == pytest.approx(expected, rel=0.10)
    for m in model.modules():  # every grouped layer splits evenly
        if isinstance(m, torch.nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


@pytest.mark.parametrize("name", TORCHVISION_V2)
def test_v2_matches_table_5_and_torchvision(name):
    info = shufflenet.get_model_info(name)
    ours = shufflenet.create_model(name)
    reference = randomize_bn(getattr(torchvision.models, name)()).eval()
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for p in reference.parameters())
    assert params / 1e6 == pytest.approx(info.paper_params_m, abs=0.05)
    assert _mflops(ours) == pytest.approx(info.paper_mflops, rel=0.02)
    assert _mflops(ours) == pytest.approx(_mflops(reference), rel=1e-9)

    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    for size in ((224, 224), (160, 192)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            diff = (ours(x) - reference(x)).abs().max().item()
        assert diff < 1e-5


def test_init_is_documented_scheme():
    model = shufflenet.create_model("shufflenet_v2_x0_5")
    conv = model.conv5[0]
    expected_std = (2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.equal(model.conv1[1].weight, torch.ones(24))


class _SqueezeExcite(torch.nn.Module):
    """A small squeeze-excitation layer, as a family with SE would pass in ``se_layer``."""

    def __init__(self, channels):
        super().__init__()
        self.fc = torch.nn.Conv2d(channels, channels // 4, 1)
        self.gate = torch.nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        scale = self.gate(torch.relu(self.fc(x.mean((2, 3), keepdim=True))))
        return x * torch.nn.functional.hardsigmoid(scale)


def test_blocks_take_their_layers():
    from shufflenet.deploy.fastpath import fastpath_support

    model = ShuffleNetV2(
        [1, 2, 1],
        [16, 32, 64, 128, 256],
        num_classes=5,
        act_layer=torch.nn.Hardswish,
        se_layer=_SqueezeExcite,
        layout="megvii",
    ).eval()
    acts = {type(m) for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.Hardswish))}
    assert acts == {torch.nn.Hardswish}
    assert sum(isinstance(m, _SqueezeExcite) for m in model.modules()) == 4  # one per unit
    assert model.fc.bias is None  # Megvii's bias-free classifier, from the base class
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    swish = ShuffleNetV2([1, 1, 1], [16, 32, 64, 128, 256], act_layer=torch.nn.Hardswish)
    assert fastpath_support(swish) is None  # 0 at 0: zero padding stays exact
    gate = ShuffleNetV2([1, 1, 1], [16, 32, 64, 128, 256], act_layer=torch.nn.Hardsigmoid)
    assert "Hardsigmoid" in fastpath_support(gate)  # not rewritten: 0.5 at 0, padding would leak
    se = ShuffleNetV2([1, 1, 1], [16, 32, 64, 128, 256], se_layer=_SqueezeExcite)
    assert not se.stage2[0].shuffle_free_form  # the unit declares it
    assert fastpath_support(se) is not None
    v1 = ShuffleNetV1(groups=3, width_mult=0.5, act_layer=torch.nn.Hardswish, layout="megvii")
    assert v1.fc.bias is None and isinstance(v1.stage2[0].relu1, torch.nn.Hardswish)
