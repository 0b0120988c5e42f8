"""The modern recipe's parts: mixup/cutmix labels, EMA, repeated augmentation, distillation,
the named recipes and their printing, the optimizer rows, and exact resume with all of them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import image_folder, randomize_bn
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DistributedSampler

import shufflenet
from shufflenet.cli import build_parser, main
from shufflenet.data import batch_mixer, build_train_transform, load_data, make_preprocessing
from shufflenet.train import OPTIMIZERS, TrainConfig, fit, train_model
from shufflenet.train import loop as train_loop
from shufflenet.train.ema import RunEMA, WeightEMA
from shufflenet.train.files import read_checkpoint
from shufflenet.train.recipe import AUTO, RECIPES, ema_decay_for, recipe_table
from shufflenet.train.sampler import RepeatSampler
from shufflenet.train.schedule import param_groups
from shufflenet.train.teacher import Teacher, distill_loss, load_teacher

ROOT = Path(__file__).resolve().parents[1]
TINY = "shufflenet_v1_g3_x0_25"
QUICK = {
    "image_size": 32,
    "batch_size": 32,
    "limit_train_batches": 3,
    "bn_recalibrate": 0,
    "progress": False,
    "threads": 1,
}


# -- mixup and cutmix ---------------------------------------------------------------------------
def _batch(n: int = 8, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 16, 16, generator=g) + torch.arange(n).view(n, 1, 1, 1)  # distinct
    return x, torch.randint(0, classes, (n,), generator=g)


def _expected_labels(y: torch.Tensor, lam: float, classes: int) -> torch.Tensor:
    one_hot = nn.functional.one_hot(y, classes).float()
    return lam * one_hot + (1 - lam) * one_hot.roll(1, 0)


def test_mixup_mixes_labels_as_it_mixes_images():
    x, y = _batch()
    torch.manual_seed(0)
    mixed, labels = batch_mixer(0.2, 0.0, 5)(x, y)
    partner = x.roll(1, 0)
    lam = float(((mixed - partner) / (x - partner))[0, 0, 0, 0])
    assert 0 <= lam <= 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * partner)
    torch.testing.assert_close(labels, _expected_labels(y, lam, 5))
    torch.testing.assert_close(labels.sum(1), torch.ones(len(y)))


def test_cutmix_weights_labels_by_the_area_kept():
    x, y = _batch()
    torch.manual_seed(1)
    mixed, labels = batch_mixer(0.0, 1.0, 5)(x, y)
    kept = (mixed == x).all(dim=1)  # (N, H, W): pixels of the image itself
    pasted = (mixed == x.roll(1, 0)).all(dim=1)
    assert bool((kept | pasted).all()) and 0 < int(pasted[0].sum()) < 16 * 16
    lam = float(kept[0].float().mean())
    assert bool((kept.float().mean((1, 2)) == lam).all())  # one box for the batch
    torch.testing.assert_close(labels, _expected_labels(y, lam, 5))


def test_both_mixers_pick_one_per_batch_and_none_is_off():
    assert batch_mixer(0.0, 0.0, 5) is None
    x, y = _batch()
    kinds = set()
    for seed in range(12):
        torch.manual_seed(seed)
        mixed, labels = batch_mixer(0.2, 1.0, 5)(x, y)
        kinds.add("cutmix" if bool(((mixed == x) | (mixed == x.roll(1, 0))).all()) else "mixup")
        torch.testing.assert_close(labels.sum(1), torch.ones(len(y)))
    assert kinds == {"mixup", "cutmix"}


def test_label_smoothing_applies_on_top_of_mixed_labels():
    logits = torch.randn(4, 5)
    _, y = _batch(4)
    soft = _expected_labels(y, 0.7, 5)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, soft)
    target = 0.9 * soft + 0.1 / 5
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)


# -- augmentation and resolutions --------------------------------------------------------------
def test_policies_replace_colour_jitter_and_erasing_comes_last():
    pre = make_preprocessing("folder", 64)
    names = [type(t).__name__ for t in build_train_transform(pre, "imagenet").transforms]
    assert "ColorJitter" in names
    for policy, name in (("trivialaugment", "TrivialAugmentWide"), ("randaugment", "RandAugment")):
        steps = build_train_transform(pre, "imagenet", auto_augment=policy, random_erase=0.1)
        kinds = [type(t).__name__ for t in steps.transforms]
        assert name in kinds and "ColorJitter" not in kinds and kinds[-1] == "RandomErasing"
    with pytest.raises(ValueError, match="auto_augment must be one of none, trivialaugment"):
        build_train_transform(make_preprocessing("digits", 32), "light", auto_augment="ra")


def test_train_and_eval_resolutions(tmp_path):
    root = image_folder(tmp_path / "f")
    splits = load_data(str(root), 32, train_size=40, val_resize=48, augment="imagenet")
    assert splits.train[0][0].shape == (3, 40, 40) and splits.val[0][0].shape == (3, 32, 32)
    assert splits.preprocessing["resize"] == 48 and splits.preprocessing["input_size"] == [32, 32]
    tv = TrainConfig(data=str(root), recipe="torchvision").validated()
    assert (tv.train_size, tv.val_resize, tv.image_size) == (176, 232, 224)
    digits = TrainConfig(recipe="torchvision").validated()  # digits are upscaled whole
    assert (digits.train_size, digits.val_resize, digits.image_size) == (64, 64, 64)
    with pytest.raises(ValueError, match="val_resize 100 is smaller than the evaluation crop"):
        TrainConfig(data=str(root), image_size=128, val_resize=100).validated()


# -- EMA ----------------------------------------------------------------------------------------
def test_ema_update_math_with_batchnorm_buffers():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = WeightEMA(net, 0.75)
    start = [t.clone() for t in ema.tensors]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(2, 3, 4, 4))  # running statistics and the batch counter move
    ema.update(net)
    now = dict(net.state_dict())
    for key, old, avg in zip(ema.keys, start, ema.tensors, strict=True):
        if key.endswith("num_batches_tracked"):
            assert torch.equal(avg, now[key]) and int(avg) == 1  # counters are copied
        else:
            torch.testing.assert_close(avg, 0.75 * old + 0.25 * now[key])
    ema.copy_from(net)
    assert all(torch.equal(a, now[k]) for k, a in zip(ema.keys, ema.tensors, strict=True))
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(net, 1.0)


def test_ema_of_the_fast_form_is_the_ema_of_the_standard_model(one_thread):
    torch.manual_seed(0)
    model = randomize_bn(shufflenet.create_model(TINY, num_classes=10)).train()
    fast = train_model(model)
    ema = RunEMA(fast, model, fast, 0.5, warmup_steps=1)
    start = {k: v.clone() for k, v in fast.state_dict().items()}  # standard layout
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        fast(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
        ema.step(step)  # step 0: warm-up, a copy; step 1: the average
        if step == 0:
            start = {k: v.clone() for k, v in fast.state_dict().items()}
    ema.sync()
    now = fast.state_dict()
    for key, value in ema.model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, now[key])
        else:
            torch.testing.assert_close(value, 0.5 * start[key] + 0.5 * now[key])
    assert set(ema.state_dict()) == set(model.state_dict())


def test_the_ema_is_validated_and_saved(tmp_path, monkeypatch):
    validated: list[torch.Tensor] = []
    counts = train_loop.eval_counts

    def recording_counts(model, *args, **kwargs):
        validated.append(model.state_dict()["fc.weight"].clone())
        return counts(model, *args, **kwargs)

    monkeypatch.setattr(train_loop, "eval_counts", recording_counts)
    config = TrainConfig(model=TINY, epochs=1, ema_decay=0.9, out=str(tmp_path / "r"), **QUICK)
    result = fit(config)
    ckpt = read_checkpoint(result.checkpoint_path)
    saved = load_file(result.model_path)
    assert all(torch.equal(saved[k], ckpt["ema"][k]) for k in saved)
    assert not torch.equal(saved["fc.weight"], ckpt["model"]["fc.weight"])
    (weight,) = validated  # the one validation saw the average, not the trained weights
    assert torch.equal(weight, saved["fc.weight"])
    assert ckpt["config"]["ema_decay"] == 0.9


def test_ema_decay_follows_the_run_length():
    assert ema_decay_for(1000) == pytest.approx(1 - 1 / 40)
    assert ema_decay_for(10) == 0.0  # shorter than one step: off


# -- repeated augmentation ------------------------------------------------------------------
def _draws(size: int, repeats: int, replicas: int, epoch: int = 0) -> list[list[int]]:
    out = []
    for rank in range(replicas):
        sampler = RepeatSampler(size, repeats, num_replicas=replicas, rank=rank, seed=7)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_repeats_spread_over_the_processes():
    four = _draws(40, 4, 4)  # each image once on each of 4 processes, at the same step
    assert all(d == four[0] for d in four) and len(four[0]) == 10
    assert len(set(four[0])) == 10
    two = _draws(40, 4, 2)  # twice on each of 2 processes, side by side
    assert two[0] == two[1] and all(two[0][i] == two[0][i + 1] for i in range(0, 20, 2))
    eight = _draws(40, 4, 8)  # 4 processes share an image, the other 4 another one
    assert eight[0] == eight[3] and eight[4] == eight[7] and eight[0] != eight[4]
    one = _draws(40, 4, 1)[0]
    assert len(one) == 40 and len(set(one)) == 10  # one epoch: a quarter of the images
    assert _draws(40, 4, 1, epoch=1)[0] != one


def test_one_repeat_draws_the_batches_of_a_distributed_sampler():
    for replicas in (1, 2, 3):
        for rank in range(replicas):
            ours = RepeatSampler(37, 1, num_replicas=replicas, rank=rank, seed=5)
            theirs = DistributedSampler(
                range(37), num_replicas=replicas, rank=rank, seed=5, drop_last=True
            )
            ours.set_epoch(2)
            theirs.set_epoch(2)
            n = len(theirs)
            assert list(ours)[:n] == list(theirs)


def test_sampler_state_continues_the_order():
    first = RepeatSampler(30, 3, num_replicas=2, rank=1, seed=4)
    first.set_epoch(5)
    again = RepeatSampler(30, 3, num_replicas=2, rank=1, seed=4)
    again.load_state_dict(first.state_dict())
    assert list(again) == list(first)
    with pytest.raises(ValueError, match="seed 4 and 3 repeats \\(epoch 5\\), not seed 9"):
        RepeatSampler(30, 3, seed=9).load_state_dict(first.state_dict())


# -- distillation --------------------------------------------------------------------------
def test_distill_loss_is_the_scaled_kl():
    s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    loss = distill_loss(s, t, 3.0)
    p = (t / 3).softmax(1)
    expected = (p * (p.log() - (s / 3).log_softmax(1))).sum(1).mean() * 9
    torch.testing.assert_close(loss, expected)
    assert float(distill_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert s.grad is not None


def test_teacher_renormalizes_and_orders_classes():
    class Means(nn.Module):
        def forward(self, x):
            return x.mean((2, 3))  # three "classes": the channel means

    student = {"mean": [0.5], "std": [0.25], "scale": 1 / 255, "channel_order": "RGB"}
    teacher = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "scale": 1 / 255}
    net = Teacher(Means(), student, {**teacher, "channel_order": "BGR"}, index=[2, 0])
    pixels = torch.rand(2, 3, 4, 4)
    x = (pixels - 0.5) / 0.25
    bgr = (pixels.flip(1) - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5
    torch.testing.assert_close(net(x), bgr.mean((2, 3))[:, [2, 0]])
    net.train()
    assert not net.training and not net.model.training
    same = Teacher(Means(), student, student, None)
    assert same.identity and torch.equal(same(x), x.mean((2, 3)))


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A weights file of ours on digits (a few steps: only its being frozen matters)."""
    out = tmp_path_factory.mktemp("teacher") / "t"
    return fit(TrainConfig(model=TINY, epochs=1, out=str(out), **QUICK)).model_path


