"""``shufflenet export``, ``predict`` and ``convert``: files for other runtimes, and back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..convert import SOURCES
from ..export import DEFAULT_OPSET, FORMATS, INT8_WEIGHTS, OPSETS, export_model, output_files
from ..export.formats import DEFAULT_INT8_MIN_AGREEMENT
from ..io import check_output_path
from ..predict import ENGINES, default_engine
from .common import (
    add_pretrained,
    batch_arg,
    escape,
    input_size_arg,
    mb,
    num_classes_arg,
    print_json,
)
from .int8 import (
    add_int8_arguments,
    export_qat_run,
    int8_options,
    print_int8_report,
    run_int8_report,
)
from .stream import add_stream_arguments, check_print_run, listed, predict_stream

__all__ = ["add_parsers"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _fraction_arg(text: str) -> float:
    """A fraction within 0..1, for ``--int8-min-agreement``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be a fraction within 0..1 (0.8 for 80%), got {text!r}"
        )
    return value


def _print_int8(int8: dict[str, Any]) -> None:
    print(f"wrote {int8['path']} ({mb(int8['int8_bytes'])}; weights {int8['weights']})")
    print(
        f"int8 vs fp32 on {int8['images']} {int8['calib']} images: top-1 agreement "
        f"{_pct(int8['agreement'])} (at least {_pct(int8['min_agreement'])} needed; "
        f"top-1 fp32 {_pct(int8['fp32_top1'])}, int8 "
        f"{_pct(int8['int8_top1'])}); size {mb(int8['fp32_bytes'])} -> {mb(int8['int8_bytes'])}; "
        f"latency (batch 1, {int8['threads']} thread) {int8['fp32_ms']:.2f} -> "
        f"{int8['int8_ms']:.2f} ms"
    )
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in int8["sqnr_db_by_kind"].items())
    if kinds:  # where the format reports each activation's error
        print(f"int8 grid SQNR of the activations, median by producer (dB): {kinds}")


