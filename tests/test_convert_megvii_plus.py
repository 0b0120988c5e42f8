"""Megvii's ShuffleNetV2+ and ShuffleNetV2.Large checkpoints -> our weights files.

The checkpoints are built here from the release's documented key names and the shapes of its
official network code (random tensors), and the official networks' outputs come from functional
forwards over the raw Megvii-keyed tensors, written independently of shufflenet's modules.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import MegviiMaker, rel_err, save_megvii

import shufflenet
from shufflenet.cli import main
from shufflenet.convert import SOURCES, convert_checkpoint, megvii_v2_large_filter
from shufflenet.models.v2_large import ShuffleNetV2Large
from shufflenet.weights import load_state_dict_checked

pytestmark = pytest.mark.usefixtures("one_thread")

# -- ShuffleNetV2+ -------------------------------------------------------------------------------
PLUS_REPEATS = (4, 4, 8, 4)
PLUS_ARCH = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)  # 3: Xception
PLUS_WIDTHS = {"small": (36, 104, 208, 416), "large": (68, 168, 336, 672)}


def _plus_kernel(n):
    return 3 if PLUS_ARCH[n] == 3 else 3 + 2 * PLUS_ARCH[n]


def megvii_plus_checkpoint(widths, classes=1000, seed=0):
    m = MegviiMaker(seed)
    m.conv("first_conv.0", 16, 3, 3)
    m.bn("first_conv.1", 16, var_scale=1e4)  # 0-255 input
    n, inp = 0, 16
    for s, (oup, repeats) in enumerate(zip(widths, PLUS_REPEATS, strict=True)):
        for i in range(repeats):
            p, k, mid = f"features.{n}", _plus_kernel(n), oup // 2
            cin = inp if i == 0 else oup // 2
            outputs = oup - cin
            if PLUS_ARCH[n] == 3:
                layers = [(0, cin, 1, 3), (2, mid, cin, 1), (5, mid, 1, 3), (7, mid, mid, 1),
                          (10, mid, 1, 3), (12, outputs, mid, 1)]  # fmt: skip
                se_index = 15
            else:
                layers = [(0, mid, cin, 1), (3, mid, 1, k), (5, outputs, mid, 1)]
                se_index = 8
            for index, cout, cin_per_group, kernel in layers:
                m.conv(f"{p}.branch_main.{index}", cout, cin_per_group, kernel)
                m.bn(f"{p}.branch_main.{index + 1}", cout)
            if s >= 2:
                se = f"{p}.branch_main.{se_index}.SE_opr"
                m.conv(f"{se}.1", outputs // 4, outputs, 1)
                m.bn(f"{se}.2", outputs // 4)
                m.conv(f"{se}.4", outputs, outputs // 4, 1)
            if i == 0:
                m.conv(f"{p}.branch_proj.0", cin, 1, k)
                m.bn(f"{p}.branch_proj.1", cin)
                m.conv(f"{p}.branch_proj.2", cin, cin, 1)
                m.bn(f"{p}.branch_proj.3", cin)
            n, inp = n + 1, oup
    m.conv("conv_last.0", 1280, inp, 1)
    m.bn("conv_last.1", 1280)
    m.conv("LastSE.SE_opr.1", 320, 1280, 1)
    m.bn("LastSE.SE_opr.2", 320)
    m.conv("LastSE.SE_opr.4", 1280, 320, 1)
    m.sd["fc.0.weight"] = torch.randn(1280, 1280, generator=m.g) / 1280**0.5
    m.sd["classifier.0.weight"] = torch.randn(classes, 1280, generator=m.g) / 1280**0.5
    return m.sd


def _bn(sd, x, name, eps=1e-5):
    return F.batch_norm(
        x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
        sd[f"{name}.bias"], False, 0.0, eps,
    )  # fmt: skip


def _conv(sd, x, name, stride=1, groups=1):
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)


def _megvii_split(x):
    """The official channel_shuffle of a stride-1 unit: (even channels, odd channels)."""
    b, c, h, w = x.shape
    pair = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, b, c // 2, h, w)
    return pair[0], pair[1]


def _hswish(x):
    return x * torch.clamp(x + 3, 0, 6) / 6


def _plus_se(sd, x, p):
    a = _conv(sd, x.mean((2, 3), keepdim=True), f"{p}.SE_opr.1")
    a = _conv(sd, F.relu(_bn(sd, a, f"{p}.SE_opr.2")), f"{p}.SE_opr.4")
    return x * torch.clamp(a + 3, 0, 6) / 6


def official_plus_forward(sd, x):
    x = _hswish(_bn(sd, _conv(sd, x, "first_conv.0", 2), "first_conv.1"))
    n = 0
    for s, repeats in enumerate(PLUS_REPEATS):
        act = F.relu if s == 0 else _hswish
        for i in range(repeats):
            p, stride = f"features.{n}", 2 if i == 0 else 1
            if stride == 1:
                proj, main = _megvii_split(x)
            else:
                proj = _bn(sd, _conv(sd, x, f"{p}.branch_proj.0", 2, x.shape[1]),
                           f"{p}.branch_proj.1")  # fmt: skip
                proj = act(_bn(sd, _conv(sd, proj, f"{p}.branch_proj.2"), f"{p}.branch_proj.3"))
                main = x
            b = f"{p}.branch_main"
            if PLUS_ARCH[n] == 3:  # three (depthwise, BN, 1x1, BN, act), stride on the first
                for j, index in enumerate((0, 5, 10)):
                    dw = _conv(sd, main, f"{b}.{index}", stride if j == 0 else 1, main.shape[1])
                    main = _bn(sd, dw, f"{b}.{index + 1}")
                    main = act(_bn(sd, _conv(sd, main, f"{b}.{index + 2}"), f"{b}.{index + 3}"))
                se = f"{b}.15"
            else:
                main = act(_bn(sd, _conv(sd, main, f"{b}.0"), f"{b}.1"))
                main = _bn(sd, _conv(sd, main, f"{b}.3", stride, main.shape[1]), f"{b}.4")
                main = act(_bn(sd, _conv(sd, main, f"{b}.5"), f"{b}.6"))
                se = f"{b}.8"
            if s >= 2:
                main = _plus_se(sd, main, se)
            x = torch.cat((proj, main), 1)
            n += 1
    x = _hswish(_bn(sd, _conv(sd, x, "conv_last.0"), "conv_last.1"))
    x = _plus_se(sd, x.mean((2, 3), keepdim=True), "LastSE").flatten(1)
    x = _hswish(F.linear(x, sd["fc.0.weight"]))
    return F.linear(x, sd["classifier.0.weight"])


@pytest.mark.parametrize("size", ["small", "large"])
def test_megvii_v2_plus_reproduces_official_outputs(tmp_path, size):
    sd = megvii_plus_checkpoint(PLUS_WIDTHS[size])
    assert len(sd) == 549  # as many tensors as the release's checkpoints
    src = save_megvii(sd, tmp_path / f"ShuffleNetV2+.{size}.pth.tar")
    result = convert_checkpoint(src, tmp_path / "plus.safetensors", "megvii")
    name = f"shufflenet_v2_plus_{size}"  # the size is read from the shapes
    assert (result.model, result.layout, result.num_classes) == (name, "megvii", 1000)
    model = shufflenet.load(result.path)
    assert model.model_config == {"name": name, "num_classes": 1000, "in_chans": 3}
    assert model.weights_metadata["preprocessing"]["channel_order"] == "BGR"
    x = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        ours, ref = model(x), official_plus_forward(sd, x)
    assert ref.abs().max() > 0.1  # a forward that does real work
    assert rel_err(ours, ref) < 1e-4


# -- ShuffleNetV2.Large (SE-ShuffleNet v2-164) ---------------------------------------------------
LARGE_REPEATS = (10, 10, 23, 10)
LARGE_MID = (64, 128, 256, 512)  # the release's mid_outputs; units output twice that per half
LARGE_AUX = {2: "predict_56", 3: "predict_28", 4: "predict_14"}
BN_EPS = 1e-9


def megvii_large_checkpoint(repeats=LARGE_REPEATS, mid=LARGE_MID, classes=1000, aux=True, seed=0):
    m = MegviiMaker(seed)

    def cbr(name, cout, cin_per_group, k, var_scale=1.0):
        m.conv(f"{name}.conv", cout, cin_per_group, k)
        m.bn(f"{name}.bn", cout, var_scale)

    cbr("first_conv.0", 64, 3, 3, var_scale=1e4)  # 0-255 input
    cbr("first_conv.1", 64, 64, 3)
    cbr("first_conv.2", 128, 64, 3)
    channels = 128
    for f, (units, o) in enumerate(zip(repeats, mid, strict=True)):
        stage, out = f + 2, 2 * o
        for i in range(units):
            p, half = f"features.{f}.{stage}{chr(ord('a') + i)}", channels // 2
            if i == 0:
                cbr(f"{p}.proj", out, half, 3)
                if stage > 2:
                    cbr(f"{p}.down", 2 * out, 2 * out, 1)
            cbr(f"{p}.branch_main.0", out, half, 1)
            cbr(f"{p}.branch_main.1", out, out // 8, 3)
            cbr(f"{p}.branch_main.2", out, out, 1)
            for fc, twin in (("se_fc1", "se_block.0"), ("se_fc2", "se_block.2")):
                weight = torch.randn(out, out, generator=m.g) / out**0.5
                bias = torch.randn(out, generator=m.g) * 0.1
                m.sd[f"{p}.{fc}.weight"], m.sd[f"{p}.{fc}.bias"] = weight, bias
                m.sd[f"{p}.{twin}.weight"], m.sd[f"{p}.{twin}.bias"] = weight.clone(), bias.clone()
            channels = 2 * out
        if aux and stage in LARGE_AUX:
            head = LARGE_AUX[stage]
            cbr(f"{head}.conv.0", channels, channels, 1)
            cbr(f"{head}.conv.1", channels, channels, 3)
            m.sd[f"{head}.fc.weight"] = (
                torch.randn(classes, channels, generator=m.g) / channels**0.5
            )
            m.sd[f"{head}.fc.bias"] = torch.randn(classes, generator=m.g) * 0.1
    cbr("conv_last", 1280, channels, 3)
    m.sd["fc.weight"] = torch.randn(classes, 1280, generator=m.g) / 1280**0.5
    m.sd["fc.bias"] = torch.randn(classes, generator=m.g) * 0.1
    # the release's checkpoint may predate BN's counter: the converter fills it
    return {k: v for k, v in m.sd.items() if not k.endswith("num_batches_tracked")}


def _cbr(sd, x, name, stride=1, groups=1, relu=True):
    x = _bn(sd, _conv(sd, x, f"{name}.conv", stride, groups), f"{name}.bn", BN_EPS)
    return F.relu(x) if relu else x


def _large_aux_head(sd, x, head):
    x = F.max_pool2d(x, 3, 2, 1)
    x = _cbr(sd, _cbr(sd, x, f"{head}.conv.0"), f"{head}.conv.1")
    return F.linear(x.mean((2, 3)), sd[f"{head}.fc.weight"], sd[f"{head}.fc.bias"])


def official_large_forward(sd, x, repeats=LARGE_REPEATS):
    """(logits, {stage: the eval-mode output of its auxiliary head}) of the official network."""
    for i in range(3):
        x = _cbr(sd, x, f"first_conv.{i}", stride=2 if i == 0 else 1)
    x = F.max_pool2d(x, 3, 2, 1)
    aux = {}
    for f, units in enumerate(repeats):
        stage = f + 2
        for i in range(units):
            p = f"features.{f}.{stage}{chr(ord('a') + i)}"
            stride = 2 if i == 0 and stage > 2 else 1
            proj, odd = _megvii_split(x)
            main = _cbr(sd, odd, f"{p}.branch_main.0")
            main = _cbr(sd, main, f"{p}.branch_main.1", stride, groups=8)
            main = _cbr(sd, main, f"{p}.branch_main.2", relu=False)
            scale = F.relu(F.linear(main.mean((2, 3)), sd[f"{p}.se_fc1.weight"],
                                    sd[f"{p}.se_fc1.bias"]))  # fmt: skip
            scale = torch.sigmoid(F.linear(scale, sd[f"{p}.se_fc2.weight"], sd[f"{p}.se_fc2.bias"]))
            main = main * scale[:, :, None, None]
            if i == 0:
                proj = _cbr(sd, proj, f"{p}.proj", stride, relu=False)
            else:
                main = odd + main
            x = F.relu(torch.cat((proj, main), 1))
            if stride == 2:
                x = _cbr(sd, x, f"{p}.down")
        if f"{LARGE_AUX.get(stage)}.fc.weight" in sd:
            aux[f"stage{stage}"] = _large_aux_head(sd, x, LARGE_AUX[stage])
    x = _cbr(sd, x, "conv_last")
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"]), aux


def _bgr(size=64):
    return torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
def test_megvii_v2_large_reproduces_official_outputs(tmp_path):
    # The release's deployment network (no auxiliary heads), at full size, through the CLI.
    sd = megvii_large_checkpoint(aux=False)
    assert not any(k.startswith("predict_") or k.endswith("num_batches_tracked") for k in sd)
    src = save_megvii(sd, tmp_path / "ShuffleNetV2.Large.pth.tar")
    dst = tmp_path / "large.safetensors"
    assert main(["convert", str(src), str(dst), "--from", "megvii"]) == 0
    model = shufflenet.load(dst)
    assert model.model_config == {"name": "shufflenet_v2_large", "aux_logits": False,
                                  "num_classes": 1000, "in_chans": 3}  # fmt: skip
    assert model.aux_heads is None and model.weights_metadata["class_names"][0] == "tench"
    assert model.weights_metadata["preprocessing"]["scale"] == 1.0
    x = _bgr().float()
    with torch.no_grad():
        ours, (ref, _) = model(x), official_large_forward(sd, x)
    assert ref.abs().max() > 0.1
    assert rel_err(ours, ref) < 1e-4


def test_megvii_v2_large_auxiliary_heads():
    # A narrow network of the same structure: the auxiliary heads' keys and numbers.
    repeats, mid = (2, 2, 3, 2), (8, 8, 16, 16)
    sd = megvii_large_checkpoint(repeats, mid, classes=7, seed=3)
    net = ShuffleNetV2Large(num_classes=7, stages_repeats=repeats,
                            stages_widths=[2 * o for o in mid]).eval()  # fmt: skip
    converted = megvii_v2_large_filter(sd)
    for key, value in net.state_dict().items():  # as convert_checkpoint fills them
        converted.setdefault(key, torch.zeros_like(value))
    load_state_dict_checked(net, converted)
    x = _bgr().float()
    with torch.no_grad():
        ref, ref_aux = official_large_forward(sd, x, repeats)
        stages = net.forward_stages(x)
        ours = net(x)
    assert rel_err(ours, ref) < 1e-4
    assert sorted(ref_aux) == ["stage2", "stage3", "stage4"]
    for feature, info in zip(stages, net.feature_info, strict=False):
        name = info["module"]
        if name in ref_aux:
            with torch.no_grad():
                assert rel_err(net.aux_heads[name](feature), ref_aux[name]) < 1e-4


def test_megvii_detection_routes_each_release():
    meta = torch.empty(0)

    def detect(*keys):
        return SOURCES["megvii"](dict.fromkeys(keys, meta))

    v1 = detect("first_conv.0.weight", "features.0.branch_main_1.0.weight")
    assert (v1.pattern, v1.kwargs) == ("shufflenet_v1_*", {"layout": "megvii"})
    v2 = detect("first_conv.0.weight", "features.0.branch_main.0.weight", "conv_last.0.weight",
                "classifier.0.weight")  # fmt: skip
    assert (v2.pattern, v2.kwargs) == ("shufflenet_v2_x*", {"layout": "megvii"})
    plus = detect("first_conv.0.weight", "features.0.branch_main.0.weight", "conv_last.0.weight",
                  "fc.0.weight", "classifier.0.weight")  # fmt: skip
    assert (plus.pattern, plus.kwargs) == ("shufflenet_v2_plus_*", {})
    assert detect("LastSE.SE_opr.1.weight").pattern == "shufflenet_v2_plus_*"
    large = detect("first_conv.0.conv.weight", "features.0.2a.se_fc1.weight")
    assert (large.pattern, large.kwargs) == ("shufflenet_v2_large", {"aux_logits": False})
    large = detect("first_conv.0.conv.weight", "predict_56.fc.weight")
    assert large.kwargs == {"aux_logits": True}
    assert {d.layout for d in (v1, v2, plus, large)} == {"megvii"}
    with pytest.raises(ValueError, match="not a Megvii ShuffleNet"):
        detect("fc.weight")


def test_megvii_v2_large_se_copies_must_agree(tmp_path):
    sd = {
        "features.0.2a.se_fc1.weight": torch.ones(2, 2),
        "features.0.2a.se_block.0.weight": torch.ones(2, 2),
        "features.0.2a.se_block.2.bias": torch.zeros(2),  # without its twin: kept, renamed
        "predict_56.conv.1.bn.running_var": torch.ones(2),
    }
    assert sorted(megvii_v2_large_filter(sd)) == [
        "aux_heads.stage2.conv.1.1.running_var",
        "stage2.0.se.fc1.weight",
        "stage2.0.se.fc2.bias",
    ]
    sd["features.0.2a.se_block.0.weight"] = torch.full((2, 2), 2.0)
    with pytest.raises(ValueError, match=r"se_block\.0\.weight differs from .*se_fc1\.weight"):
        megvii_v2_large_filter(sd)
    # through convert: a ValueError naming the file's keys, nothing written
    full = megvii_large_checkpoint((1, 1, 1, 1), (8, 8, 8, 8), classes=5)
    full["features.2.4a.se_block.2.bias"] = full["features.2.4a.se_block.2.bias"] + 1
    src = save_megvii(full, tmp_path / "bad.pth.tar")
    dst = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match=r"features\.2\.4a\.se_block\.2\.bias differs"):
        convert_checkpoint(src, dst, "megvii")
    assert not dst.exists()


def test_megvii_named_model_must_be_of_the_detected_family(tmp_path):
    sd = megvii_plus_checkpoint(PLUS_WIDTHS["small"], classes=10)
    src = save_megvii(sd, tmp_path / "plus.pth.tar")
    dst = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="ShuffleNetV2\\+ checkpoint: model must be one of "
                       "shufflenet_v2_plus_small"):  # fmt: skip
        convert_checkpoint(src, dst, "megvii", model="shufflenet_v2_x1_0")
    with pytest.raises(ValueError, match="does not fit shufflenet_v2_plus_medium"):
        convert_checkpoint(src, dst, "megvii", model="shufflenet_v2_plus_medium")
    result = convert_checkpoint(src, dst, "megvii", model="shufflenet_v2_plus_small")
    assert (result.model, result.num_classes) == ("shufflenet_v2_plus_small", 10)
