"""The shuffle-free training form trains exactly like the model it comes from, and maps back.

Tolerances. The two forms differ only by rounding: the permuted 1x1 convs sum their inputs in
another order, and so may the BatchNorm reductions; a permutation error would show as an O(1)
difference. One forward/backward pass agrees to a few ulps times the depth: 1e-5 relative in
float32, 1e-9 in float64. Several SGD steps are another matter: training this small net on
64x64 noise with batch 8 (2x2 maps in Stage 4, whose BatchNorm divides by the deviation of 32
values) amplifies any rounding difference ~10-20x per step, for the standard model as much as
for the fast form: trained on the same batches with their samples merely reordered (an exact
symmetry: rounding only), the standard model differs from itself after 5 steps by ~1e-9..1e-10
(relative L2 of all weights) in float64 but ~1e-3..3e-2 in float32. So the 5-step comparison
runs in float64, where the fast form is measured at ~1e-11..2e-10 (0.1-0.2x that symmetry's
spread) and the tolerance is 1e-8; float32 is compared after one step (measured 2e-6).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import randomize_bn

import shufflenet
import shufflenet.deploy
import shufflenet.train
from shufflenet.models.backbone import apply_backbone_options
from shufflenet.train import TrainFastModel, train_model, train_model_support
from shufflenet.train.schedule import param_groups

MODELS = ("shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5")
STEPS = 5
LR = 0.02


def _training_model(
    name: str, dtype: torch.dtype = torch.float32, **kwargs: object
) -> torch.nn.Module:
    torch.manual_seed(0)
    model = randomize_bn(shufflenet.create_model(name, num_classes=10, **kwargs)).train()
    return model.to(dtype)


def _batches(dtype: torch.dtype, n: int = STEPS, size: int = 64) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 3, size, size, generator=g, dtype=dtype),
            torch.randint(0, 10, (8,), generator=g),
        )
        for _ in range(n)
    ]


def _scaled_diff(a: torch.Tensor, b: torch.Tensor, scale: float = 0.0) -> float:
    """Largest difference relative to the tensors' scale (their largest magnitude, or ``scale``
    if larger: gradients that are zero but for rounding, such as those of a BatchNorm shift
    followed by a conv and another BatchNorm, are compared at the scale of all gradients)."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(a.abs().max()), float(b.abs().max()), scale, 1e-30)
    return float((a - b).abs().max()) / scale


def _largest(tensors: list[torch.Tensor]) -> float:
    return max(float(t.detach().abs().max()) for t in tensors)


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, 4e-5), lr=LR, momentum=0.9)