def test_teacher_classes_are_matched_by_name(digits_teacher):
    teacher = load_teacher(str(digits_teacher), ["3", "1"], make_preprocessing("digits", 32), "cpu")
    assert teacher.index.tolist() == [3, 1]
    with pytest.raises(ValueError, match="are not among those"):
        load_teacher(str(digits_teacher), ["cat"], make_preprocessing("digits", 32), "cpu")
    with pytest.raises(ValueError, match="teacher must be a weights file"):
        load_teacher("no_such_model", ["0"], make_preprocessing("digits", 32), "cpu")


@pytest.mark.parametrize("spec", ["torchvision:no_such_net", "timm:no_such_net"])
def test_a_foreign_teacher_that_cannot_load_is_one_error(tmp_path, capsys, spec):
    argv = ["train", TINY, "--epochs", "1", "--out", str(tmp_path / "r"), "--teacher", spec]
    assert main([*argv, "--image-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot load the teacher {spec}: ") and err.count("\n") == 1


def test_the_teacher_stays_frozen_and_sees_the_mixed_batch(tmp_path, monkeypatch, digits_teacher):
    made: list[Teacher] = []
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    def recording_teacher(*args, **kwargs):
        teacher = load_teacher(*args, **kwargs)
        forward = teacher.forward

        def record(x):
            seen["teacher"].append(x.clone())
            return forward(x)

        teacher.forward = record  # type: ignore[method-assign]
        made.append(teacher)
        return teacher

    loss = train_loop._Run._loss

    def recording_loss(self, x, y, taught=None):
        seen["student"].append(x.clone())
        assert taught is not None and not taught.requires_grad and y.dtype.is_floating_point
        return loss(self, x, y, taught)

    monkeypatch.setattr(train_loop, "load_teacher", recording_teacher)
    monkeypatch.setattr(train_loop._Run, "_loss", recording_loss)
    config = TrainConfig(
        model=TINY,
        epochs=1,
        teacher=str(digits_teacher),
        mixup=0.2,
        cutmix=1.0,
        out=str(tmp_path / "r"),
        **QUICK,
    )
    fit(config)
    (teacher,) = made
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    original = load_file(digits_teacher)
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k], original[k]) for k in original)  # BN statistics too
    assert len(seen["teacher"]) == len(seen["student"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen["teacher"], seen["student"], strict=True))


