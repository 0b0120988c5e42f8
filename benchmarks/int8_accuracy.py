"""int8 accuracy of digits-trained models in every runtime installed: post-training quantization
with each calibration method, with the stem and the classifier kept in float, and QAT.

    python benchmarks/int8_accuracy.py [--models shufflenet_v2_x0_5,shufflenet_v2_x1_0,...]
                                       [--runtimes onnxruntime,litert,executorch,mnn]
                                       [--weights-dir runs/int8] [--qat-epochs 3]
                                       [--data digits|photos]
                                       [--json benchmarks/results/int8_accuracy[_photos].json]

Each model is trained (into ``--weights-dir``, reused when there) on ``--data``: the embedded
digits (64x64) as ``shufflenet train MODEL --data digits --fast`` does, or ``photos``, a folder
of 12 classes cut from the photos that scikit-learn and Matplotlib ship
(``benchmarks/photo_folder.py``: 480 training and 240 validation crops, seen at 48x48, 30
epochs with ``--fast``), then exported to each runtime's
format with ``export_model`` and quantized by that format's int8 export: every calibration
method of the runtime (``CALIB_METHODS``) on up to 256 calibration images, and its default method
with ``first,last`` kept in float; then ``--qat-epochs`` of quantization-aware training from
the float weights (``train --qat``) and its int8 files (``export --int8-qat``: the learned
ranges in ONNX Runtime, LiteRT and ExecuTorch; MNN calibrates the QAT weights). Every int8 file
runs on the validation images: its top-1 agreement with the float model (PyTorch), its
top-1 and the relative L2 error of its logits, and its speed against its fp32 file (batch 1,
one thread, the median of 3 rounds of 50 runs, the two interleaved; above 1: int8 faster).

Wrap measuring runs in ``flock /tmp/shufflenet-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import shufflenet
from shufflenet.deploy.fastpath import ONNXRUNTIME
from shufflenet.export import FORMATS, export_model
from shufflenet.export.calibration import model_calibration_data
from shufflenet.export.int8_options import CALIB_METHODS, DEFAULT_FLOAT_LAYERS, Int8Options
from shufflenet.export.onnx import DEFAULT_OPSET
from shufflenet.export.spec import ExportOptions
from shufflenet.io import write_json
from shufflenet.speed.bench import machine_info
from shufflenet.train import TrainConfig, fit
from shufflenet.train.files import read_checkpoint
from shufflenet.train.qat import export_qat

MODELS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0")
# --data -> (the folder's name under --weights-dir, image size and epochs; None: train's default)
DATA = {"digits": (None, None), "photos": (48, 30)}
FORMAT_OF = {"onnxruntime": "onnx", "litert": "litert", "executorch": "executorch", "mnn": "mnn"}
SUFFIX = {"onnx": ".onnx", "litert": ".tflite", "executorch": ".pte", "mnn": ".mnn"}


def _installed(runtime: str) -> bool:
    spec = FORMATS[FORMAT_OF[runtime]]
    extra = spec.runtime.extra if spec.runtime else None
    if extra is None:
        return True
    from shufflenet.runtimes import installed

    return installed(extra)


def _source(data: str, folder: Path) -> str:
    """``TrainConfig.data`` (and the calibration set) for ``--data``: the photo folder is built
    in ``folder`` when missing."""
    if data == "digits":
        return data
    from photo_folder import build_photos  # benchmarks/, next to this script

    root = folder / "photos-data"
    if not (root / "val").is_dir():
        build_photos(root, train=40, val=20)
    return str(root)


def _run_dir(folder: Path, data: str, name: str) -> Path:
    return folder / (name if data == "digits" else f"{data}-{name}")


def _trained(name: str, folder: Path, data: str, log: Any) -> Path:
    """The weights of ``name`` trained on ``data``, in ``folder``, trained there if missing."""
    run = _run_dir(folder, data, name)
    if not (run / "model.safetensors").is_file():
        size, epochs = DATA[data]
        config = TrainConfig(
            model=name, data=_source(data, folder), image_size=size, epochs=epochs, fast=True,
            out=str(run), threads=1, progress=False,
        )  # fmt: skip
        fit(config, log=log)
    return run / "model.safetensors"


def _row(
    runtime: str, scheme: str, method: str, layers: Any, result: Any, reference: np.ndarray,
    images: torch.Tensor, labels: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """One int8 file (an ``Int8Result``) measured against the float model's ``reference``
    logits."""
    spec = FORMATS[FORMAT_OF[runtime]]
    assert spec.runtime is not None
    logits = spec.runtime.open(result.path, 1, first_in_child=False)(images)
    report, float_logits = result.report, reference
    return {
        "runtime": runtime,
        "scheme": scheme,
        "method": method,
        "float_layers": list(layers),
        "agreement": float((logits.argmax(1) == float_logits.argmax(1)).mean()),
        "int8_top1": float((logits.argmax(1) == labels).mean()),
        "output_error": float(np.linalg.norm(logits - float_logits) / np.linalg.norm(float_logits)),
        "speed_ratio": report.fp32_ms / report.int8_ms,
        "fp32_ms": report.fp32_ms,
        "int8_ms": report.int8_ms,
    }


def measure(
    name: str, runtimes: list[str], folder: Path, qat_epochs: int, source: str, log: Any
) -> dict[str, Any]:
    weights = _trained(name, folder, source, log)
    model = shufflenet.load(weights).eval()
    calib = _source(source, folder)
    data = model_calibration_data(model, calib)
    _, images, labels_t = data
    labels = labels_t.numpy()
    with torch.no_grad():
        reference = model(images).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            fmt = FORMAT_OF[runtime]
            spec = FORMATS[fmt]
            assert spec.quantize is not None
            path = Path(tmp, f"{runtime}{SUFFIX[fmt]}")
            export_model(model, path, fmt)
            default = next(iter(CALIB_METHODS[runtime]))
            plan = [(m, DEFAULT_FLOAT_LAYERS[runtime]) for m in CALIB_METHODS[runtime]]
            plan.append((default, ("first", "last")))
            for method, layers in plan:
                start = time.perf_counter()
                int8 = Int8Options(method, float_layers=tuple(layers))
                options = ExportOptions(DEFAULT_OPSET, None, None, ONNXRUNTIME, int8=int8)
                result = spec.quantize(model, path, calib, options, data)
                rows.append(_row(runtime, "PTQ", method, layers, result, reference, images, labels))
                log(f"{name} {runtime} PTQ {method} {layers}: {rows[-1]['agreement']:.4f} "
                    f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
        qat = {}
        if qat_epochs:
            run = _run_dir(folder, source, f"{name}-qat{qat_epochs}")
            if not (run / "model.safetensors").is_file():
                config = TrainConfig(
                    model=name,
                    data=calib,
                    image_size=DATA[source][0],
                    init_weights=str(weights),
                    qat=True,
                    epochs=qat_epochs,
                    out=str(run),
                    threads=1,
                    progress=False,
                )
                fit(config, log=log)
            qat_model = shufflenet.load(run / "model.safetensors").eval()
            with torch.no_grad():
                qat_logits = qat_model(images).numpy()
            qat = {
                "epochs": qat_epochs,
                "recipe": TrainConfig(
                    **read_checkpoint(run / "checkpoint.pt")["config"]
                ).recipe_name,
                "float_top1": float((qat_logits.argmax(1) == labels).mean()),
            }
            for runtime in runtimes:
                fmt = FORMAT_OF[runtime]
                start = time.perf_counter()
                result = export_qat(run, Path(tmp, f"qat-{runtime}{SUFFIX[fmt]}"), fmt, calib=calib)
                method = "ema" if runtime == "mnn" else "learned"
                rows.append(
                    _row(runtime, "QAT", method, (), result.int8, reference, images, labels)
                )
                log(f"{name} {runtime} QAT: {rows[-1]['agreement']:.4f} "
                    f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return {
        "float_top1": float((reference.argmax(1) == labels).mean()),
        "qat": qat,
        "rows": rows,
        "images": {"calibration": len(data[0]), "evaluation": len(labels)},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    runtimes = [r for r in args.runtimes.split(",") if _installed(r)]
    folder = Path(args.weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    results = {}
    for name in args.models.split(","):
        results[name] = measure(name, runtimes, folder, args.qat_epochs, args.data, _log)
    images = [r.pop("images") for r in results.values()][-1]  # the same set for every model
    return {
        "machine": machine_info("cpu"),
        "config": {
            "data": {
                "digits": "digits (64x64)",
                "photos": "photos (12 classes from package-shipped photos, 48x48)",
            }[args.data],
            "calibration_images": images["calibration"],
            "evaluation_images": images["evaluation"],
            "threads": 1,
            "runtimes": runtimes,
            "qat_epochs": args.qat_epochs,
        },
        "models": results,
    }


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(data: dict[str, Any]) -> str:
    """The results as one table per model."""
    lines = [
        f"Data: {data['config']['data']}; {data['config']['calibration_images']} calibration "
        f"images. Agreement and top-1 on the {data['config']['evaluation_images']} validation "
        "images; top-1 change in points "
        "against the float model; logit error: relative L2 distance from the float model's "
        "logits; speed: fp32 file time over int8 file time (batch 1, one thread; above 1: "
        "int8 faster).",
    ]
    for name, result in data["models"].items():
        qat = result["qat"]
        note = (
            f", QAT float net {_pct(qat['float_top1'])} after {qat['epochs']} epochs "
            f"(recipe {qat.get('recipe', 'finetune')})"
            if qat
            else ""
        )
        lines += [
            "",
            f"**{name}**: float top-1 {_pct(result['float_top1'])}{note}.",
            "",
            "| runtime | scheme | method | float layers | agreement | int8 top-1 (points) "
            "| logit error | speed |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for r in result["rows"]:
            change = 100 * (r["int8_top1"] - result["float_top1"])
            lines.append(
                f"| {r['runtime']} | {r['scheme']} | {r['method']} | "
                f"{','.join(r['float_layers']) or '-'} | {_pct(r['agreement'])} | "
                f"{_pct(r['int8_top1'])} ({change:+.2f}) | {100 * r['output_error']:.1f}% | "
                f"{r['speed_ratio']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runtimes", default=",".join(FORMAT_OF))
    parser.add_argument("--weights-dir", default="runs/int8")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--data", choices=tuple(DATA), default="digits")
    parser.add_argument("--json", help="default: benchmarks/results/int8_accuracy[_photos].json")
    args = parser.parse_args(argv)
    data = run(args)
    suffix = "" if args.data == "digits" else f"_{args.data}"
    write_json(Path(args.json or f"benchmarks/results/int8_accuracy{suffix}.json"), data)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
