"""``shufflenet bench``, ``guidelines`` and ``select``: speed measured on this device."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..device import DEVICES
from ..io import check_output_path, write_json
from ..speed.baselines import BASELINES
from ..speed.bench import COMPARISONS, BenchConfig, run_bench
from ..speed.engines import AUTO, AUTO_ORDER, ENGINES, resolve_engine
from ..speed.guidelines import GuidelinesConfig, plot_table, run_guidelines
from ..speed.selection import plot_selection, select_model
from .common import add_pretrained, comma_list, input_size_arg, print_json, print_table, progress

__all__ = ["add_parsers"]


def _cmd_bench(args: argparse.Namespace) -> int:
    config = BenchConfig(
        models=args.models,
        engines=args.engines,
        batch_sizes=args.batch_size,
        input_size=args.input_size,
        threads=args.threads,
        device=args.device,
        runs=args.runs,
        warmup=args.warmup,
        compare=args.compare,
        pretrained=args.pretrained or False,
    )
    result = run_bench(config, progress=progress)
    if args.json:
        print_json(result.to_dict())
        return 0
    rows = [
        (
            r.model,
            r.implementation,
            r.engine,
            r.batch_size,
            f"{r.median_ms:.3f}",
            f"{r.iqr_ms:.3f}",
            f"{r.images_per_s:.1f}",
            f"{r.mflops:.1f}",
            r.top1,
            "" if r.speedup_vs_torchvision is None else f"{r.speedup_vs_torchvision:.2f}x",
        )
        for r in result.records
    ]
    headers = ["model", "impl", "engine", "batch", "median ms", "IQR ms", "img/s", "MFLOPs"]
    print_table(rows, [*headers, "top-1", "vs torchvision"])
    m = result.machine
    if AUTO in args.engines:
        print(f"\nengine: {_auto_engine(args.device)}")
    ort = f", onnxruntime {m['onnxruntime']}" if "onnxruntime" in m else ""
    print(
        f"\n{m.get('gpu') or m['cpu']}, {result.records[0].threads} threads, "
        f"torch {m['torch']}{ort}; {config.runs} runs after "
        f"{config.warmup} warm-up; vs torchvision = torchvision's median / ours (>1: ours faster)"
    )
    return 0


def _auto_engine(device: str) -> str:
    return f"{resolve_engine(AUTO, device)} (auto)"


def _cmd_guidelines(args: argparse.Namespace) -> int:
    config = GuidelinesConfig(
        device=args.device,
        quick=args.quick,
        batch_size=args.batch_size,
        threads=args.threads,
        engine=args.engine,
        runs=args.runs,
        warmup=args.warmup,
        tables=args.tables,
    )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the JSON and the plots")
    for name in ("guidelines.json", *(f"{key.lower()}.png" for key in args.tables)):
        check_output_path(out / name, "--out")
    result = run_guidelines(config, progress=progress)
    write_json(out / "guidelines.json", result.to_dict())
    label = "CPU" if result.config["device"] == "cpu" else "GPU"
    for table in result.tables:
        plot_table(table, out / f"{table.key.lower()}.png", f"this {label}")
        print(f"{table.title}\n{table.guideline}")
        first = table.rows[0]
        rows = [
            (
                r.label,
                r.settings[0],
                f"{r.mflops[0]:.0f}",
                f"{r.mac_m[0]:.1f}",
                *_with_ratio(r.images_per_s, first.images_per_s),
                *_with_ratio(r.paper_gpu, first.paper_gpu),
                *_with_ratio(r.paper_arm, first.paper_arm),
            )
            for r in table.rows
        ]
        print_table(
            rows,
            (
                "row",
                f"ours {table.columns[0]}",
                "MFLOPs",
                "MAC(M)",
                *(f"ours {c} img/s" for c in table.columns),
                *(f"GPU {c}" for c in table.gpu_columns),
                *(f"ARM {c}" for c in table.arm_columns),
            ),
        )
        print()
    engine = _auto_engine(args.device) if args.engine == AUTO else args.engine
    print(
        f"engine: {engine}; speeds in images/s at batch {config.batch_size} (paper: GPU "
        "batches/s, ARM images/s); "
        f"(x) = relative to the first row\nwrote {out / 'guidelines.json'} and "
        + ", ".join(f"{t.key.lower()}.png" for t in result.tables)
    )
    return 0


def _with_ratio(values: Sequence[float], firsts: Sequence[float]) -> list[str]:
    return [f"{v:.4g} ({v / f:.2f})" for v, f in zip(values, firsts, strict=True)]


def _cmd_select(args: argparse.Namespace) -> int:
    check_output_path(args.plot, "--plot")
    sel = select_model(
        args.budget_ms,
        args.models,
        baselines=args.baselines,
        engine=args.engine,
        device=args.device,
        batch_size=args.batch_size,
        input_size=args.input_size,
        threads=args.threads,
        runs=args.runs,
        progress=progress,
    )
    plot = plot_selection(sel, args.plot)
    if args.json:
        print_json({**sel.to_dict(), "plot": str(plot)})
        return 0 if sel.chosen else 1
    rows = [
        (
            c.name,
            f"{c.median_ms:.3f}",
            f"{c.iqr_ms:.3f}",
            f"{c.mflops:.1f}",
            c.top1,
            c.top1_source,
            "*" if c.name in sel.pareto_latency else "",
            "*" if c.name in sel.pareto_flops else "",
            "<-" if c.name == sel.chosen else "",
        )
        for c in sorted(sel.candidates, key=lambda c: c.median_ms)
    ]
    headers = ("model", "median ms", "IQR ms", "MFLOPs", "top-1", "source")
    print_table(rows, (*headers, "front(ms)", "front(FLOPs)", ""))
    if sel.skipped:
        print(f"\nnot ranked (no published top-1): {', '.join(sel.skipped)}")
    engine = _auto_engine(args.device) if args.engine == AUTO else args.engine
    if sel.chosen is None:
        fastest = min(sel.candidates, key=lambda c: c.median_ms)
        print(
            f"\nno model runs within {args.budget_ms:g} ms here ({engine}); the fastest is "
            f"{fastest.name} at {fastest.median_ms:.2f} ms (plot: {plot})"
        )
        return 1
    chosen = next(c for c in sel.candidates if c.name == sel.chosen)
    print(
        f"\nwithin {args.budget_ms:g} ms: {chosen.name} ({chosen.top1}% top-1, "
        f"{chosen.median_ms:.2f} ms, batch {args.batch_size}, {engine} on {args.device})"
        f"\nplot: {plot}"
    )
    return 0


def add_parsers(sub: Any) -> None:
    engines = ", ".join(ENGINES)
    auto = "; ".join(f"{kind}: {' > '.join(order)}" for kind, order in AUTO_ORDER.items())
    auto = f"auto: the fastest installed ({auto})"
    shuffle_free = ", ".join(name for name, spec in ENGINES.items() if spec.shuffle_free)

    def common(p: argparse.ArgumentParser, runs: int | None) -> None:
        p.add_argument("--device", default="cpu", help=f"{', '.join(DEVICES)} (default cpu)")
        p.add_argument("--threads", type=int, help="intra-op threads (default: the engine's)")
        default = "30, quick 15" if runs is None else runs
        p.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {default})")

    p = sub.add_parser(
        "bench",
        help="measure latency across engines and batch sizes (median, IQR, images/s)",
        description=f"Time MODELs (ours, or torchvision baselines: {', '.join(BASELINES)}) on this "
        "machine.",
    )
    p.add_argument("models", nargs="+", help="model names or shell patterns")
    p.add_argument(
        "--engines",
        type=comma_list(str),
        default=[AUTO],
        help=f"comma list of {engines} or auto (default {auto}; {shuffle_free} run our "
        "shuffle-free graph)",
    )
    p.add_argument("--batch-size", type=comma_list(int), default=[1], help="e.g. 1,8,32")
    p.add_argument("--input-size", type=input_size_arg, default=(224, 224), help="224 or HxW")
    common(p, 30)
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument(
        "--compare", choices=COMPARISONS, help="also time torchvision's V2 in the same run"
    )
    add_pretrained(p.add_argument, "each model")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "guidelines",
        help="re-run ShuffleNet V2's G1-G4 experiments (Tables 1-4) on this device",
    )
    common(p, None)
    p.add_argument("--warmup", type=int, help="untimed runs first (default 5, quick 2)")
    p.add_argument("--out", default="guidelines", help="folder for the JSON and the plots")
    p.add_argument("--quick", action="store_true", help="first column only, fewer runs (~1 min)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--engine", default=AUTO, help=f"one of {engines} (default {auto})")
    p.add_argument(
        "--tables", type=comma_list(str), default=["G1", "G2", "G3", "G4"], help="e.g. G1,G4"
    )
    p.set_defaults(func=_cmd_guidelines)

    p = sub.add_parser(
        "select",
        help="the most accurate model within a latency budget, measured here",
    )
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget per batch")
    p.add_argument("--models", nargs="+", help="candidates (default: all with a paper top-1)")
    p.add_argument("--baselines", action="store_true", help="add the torchvision baselines")
    p.add_argument("--engine", default=AUTO, help=f"one of {engines} (default {auto})")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-size", type=input_size_arg, default=(224, 224), help="224 or HxW")
    common(p, 20)
    p.add_argument("--plot", default="select.png", help="where to write the plot")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_select)
