"""``shufflenet train`` and ``shufflenet eval``."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import print_json, print_table

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
        description="Train MODEL with the papers' recipe; writes model.safetensors, "
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
    opt("--lr", type=float, help="peak learning rate (default 0.5 x batch/1024, as the paper)")
    opt(
        "--optimizer",
        choices=_TableKeys("OPTIMIZERS"),
        metavar="NAME",
        help="%(choices)s (default sgd, with momentum)",
    )
    opt("--momentum", type=float, help="default 0.9")
    opt("--weight-decay", type=float, help="conv/linear weights only (default 4e-05)")
    opt("--label-smoothing", type=float, help="default 0.1")
    opt(
        "--schedule",
        choices=_TableKeys("SCHEDULES"),
        metavar="NAME",
        help="%(choices)s: decay to 0 (default linear)",
    )
    opt("--warmup-epochs", type=float, help="at most a fifth of the run (default 1.0)")
    opt("--image-size", type=int, help="default 64 for digits, 224 for folders")
    opt(
        "--augment",
        choices=("auto", "imagenet", "light", "none"),
        help="auto: light (shifts) for digits, imagenet (crop, flip, colour) for folders",
    )
    opt("--drop-rate", type=float, help="dropout before the classifier (default 0.0)")
    opt(
        "--bn-recalibrate",
        type=int,
        metavar="BATCHES",
        help="re-estimate BN statistics on BATCHES batches at the end (default 20; 0: off)",
    )
    opt("--init-weights", metavar="FILE", help="start from these weights (fine-tuning)")
    opt(
        "--freeze-stages",
        type=int,
        metavar="K",
        help="with --init-weights: keep the stem and the first K stages as loaded, weights and "
        "BN statistics (0: the stem only; default -1: none)",
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
    flag("--compile", help="torch.compile the training step (forward, loss and backward)")
    opt(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (drawn only when standard error is a terminal)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1, top-5, loss and per-class accuracy of a weights file")
    p.add_argument("--weights", required=True, help="a model.safetensors written by train")
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