def _train(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> torch.optim.SGD:
    opt = _sgd(model)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def _state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(_scaled_diff(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", MODELS)
def test_to_standard_is_exact_before_training(name: str) -> None:
    model = apply_backbone_options(_training_model(name), frozen_stages=1)  # stem and stage2 frozen
    model.stage3.eval()  # per-module modes and requires_grad flags come back too
    fast = train_model(model)
    back = fast.to_standard()
    assert type(back) is type(model) and back is not model
    for state in (back.state_dict(), fast.state_dict()):  # state_dict speaks the standard layout
        assert state.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(state[key], value), key  # bitwise, num_batches_tracked too
    raw = dict(fast.named_parameters())  # while the parameters themselves are permuted
    assert any(not torch.equal(raw[k], p) for k, p in model.named_parameters())
    assert [p.requires_grad for p in back.parameters()] == [
        p.requires_grad for p in model.parameters()
    ]
    assert [m.training for m in back.modules()] == [m.training for m in model.modules()]
    assert not back.stage3.training and back.eval_norms == model.eval_norms
    fast.train()  # the frozen stages' BatchNorms stay in eval mode, as in the original
    frozen_bn = [m for m in fast.stage2.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen_bn and not any(m.training for m in frozen_bn) and fast.stage3.training
    # same names, shapes and order: an optimizer's groups map one to one
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [
        (n, p.shape) for n, p in model.named_parameters()
    ]
    assert fast.permutations  # something was rewritten


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_the_same_function(name: str) -> None:
    model = _training_model(name)
    fast = train_model(model)
    x = torch.randn(8, 3, 64, 64)
    for train in (True, False):
        model.train(train)
        fast.train(train)
        assert _scaled_diff(fast(x), model(x)) < 1e-5, train
    # the BatchNorm running statistics the train-mode pass updated agree once mapped back
    assert _state_diff(fast.state_dict(), model.state_dict()) < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match(name: str) -> None:
    model = _training_model(name, torch.float64)
    fast = train_model(model)
    x, y = _batches(torch.float64, 1)[0]
    for m in (model, fast):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    grads = dict(fast.named_parameters())
    scale = _largest([p.grad for p in model.parameters() if p.grad is not None])
    for key, p in model.named_parameters():
        g = grads[key].grad
        assert p.grad is not None and g is not None
        assert _scaled_diff(fast.standard_tensor(key, g), p.grad, scale) < 1e-9, key


def _relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over every floating-point tensor of two state dicts."""
    keys = [k for k in b if b[k].is_floating_point()]
    diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in keys])
    return float(diff.norm() / torch.cat([b[k].double().flatten() for k in keys]).norm())


@pytest.fixture(scope="module", params=MODELS)
def trained(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, ...]:
    """The standard and the fast form and their optimizers after STEPS float64 SGD steps."""
    model = _training_model(request.param, torch.float64)
    fast = train_model(model)
    batches = _batches(torch.float64)
    return model, _train(model, batches), fast, _train(fast, batches)


def test_sgd_steps_match(trained: tuple[torch.nn.Module, ...]) -> None:
    model, opt, fast, fast_opt = trained
    assert isinstance(fast, TrainFastModel)
    ours, theirs = fast.to_standard().state_dict(), model.state_dict()
    assert _relative_l2(ours, theirs) < 1e-8  # weights and BatchNorm running statistics
    assert _state_diff(ours, theirs) < 1e-6  # and no single tensor is off
    assert torch.equal(ours["conv1.1.num_batches_tracked"], torch.tensor(STEPS))
    # the momentum buffers map back to those of the same optimizer on the standard model
    mapped = fast.standard_optimizer_state(fast_opt)["state"]
    reference = opt.state_dict()["state"]
    assert mapped.keys() == reference.keys()
    buffers = {str(i): mapped[i]["momentum_buffer"] for i in mapped}
    assert (
        _relative_l2(buffers, {str(i): e["momentum_buffer"] for i, e in reference.items()}) < 1e-8
    )


@pytest.mark.parametrize("name", MODELS)
def test_one_sgd_step_matches_in_float32(name: str) -> None:
    model = _training_model(name)
    fast = train_model(model)
    batches = _batches(torch.float32, 1)
    _train(model, batches)
    _train(fast, batches)
    assert _state_diff(fast.to_standard().state_dict(), model.state_dict()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_resume_from_a_standard_checkpoint(name: str) -> None:
    """Train the standard model, continue in the fast form from its weights and optimizer
    state (mapped in), and map back: the same as continuing the standard model."""
    batches = _batches(torch.float64, 4)
    model = _training_model(name, torch.float64)
    opt = _train(model, batches[:2])
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for x, y in batches[2:]:  # the standard run goes on
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    fresh = _training_model(name, torch.float64)
    fast = train_model(fresh)
    fast.load_state_dict(weights)
    fast_opt = _sgd(fast)
    fast.load_standard_optimizer_state(fast_opt, state)
    for x, y in batches[2:]:
        fast_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(fast(x), y).backward()
        fast_opt.step()
    assert _state_diff(fast.state_dict(), model.state_dict()) < 1e-9


@pytest.mark.slow
def test_channels_last_and_megvii_v1() -> None:
    for name, kwargs in (
        ("shufflenet_v2_x0_5", {}),
        ("shufflenet_v1_g3_x0_5", {"layout": "megvii"}),
    ):
        # float64: batch statistics of 2x2 maps amplify float32 rounding past 1e-5 (measured
        # 1.06e-5 on one thread); a layout error would show as O(1)
        model = _training_model(name, torch.float64, **kwargs)
        model = model.to(memory_format=torch.channels_last)
        fast = train_model(model)
        x = _batches(torch.float64, 1)[0][0][:4].to(memory_format=torch.channels_last)
        out = fast(x)
        out.sum().backward()
        assert _scaled_diff(out, model(x)) < 1e-9
        back = fast.to_standard()
        assert back.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_rejects_models_it_cannot_rewrite() -> None:
    megvii = shufflenet.create_model("shufflenet_v2_x0_5", layout="megvii")
    assert "megvii" in str(train_model_support(megvii))
    with pytest.raises(ValueError, match="no shuffle-free training form: megvii"):
        train_model(megvii)
    with pytest.raises(ValueError, match="not a ShuffleNet V1 or V2"):
        train_model(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="input of shape"):
        train_model(shufflenet.create_model("shufflenet_v2_x0_5"))(torch.randn(1, 1, 32, 32))
    assert isinstance(train_model(shufflenet.create_model("shufflenet_v1_g1_x0_5")), TrainFastModel)
    fast = train_model(shufflenet.create_model("shufflenet_v2_x0_5"))
    with pytest.raises(RuntimeError, match="size mismatch"):  # not an indexing error
        fast.load_state_dict(shufflenet.create_model("shufflenet_v2_x1_0").state_dict())


@pytest.mark.slow
def test_a_registered_optimizer_saves_and_loads_the_standard_layout() -> None:
    model = _training_model("shufflenet_v2_x0_5")
    fast = train_model(model)
    opt = _train(fast, _batches(torch.float32, 1))
    standard = fast.standard_optimizer_state(opt)
    inner = {i: e["momentum_buffer"].clone() for i, e in opt.state_dict()["state"].items()}
    fast.register_optimizer(opt)
    fast.register_optimizer(opt)  # once is enough: mapped once, not twice
    for state in (opt.state_dict(), fast.standard_optimizer_state(opt)):
        for i, entry in standard["state"].items():
            assert torch.equal(state["state"][i]["momentum_buffer"], entry["momentum_buffer"])
    opt.load_state_dict(standard)  # mapped back into the fast layout
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, buffer in inner.items():
        assert torch.equal(opt.state[params[i]]["momentum_buffer"], buffer)
    with pytest.raises(ValueError, match="not this module's"):
        fast.register_optimizer(_sgd(model))


@pytest.mark.slow
def test_the_old_import_path_still_names_the_training_form() -> None:
    for name in ("TrainFastModel", "train_model", "train_model_support"):
        assert getattr(shufflenet.deploy, name) is getattr(shufflenet.train, name)
    from shufflenet.deploy import train_model as old  # the path README.md named

    assert old is train_model
    with pytest.raises(AttributeError, match="no_such_name"):
        shufflenet.deploy.no_such_name  # noqa: B018
    # the alias is lazy: the rewrite layer alone does not import the training layer
    code = "import sys, shufflenet.deploy; sys.exit('shufflenet.train' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