# -- the recipes ---------------------------------------------------------------------------
def test_recipes_fill_what_the_config_leaves_none(tmp_path):
    paper = TrainConfig(recipe="paper").validated()
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.schedule) == (
        "sgd",
        0.015625,
        4e-5,
        "linear",
    )
    assert (paper.mixup, paper.cutmix, paper.ema_decay, paper.repeats) == (0.0, 0.0, 0.0, 1)
    tv = TrainConfig(recipe="torchvision", mixup=0.0, lr=0.1).validated()
    assert (tv.auto_augment, tv.random_erase, tv.cutmix, tv.repeats) == (
        "trivialaugment",
        0.1,
        1,
        4,
    )
    assert tv.mixup == 0.0 and tv.lr == 0.1 and tv.ema_decay is None  # from the run's length
    assert tv.weight_decay == 2e-5 and tv.schedule == "cosine" and tv.warmup_epochs == 5
    weights = tmp_path / "w.safetensors"
    shufflenet.save(shufflenet.create_model(TINY, num_classes=10), weights)
    for digits, start in AUTO:
        data = "digits" if digits else str(image_folder(tmp_path / f"f{start}"))
        init = str(weights) if start else None
        config = TrainConfig(model=TINY, data=data, init_weights=init).validated()
        chosen = RECIPES[AUTO[(digits, start)]]
        assert config.weight_decay == chosen.weight_decay
        assert config.lr == pytest.approx(chosen.lr * 32 / 1024)
    with pytest.raises(ValueError, match="recipe must be one of auto, paper, torchvision, "):
        TrainConfig(recipe="fancy").validated()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mixup", -1.0, "mixup must be >= 0 and finite"),
        ("cutmix", float("nan"), "cutmix must be >= 0 and finite"),
        ("random_erase", 1.0, r"random_erase must be in \[0, 1\)"),
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
        ("repeats", 0, "repeats must be an integer in 1..64"),
        ("auto_augment", "autoaugment", "auto_augment must be one of none, trivialaugment"),
        ("distill_alpha", 1.5, r"distill_alpha must be in \[0, 1\]"),
        ("distill_temperature", 0.0, "distill_temperature must be > 0"),
        ("train_size", 8, "train_size must be within 32..4096"),
        ("teacher", "", "teacher must be a model name or a file"),
    ],
)
def test_bad_recipe_parts_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).validated()


