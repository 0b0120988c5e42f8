"""What every verb group of the CLI shares: the parser class, argument types and printing."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from ..preprocessing import MAX_CLASSES, check_input_size, control_character

__all__ = [
    "DownloadBar",
    "Parser",
    "add_pretrained",
    "batch_arg",
    "comma_list",
    "escape",
    "fetch_with_bar",
    "input_size_arg",
    "mb",
    "num_classes_arg",
    "parse_input_size",
    "pretrained_weights",
    "print_json",
    "print_table",
    "progress",
]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"160x192"`` -> (160, 192) as (height, width), each side
    within :data:`~shufflenet.preprocessing.MIN_INPUT_SIZE`..``MAX_INPUT_SIZE`` pixels."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2:
        raise ValueError(f"input size must look like 224 or 160x192, got {text!r}")
    return check_input_size((sizes[0], sizes[1]), "input size")


def input_size_arg(text: str) -> tuple[int, int]:
    try:
        return parse_input_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def num_classes_arg(text: str) -> int:
    """A class count within 0..:data:`~shufflenet.preprocessing.MAX_CLASSES` (0: no classifier)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_CLASSES:
        message = f"must be an integer within 0..{MAX_CLASSES} (0: no classifier), got {text!r}"
        raise argparse.ArgumentTypeError(message)
    return value


def batch_arg(text: str) -> int | None:
    """``"dynamic"`` -> None (any batch size), else a positive integer: a fixed batch size."""
    if text.strip().lower() == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'dynamic' or a positive integer, got {text!r}")
    return value


def escape(text: str) -> str:
    """``text`` with every character a terminal would act on (escape sequences, carriage
    returns, newlines, bidirectional overrides) shown as a Python escape, so that text from a
    file (a name, a message) prints as one inert line."""
    return "".join(repr(c)[1:-1] if control_character(c) else c for c in text)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print ``rows`` as an aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:] if r[i]) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if numeric[i] else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%x"))
    except ValueError:
        return False
    return True


def print_json(data: Any) -> None:
    """``data`` as strict JSON (no ``NaN`` or ``Infinity``, which strict parsers refuse)."""
    print(json.dumps(data, indent=2, allow_nan=False))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def comma_list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            message = f"expected a comma-separated list, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse


def mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


# -- published weights (shufflenet.hub) -------------------------------------------------------
def _pretrained_source(text: str) -> str:
    from ..hub import PRETRAINED

    sources = list(dict.fromkeys(w.source for w in PRETRAINED))
    if text not in sources:
        raise argparse.ArgumentTypeError(
            f"must be a source of published weights ({', '.join(sources)}), got {text!r}; "
            "put other arguments before --pretrained"
        )
    return text


def add_pretrained(add_argument: Any, what: str = "the model") -> None:
    """``--pretrained [SOURCE]`` through ``add_argument`` (a parser's, or a partial of it)."""
    add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        type=_pretrained_source,
        metavar="SOURCE",
        help=f"{what} with the ImageNet weights its publisher hosts (fetched once into torch's "
        "hub cache, hash-checked; see `shufflenet weights`); SOURCE: torchvision or "
        "mmpretrain (default: the model's first)",
    )


class DownloadBar:
    """A download's progress (:class:`shufflenet.hub.Download`) on standard error: a tqdm bar
    on a terminal, one line otherwise."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._started = False

    def __call__(self, where: Any) -> None:
        if not self._started:
            self._started = True
            size = "" if where.total is None else f" ({mb(where.total)})"
            if not sys.stderr.isatty():
                progress(f"downloading {where.url}{size} to {where.path}")
                return
            from tqdm import tqdm

            self._bar = tqdm(
                total=where.total, unit="B", unit_scale=True, desc=where.path.name, leave=False
            )
        if self._bar is not None:
            self._bar.update(where.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def fetch_with_bar(name: str, source: str | None) -> Path:
    """:func:`shufflenet.hub.fetch` with a :class:`DownloadBar`."""
    from ..hub import fetch

    bar = DownloadBar()
    try:
        return fetch(name, source, progress=bar)
    finally:
        bar.close()


@contextmanager
def pretrained_weights(args: argparse.Namespace) -> Iterator[None]:
    """While a verb runs with ``--pretrained [SOURCE]``: the published files fetched first
    (with a bar), and for a verb that reads a weights file (``args.weights``), the weights of
    ``--model NAME`` written to a temporary file named in ``args.weights``."""
    pretrained = getattr(args, "pretrained", None)
    if pretrained in (None, False):
        if getattr(args, "model_needs_pretrained", False) and args.model:
            raise ValueError("--model NAME goes with --pretrained [SOURCE]: give --weights FILE")
        yield
        return
    source = None if pretrained is True else pretrained
    if not hasattr(args, "weights"):  # the verb builds the models itself (train, bench)
        if hasattr(args, "models"):
            from ..speed.baselines import BASELINES, expand_model_names

            names = [n for n in expand_model_names(args.models) if n not in BASELINES]
        else:
            names = [args.model]
        for name in names:
            fetch_with_bar(name, source)
        yield
        return
    if args.weights or not args.model:
        raise ValueError("--pretrained goes with --model NAME, not --weights")
    if getattr(args, "layout", None) or getattr(args, "num_classes", None) is not None:
        raise ValueError("--pretrained loads the published network: drop --layout/--num-classes")
    from ..hub import load_pretrained
    from ..weights import save

    bar = DownloadBar()
    try:
        model = load_pretrained(args.model, source, progress=bar)
    finally:
        bar.close()
    meta = model.weights_metadata
    with tempfile.TemporaryDirectory(prefix="shufflenet-pretrained-") as folder:
        args.weights = str(
            save(
                model,
                Path(folder) / f"{args.model}.safetensors",
                class_names=meta["class_names"],
                preprocessing=meta["preprocessing"],
                pretrained=meta["pretrained"],
            )
        )
        yield
