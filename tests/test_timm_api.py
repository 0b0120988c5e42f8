"""timm's model API on every family: TorchScript and FX graphs that match eager mode, heads that
keep the model's dtype, device and mode, global pooling on and off, forward_intermediates and
pruning, and timm.create_model's device, dtype, feature_cls and aux_logits options."""

import io

import pytest
import torch
from conftest import randomize_bn

import shufflenet
from shufflenet.models import AuxOutputs

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
]

# One small model per family (V2 in both layouts); V2.Large shrunk to one unit per stage.
FAMILIES = {
    "v1": ("shufflenet_v1_g3_x0_25", {}),
    "v1_megvii": ("shufflenet_v1_g8_x0_5", {"layout": "megvii"}),
    "v2": ("shufflenet_v2_x0_5", {}),
    "v2_megvii": ("shufflenet_v2_x0_5", {"layout": "megvii"}),
    "v2_plus": ("shufflenet_v2_plus_small", {}),
    "v2_large": (
        "shufflenet_v2_large",
        {"stages_repeats": (1, 2, 1, 1), "stages_widths": (16, 16, 32, 32)},
    ),
}


def _model(family, **kwargs):
    name, options = FAMILIES[family]
    torch.manual_seed(0)
    return randomize_bn(shufflenet.create_model(name, num_classes=7, **options, **kwargs)).eval()


# -- TorchScript and FX ---------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_script_matches_eager_and_saves(family):
    model = _model(family)
    x = torch.randn(2, 3, 64, 72)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # nothing left to Python: the file holds the whole model
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    # without the profiling executor's optimisation runs, which take seconds here
    with torch.no_grad(), torch.jit.optimized_execution(False):
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        with pytest.raises(torch.jit.Error, match=r"expected input of shape \(N, 3, H, W\), got"):
            scripted(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("family", FAMILIES)
def test_fx_trace_matches_eager(family):
    model = _model(family)
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)
    # channels_last input: eager takes its NHWC path, the graph the NCHW one; same values
    xl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(graph(xl), model(xl), rtol=1e-5, atol=1e-6)


def test_fx_trace_in_training_keeps_aux_outputs():
    model = _model("v2_large").train()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)  # the same dropout mask
    out = graph(x)
    assert isinstance(expected, AuxOutputs) and len(out) == 2 and len(out[1]) == 3
    torch.testing.assert_close(out[0], expected.logits)
    torch.testing.assert_close(list(out[1]), expected.aux)


def test_scripted_large_gives_logits_in_training_too():
    model = _model("v2_large").train()
    with torch.jit.optimized_execution(False):
        out = torch.jit.script(model)(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
    assert isinstance(model(torch.randn(2, 3, 64, 64)), AuxOutputs)  # eager: the aux heads too


def test_eager_checks_stay_value_errors_and_traced_graphs_run_without_them():
    model = _model("v2")
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(3, 8\)"):
        model(torch.randn(3, 8))
    code = torch.fx.symbolic_trace(model).code
    assert "check_input" not in code and "chunk" in code


# -- heads -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["v2", "v2_large"])
def test_reset_classifier_keeps_dtype_device_and_mode(family):
    model = _model(family).to(torch.float64)
    model.reset_classifier(10)
    heads = [model.get_classifier()]
    if family == "v2_large":
        heads += [h.fc for h in model.aux_heads.values()]
    assert all(p.dtype == torch.float64 for h in heads for p in h.parameters())
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64)).shape == (1, 10)
    model.to("meta").train()
    model.reset_classifier(0)
    model.reset_classifier(3)  # V2.Large: new auxiliary heads, whole
    new = [p for m in model.modules() for p in m.parameters(recurse=False)]
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in new)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("family", ["v1", "v2", "v2_plus", "v2_large"])
def test_global_pool_off_and_on(family):
    model = _model(family)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert model.head_hidden_size == model.num_features == pooled.shape[1]
        assert model.get_classifier() is model.fc
        model.reset_classifier(0, "")
        dense = model(x)
        assert dense.shape == (2, model.head_hidden_size, *features.shape[2:])
        if family != "v2_plus":  # V2+'s hidden FC and SE follow the pooling
            torch.testing.assert_close(dense, features)
            torch.testing.assert_close(dense.mean((2, 3)), pooled)
        model.reset_classifier(5)  # pooling stays off: the classifier at each position
        logits = model(x)
        assert logits.shape == (2, 5, *features.shape[2:])
        weight = model.fc.weight
        per_position = torch.einsum("nchw,kc->nkhw", model.forward_head(features, True), weight)
        bias = 0 if model.fc.bias is None else model.fc.bias[:, None, None]
        torch.testing.assert_close(logits, per_position + bias)
        model.reset_classifier(5, "avg")
        assert model(x).shape == (2, 5)
    with pytest.raises(ValueError, match="global_pool must be 'avg'"):
        model.reset_classifier(5, "max")


