"""``shufflenet train`` and ``shufflenet eval``."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_pretrained, print_json, print_table

if TYPE_CHECKING:
    from ..train import StepProgress

__all__ = ["add_parsers"]


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace

    from ..train import TrainConfig, fit, read_run_config
    from ..train.files import RunFiles

    # Options left out stay out of ``given``: a resumed run keeps its own settings for them.
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    out = given.get("out")
    if given.get("resume"):
        if out is None:
            raise ValueError("--resume needs --out RUN_DIR, the run to continue")
        config = replace(read_run_config(out), **given)
    elif out is not None and RunFiles(Path(out)).checkpoint.exists():
        raise ValueError(
            f"{out} already holds a run; continue it with --resume or choose another --out"
        )
    else:
        config = TrainConfig(**given)
    bar = _EpochBar()
    try:
        result = fit(config, log=print, progress=bar if sys.stderr.isatty() else None)
    finally:
        bar.close()
    if not result.is_main:
        return 0
    final, mins = result.final, divmod(round(result.seconds), 60)
    print(
        f"\ndone: val top-1 {100 * final.top1:.2f}%, top-5 {100 * final.top5:.2f}%, "
        f"loss {final.loss:.4f} on {final.num_images} images after {result.epochs} epochs "
        f"({mins[0]}m{mins[1]:02d}s)"
    )
    print(f"  model:      {result.model_path}")
    print(f"  curves:     {result.curves_path}")
    print(f"  metrics:    {result.metrics_path}")
    print(f"  checkpoint: {result.checkpoint_path}")
    print(f"evaluate with: shufflenet eval --weights {result.model_path}")
    return 0


class _EpochBar:
    """A tqdm bar per epoch on standard error (loss, lr, images/s), drawn from the
    :class:`~shufflenet.train.StepProgress` that ``fit`` reports."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, where: StepProgress) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=where.steps,
                desc=f"epoch {where.epoch}/{where.epochs}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
            )
        self._bar.update(where.step - self._bar.n)
        if where.loss is not None:
            stats = {"loss": f"{where.loss:.4f}", "lr": f"{where.lr:.4g}"}
            self._bar.set_postfix({**stats, "img/s": f"{where.images_per_s:.0f}"}, refresh=False)
        if where.step == where.steps:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _TableKeys:
    """The keys of a table of :mod:`shufflenet.train.schedule` (``OPTIMIZERS``,
    ``SCHEDULES``) as argparse ``choices``, read when a ``train`` command or its help needs
    them: importing the training package at parser construction would slow every command."""

    def __init__(self, table: str) -> None:
        self.table = table

    def _keys(self) -> list[str]:
        from ..train import schedule

        return list(getattr(schedule, self.table))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __contains__(self, name: object) -> bool:
        return name in self._keys()


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_weights

    result, data = evaluate_weights(
        args.weights,
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        skip_bad_images=args.skip_bad_images,
    )
    if args.json:
        print_json({"weights": str(args.weights), "data": data, **result.to_dict()})
        return 0
    rows = [
        (name, result.class_counts[name], "-" if acc is None else f"{100 * acc:.2f}%")
        for name, acc in result.per_class.items()
    ]
    print_table(rows, ("class", "images", "top-1"))
    print(
        f"\n{args.weights} on {data}: top-1 {100 * result.top1:.2f}%, "
        f"top-5 {100 * result.top5:.2f}%, loss {result.loss:.4f} ({result.num_images} images)"
    )
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on digits or an ImageFolder tree (torchrun for several processes)",
        description="Train MODEL with a named recipe (--recipe); writes model.safetensors, "
        "checkpoint.pt, metrics.csv and curves.png into the run dir. Under `torchrun "
        "--nproc-per-node N -m shufflenet train ...` it trains with DDP.",
    )
    p.add_argument("model", help="model name (see `shufflenet models`)")
    # Options left out are absent from the namespace, so TrainConfig (or, with --resume, the
    # run being continued) decides. The defaults quoted here are TrainConfig's; a test checks
    # them (importing the training package here would slow every command, hence _TableKeys).
    opt = functools.partial(p.add_argument, default=argparse.SUPPRESS)
    flag = functools.partial(opt, action="store_true")
    opt("--data", help="'digits' (embedded, default) or a folder with train/ and val/ inside")
    opt(
        "--epochs",
        type=int,
        help="default: about 600 optimizer steps, 15 to 200 epochs (15 for digits)",
    )
    opt("--batch-size", type=int, help="global batch over all processes (default 32)")
    # The recipe fills every option below that is left out (default: the recipe's).
    opt(
        "--recipe",
        choices=("auto", "paper", "torchvision", "finetune", "qat"),
        help="the settings that options left out take; auto (default): qat with --qat, else "
        "chosen by the data and whether the run starts from weights (docs: Training, Recipes)",
    )
    opt(
        "--lr",
        type=float,
        help="peak learning rate (default: the recipe's per 1024 images, scaled to the batch: "
        "paper 0.5 x batch/1024)",
    )
    opt(
        "--optimizer",
        choices=_TableKeys("OPTIMIZERS"),
        metavar="NAME",
        help="%(choices)s (default: the recipe's, sgd with momentum)",
    )
    opt("--momentum", type=float, help="momentum, AdamW's first beta (default 0.9)")
    opt(
        "--weight-decay",
        type=float,
        help="conv/linear weights only (default: the recipe's, paper 4e-05, torchvision 2e-05)",
    )
    opt("--label-smoothing", type=float, help="default: the recipe's, 0.1")
    opt(
        "--schedule",
        choices=_TableKeys("SCHEDULES"),
        metavar="NAME",
        help="%(choices)s: decay to 0 (default: the recipe's, paper linear)",
    )
    opt(
        "--warmup-epochs",
        type=float,
        help="at most a fifth of the run (default: the recipe's, paper 1.0)",
    )
    opt(
        "--image-size",
        type=int,
        help="model input, the evaluation crop (default 64 for digits, 224 for folders)",
    )
    opt("--train-size", type=int, metavar="PX", help="training crops (default: the recipe's)")
    opt(
        "--val-resize",
        type=int,
        metavar="PX",
        help="shorter side before the evaluation crop (default: the recipe's)",
    )
    opt(
        "--augment",
        choices=("auto", "imagenet", "light", "none"),
        help="auto: light (shifts) for digits, imagenet (crop, flip, colour) for folders",
    )
    opt(
        "--auto-augment",
        choices=("none", "trivialaugment", "randaugment"),
        help="a policy on top of --augment, in place of ColorJitter (default: the recipe's)",
    )
    opt("--random-erase", type=float, metavar="P", help="probability (default: the recipe's)")
    opt("--mixup", type=float, metavar="ALPHA", help="0: off (default: the recipe's)")
    opt("--cutmix", type=float, metavar="ALPHA", help="0: off (default: the recipe's)")
    opt(
        "--ema-decay",
        type=float,
        metavar="D",
        help="validate and save an EMA of the weights, per step (0: off; default: the "
        "recipe's, from the run's length)",
    )
    opt(
        "--repeats",
        type=int,
        metavar="N",
        help="repeated augmentation: each image N times per epoch (default: the recipe's)",
    )
    opt(
        "--teacher",
        metavar="NAME|FILE",
        help="distil from a weights file of ours, a model of ours (published weights), "
        "torchvision:NAME or timm:NAME",
    )
    opt("--distill-alpha", type=float, help="share of the distillation loss (default 0.5)")
    opt("--distill-temperature", type=float, help="softens both outputs (default 1.0)")
    opt("--drop-rate", type=float, help="dropout before the classifier (default 0.0)")
    opt(
        "--bn-recalibrate",
        type=int,
        metavar="BATCHES",
        help="re-estimate BN statistics on BATCHES batches at the end (default 20; 0: off)",
    )
    opt("--init-weights", metavar="FILE", help="start from these weights (fine-tuning)")
    add_pretrained(opt, "start from the model")
    opt(
        "--freeze-stages",
        type=int,
        metavar="K",
        help="with --init-weights or --pretrained: keep the stem and the first K stages as "
        "loaded, weights and BN statistics (0: the stem only; default -1: none)",
    )
    opt("--limit-train-batches", type=int, metavar="N", help="at most N batches per epoch")
    flag("--skip-bad-images", help="skip unreadable image files instead of stopping")
    opt("--seed", type=int, help="default 0")
    opt("--out", metavar="RUN_DIR", help="default runs/MODEL, runs/MODEL-2, ...")
    flag("--resume", help="continue the run in --out from its last checkpoint")
    opt("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    opt("--workers", type=int, help="loader processes (default 0 for digits, <= 8 for folders)")
    opt("--threads", type=int, help="CPU threads (default: the cores idle at the start)")
    flag("--amp", help="mixed precision: bf16 autocast (fp16 on GPUs without bf16)")
    flag("--channels-last", help="channels_last (NHWC) memory format")
    flag(
        "--fast",
        help="train V1/V2 in their shuffle-free form (same network and weights, fewer copies)",
    )
    flag(
        "--qat",
        help="quantization-aware training from --init-weights or --pretrained (int8 simulated; "
        "export --int8-qat RUN_DIR uses the ranges it learns; needs shufflenet[executorch])",
    )
    flag("--compile", help="torch.compile the training step (forward, loss and backward)")
    opt(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (drawn only when standard error is a terminal)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1, top-5, loss and per-class accuracy of a weights file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a model.safetensors written by train")
    src.add_argument("--model", help="a model name, with --pretrained")
    add_pretrained(p.add_argument, "with --model: the model")
    p.set_defaults(model_needs_pretrained=True)
    p.add_argument(
        "--data",
        help="digits, an ImageFolder root (uses val/) or a folder of class folders "
        "(default: the data the model was trained on)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=int, help="data loading processes (default: auto)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images")
    p.add_argument("--json", action="store_true", help="print JSON (top1/top5 as fractions)")
    p.set_defaults(func=_cmd_eval)
