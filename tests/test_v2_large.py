"""SE-ShuffleNet v2-164 (ShuffleNetV2.Large) against the facts of Megvii's official network code,
its auxiliary classifiers, and their losses in training."""

import pytest
import torch
from conftest import image_folder
from safetensors import safe_open
from torch import nn

import shufflenet
from shufflenet.models import AuxOutputs
from shufflenet.models.v2_large import AuxHead, SEShuffleUnit, ShuffleNetV2Large
from shufflenet.preprocessing import MEGVII_PREPROCESSING
from shufflenet.train import TrainConfig, fit
from shufflenet.train.model import training_loss
from shufflenet.weights import read_metadata

NAME = "shufflenet_v2_large"
PARAMS = 125_120_936  # without the auxiliary heads, as the paper's model
PARAMS_WITH_AUX = 140_685_664  # the release's training network
MULTIPLY_ADDS = 12_780_652_544  # at 224x224: convs and the Linear layers (SE and classifier)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """The full network, built once (random weights, 1000 classes, auxiliary heads)."""
    torch.manual_seed(0)
    return shufflenet.create_model(NAME)


def _meta(**kwargs):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return shufflenet.create_model(NAME, **kwargs)


def test_v2_large_registry_metadata():
    assert shufflenet.list_models("shufflenet_v2_large*") == [NAME]
    assert NAME not in shufflenet.list_models("shufflenet_v2_x*")
    info = shufflenet.get_model_info(NAME)
    assert info.family == "v2_large"
    assert info.description == "SE-ShuffleNet v2-164 (ShuffleNetV2.Large)"
    assert info.paper_mflops == 12700.0 and info.paper_top1_err == 18.56
    assert info.paper_params_m == pytest.approx(PARAMS / 1e6)
    assert info.preprocessing == MEGVII_PREPROCESSING


def test_params_exact_with_and_without_aux_heads(model):
    assert sum(p.numel() for p in model.parameters()) == PARAMS_WITH_AUX
    heads = sum(p.numel() for p in model.aux_heads.parameters())
    assert heads == PARAMS_WITH_AUX - PARAMS
    plain = _meta(aux_logits=False)
    assert plain.aux_heads is None
    assert sum(p.numel() for p in plain.parameters()) == PARAMS


def test_multiply_adds_near_the_paper():
    # profile counts the multiply-adds of convs and matrix products (nn.Linear: in x out, no
    # bias); eval mode, so the auxiliary heads cost nothing. Run on meta tensors: shapes only.
    result = shufflenet.profile(_meta(aux_logits=False))
    assert result.params == PARAMS
    assert result.flops == pytest.approx(MULTIPLY_ADDS, rel=5e-3)
    assert result.flops == pytest.approx(12.7e9, rel=0.01)  # the paper's 12.7 GFLOPs
    linear = sum(layer.flops for layer in result.layers if layer.kind == "Linear")
    assert linear == 1280 * 1000 + 2 * sum(  # SE: two Linear(c, c) per unit
        r * c * c for r, c in zip((10, 10, 23, 10), (128, 256, 512, 1024), strict=True)
    )


def test_v2_large_structure_follows_the_release(model):
    assert isinstance(model, ShuffleNetV2Large)
    assert model.stem_names == ("conv1", "maxpool")
    assert model.stage_names == ("stage2", "stage3", "stage4", "stage5")
    assert [len(getattr(model, s)) for s in model.stage_names] == [10, 10, 23, 10]
    assert [c[0].out_channels for c in model.conv1] == [64, 64, 128]
    assert model.conv1[0][0].stride == (2, 2)
    assert all(isinstance(m, SEShuffleUnit) for s in model.stage_names for m in getattr(model, s))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-9 for bn in bns)
    for name, stride in zip(model.stage_names, (1, 2, 2, 2), strict=True):
        stage = getattr(model, name)
        assert stage[0].proj is not None and all(u.proj is None for u in stage[1:])
        assert stage[0].branch_main[1][0].stride == (stride, stride)
        assert (stage[0].down is not None) == (stride == 2)
        assert all(u.down is None for u in stage[1:])
    sd = model.state_dict()
    assert sd["stage2.0.proj.0.weight"].shape == (128, 64, 3, 3)
    assert sd["stage2.0.branch_main.1.0.weight"].shape == (128, 16, 3, 3)  # 8 groups
    assert sd["stage3.0.down.0.weight"].shape == (512, 512, 1, 1)
    assert sd["stage4.22.se.fc2.weight"].shape == (512, 512)
    assert sd["conv_last.0.weight"].shape == (1280, 2048, 3, 3)
    assert sd["fc.bias"].shape == (1000,) and model.dropout.p == 0.2
    assert sd["aux_heads.stage3.conv.1.0.weight"].shape == (512, 512, 3, 3)
    assert sd["aux_heads.stage4.fc.weight"].shape == (1000, 1024)
    assert model.aux_loss_weights == (0.7, 0.5, 0.3)
    assert [(i["num_chs"], i["reduction"], i["module"]) for i in model.feature_info] == [
        (256, 4, "stage2"), (512, 8, "stage3"), (1024, 16, "stage4"), (2048, 32, "stage5"),
    ]  # fmt: skip