# -- forward_intermediates and pruning -------------------------------------------------------
@pytest.mark.parametrize("family", ["v1", "v2", "v2_plus", "v2_large"])
def test_forward_intermediates_and_stop_early(family):
    model = _model(family)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info]
        for got, expected in zip(model.forward_stages(x), maps, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape for m in last_two] == [m.shape for m in maps[2:]]
        early, taps = model.forward_intermediates(x, indices=[-3], stop_early=True)
        torch.testing.assert_close(early, maps[1], rtol=0, atol=0)
        assert len(taps) == 1
    for bad in (0, 5, [4], [], [-5]):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("family", ["v2", "v2_plus", "v2_large"])
def test_prune_intermediate_layers_keeps_the_taps_and_drops_the_rest(family):
    model = _model(family)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        expected = model(x)
    kept = _model(family)
    assert kept.prune_intermediate_layers([3], prune_head=False) == [3]
    with torch.no_grad():
        torch.testing.assert_close(kept(x), expected, rtol=0, atol=0)
    model.prune_intermediate_layers([1])
    assert model.num_classes == 0 and model.num_features == taps[1].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), taps[1], rtol=0, atol=0)
        assert model(x).shape == taps[1].shape  # no pooling, no classifier
    model.train()
    model.forward_features(x).sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


# -- timm.create_model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def test_timm_device_and_dtype(timm):
    model = timm.create_model("shufflenet_v2_plus_small", device="meta", dtype=torch.float64)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    assert model.default_cfg["pool_size"] == (7, 7) and model.default_cfg["first_conv"]
    with pytest.raises(TypeError, match="not_a_model_arg"):
        timm.create_model("shufflenet_v2_x0_5", device="meta", not_a_model_arg=1)


def test_timm_global_pool_off(timm):
    model = timm.create_model("shufflenet_v1_g3_x0_25", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features, 2, 2)


def test_timm_feature_getter_matches_our_features(timm):
    name = "shufflenet_v2_x0_5"
    torch.manual_seed(0)
    getter = timm.create_model(name, features_only=True, feature_cls="getter", out_indices=(1, 3))
    torch.manual_seed(0)
    ours = timm.create_model(name, features_only=True, out_indices=(1, 3))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(getter.eval()(x), ours.eval()(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert getter.feature_info.channels() == ours.feature_info.channels()
    with pytest.raises(ValueError, match="feature_cls must be one of"):
        timm.create_model(name, features_only=True, feature_cls="hook")


def test_timm_large_trains_with_a_criterion_unless_asked_for_aux(timm):
    small = {"stages_repeats": (1, 1, 1, 1), "stages_widths": (8, 8, 8, 8), "num_classes": 3}
    model = timm.create_model("shufflenet_v2_large", **small).train()
    assert model.aux_heads is None and model.model_config["aux_logits"] is False
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with_aux = timm.create_model("shufflenet_v2_large", aux_logits=True, **small).train()
    assert isinstance(with_aux(x), AuxOutputs)
    assert shufflenet.create_model("shufflenet_v2_large", **small).aux_heads is not None


def test_timm_defaults_give_way_to_arguments_and_weights_files():
    from shufflenet.models.timm_interop import _timm_defaults

    large = "shufflenet_v2_large"
    for kwargs, metadata, expected in [
        ({}, None, {"aux_logits": False}),  # timm's default: no auxiliary classifiers
        ({"aux_logits": True}, None, {"aux_logits": True}),
        ({}, {"model_config": {"name": large}}, {}),  # a file built with ours: heads
        ({}, {"model_config": {"name": large, "aux_logits": False}}, {"aux_logits": False}),
    ]:
        _timm_defaults(large, kwargs, metadata)
        assert kwargs == expected
    kwargs = {}
    _timm_defaults("shufflenet_v2_x0_5", kwargs, None)
    assert kwargs == {}
