"""The ``shufflenet`` command: thin verbs that parse arguments, call the API and print.

One module per verb group (``models``, ``speed``, ``train``, ``deploy``), each holding its
verbs' handlers and parsers; a handler takes the parsed arguments and returns an exit code.
Errors the user can fix (``ValueError``, ``OSError``, a failed allocation) become one
``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from .. import __version__
from . import deploy, models, speed, train
from .common import Parser, escape, parse_input_size, pretrained_weights

__all__ = ["build_parser", "main", "parse_input_size"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="shufflenet",
        description="ShuffleNet V1/V2: models, complexity, training, benchmarks and export.",
    )
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    for group in (models, speed, train, deploy):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_raises(), pretrained_weights(args):
            return int(args.func(args))
    except _Terminated:
        print("error: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (ValueError, OSError) as e:
        print(f"error: {escape(str(e))}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        message = _out_of_memory(e)
        if message is None:
            raise
        print(f"error: {escape(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the command's cleanup (``finally`` blocks,
    context managers: temporary files and folders) runs before the process ends."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`_Terminated` (then is ignored until the
    block has cleaned up); the previous handler is restored after. Only the main thread can
    handle signals: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _out_of_memory(error: BaseException) -> str | None:
    """What to say when an allocation failed (PyTorch reports it as a ``RuntimeError``);
    ``None`` for any other error."""
    text = str(error)
    if not isinstance(error, MemoryError) and not re.search(
        r"can't allocate memory|out of memory", text, re.IGNORECASE
    ):
        return None
    size = re.search(r"tried to allocate (\d[\d.]*\s*\w+)", text, re.IGNORECASE)
    asked = f" (an allocation of {size.group(1)} failed)" if size else ""
    return f"not enough memory{asked}: choose a smaller batch or input size"
