"""What every verb group of the CLI shares: the parser class, argument types and printing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..preprocessing import MAX_CLASSES, check_input_size, control_character

__all__ = [
    "Parser",
    "batch_arg",
    "comma_list",
    "escape",
    "input_size_arg",
    "mb",
    "num_classes_arg",
    "parse_input_size",
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