def test_the_run_prints_its_recipe_and_what_was_set(tmp_path):
    lines: list[str] = []
    config = TrainConfig(model=TINY, epochs=1, recipe="torchvision", mixup=0.0, **QUICK)
    fit(replace(config, out=str(tmp_path / "r")), log=lines.append)
    (line,) = [s for s in lines if s.startswith("recipe ")]
    assert line.startswith("recipe torchvision: sgd lr 0.0156, cosine decay")
    assert "augment light + trivialaugment, random erasing 0.1" in line
    assert "mixup 0, cutmix 1" in line and "4 repeats per image" in line
    assert line.endswith("set over the recipe: mixup, epochs")
    auto: list[str] = []
    fit(TrainConfig(model=TINY, epochs=1, out=str(tmp_path / "a"), **QUICK), log=auto.append)
    assert any(
        re.match(r"recipe \w+ \(auto: digits, from scratch; --recipe chooses\)", s) for s in auto
    )


def test_the_docs_table_and_the_cli_know_every_recipe():
    text = (ROOT / "docs" / "training.md").read_text()
    assert recipe_table() in text
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    choices = {a.dest: a.choices for a in train._actions}
    assert list(choices["recipe"]) == ["auto", *RECIPES]
    args = build_parser().parse_args(
        ["train", TINY, "--recipe", "torchvision", "--mixup", "0.1", "--ema-decay", "0.99"]
    )
    assert (args.recipe, args.mixup, args.ema_decay) == ("torchvision", 0.1, 0.99)
    assert not hasattr(args, "cutmix")  # left out: the recipe's


