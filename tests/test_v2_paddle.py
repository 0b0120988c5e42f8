"""PaddleClas's ShuffleNetV2 rows: 0.25x, 0.33x and the swish (SiLU) 1x. Their structure against
a functional forward written from PaddleClas's definition, their published counts reproduced,
and the paths that rewrite a model (fast path, training form, edge exports; ONNX's is in
test_export's parity test, which takes every ``shufflenet_v2_x*``) on them."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import randomize_bn, varied_model
from torch import nn

import shufflenet
from shufflenet.cli import main
from shufflenet.complexity import profile
from shufflenet.convert import convert_checkpoint
from shufflenet.deploy import optimize
from shufflenet.deploy.fastpath import EAGER, ONNXRUNTIME, OPENVINO, fast_model, fastpath_support
from shufflenet.export import export_model
from shufflenet.train import train_model

PADDLE = ["shufflenet_v2_x0_25", "shufflenet_v2_x0_33", "shufflenet_v2_x1_0_swish"]
SWISH = "shufflenet_v2_x1_0_swish"
# each edge format's converter and runtime
NEEDS = {
    "ncnn": ["pnnx", "ncnn"],
    "litert": ["litert_torch", "ai_edge_litert"],
    "executorch": ["executorch.exir", "executorch.runtime"],
    "mnn": ["MNN"],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_bn(sd, x, conv, bn, stride=1, depthwise=False, act=None):
    """PaddleClas's ConvBNLayer: a bias-free conv, BatchNorm (eps 1e-5), the activation if any."""
    w = sd[f"{conv}.weight"]
    groups = x.shape[1] if depthwise else 1
    x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
    mean, var, gamma, beta = (
        sd[f"{bn}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")
    )
    x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    x = x * gamma[:, None, None] + beta[:, None, None]
    return x if act is None else act(x)


def _paddleclas_forward(sd, x, act):
    """PaddleClas's ShuffleNet forward, from our state dict's tensors (our key names)."""
    x = F.max_pool2d(_conv_bn(sd, x, "conv1.0", "conv1.1", 2, act=act), 3, 2, 1)
    for stage, repeats in zip((2, 3, 4), (4, 8, 4), strict=True):
        for i in range(repeats):
            p, stride = f"stage{stage}.{i}", 2 if i == 0 else 1
            if i == 0:  # InvertedResidualDS: both branches read the whole input
                left = _conv_bn(sd, x, f"{p}.branch1.0", f"{p}.branch1.1", 2, depthwise=True)
                left = _conv_bn(sd, left, f"{p}.branch1.2", f"{p}.branch1.3", act=act)
                right = x
            else:  # InvertedResidual: split in halves, the second one through the branch
                left, right = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
            right = _conv_bn(sd, right, f"{p}.branch2.0", f"{p}.branch2.1", act=act)
            right = _conv_bn(sd, right, f"{p}.branch2.3", f"{p}.branch2.4", stride, depthwise=True)
            right = _conv_bn(sd, right, f"{p}.branch2.5", f"{p}.branch2.6", act=act)
            out = torch.cat([left, right], 1)
            n, c, h, w = out.shape  # channel_shuffle(out, 2): reshape, transpose, flatten
            x = out.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
    x = _conv_bn(sd, x, "conv5.0", "conv5.1", act=act)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("name", PADDLE)
