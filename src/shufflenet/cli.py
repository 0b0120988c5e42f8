"""The ``shufflenet`` command: thin verbs that parse arguments, call the API and print.

Every verb is a ``_cmd_*`` function taking the parsed arguments and returning an exit code.
Errors the user can fix (``ValueError``, ``OSError``) become one ``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import functools
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

    if args.timing:
        return _profile_timing(args)
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


# -- direct speed: profile --timing, bench, guidelines, select ----------------------------
def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _comma_list(kind: type) -> Any:
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


def _profile_timing(args: argparse.Namespace) -> int:
    from .registry import create_model
    from .timing import plot_timing, time_layers

    model = create_model(args.model, num_classes=args.num_classes)
    result = time_layers(
        model,
        (3, *args.input_size),
        batch_size=args.batch_size,
        runs=args.runs,
        device=args.device,
        threads=args.threads,
    )
    plot = plot_timing(result, args.plot or f"{args.model}_timing.png", args.model)
    if args.json:
        _print_json({"model": args.model, "plot": str(plot), **result.to_dict()})
        return 0
    total = max(result.layers_ms, 1e-12)
    rows = [
        (
            layer.name,
            layer.category,
            f"{layer.time_ms:.4f}",
            f"{100 * layer.time_ms / total:.1f}%",
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
            f"{100 * c['time_ms'] / total:.1f}%",
            f"{100 * c['flops'] / flops:.1f}%",
            f"{100 * c['mac'] / mac:.1f}%",
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


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

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
    )
    result = run_bench(config, progress=_progress)
    if args.json:
        _print_json(result.to_dict())
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
    print(
        f"\n{m.get('gpu') or m['cpu']}, {result.records[0].threads} threads, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; {config.runs} runs after "
        f"{config.warmup} warm-up; vs torchvision = torchvision's median / ours (>1: ours faster)"
    )
    return 0


def _cmd_guidelines(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .guidelines import GuidelinesConfig, plot_table, run_guidelines
    from .io import write_json

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
    result = run_guidelines(config, progress=_progress)
    out = Path(args.out)
    write_json(out / "guidelines.json", result.to_dict())
    label = args.device.upper() if args.device == "cpu" else "GPU"
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
    print(
        f"speeds in images/s at batch {config.batch_size} (paper: GPU batches/s, ARM images/s); "
        f"(x) = relative to the first row\nwrote {out / 'guidelines.json'} and "
        + ", ".join(f"{t.key.lower()}.png" for t in result.tables)
    )
    return 0


def _with_ratio(values: Sequence[float], firsts: Sequence[float]) -> list[str]:
    return [f"{v:.4g} ({v / f:.2f})" for v, f in zip(values, firsts, strict=True)]


def _cmd_select(args: argparse.Namespace) -> int:
    from .selection import plot_selection, select_model

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
        progress=_progress,
    )
    plot = plot_selection(sel, args.plot)
    if args.json:
        _print_json({**sel.to_dict(), "plot": str(plot)})
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
    if sel.chosen is None:
        fastest = min(sel.candidates, key=lambda c: c.median_ms)
        print(
            f"\nno model runs within {args.budget_ms:g} ms here; the fastest is {fastest.name} "
            f"at {fastest.median_ms:.2f} ms (plot: {plot})"
        )
        return 1
    chosen = next(c for c in sel.candidates if c.name == sel.chosen)
    print(
        f"\nwithin {args.budget_ms:g} ms: {chosen.name} ({chosen.top1}% top-1, "
        f"{chosen.median_ms:.2f} ms, batch {args.batch_size}, {args.engine} on {args.device})"
        f"\nplot: {plot}"
    )
    return 0


def _add_speed_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser, runs: int | None) -> None:
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        p.add_argument("--threads", type=int, help="intra-op threads (default: the engine's)")
        default = "30, quick 15" if runs is None else runs
        p.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {default})")

    p = sub.add_parser(
        "bench",
        help="measure latency across engines and batch sizes (median, IQR, images/s)",
        description="Time MODELs (ours, or torchvision baselines: alexnet, mobilenet_v2, "
        "mobilenet_v3_small, mobilenet_v3_large, resnet18) on this machine.",
    )
    p.add_argument("models", nargs="+", help="model names or shell patterns")
    p.add_argument(
        "--engines",
        type=_comma_list(str),
        default=["eager"],
        help="comma list of eager, channels_last, compile, optimized, onnxruntime, "
        "onnxruntime_fast, openvino, openvino_fast (default eager; *_fast and optimized run "
        "our shuffle-free graph)",
    )
    p.add_argument("--batch-size", type=_comma_list(int), default=[1], help="e.g. 1,8,32")
    p.add_argument("--input-size", type=_input_size_arg, default=(224, 224), help="224 or HxW")
    common(p, 30)
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument(
        "--compare", choices=("torchvision",), help="also time torchvision's V2 in the same run"
    )
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
    p.add_argument("--engine", default="eager", help="eager (default), onnxruntime, ...")
    p.add_argument(
        "--tables", type=_comma_list(str), default=["G1", "G2", "G3", "G4"], help="e.g. G1,G4"
    )
    p.set_defaults(func=_cmd_guidelines)

    p = sub.add_parser(
        "select",
        help="the most accurate model within a latency budget, measured here",
    )
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget per batch")
    p.add_argument("--models", nargs="+", help="candidates (default: all with a paper top-1)")
    p.add_argument("--baselines", action="store_true", help="add the torchvision baselines")
    p.add_argument("--engine", default="eager", help="eager (default), onnxruntime, ...")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-size", type=_input_size_arg, default=(224, 224), help="224 or HxW")
    common(p, 20)
    p.add_argument("--plot", default="select.png", help="where to write the plot")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_select)


# -- train --------------------------------------------------------------------------------
def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace

    from .train import TrainConfig, fit, read_run_config

    # Options left out stay out of ``given``: a resumed run keeps its own settings for them.
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if given.get("resume"):
        if given.get("out") is None:
            raise ValueError("--resume needs --out RUN_DIR, the run to continue")
        config = replace(read_run_config(given["out"]), **given)
    else:
        config = TrainConfig(**given)
    result = fit(config, log=print)
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


# -- eval ---------------------------------------------------------------------------------
def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_weights

    result, data = evaluate_weights(
        args.weights,
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        skip_bad_images=args.skip_bad_images,
    )
    if args.json:
        _print_json({"weights": str(args.weights), "data": data, **result.to_dict()})
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


# -- deploy: export, predict, convert -----------------------------------------------------
def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _print_int8(report: Any, calib: str) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    print(
        f"int8 vs fp32 on {report.images} {calib} images: top-1 agreement "
        f"{pct(report.agreement)} (top-1 fp32 {pct(report.fp32_top1)}, int8 "
        f"{pct(report.int8_top1)}); size {_mb(report.fp32_bytes)} -> {_mb(report.int8_bytes)}; "
        f"latency (batch 1, {report.threads} thread) {report.fp32_ms:.2f} -> "
        f"{report.int8_ms:.2f} ms"
    )


def _median_by_kind(layers: Sequence[Any]) -> dict[str, float]:
    from statistics import median

    kinds: dict[str, list[float]] = {}
    for layer in layers:
        kinds.setdefault(layer.kind, []).append(layer.sqnr_db)
    medians = {kind: round(median(values), 1) for kind, values in kinds.items()}
    return dict(sorted(medians.items(), key=lambda kv: kv[1]))


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import (
        calibration_data,
        compare_int8,
        export_model,
        int8_layer_errors,
        model_metadata,
        quantize_int8,
        read_onnx_metadata,
    )
    from .fastpath import ONNXRUNTIME
    from .registry import create_model
    from .weights import load

    if args.int8 and (args.format != "onnx" or not args.calib):
        raise ValueError("--int8 needs --format onnx and --calib digits|FOLDER")
    if args.int8_weights != "auto" and not args.int8:
        raise ValueError("--int8-weights goes with --int8")
    if args.weights:
        if args.layout or args.num_classes is not None:
            raise ValueError("--layout and --num-classes go with --model, not --weights")
        model = load(args.weights)
    else:
        classes = 1000 if args.num_classes is None else args.num_classes
        kwargs: dict[str, Any] = {"num_classes": classes}
        if args.layout:
            kwargs["layout"] = args.layout
        model = create_model(args.model, **kwargs)
    batch = None if args.batch == "dynamic" else int(args.batch)
    result = export_model(
        model,
        args.out,
        args.format,
        opset=args.opset,
        batch=batch,
        input_size=args.input_size,
        fastpath=None if args.no_optimize else ONNXRUNTIME,
    )
    checks = [
        {**vars(check), "allowed": check.allowed, "passed": check.passed}
        for check in result.verifications
    ]
    record: dict[str, Any] = {
        "files": [str(f) for f in result.files],
        "format": args.format,
        "verification": checks[0],
        "verifications": checks,
    }
    if not args.json:
        sizes = ", ".join(f"{f} ({_mb(f.stat().st_size)})" for f in result.files)
        print(f"wrote {sizes}")
        for check in result.verifications:
            print(check.summary(), file=sys.stdout if check.passed else sys.stderr)
    if not result.passed:
        if args.json:
            _print_json(record)
        print(f"error: {args.out} does not match PyTorch (kept for inspection)", file=sys.stderr)
        return 1
    if args.int8:
        out = Path(args.out)
        int8_path = out.with_name(out.stem + ".int8.onnx")
        pre = model_metadata(model)["preprocessing"]
        if args.input_size:
            pre = {**pre, "input_size": list(args.input_size)}
        calib, images, labels = calibration_data(args.calib, pre)
        quantize_int8(
            model,
            int8_path,
            calib,
            opset=args.opset,
            batch=batch,
            input_size=args.input_size,
            weights=args.int8_weights,
        )
        scheme = read_onnx_metadata(int8_path)["quantization"]
        report = compare_int8(out, int8_path, images, labels)
        layers = int8_layer_errors(
            model, int8_path, images, opset=args.opset, batch=batch, input_size=args.input_size
        )
        record["int8"] = {
            "path": str(int8_path),
            "calib": args.calib,
            "weights": scheme["weights"],
            **report.to_dict(),
            "sqnr_db_by_kind": _median_by_kind(layers),
            "weakest_layers": [vars(layer) for layer in layers[:5]],
        }
        if not args.json:
            print(f"wrote {int8_path} ({_mb(report.int8_bytes)}; weights {scheme['weights']})")
            _print_int8(report, args.calib)
            kinds = ", ".join(f"{k} {v:.1f}" for k, v in _median_by_kind(layers).items())
            print(f"int8 grid SQNR of the activations, median by producer (dB): {kinds}")
    if args.json:
        _print_json(record)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    results = predict(args.weights, args.inputs, topk=args.topk, engine=args.engine)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"error: {r.path}: {r.error}", file=sys.stderr)
    if args.json:
        _print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if not r.error:
                top = "  ".join(f"{name} {100 * p:.1f}%" for name, _, p in r.top)
                print(f"{r.path}: {top}")
    if failed:
        print(f"error: {len(failed)} of {len(results)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    result = convert_checkpoint(args.src, args.dst, args.source, model=args.model)
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(
        f"wrote {result.path}: {result.model} (layout {result.layout}, "
        f"{result.num_classes} classes) from {args.source} checkpoint {args.src}"
    )
    return 0


def _add_deploy_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX/TorchScript/ncnn (BN folded, static shuffles), verified; int8",
        description="Export a model and run the file next to PyTorch on sample inputs; exit 1 "
        "with the numbers if they differ by more than 1e-4 (relative to outputs above 1).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a .safetensors weights file")
    src.add_argument("--model", help="a model name (random weights)")
    p.add_argument("--layout", help="with --model: torchvision|megvii (V2), paper|megvii (V1)")
    p.add_argument("--num-classes", type=int, help="with --model (default 1000)")
    p.add_argument("--format", choices=("onnx", "torchscript", "ncnn"), default="onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 9..20 (default 17)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed size")
    p.add_argument("--input-size", type=_input_size_arg, help="default: from the metadata")
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="ONNX: plain BN-folded graph instead of the shuffle-free one (shufflenet.fastpath)",
    )
    p.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx and compare")
    p.add_argument("--calib", help="with --int8: 'digits' or an image folder")
    p.add_argument(
        "--int8-weights",
        choices=("auto", "int8", "uint8"),
        default="auto",
        help="with --int8: weight type; auto: int8 where this CPU has VNNI (or is ARM), else "
        "uint8 (ONNX Runtime's U8S8 kernels saturate on x86 without VNNI)",
    )
    p.add_argument("--out", required=True, help="output file (ncnn: FILE.param)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="classify images with a weights or ONNX file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--weights", required=True, help="a .safetensors or exported .onnx file")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument(
        "--engine", choices=("torch", "onnxruntime"), help="default: torch, onnxruntime for .onnx"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("convert", help="torchvision or Megvii checkpoints to our weights files")
    p.add_argument("src", help="a .pth/.pth.tar checkpoint (read with weights_only=True)")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--from", dest="source", required=True, choices=("torchvision", "megvii"))
    p.add_argument("--model", help="model name (default: the one whose shapes fit)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_convert)


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
    p.add_argument("--timing", action="store_true", help="also measure time per layer")
    p.add_argument("--batch-size", type=int, default=1, help="with --timing (default 1)")
    p.add_argument("--runs", type=int, default=20, help="with --timing: timed passes")
    p.add_argument("--threads", type=int, help="with --timing: intra-op threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="with --timing")
    p.add_argument("--plot", help="with --timing: PNG path (default MODEL_timing.png)")
    p.set_defaults(func=_cmd_profile)
    _add_speed_parsers(sub)
    _add_train_parsers(sub)
    _add_deploy_parsers(sub)
    return parser


def _add_train_parsers(sub: Any) -> None:
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
    # them (importing it here would load torch for every --help).
    opt = functools.partial(p.add_argument, default=argparse.SUPPRESS)
    flag = functools.partial(opt, action="store_true")
    opt("--data", help="'digits' (embedded, default) or a folder with train/ and val/ inside")
    opt("--epochs", type=int, help="default 15")
    opt("--batch-size", type=int, help="global batch over all processes (default 32)")
    opt("--lr", type=float, help="peak learning rate (default 0.5 x batch/1024, as the paper)")
    opt("--momentum", type=float, help="default 0.9")
    opt("--weight-decay", type=float, help="conv/linear weights only (default 4e-05)")
    opt("--label-smoothing", type=float, help="default 0.1")
    opt("--schedule", choices=("linear", "cosine"), help="decay to 0 (default linear)")
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
    opt("--no-progress", dest="progress", action="store_false", help="no progress bar")
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
