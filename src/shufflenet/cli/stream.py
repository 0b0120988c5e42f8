"""``shufflenet predict --out``: rows written as they are computed, on this machine or on Ray
(:mod:`shufflenet.stream`); the options, the run and its progress on standard error."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..limits import MAX_THREADS
from .common import escape, print_json

__all__ = ["add_stream_arguments", "check_print_run", "listed", "predict_stream"]

BATCH = 64  # images per batch of a streaming run
MAX_DEFAULT_WORKERS = 4  # decoding processes by default
PROGRESS_SECONDS = 30.0  # a progress line this often, off a terminal

_STREAM_ONLY = ("batch_size", "workers", "features", "resume", "ray", "actors")


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", metavar="FILE", help="a file of image paths, one per line")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write a row per image as it is computed, to a .csv, .jsonl or .parquet file "
        "(with --ray: a new folder of such files); paths are listed and decoded as they go",
    )
    p.add_argument(
        "--batch-size", type=_positive, help=f"with --out: images per batch (default {BATCH})"
    )
    p.add_argument(
        "--workers",
        type=_count,
        help="with --out: processes decoding images, 0: the main one (default: the CPU "
        f"count, at most {MAX_DEFAULT_WORKERS})",
    )
    p.add_argument(
        "--features",
        action="store_true",
        help="with --out, engine torch: add the pooled embedding the classifier reads",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --out: continue the file, skipping the paths already in it (given the "
        "same way); a row cut short by a killed run is dropped and redone",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="with --out: run as a Ray Data pipeline (pip install 'shufflenet[ray]'), on a new "
        "local Ray instance, or the cluster at ADDRESS ('auto', 'ray://HOST:PORT')",
    )
    p.add_argument(
        "--actors", type=_positive, help="with --ray: actors opening the model (default: CPUs)"
    )


def _positive(text: str) -> int:
    return _integer_arg(text, 1)


def _count(text: str) -> int:
    return _integer_arg(text, 0)


def _integer_arg(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"must be an integer within {low}..{MAX_THREADS}, got {text!r}"
        )
    return value


def listed(list_file: str | None) -> list[str]:
    from ..stream import iter_images

    return [] if list_file is None else list(iter_images([], list_file))


def check_print_run(args: argparse.Namespace) -> None:
    """The options that need ``--out`` were not given without it; there are images."""
    given = [name for name in _STREAM_ONLY if getattr(args, name) not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags}: only with --out FILE (rows written as they are computed)")
    if not args.inputs and args.list is None:
        raise ValueError("give image files or folders, or --list FILE")


def predict_stream(args: argparse.Namespace) -> int:
    from ..stream import predict_on_ray, predict_to_file

    if not args.inputs and args.list is None:
        raise ValueError("give image files or folders, or --list FILE")
    batch = args.batch_size or BATCH
    common = {
        "list_file": args.list,
        "topk": args.topk,
        "batch_size": batch,
        "features": args.features,
        "engine": args.engine,
    }
    if args.ray is not None:
        if args.resume or args.workers is not None:
            raise ValueError(
                "--resume and --workers go with a local run; --ray writes a new folder, with "
                "--actors processes"
            )
        result = predict_on_ray(
            args.weights,
            args.inputs,
            args.out,
            address=args.ray or None,
            actors=args.actors,
            **common,
        )
    else:
        if args.actors is not None:
            raise ValueError("--actors goes with --ray")
        workers = min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)
        workers = workers if args.workers is None else args.workers
        with _StreamProgress() as progress:
            result = predict_to_file(
                args.weights,
                args.inputs,
                args.out,
                workers=workers,
                resume=args.resume,
                progress=progress,
                **common,
            )
    if args.json:
        print_json(result.to_dict())
    else:
        print(
            f"wrote {result.images} rows to {escape(str(result.out))} in {result.seconds:.1f} s "
            f"({result.images_per_s:.1f} images/s; {result.errors} error rows, "
            f"{result.skipped} paths already there or repeated)"
        )
    if result.errors:
        print(
            f"error: {result.errors} of {result.images} image(s) failed: their rows in "
            f"{escape(str(result.out))} say why",
            file=sys.stderr,
        )
    return 1 if result.errors else 0


class _StreamProgress:
    """The progress of a streaming run on standard error: a tqdm bar with images/s on a
    terminal, else a line every :data:`PROGRESS_SECONDS`."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._last = time.monotonic()

    def __enter__(self) -> _StreamProgress:
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(unit="img", desc="predict", dynamic_ncols=True, leave=False)
        return self

    def __call__(self, where: Any) -> None:
        if self._bar is not None:
            self._bar.update(where.images - self._bar.n)
            self._bar.set_postfix(errors=where.errors, skipped=where.skipped, refresh=False)
        elif time.monotonic() - self._last >= PROGRESS_SECONDS:
            self._last = time.monotonic()
            print(
                f"predict: {where.images} images ({where.errors} errors, {where.skipped} "
                f"skipped), {where.images_per_s:.1f} images/s",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.close()
