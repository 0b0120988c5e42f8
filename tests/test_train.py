import csv
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import image_folder, randomize_bn
from safetensors.torch import load_file

import shufflenet
from shufflenet.cli import build_parser, main
from shufflenet.evaluate import evaluate_weights
from shufflenet.train import (
    METRIC_COLUMNS,
    OPTIMIZERS,
    SCHEDULES,
    StepProgress,
    TrainConfig,
    fit,
    lr_factor,
    param_groups,
    read_run_config,
)
from shufflenet.train.files import read_checkpoint

TINY = "shufflenet_v1_g3_x0_25"
# A few steps at 32x32: seconds per run.
QUICK = {
    "image_size": 32,
    "batch_size": 32,
    "limit_train_batches": 4,
    "bn_recalibrate": 2,
    "progress": False,
}
QUICK_ARGS = ["--image-size", "32", "--batch-size", "32", "--limit-train-batches", "4"]
QUICK_ARGS += ["--bn-recalibrate", "2"]
# Subprocesses run with one thread each: identical arithmetic, no oversubscription.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short digits run through the API, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("run") / "r"
    lines: list[str] = []
    result = fit(TrainConfig(model=TINY, epochs=2, out=str(out), **QUICK), log=lines.append)
    return result, lines


def test_lr_schedule():
    total, warm = 100, 10
    lrs = [lr_factor(s, total, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert lr_factor(total, total, warm) == 0.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    cos = [lr_factor(s, total, warm, "cosine") for s in range(total + 1)]
    assert cos[10] == pytest.approx(1.0) and cos[55] == pytest.approx(0.5) and cos[-1] == 0.0
    assert lr_factor(0, 10, 0) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of linear, cosine, got 'step'"):
        lr_factor(0, 10, 0, "step")


def test_no_weight_decay_on_bn_and_biases():
    model = shufflenet.create_model("shufflenet_v2_x0_5", num_classes=10)
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    bn = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    assert {id(p) for p in no_decay["params"]} == bn | {id(model.fc.bias)}
    assert any(p is model.fc.weight for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_fit_writes_every_output(run):
    result, lines = run
    d = result.run_dir
    assert sorted(p.name for p in d.iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.csv",
        "model.safetensors",
    ]  # and no temporary files
    rows = _rows(result.metrics_path)
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == METRIC_COLUMNS
    assert float(rows[1]["lr"]) == 0.0  # linear decay ends at 0
    assert result.curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(result.checkpoint_path, weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 1
    assert {"optimizer", "scheduler", "scaler", "model", "history"} <= set(ckpt)
    model = shufflenet.load(result.model_path)
    meta = model.weights_metadata
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["data"] == "digits"
    assert meta["preprocessing"]["input_size"] == [32, 32]
    assert meta["model_config"] == {"name": TINY, "num_classes": 10}
    # the model file holds the checkpoint's weights with re-estimated BN statistics
    stats = ("running_mean", "running_var", "num_batches_tracked")
    state = model.state_dict()
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in state.items() if not k.endswith(stats))
    assert not torch.equal(state["conv1.1.running_var"], ckpt["model"]["conv1.1.running_var"])
    assert lines[0].startswith(f"training {TINY} on digits") and "epoch 2/2" in lines[-2]
    assert lines[-1].startswith("BN statistics re-estimated on 2 batches")
    assert 0.0 <= result.final.top1 <= result.final.top5 <= 1.0


def test_evaluate_weights_agrees_with_the_run(run):
    result, _ = run
    ev, data = evaluate_weights(result.model_path, device="cpu")
    assert data == "digits" and ev.num_images == 360
    assert ev.top1 == pytest.approx(result.final.top1)
    assert ev.loss == pytest.approx(result.final.loss, rel=1e-5)
    assert sum(ev.class_counts.values()) == 360
    per_class_hits = sum((ev.per_class[c] or 0.0) * ev.class_counts[c] for c in ev.per_class)
    assert per_class_hits == pytest.approx(ev.top1 * 360)


def test_existing_run_needs_resume_and_the_same_recipe(run, tmp_path, capsys):
    result, _ = run
    config = TrainConfig(model=TINY, epochs=2, out=str(result.run_dir), **QUICK)
    with pytest.raises(ValueError, match=r"already holds a run; continue it with resume=True"):
        fit(config)
    assert main(["train", TINY, "--out", str(result.run_dir)]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint in"):
        fit(replace(config, out=str(tmp_path / "none"), resume=True))
    with pytest.raises(ValueError, match=r"lr 0\.1 \(checkpoint: 0\.015625\)"):
        fit(replace(config, resume=True, lr=0.1))
    before = load_file(result.model_path)
    again = fit(replace(config, resume=True))  # finished: nothing left but the final files
    assert again.resumed_from == 2 and len(_rows(again.metrics_path)) == 2
    after = load_file(result.model_path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert again.final.top1 == result.final.top1


def test_freeze_stages_fine_tune_keeps_the_frozen_tensors(tmp_path):
    init = randomize_bn(shufflenet.create_model(TINY, num_classes=10))
    path = shufflenet.save(init, tmp_path / "init.safetensors")
    config = TrainConfig(
        model=TINY, epochs=1, out=str(tmp_path / "run"), init_weights=str(path), **QUICK
    )
    with pytest.raises(ValueError, match=r"freeze_stages must be within -1\.\.3"):
        fit(replace(config, freeze_stages=4))
    result = fit(replace(config, freeze_stages=1))  # the stem and stage2, with weight decay
    start, end = load_file(path), load_file(result.model_path)
    frozen = ("conv1.", "stage2.")
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith(frozen))
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert {"stage3.0.bn1.running_mean", "stage4.0.gconv1.weight", "fc.weight"} <= changed
    checkpoint = read_checkpoint(result.checkpoint_path)
    assert checkpoint["config"]["freeze_stages"] == 1
    trainable = sum(not k.startswith(frozen) for k in dict(init.named_parameters()))
    optimized = sum(len(g["params"]) for g in checkpoint["optimizer"]["param_groups"])
    assert optimized == trainable
    assert shufflenet.read_metadata(result.model_path)["model_config"] == {
        "name": TINY,
        "num_classes": 10,
    }
    # A resume keeps the frozen layers frozen (its BN re-estimation leaves them alone) and
    # refuses another freeze_stages.
    assert read_run_config(result.run_dir).freeze_stages == 1
    with pytest.raises(ValueError, match=r"freeze_stages 0 \(checkpoint: 1\)"):
        fit(replace(config, freeze_stages=0, resume=True))
    again = fit(replace(config, freeze_stages=1, resume=True))
    end = load_file(again.model_path)
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith(frozen))


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", TINY, "--epochs", "1", "--out", str(out), "--no-progress", *QUICK_ARGS]
    assert main([*argv, "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "BN statistics re-estimated on 2 batches" in text
    assert re.search(r"done: val top-1 \d+\.\d\d%", text)
    assert f"curves:     {out / 'curves.png'}" in text
    assert main(["eval", "--weights", str(out / "model.safetensors"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["data"] == "digits" and data["num_images"] == 360
    assert 0 <= data["top1"] <= data["top5"] <= 1 and len(data["per_class"]) == 10
    assert main(["eval", "--weights", str(out / "model.safetensors")]) == 0
    table = capsys.readouterr().out
    assert "class" in table and "top-1" in table and "360 images" in table


def test_an_optimizer_or_a_schedule_is_one_row(tmp_path, monkeypatch, capsys):
    # A row in each table is all it takes: the config, the run and the CLI's choices take it.
    def adamax(groups, lr, momentum):
        return torch.optim.Adamax(groups, lr=lr, betas=(momentum, 0.999))

    monkeypatch.setitem(OPTIMIZERS, "adamax", adamax)
    monkeypatch.setitem(SCHEDULES, "constant", lambda progress: 1.0)
    parser = build_parser()
    argv = ["train", TINY, "--optimizer", "adamax", "--schedule", "constant"]
    args = parser.parse_args(argv)
    assert (args.optimizer, args.schedule) == ("adamax", "constant")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", TINY, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "sgd, sgd_nesterov, adamw, adamax (default: the recipe's" in help_text
    assert "linear, cosine, constant:" in help_text
    with pytest.raises(SystemExit) as e:
        main(["train", TINY, "--optimizer", "lion"])
    assert e.value.code == 2 and "invalid choice: 'lion'" in capsys.readouterr().err
    rows = "sgd, sgd_nesterov, adamw, adamax"
    with pytest.raises(ValueError, match=f"optimizer must be one of {rows}, got 'lion'"):
        TrainConfig(model=TINY, optimizer="lion").validated()
    quick = {**QUICK, "limit_train_batches": 2, "bn_recalibrate": 0}
    config = TrainConfig(model=TINY, epochs=1, optimizer="adamax", schedule="constant", **quick)
    result = fit(replace(config, out=str(tmp_path / "r")))
    state = read_checkpoint(result.checkpoint_path)["optimizer"]["state"]
    assert {"exp_avg", "exp_inf"} <= set(state[0])  # Adamax trained it
    assert result.history[-1]["lr"] == pytest.approx(config.validated().lr)  # never decayed


def test_progress_reaches_the_caller_after_every_step(tmp_path):
    reports: list[StepProgress] = []
    quick = {**QUICK, "limit_train_batches": 6, "bn_recalibrate": 0, "progress": True}
    config = TrainConfig(model=TINY, epochs=2, out=str(tmp_path / "r"), **quick)
    fit(config, progress=reports.append)
    assert [(r.epoch, r.step) for r in reports] == [(e, s) for e in (1, 2) for s in range(1, 7)]
    assert all(r.epochs == 2 and r.steps == 6 for r in reports)
    # loss, lr and rate at the first step, every fifth after it and the last of each epoch
    measured = [r for r in reports if r.loss is not None]
    assert [(r.epoch, r.step) for r in measured] == [(1, 1), (1, 6), (2, 1), (2, 6)]
    assert all(r.lr is not None and r.images_per_s and r.images_per_s > 0 for r in measured)
    assert all(r.lr is None and r.images_per_s is None for r in reports if r.loss is None)
    reports.clear()
    quiet = replace(config, out=str(tmp_path / "quiet"), epochs=1, progress=False)
    fit(quiet, progress=reports.append)
    assert reports == []


@pytest.mark.parametrize(
    ("terminal", "flags", "bar"),
    [(True, [], True), (False, [], False), (True, ["--no-progress"], False)],
)
def test_cli_draws_the_bar_on_a_terminal_only(tmp_path, capsys, monkeypatch, terminal, flags, bar):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    argv = ["train", TINY, "--epochs", "1", "--out", str(tmp_path / "r"), *QUICK_ARGS, *flags]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1  train loss" in captured.out  # the epoch line, either way
    assert ("epoch 1/1:" in captured.err) == bar and (captured.err == "") != bar


def test_help_quotes_the_real_defaults():
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    helps = {a.dest: a.help or "" for a in train._actions}
    d = TrainConfig()
    assert d.lr is None and "0.5 x batch/1024" in helps["lr"]
    assert d.epochs is None and "about 600 optimizer steps" in helps["epochs"]
    for name in ("batch_size", "momentum", "seed", "drop_rate"):
        assert f"default {getattr(d, name)}" in helps[name], name
    for name in ("optimizer", "weight_decay", "label_smoothing", "schedule", "warmup_epochs"):
        assert getattr(d, name) is None and "default: the recipe's" in helps[name], name
    assert d.data in helps["data"] and f"default {d.bn_recalibrate};" in helps["bn_recalibrate"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "nosuchnet"], "unknown model"),
        (["train", TINY, "--epochs", "0"], "epochs must be a positive integer"),
        (["train", TINY, "--lr", "-1"], "lr must be > 0"),
        (["train", TINY, "--image-size", "16"], "image_size must be within 32..4096"),
        (["train", TINY, "--device", "tpu"], "device must be"),
        (["train", TINY, "--data", "/no/such/folder"], "no such data folder"),
        (["train", TINY, "--resume"], "--resume needs --out"),
        (["train", TINY, "--resume", "--out", "/no/such/run"], "no checkpoint to resume"),
        (["eval", "--weights", "/no/such.safetensors"], "no such weights file"),
        (["train", TINY, "--freeze-stages", "1"], "freeze_stages 1 needs init_weights"),
        (["train", TINY, "--freeze-stages", "-2"], "freeze_stages must be an integer >= -1"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_bad_argument_types_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", TINY, "--epochs", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err


def test_cli_folder_with_corrupt_image_and_empty_class(tmp_path, capsys):
    root = image_folder(tmp_path / "photos")
    (root / "train" / "bee" / "bad.jpg").write_bytes(b"GIF89a truncated")
    (root / "train" / "wasp").mkdir()
    (root / "val" / "wasp").mkdir()
    args = ["train", TINY, "--data", str(root), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*args, "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train/bee/bad.jpg" in err[0]
    assert "without images: train/wasp, val/wasp" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "r").exists()
    # after removing the empty class, --skip-bad-images trains and says what it skipped
    (root / "train" / "wasp").rmdir()
    (root / "val" / "wasp").rmdir()
    quick = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0"]
    assert main([*args, *quick, "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image" in out and "8 train / 8 val images, 2 classes" in out
    meta = shufflenet.read_metadata(tmp_path / "r" / "model.safetensors")
    assert meta["class_names"] == ["ant", "bee"] and meta["preprocessing"]["resize"] == 37
    assert main(["eval", "--weights", str(tmp_path / "r" / "model.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 8


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shufflenet",
        "train",
        TINY,
        "--epochs",
        "4",
        "--seed",
        "5",
        "--out",
        str(out),
        "--no-progress",
        *QUICK_ARGS,
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    ref, cut = (
        subprocess.Popen(
            _train_cmd(tmp_path / name),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("ref", "cut")
    )
    metrics = tmp_path / "cut" / "metrics.csv"
    deadline = time.monotonic() + 240
    while cut.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(_rows(metrics)) >= 1:
            break
        time.sleep(0.01)
    cut.send_signal(signal.SIGKILL)
    cut.communicate()
    assert cut.returncode == -signal.SIGKILL  # killed in the middle of the run
    done = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4
    resumed = subprocess.run(
        _train_cmd(tmp_path / "cut", "--resume"),
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done}" in resumed.stdout
    ref_out, _ = ref.communicate()
    assert ref.returncode == 0, ref_out
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_rows, cut_rows = _rows(tmp_path / "ref" / "metrics.csv"), _rows(metrics)
    assert [r["epoch"] for r in cut_rows] == ["1", "2", "3", "4"]
    assert [r["val_loss"] for r in cut_rows] == [r["val_loss"] for r in ref_rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,extra",
    [(TINY, []), ("shufflenet_v2_x0_5", ["--fast", "--amp", "--channels-last"])],
)
def test_torchrun_two_process_gloo(tmp_path, model, extra):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "shufflenet",
        "train",
        model,
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        *QUICK_ARGS,
        *extra,
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: val top-1") == 1  # rank 0 alone reports
    assert "x 2 processes" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.csv",
        "model.safetensors",
    ]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert len(_rows(out / "metrics.csv")) == 1
    model = shufflenet.load(out / "model.safetensors")
    assert model.num_classes == 10


def test_choose_epochs_from_a_step_budget():
    from shufflenet.train.schedule import MAX_EPOCHS, MIN_EPOCHS, STEP_BUDGET, choose_epochs

    assert choose_epochs(1437 // 32) == 15  # digits keeps its 15 epochs
    assert choose_epochs(360 // 32) == 55  # a folder of 360 photos: 605 steps, not 165
    assert choose_epochs(140 // 32) == 150
    assert choose_epochs(1) == MAX_EPOCHS and choose_epochs(10**6) == MIN_EPOCHS
    for steps in range(1, 200):
        epochs = choose_epochs(steps)
        assert MIN_EPOCHS <= epochs <= MAX_EPOCHS
        assert epochs * steps >= STEP_BUDGET or epochs == MAX_EPOCHS
    with pytest.raises(ValueError, match="steps_per_epoch"):
        choose_epochs(0)


def test_epochs_chosen_logged_recorded_and_kept_on_resume(tmp_path, monkeypatch):
    from shufflenet.train import loop

    seen = []

    def choose(steps, budget):
        seen.append((steps, budget))
        return 2

    monkeypatch.setattr(loop, "choose_epochs", choose)
    lines: list[str] = []
    out = tmp_path / "run"
    config = TrainConfig(model=TINY, out=str(out), **{**QUICK, "limit_train_batches": 3})
    assert config.epochs is None
    first = fit(replace(config), log=lines.append)
    assert seen == [(3, 600)] and first.epochs == 2 and len(first.history) == 2
    assert any(line.startswith("epochs: 2, chosen for about 600 optimizer steps") for line in lines)
    assert read_checkpoint(out / "checkpoint.pt")["config"]["epochs"] == 2
    # resuming without epochs keeps the run's length (nothing left to do); another one is refused
    again = fit(replace(config, resume=True), log=lines.append)
    assert again.epochs == 2 and seen == [(3, 600)]
    with pytest.raises(ValueError, match="epochs 3"):
        fit(replace(config, resume=True, epochs=3))


@pytest.mark.slow
@pytest.mark.parametrize("model", [TINY, "shufflenet_v2_x0_5"])
def test_fast_training_follows_the_standard_run(tmp_path, model):
    # The shuffle-free form trains the same network: same losses and weights up to rounding,
    # and its checkpoint and weights file hold the standard layout.
    # A few steps only: these small networks on 32x32 inputs are chaotic, so that rounding
    # differences of 1e-7 (from summing in another order) grow to 1e-2 within about five
    # steps, as they do between two standard runs whose weights differ by 1e-7
    # (tests/test_train_fast.py checks the step-by-step equivalence).
    quick = {**QUICK, "limit_train_batches": 1, "bn_recalibrate": 0}
    config = TrainConfig(model=model, epochs=2, **quick)
    runs = {
        fast: fit(replace(config, out=str(tmp_path / f"fast{fast}"), fast=fast))
        for fast in (False, True)
    }
    losses = [[row["train_loss"] for row in runs[f].history] for f in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    standard, fast = (load_file(str(runs[f].model_path)) for f in (False, True))
    assert standard.keys() == fast.keys()
    for key, value in standard.items():
        # most tensors agree to 1e-4 after two steps; the stem conv, whose gradient sums over
        # every pixel, to 0.5% (V2 0.5x, measured)
        a, b = value.float(), fast[key].float()
        assert (a - b).norm() <= 2e-2 * a.norm() + 1e-4, key
    # the checkpoint holds the standard layout: the momentum buffers agree too, as far as the
    # second step's gradients do (the stem's is the most sensitive: it moves by more than the
    # fast form's rounding when a standard run's weights are perturbed by 1e-7)
    saved = [read_checkpoint(runs[f].checkpoint_path)["optimizer"]["state"] for f in (False, True)]
    assert saved[0].keys() == saved[1].keys()
    for i, entry in saved[0].items():
        other = saved[1][i]["momentum_buffer"]
        ours = entry["momentum_buffer"]
        assert (ours - other).norm() <= 1e-1 * ours.norm() + 1e-6, i


@pytest.mark.slow
def test_compiled_fast_step(tmp_path, monkeypatch):
    # torch.compile traces the fast form's forward and loss (dynamo) and their backward
    # (AOTAutograd); the aot_eager backend skips only inductor's C++ code generation, which
    # takes minutes here (the benchmark runs the real thing).
    compiled = []
    real_compile = torch.compile

    def compile_with_aot_eager(fn, **kwargs):
        compiled.append(fn)
        return real_compile(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    config = TrainConfig(
        model="shufflenet_v2_x0_5", epochs=1, out=str(tmp_path / "c"), fast=True, compile=True,
        **{**QUICK, "limit_train_batches": 2, "bn_recalibrate": 0},
    )  # fmt: skip
    result = fit(config)
    assert len(compiled) == 1 and compiled[0].__name__ == "_loss"
    assert math.isfinite(result.history[0]["train_loss"])
    assert shufflenet.load(result.model_path).model_config["name"] == "shufflenet_v2_x0_5"
