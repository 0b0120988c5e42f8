"""The ``shufflenet`` command: thin verbs that parse arguments, call the API and print.

Every verb is a ``_cmd_*`` function taking the parsed arguments and returning an exit code.
Errors the user can fix (``ValueError``, ``OSError``) become one ``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["main", "parse_input_size"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"160x192"`` -> (160, 192) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"input size must look like 224 or 160x192, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"input size must look like 224 or 160x192, got {text!r}")
    return sizes[0], sizes[1]


def _input_size_arg(text: str) -> tuple[int, int]:
    try:
        return parse_input_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# -- models -------------------------------------------------------------------------------
def _cmd_models(args: argparse.Namespace) -> int:
    from .complexity import profile
    from .registry import create_model, get_model_info, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    records: list[dict[str, Any]] = []
    for name in names:
        info = get_model_info(name)
        stats = profile(create_model(name), (3, 224, 224))
        records.append(
            {
                "name": name,
                "family": info.family,
                "description": info.description,
                "params": stats.params,
                "flops": stats.flops,
                "paper_mflops": info.paper_mflops,
                "paper_params_m": info.paper_params_m,
                "paper_top1_err": info.paper_top1_err,
                "reference_top1": info.reference_top1,
            }
        )
    if args.json:
        _print_json(records)
        return 0
    rows = [
        (
            r["name"],
            f"{r['params'] / 1e6:.2f}",
            r["paper_params_m"],
            f"{r['flops'] / 1e6:.1f}",
            r["paper_mflops"],
            r["paper_top1_err"],
        )
        for r in records
    ]
    headers = ("model", "params(M)", "paper", "MFLOPs@224", "paper", "paper top-1 err %")
    print_table(rows, headers)
    return 0


# -- profile ------------------------------------------------------------------------------
def _cmd_profile(args: argparse.Namespace) -> int:
    from .complexity import profile
    from .registry import create_model

    model = create_model(args.model, num_classes=args.num_classes)
    stats = profile(model, (3, *args.input_size))
    if args.json:
        _print_json({"model": args.model, **stats.to_dict()})
        return 0
    rows = [
        (
            layer.name,
            layer.kind,
            layer.category,
            "x".join(map(str, layer.output_shape[1:])),
            layer.params,
            f"{layer.flops / 1e6:.3f}",
            f"{layer.mac / 1e3:.1f}",
        )
        for layer in stats.layers
    ]
    print_table(rows, ("layer", "kind", "category", "output", "params", "MFLOPs", "MAC(K)"))
    print()
    cats = stats.by_category()
    cat_rows = [
        (
            name,
            c["layers"],
            f"{c['flops'] / 1e6:.2f}",
            f"{100 * c['flops'] / max(stats.flops, 1):.1f}%",
            f"{c['mac'] / 1e6:.3f}",
            f"{100 * c['mac'] / max(stats.mac, 1):.1f}%",
        )
        for name, c in sorted(cats.items(), key=lambda kv: -kv[1]["mac"])
    ]
    print_table(cat_rows, ("category", "rows", "MFLOPs", "share", "MAC(M)", "share"))
    h, w = args.input_size
    print(
        f"\n{args.model} @ {h}x{w}: {stats.params / 1e6:.3f} M params, "
        f"{stats.flops / 1e6:.2f} MFLOPs (multiply-adds), MAC {stats.mac / 1e6:.2f} M elements "
        f"({stats.mac_bytes / 2**20:.1f} MiB)"
    )
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shufflenet",
        description="ShuffleNet V1/V2: models, complexity, training, benchmarks and export.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the models with params, FLOPs and paper numbers")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'shufflenet_v2*'")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("profile", help="per-layer params, FLOPs and memory access cost")
    p.add_argument("model", help="model name (see `shufflenet models`)")
    p.add_argument(
        "--input-size", type=_input_size_arg, default=(224, 224), help="224 or HxW, e.g. 160x192"
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
