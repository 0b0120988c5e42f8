"""``shufflenet export --int8``'s choices (calibration method and images, per-tensor weights,
float layers) and its per-layer report (``--int8-report``): the flags, their checks, the table."""

from __future__ import annotations

import argparse
from typing import Any

from ..export.int8_options import (
    CALIB_METHODS,
    DEFAULT_CALIB_IMAGES,
    DEFAULT_FLOAT_LAYERS,
    MAX_CALIB_IMAGES,
    Int8Options,
)
from .common import escape, print_table

__all__ = [
    "add_int8_arguments",
    "export_qat_run",
    "int8_options",
    "print_int8_report",
    "run_int8_report",
]

# The flags of this module and their argparse destinations.
FLAGS = {
    "calib_method": "--calib-method",
    "calib_images": "--calib-images",
    "int8_per_tensor": "--int8-per-tensor",
    "int8_float_layers": "--int8-float-layers",
    "int8_report": "--int8-report",
    "int8_qat": "--int8-qat",
}


def _calib_images(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CALIB_IMAGES:
        raise argparse.ArgumentTypeError(
            f"must be an integer within 1..{MAX_CALIB_IMAGES}, got {text!r}"
        )
    return value


def _layers(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if text.strip() == "none":
        return ()
    if not all(names):
        raise argparse.ArgumentTypeError(f"a comma-separated list of layer names, got {text!r}")
    return names


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    """The int8 choices of ``export``."""
    methods = ", ".join(f"{runtime}: {'|'.join(m)}" for runtime, m in CALIB_METHODS.items())
    names = sorted({name for m in CALIB_METHODS.values() for name in m})
    p.add_argument(
        "--calib-method",
        choices=("auto", *names),
        default="auto",
        help=f"with --int8: how activation ranges are calibrated, per runtime ({methods}); "
        "auto: the first, the best measured (docs/deployment/int8.md)",
    )
    p.add_argument(
        "--calib-images",
        type=_calib_images,
        metavar="N",
        help="with --int8: calibration images, spread over the set (default "
        f"{DEFAULT_CALIB_IMAGES})",
    )
    p.add_argument(
        "--int8-per-tensor",
        action="store_true",
        help="with --int8: one weight scale per tensor, not per output channel (onnx, litert, "
        "executorch)",
    )
    shown = {runtime: ",".join(v) or "none" for runtime, v in DEFAULT_FLOAT_LAYERS.items()}
    default = ", ".join(f"{r} {v}" for r, v in shown.items())
    if len(set(shown.values())) == 1:
        default = next(iter(shown.values()))
    p.add_argument(
        "--int8-float-layers",
        type=_layers,
        metavar="LIST",
        help="with --int8: layers kept in float, comma-separated: first (the stem conv), last "
        "(the classifier) or names as in the state dict without .weight (conv5.0, "
        f"stage2.0.branch1.0); none for none (default {default}); --int8-report ranks them",
    )
    p.add_argument(
        "--int8-report",
        action="store_true",
        help="with --int8: also quantize each layer alone (in ONNX Runtime) and each "
        "calibration method (in the format's runtime), and print the error each adds",
    )
    p.add_argument(
        "--int8-qat",
        action="store_true",
        help="with --int8 and --weights RUN_DIR/model.safetensors of `train --qat`: the int8 "
        "file keeps the ranges learned in training (onnx, litert, executorch; mnn calibrates "
        "the QAT weights)",
    )


def export_qat_run(args: argparse.Namespace, min_agreement: float) -> Any:
    """``export --int8 --int8-qat``: :func:`shufflenet.train.qat.export_qat` of the run whose
    ``model.safetensors`` is ``--weights``."""
    from pathlib import Path

    from ..train.qat import export_qat

    if not args.weights:
        raise ValueError("--int8-qat needs --weights RUN_DIR/model.safetensors of `train --qat`")
    chosen = (args.calib_method != "auto", args.calib_images, args.int8_float_layers is not None)
    if any(chosen) or args.int8_per_tensor or args.int8_report:
        raise ValueError("--int8-qat keeps the ranges learned in training: no calibration choices")
    return export_qat(
        Path(args.weights).parent,
        args.out,
        args.format,
        calib=args.calib,
        batch=args.batch,
        int8_min_agreement=min_agreement,
    )


def int8_options(args: argparse.Namespace) -> Int8Options | None:
    """The :class:`~shufflenet.export.Int8Options` of the flags; a ``ValueError`` for one given
    without ``--int8``."""
    given = [
        flag for dest, flag in FLAGS.items() if getattr(args, dest) not in (None, False, "auto")
    ]
    if not args.int8:
        if given:
            raise ValueError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --int8")
        return None
    return Int8Options(
        method=args.calib_method,
        calib_images=args.calib_images or DEFAULT_CALIB_IMAGES,
        per_channel=not args.int8_per_tensor,
        float_layers=args.int8_float_layers,
    )


def run_int8_report(model: Any, args: argparse.Namespace, int8: Int8Options) -> dict[str, Any]:
    """The per-layer and per-method report of the export ``args`` describe, JSON-ready."""
    from ..deploy.fastpath import ONNXRUNTIME
    from ..export.int8_sensitivity import int8_sensitivity

    report = int8_sensitivity(
        model,
        args.calib,
        args.format,
        int8=int8,
        input_size=args.input_size,
        batch=args.batch,
        opset=args.opset,
        fastpath=None if args.no_optimize else ONNXRUNTIME,
    )
    return report.to_dict()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def print_int8_report(report: dict[str, Any], worst: int = 15) -> None:
    """The report as two tables: the ``worst`` layers, then each calibration choice."""
    layers = report["layers"]
    print(
        f"\nint8 error of each layer quantized alone (ONNX Runtime, {report['images']} images), "
        f"worst {min(worst, len(layers))} of {len(layers)}:"
    )
    rows = [
        (escape(r["layer"]), r["kind"], f"{100 * r['output_error']:.2f}%", _pct(r["agreement"]))
        for r in layers[:worst]
    ]
    print_table(rows, ("layer", "kind", "logit error", "top-1 agreement"))
    print(f"\nint8 calibration choices in {report['runtime']}:")
    choices = [
        (
            r["method"],
            ",".join(r["float_layers"]) or "none",
            _pct(r["agreement"]),
            "-" if r["output_error"] is None else f"{100 * r['output_error']:.2f}%",
            _pct(r["int8_top1"]),
            f"{r['speed_ratio']:.2f}x",
        )
        for r in report["methods"]
    ]
    headers = ("method", "float layers", "agreement", "logit error", "int8 top-1", "speed")
    print_table(choices, headers)
    print("(speed: fp32 time over int8 time, batch 1, one thread; above 1x int8 is faster)")
