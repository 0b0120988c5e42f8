"""``shufflenet models`` and ``shufflenet profile``: the zoo and per-layer complexity (and time)."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import asdict
from typing import Any

from ..device import DEVICES
from ..io import check_output_path
from .common import fetch_with_bar, input_size_arg, num_classes_arg, print_json, print_table

__all__ = ["add_parsers"]


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from ..complexity import profile
    from ..models import create_model, get_model_info, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    records: list[dict[str, Any]] = []
    for name in names:
        info = get_model_info(name)
        with torch.device("meta"):  # shapes only: parameters and FLOPs need no weights
            model = create_model(name)
        stats = profile(model, (3, 224, 224))
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
        print_json(records)
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


def _cmd_profile(args: argparse.Namespace) -> int:
    from ..complexity import profile
    from ..models import create_model

    if args.timing:
        return _profile_timing(args)
    model = create_model(args.model, num_classes=args.num_classes)
    stats = profile(model, (3, *args.input_size))
    if args.json:
        print_json({"model": args.model, **stats.to_dict()})
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
            _share(c["flops"], max(stats.flops, 1)),
            f"{c['mac'] / 1e6:.3f}",
            _share(c["mac"], max(stats.mac, 1)),
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


def _share(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole``, with one decimal."""
    return f"{100 * part / whole:.1f}%"


def _profile_timing(args: argparse.Namespace) -> int:
    from ..models import create_model
    from ..speed.timing import plot_timing, time_layers

    plot = check_output_path(args.plot or f"{args.model}_timing.png", "--plot")
    model = create_model(args.model, num_classes=args.num_classes)
    result = time_layers(
        model,
        (3, *args.input_size),
        batch_size=args.batch_size,
        runs=args.runs,
        device=args.device,
        threads=args.threads,
    )
    plot_timing(result, plot, args.model)
    if args.json:
        print_json({"model": args.model, "plot": str(plot), **result.to_dict()})
        return 0
    total = max(result.layers_ms, 1e-12)
    rows = [
        (
            layer.name,
            layer.category,
            f"{layer.time_ms:.4f}",
            _share(layer.time_ms, total),
            f"{layer.flops / 1e6:.3f}",
            f"{layer.mac / 1e3:.1f}",
        )
        for layer in result.layers
    ]
    print_table(rows, ("layer", "category", "ms", "time", "MFLOPs", "MAC(K)"))
    print()
    cats = result.by_category()
    flops = max(sum(c["flops"] for c in cats.values()), 1)
    mac = max(sum(c["mac"] for c in cats.values()), 1)
    cat_rows = [
        (
            name,
            int(c["layers"]),
            f"{c['time_ms']:.3f}",
            _share(c["time_ms"], total),
            _share(c["flops"], flops),
            _share(c["mac"], mac),
        )
        for name, c in sorted(cats.items(), key=lambda kv: -kv[1]["time_ms"])
    ]
    print_table(cat_rows, ("category", "rows", "ms", "time", "FLOPs", "MAC"))
    h, w = args.input_size
    print(
        f"\n{args.model} @ {h}x{w}, batch {result.batch_size}, {result.device}, "
        f"{result.threads} threads: layers {result.layers_ms:.3f} ms + overhead "
        f"{result.overhead_ms:.3f} ms = {result.total_ms:.3f} ms instrumented "
        f"({result.plain_ms:.3f} ms without timers)\nplot: {plot}"
    )
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from ..hub import MEGVII_RELEASES, cache_dir, cached_file, get_pretrained, list_pretrained

    if args.download or args.path:
        entry = get_pretrained(args.download or args.path)
        if args.download:
            path = fetch_with_bar(entry.model, entry.source)
        else:
            path = cache_dir() / entry.filename
        if args.json:
            print_json({**entry.to_dict(), "path": str(path)})
        else:
            print(path)
        return 0
    entries = list_pretrained(args.pattern)
    manual = [
        r for r in MEGVII_RELEASES if not args.pattern or fnmatch.filter(r.models, args.pattern)
    ]
    if not entries and not manual:
        raise ValueError(f"no published weights for a model matching {args.pattern!r}")
    cached = {e.tag: cached_file(e) for e in entries}
    if args.json:
        print_json(
            {
                "published": [
                    {**e.to_dict(), "cached": str(cached[e.tag]) if cached[e.tag] else None}
                    for e in entries
                ],
                "by_hand": [{**asdict(r), "command": r.command} for r in manual],
            }
        )
        return 0
    rows = [
        (
            e.model,
            e.source,
            f"{e.top1:g}",
            f"{e.top5:g}",
            e.size_mb,
            "yes" if cached[e.tag] else "no",
        )
        for e in entries
    ]
    if rows:
        print_table(rows, ("model", "source", "top-1", "top-5", "MB", "cached"))
        print(f"\ncache: {cache_dir()}")
    if manual:
        print(
            f"\nby hand: Megvii's releases ({manual[0].license} license), from "
            f"{manual[0].download}; then `{manual[0].command}`"
        )
    for r in manual:
        print(f"  {r.name}: {', '.join(r.models)} ({r.page})")
    return 0


def add_parsers(sub: Any) -> None:
    """The ``models``, ``profile`` and ``weights`` verbs."""
    p = sub.add_parser("models", help="list the models with params, FLOPs and paper numbers")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'shufflenet_v2*'")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("profile", help="per-layer params, FLOPs and memory access cost")
    p.add_argument("model", help="model name (see `shufflenet models`)")
    p.add_argument(
        "--input-size", type=input_size_arg, default=(224, 224), help="224 or HxW, e.g. 160x192"
    )
    p.add_argument("--num-classes", type=num_classes_arg, default=1000, help="default 1000")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timing", action="store_true", help="also measure time per layer")
    p.add_argument("--batch-size", type=int, default=1, help="with --timing (default 1)")
    p.add_argument("--runs", type=int, default=20, help="with --timing: timed passes")
    p.add_argument("--threads", type=int, help="with --timing: intra-op threads")
    p.add_argument(
        "--device", default="cpu", help=f"with --timing: {', '.join(DEVICES)} (default cpu)"
    )
    p.add_argument("--plot", help="with --timing: PNG path (default MODEL_timing.png)")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser(
        "weights",
        help="published ImageNet weights: list, download, where files go",
        description="The weights torchvision and mmpretrain publish for these models (fetched "
        "into torch's hub cache, $TORCH_HOME, and checked against their SHA-256), and Megvii's "
        "releases, downloaded by hand. Offline: put the file at the --path shown, or in "
        "$SHUFFLENET_WEIGHTS_DIR; $SHUFFLENET_WEIGHTS_URL names a mirror.",
    )
    p.add_argument("pattern", nargs="?", help="shell-style filter on model names")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--download", metavar="NAME[:SOURCE]", help="fetch one file, print its path")
    what.add_argument("--path", metavar="NAME[:SOURCE]", help="print where its file goes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_weights)