def test_paddleclas_definition_computes_the_same(name):
    model = varied_model(name)
    act = (lambda t: t * torch.sigmoid(t)) if name == SWISH else torch.relu
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        diff = (model(x) - _paddleclas_forward(model.state_dict(), x, act)).abs().max()
    assert diff < 1e-4
    widths = {"shufflenet_v2_x0_25": (24, 48, 96, 512), "shufflenet_v2_x0_33": (32, 64, 128, 512)}
    stages = (model.stage2, model.stage3, model.stage4)
    got = (*(s[-1].branch2[5].out_channels * 2 for s in stages), model.conv5[0].out_channels)
    assert got == widths.get(name, (116, 232, 464, 1024)) and model.conv1[0].out_channels == 24
    acts = [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
    assert set(acts) == {nn.SiLU if name == SWISH else nn.ReLU} and len(acts) == 2 + 3 * 3 + 2 * 13


def test_swish_is_1x_with_silu_everywhere():
    relu, swish = shufflenet.create_model("shufflenet_v2_x1_0"), shufflenet.create_model(SWISH)
    shapes = {k: v.shape for k, v in relu.state_dict().items()}
    assert {k: v.shape for k, v in swish.state_dict().items()} == shapes
    # every ReLU of the 1x network is a SiLU here, Conv1's and Conv5's included
    relus = [n for n, m in relu.named_modules() if isinstance(m, nn.ReLU)]
    assert relus == [n for n, m in swish.named_modules() if isinstance(m, nn.SiLU)]
    assert {"conv1.2", "conv5.2"} <= set(relus)
    with pytest.raises(ValueError, match="must widen"):  # Megvii's unit: no 24 -> 24 stride 2
        shufflenet.create_model("shufflenet_v2_x0_25", layout="megvii")


def _paddle_flops(model):
    """paddle.flops()'s totals, which PaddleClas's model list publishes: conv and Linear
    multiply-adds, 2 per BatchNorm input element, (window + 1) per average-pooled output; the
    parameters with BatchNorm's running mean and variance (parameters in Paddle). Also the
    conv and Linear multiply-adds alone."""
    counts = {"flops": 0, "macs": 0}

    def hook(m, inputs, out):
        x = inputs[0]
        if isinstance(m, nn.Conv2d | nn.Linear):
            k = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features
            counts["macs"] += out.numel() * k
            counts["flops"] += out.numel() * (k + (isinstance(m, nn.Conv2d) and m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            counts["flops"] += 2 * x.numel()
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            window = (x.shape[2] // out.shape[2]) * (x.shape[3] // out.shape[3])
            counts["flops"] += (window + 1) * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    stats = sum(
        m.running_mean.numel() * 2 for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    return counts, sum(p.numel() for p in model.parameters()) + stats


@pytest.mark.parametrize("name", PADDLE)
def test_counts_are_paddleclas_published_ones(name):
    info = shufflenet.get_model_info(name)
    model = shufflenet.create_model(name)
    counts, params = _paddle_flops(model)
    assert round(counts["flops"] / 1e6, 2) == info.paper_mflops
    assert round(params / 1e6, 2) == info.paper_params_m
    ours = profile(model)  # our convention: the multiply-adds and trainable parameters only
    assert ours.flops == counts["macs"] and ours.params == sum(
        p.numel() for p in model.parameters()
    )
    assert info.paper_top1 == info.reference_top1["paddleclas"] and info.family == "v2"


def test_models_lists_them_with_their_counts(capsys):
    assert main(["models", "shufflenet_v2_x0_*", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(records) == ["shufflenet_v2_x0_25", "shufflenet_v2_x0_33", "shufflenet_v2_x0_5"]
    quarter = records["shufflenet_v2_x0_25"]
    assert quarter["params"] == 603_688 and quarter["flops"] == 17_575_760
    assert (quarter["paper_mflops"], quarter["paper_top1_err"]) == (18.95, 50.10)


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_25", SWISH])
def test_fast_path_training_form_and_optimize_are_exact(name):
    model = varied_model(name, scaled_logits=False)
    assert fastpath_support(model) is None
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        want = model(x)
        for layout in (ONNXRUNTIME, OPENVINO, EAGER):
            fast = fast_model(model, layout)
            acts = {type(m) for m in fast.modules() if isinstance(m, (nn.ReLU, nn.SiLU))}
            assert acts == {type(model.conv1[2])}  # the model's own activation, nothing else
            assert (fast(x) - want).abs().max() < 1e-4
        assert (optimize(model, backend="eager")(x) - want).abs().max() < 1e-4
    trainable = randomize_bn(shufflenet.create_model(name, num_classes=4)).train().double()
    form = train_model(trainable)
    x, y = torch.randn(4, 3, 48, 48, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    for net in (trainable, form):
        F.cross_entropy(net(x), y).backward()
    # compared at the scale of all gradients: a BatchNorm shift followed by a conv and another
    # BatchNorm has a gradient that is zero but for rounding
    scale = max(p.grad.abs().max().item() for p in trainable.parameters())
    params = dict(form.named_parameters())
    for key, p in trainable.named_parameters():
        got = form.standard_tensor(key, params[key].grad)
        assert (got - p.grad).abs().max() < 1e-9 * scale, key  # float64


def test_mixed_activations_are_not_rewritten():
    model = shufflenet.create_model(SWISH)
    model.conv5[2] = nn.ReLU()
    assert fastpath_support(model) == "activations of more than one kind: ReLU, SiLU"


def test_torchvision_checkpoints_convert_to_the_relu_model(tmp_path):
    src = tmp_path / "tv.pth"
    torch.save(torchvision.models.shufflenet_v2_x1_0().state_dict(), src)
    result = convert_checkpoint(src, tmp_path / "w.safetensors", "torchvision")
    assert result.model == "shufflenet_v2_x1_0"  # not the swish one, whose shapes are the same


@pytest.mark.slow
@pytest.mark.parametrize("fmt,suffix", [("ncnn", ".param"), ("litert", ".tflite"),
                                        ("executorch", ".pte"), ("mnn", ".mnn")])  # fmt: skip
def test_swish_edge_exports_verify(fmt, suffix, tmp_path):
    for module in NEEDS[fmt]:
        pytest.importorskip(module)
    result = export_model(varied_model(SWISH), tmp_path / f"m{suffix}", fmt, input_size=(64, 64))
    assert result.passed, [c.summary() for c in result.verifications]