def _cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.fastpath import ONNXRUNTIME
    from ..models import create_model
    from ..weights import load

    if args.int8 and not args.calib:
        raise ValueError("--int8 needs --calib digits|FOLDER")
    if args.int8_weights != "auto" and not args.int8:
        raise ValueError("--int8-weights goes with --int8")
    if args.int8_min_agreement is not None and not args.int8:
        raise ValueError("--int8-min-agreement goes with --int8")
    int8 = int8_options(args)
    if args.weights and (args.layout or args.num_classes is not None):
        raise ValueError("--layout and --num-classes go with --model, not --weights")
    inputs = [args.weights] if args.weights else []
    check_output_path(args.out, "--out", inputs=inputs)  # before its suffix: a folder, an input
    for path in output_files(args.out, args.format, args.int8):
        check_output_path(path, "--out", inputs=inputs)
    if args.weights:
        model = load(args.weights)
    else:
        classes = 1000 if args.num_classes is None else args.num_classes
        kwargs: dict[str, Any] = {"num_classes": classes}
        if args.layout:
            kwargs["layout"] = args.layout
        model = create_model(args.model, **kwargs)
    least = args.int8_min_agreement
    least = DEFAULT_INT8_MIN_AGREEMENT if least is None else least
    if args.int8_qat:
        result = export_qat_run(args, least)
    else:
        result = export_model(
            model,
            args.out,
            args.format,
            opset=args.opset,
            batch=args.batch,
            input_size=args.input_size,
            fastpath=None if args.no_optimize else ONNXRUNTIME,
            calib=args.calib if args.int8 else None,
            int8_weights=args.int8_weights,
            int8_min_agreement=least,
            int8=int8,
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
        "passed": result.passed,
    }
    if result.int8 is not None:
        record["int8"] = result.int8.to_dict()
        if args.int8_report and int8 is not None:
            record["int8_report"] = run_int8_report(model, args, int8)
    if args.json:
        print_json(record)
    else:
        sizes = ", ".join(f"{f} ({mb(f.stat().st_size)})" for f in result.files)
        print(f"wrote {sizes}")
        for check in result.verifications:
            print(check.summary(), file=sys.stdout if check.passed else sys.stderr)
        if result.int8 is not None:
            _print_int8(record["int8"])
        if "int8_report" in record:
            print_int8_report(record["int8_report"])
    if not result.verified:
        print(f"error: {args.out} does not match PyTorch (kept for inspection)", file=sys.stderr)
        return 1
    if result.int8 is not None and not result.int8.passed:
        print(
            f"error: the int8 file's top-1 agreement with fp32, "
            f"{_pct(result.int8.report.agreement)}, is below --int8-min-agreement "
            f"{result.int8.min_agreement}: {result.int8.path} and {args.out} kept for inspection",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import predict

    weights = Path(args.weights)
    own = default_engine(weights)
    if args.engine == "torch" and own != "torch" and weights.is_file():
        raise ValueError(f"{weights} is an exported file: predict it with --engine {own}")
    if args.out is not None:
        return predict_stream(args)
    check_print_run(args)
    inputs = [*args.inputs, *listed(args.list)]
    results = predict(args.weights, inputs, topk=args.topk, engine=args.engine)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"error: {escape(r.path)}: {escape(r.error or '')}", file=sys.stderr)
    if args.json:
        print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if not r.error:
                top = "  ".join(f"{escape(name)} {100 * p:.1f}%" for name, _, p in r.top)
                print(f"{escape(r.path)}: {top}")
    if failed:
        print(f"error: {len(failed)} of {len(results)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert_checkpoint

    result = convert_checkpoint(args.src, args.dst, args.source, model=args.model)
    if args.json:
        print_json(result.to_dict())
        return 0
    print(
        f"wrote {result.path}: {result.model} (layout {result.layout}, "
        f"{result.num_classes} classes) from {args.source} checkpoint {args.src}"
    )
    return 0


def _out_help() -> str:
    """Each format's file names: its suffixes, and the files an export adds beside it."""
    names = []
    for name, spec in FORMATS.items():
        beside = [p.name for p in spec.files(Path(f"FILE{spec.suffixes[0]}"))[1:]]
        names.append(
            f"{name}: {' or '.join(spec.suffixes)}"
            + (f" (+ {', '.join(beside)})" if beside else "")
        )
    return "; ".join(names)


def add_parsers(sub: Any) -> None:
    int8_formats = ", ".join(name for name, spec in FORMATS.items() if spec.int8)
    fixed = ", ".join(
        name for name, spec in FORMATS.items() if spec.runtime and spec.runtime.fixed_batch
    )
    runtimes = [spec for spec in FORMATS.values() if spec.runtime is not None]
    p = sub.add_parser(
        "export",
        help=f"export to {'/'.join(FORMATS)}, verified; int8",
        description="Export a model and run the file next to PyTorch on sample inputs; exit 1 "
        "with the numbers if they differ by more than 1e-4 times the largest output.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a .safetensors weights file")
    src.add_argument("--model", help="a model name (random weights, or --pretrained)")
    add_pretrained(p.add_argument, "with --model: the model")
    p.add_argument("--layout", help="with --model: torchvision|megvii (V2), paper|megvii (V1)")
    p.add_argument("--num-classes", type=num_classes_arg, help="with --model (default 1000)")
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="onnx",
        help="; ".join(f"{name}: {spec.description}" for name, spec in FORMATS.items()),
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--batch",
        type=batch_arg,
        default=None,
        help=f"'dynamic' (default) or a fixed size; {fixed}: fixed, default 1",
    )
    p.add_argument("--input-size", type=input_size_arg, help="default: from the metadata")
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="the plain BN-folded graph, not the shuffle-free one (deploy.fastpath)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help=f"also write FILE.int8.EXT ({int8_formats}) and compare it with fp32",
    )
    p.add_argument("--calib", help="with --int8: 'digits' or an image folder")
    p.add_argument(
        "--int8-weights",
        choices=INT8_WEIGHTS,
        default="auto",
        help="with --int8: weight type; auto: int8 where this CPU has VNNI (or is ARM), else "
        "uint8 (ONNX Runtime's U8S8 kernels saturate on x86 without VNNI)",
    )
    p.add_argument(
        "--int8-min-agreement",
        type=_fraction_arg,
        metavar="FRACTION",
        help="with --int8: the least top-1 agreement of int8 with fp32, a fraction 0..1; below "
        f"it, exit 1, the files kept (default {DEFAULT_INT8_MIN_AGREEMENT}: a file that changes "
        "one class in five is no longer the same classifier; the README lists each format's)",
    )
    add_int8_arguments(p)
    p.add_argument(
        "--out",
        required=True,
        help=f"output file, named for its format: {_out_help()}",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="classify images with a weights or exported file")
    p.add_argument(
        "inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders (or --list)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        help="a .safetensors file, or an exported "
        + ", ".join(" or ".join(spec.suffixes) for spec in runtimes)
        + " file",
    )
    src.add_argument("--model", help="a model name, with --pretrained")
    add_pretrained(p.add_argument, "with --model: the model")
    p.set_defaults(model_needs_pretrained=True)
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        help="default: the file's own ("
        + ", ".join(
            f"{spec.runtime.name} for {' or '.join(spec.suffixes)}"
            for spec in runtimes
            if spec.runtime
        )
        + "), torch for weights",
    )
    add_stream_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "convert", help="torchvision, mmpretrain or Megvii checkpoints to our weights files"
    )
    p.add_argument("src", help="a .pth/.pth.tar checkpoint (read with weights_only=True)")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--from", dest="source", required=True, choices=tuple(SOURCES))
    p.add_argument("--model", help="model name (default: the one whose shapes fit)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_convert)