def test_official_init(model):
    assert model.conv1[1][0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    w = model.stage4[3].branch_main[0][0].weight  # N(0, 1 / 512)
    assert w.std().item() == pytest.approx(1 / 512, rel=0.05)
    bn = model.stage5[0].down[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 1e-4)
    assert model.stage2[0].se.fc1.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(model.fc.bias == 0) and torch.all(model.aux_heads["stage2"].fc.bias == 0)


def test_train_mode_returns_aux_outputs_and_eval_mode_logits(model):
    x = torch.randn(2, 3, 64, 80)
    model.train()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.eval()
    assert isinstance(out, AuxOutputs) and out.logits.shape == (2, 1000)
    assert [a.shape for a in out.aux] == [(2, 1000)] * 3
    with torch.no_grad():
        logits = model(x)
        stages = model.forward_stages(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 1000)
    assert [f.shape[1:] for f in stages] == [
        (256, 16, 20), (512, 8, 10), (1024, 4, 5), (2048, 2, 3),
    ]  # fmt: skip
    assert model.forward_features(x).shape[1:] == (1280, 2, 3)


def test_aux_outputs_follow_the_stages():
    net = ShuffleNetV2Large(num_classes=5, stages_repeats=(1, 1, 1, 1), stages_widths=(8, 8, 8, 8))
    seen = {}
    for name, head in net.aux_heads.items():
        head.register_forward_hook(lambda _m, _i, out, name=name: seen.setdefault(name, out))
    out = net.train()(torch.randn(2, 3, 64, 64))
    assert isinstance(out, AuxOutputs)
    for name, aux in zip(("stage4", "stage3", "stage2"), out.aux, strict=True):
        assert aux is seen[name]
    assert set(dict(net.named_children())) >= {"conv1", "maxpool", "stage5", "aux_heads"}
    assert isinstance(net.aux_heads["stage2"], AuxHead)


def test_without_aux_heads_and_reset_classifier():
    net = ShuffleNetV2Large(aux_logits=False, stages_repeats=(1, 2, 1, 1))
    assert isinstance(net.train()(torch.randn(2, 3, 64, 64)), torch.Tensor)
    net = ShuffleNetV2Large(num_classes=10, stages_repeats=(1, 2, 1, 1))
    convs = net.aux_heads["stage3"].conv
    net.reset_classifier(3)
    assert net.fc.out_features == 3 and net.aux_heads["stage3"].conv is convs  # convs kept
    assert [h.fc.out_features for h in net.aux_heads.values()] == [3, 3, 3]
    out = net.train()(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 3) and [a.shape for a in out.aux] == [(2, 3)] * 3
    net.reset_classifier(0)  # no classifier: no auxiliary heads, features out
    assert net.aux_heads is None
    assert net.train()(torch.randn(2, 3, 64, 64)).shape == (2, 1280)
    net.reset_classifier(4)  # back: fresh heads
    assert [h.fc.out_features for h in net.aux_heads.values()] == [4, 4, 4]
    assert ShuffleNetV2Large(num_classes=0, stages_repeats=(1, 1, 1, 1)).aux_heads is None
    with pytest.raises(ValueError, match="aux_logits"):
        ShuffleNetV2Large(aux_logits="yes")
    with pytest.raises(ValueError, match="stages_repeats"):
        ShuffleNetV2Large(stages_repeats=(1, 1, 1))


def test_unit_even_half_passes_and_residual():
    unit = SEShuffleUnit(16, 8, 1, has_proj=False).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        out = unit(x)
    assert out.shape == (2, 16, 6, 6)
    assert torch.equal(out[:, :8], torch.relu(x[:, 0::2]))
    down = SEShuffleUnit(16, 16, 2, has_proj=True).eval()
    assert down(x).shape == (2, 32, 3, 3)
    with pytest.raises(ValueError, match="without projection"):
        SEShuffleUnit(16, 16, 1, has_proj=False)
    with pytest.raises(ValueError, match="multiple of groups"):
        SEShuffleUnit(16, 12, 2, has_proj=True)


def test_aux_logits_in_model_config_is_checked(tmp_path):
    from shufflenet.weights import check_model_kwargs

    check_model_kwargs({"aux_logits": True})
    with pytest.raises(ValueError, match="aux_logits must be true or false"):
        check_model_kwargs({"aux_logits": 1})
    # a file asking a family without auxiliary heads for them: a ValueError, not a TypeError
    v1 = shufflenet.create_model("shufflenet_v1_g3_x0_25", num_classes=3)
    v1.model_config["aux_logits"] = True
    path = shufflenet.save(v1, tmp_path / "v1.safetensors")
    with pytest.raises(ValueError, match="aux_logits"):
        shufflenet.load(path)


def test_training_loss_weights_the_aux_losses():
    criterion = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 2, 1])
    main, *aux = (torch.randn(3, 4, generator=g) for _ in range(4))
    out = AuxOutputs(main, tuple(aux))
    expected = (
        criterion(main, y)
        + 0.7 * criterion(aux[0], y)
        + 0.5 * criterion(aux[1], y)
        + 0.3 * criterion(aux[2], y)
    )
    loss = training_loss(criterion, out, y, ShuffleNetV2Large.aux_loss_weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() > criterion(main, y).item()
    assert torch.equal(training_loss(criterion, main, y), criterion(main, y))
    with pytest.raises(ValueError, match="aux_weights"):
        training_loss(criterion, out, y, (1.0,))


@pytest.mark.slow
def test_short_fit(tmp_path, monkeypatch):
    # One step of 8 images at 32x32: the training loss includes the auxiliary heads' losses.
    from shufflenet.train import loop

    calls = []

    def spy(criterion, output, target, aux_weights=()):
        loss = training_loss(criterion, output, target, aux_weights)
        calls.append((type(output), aux_weights, loss.item()))
        return loss

    monkeypatch.setattr(loop, "training_loss", spy)
    data = image_folder(tmp_path / "data", per_class=4)
    config = TrainConfig(
        model=NAME, data=str(data), out=str(tmp_path / "run"), epochs=1, image_size=32,
        batch_size=8, limit_train_batches=1, bn_recalibrate=0, progress=False, lr=0.01,
        workers=0, threads=1,
    )  # fmt: skip
    result = fit(config)
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0
    assert [c[:2] for c in calls] == [(AuxOutputs, (0.7, 0.5, 0.3))]
    assert result.history[0]["train_loss"] == pytest.approx(calls[0][2])
    assert read_metadata(result.model_path)["model_config"] == {"name": NAME, "num_classes": 2}
    with safe_open(str(result.model_path), framework="pt") as f:
        keys = set(f.keys())  # saved with its auxiliary heads, which eval mode does not run
    assert {"aux_heads.stage2.fc.weight", "aux_heads.stage4.conv.1.0.weight"} <= keys


@pytest.mark.slow
def test_fine_tune_from_weights_without_aux_heads(tmp_path):
    # A converted release without auxiliary heads, with another class count: the backbone comes
    # from the file, the classifiers and the auxiliary heads start fresh.
    from shufflenet.train.model import create_run_model

    torch.manual_seed(0)
    source = shufflenet.create_model(NAME, num_classes=4, aux_logits=False)
    path = shufflenet.save(source, tmp_path / "release.safetensors")
    config = TrainConfig(model=NAME, init_weights=str(path))
    model = create_run_model(config, num_classes=3, fine_tune=True)
    assert model.num_classes == 3 and model.aux_heads is not None
    assert model.aux_heads["stage3"].fc.out_features == 3
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert not torch.equal(loaded["fc.weight"][:3], source.fc.weight[:3])