# -- optimizers ---------------------------------------------------------------------------------
def test_optimizer_rows():
    model = shufflenet.create_model(TINY, num_classes=10)
    groups = param_groups(model, 1e-4)
    nesterov = OPTIMIZERS["sgd_nesterov"](groups, 0.1, 0.9)
    assert isinstance(nesterov, torch.optim.SGD) and nesterov.defaults["nesterov"]
    adamw = OPTIMIZERS["adamw"](param_groups(model, 1e-4), 0.001, 0.8)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [1e-4, 0.0]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_updates_each_entry_on_its_own(name):
    # what the shuffle-free form needs: stepping a permuted copy is the permuted step, exactly
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(6, 4, generator=g)
    perm = torch.randperm(6, generator=g)
    a, b = nn.Parameter(weights.clone()), nn.Parameter(weights[perm].clone())
    opts = [OPTIMIZERS[name]([{"params": [p], "weight_decay": 0.01}], 0.1, 0.9) for p in (a, b)]
    for _ in range(3):
        grad = torch.randn(6, 4, generator=g)
        a.grad, b.grad = grad.clone(), grad[perm].clone()
        for opt in opts:
            opt.step()
    assert torch.equal(a.detach()[perm], b.detach()) and not torch.equal(a.detach(), weights)


# -- exact resume -----------------------------------------------------------------------------
class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_with_ema_sampler_and_mixing_is_exact(tmp_path, monkeypatch):
    config = TrainConfig(
        model="shufflenet_v2_x0_5",
        epochs=2,
        recipe="torchvision",
        ema_decay=0.8,
        warmup_epochs=0.0,
        fast=True,
        **{**QUICK, "bn_recalibrate": 2},
    )
    straight = fit(replace(config, out=str(tmp_path / "straight")))
    reports = train_loop._Run.write_reports

    def stop_after_the_first_epoch(self, final_top1=None):
        reports(self, final_top1)
        raise _Stop

    monkeypatch.setattr(train_loop._Run, "write_reports", stop_after_the_first_epoch)
    with pytest.raises(_Stop):
        fit(replace(config, out=str(tmp_path / "cut")))
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    fit(replace(config, out=str(tmp_path / "cut"), resume=True))
    a = read_checkpoint(straight.checkpoint_path)
    b = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a["sampler"] == b["sampler"] == {"epoch": 1, "seed": 0, "repeats": 4}
    saved_a, saved_b = (
        load_file(straight.model_path),
        load_file(tmp_path / "cut" / "model.safetensors"),
    )
    assert all(torch.equal(saved_a[k], saved_b[k]) for k in saved_a)


@pytest.mark.slow
def test_torchrun_with_the_recipe_teacher_and_ema(tmp_path, digits_teacher):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += ["2", "-m", "shufflenet", "train", "shufflenet_v2_x0_5", "--epochs", "1"]
    cmd += ["--out", str(out), "--no-progress", "--device", "cpu", "--image-size", "32"]
    cmd += ["--batch-size", "32", "--limit-train-batches", "3", "--bn-recalibrate", "2"]
    cmd += ["--recipe", "torchvision", "--ema-decay", "0.9", "--fast", "--amp"]
    cmd += ["--teacher", str(digits_teacher)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("recipe torchvision") == 1 and "x 2 processes" in proc.stdout
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and "ema" in ckpt and ckpt["sampler"]["repeats"] == 4
