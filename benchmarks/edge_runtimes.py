"""Our graphs and torchvision's in every runtime installed: ONNX Runtime and the edge runtimes.

    python benchmarks/edge_runtimes.py [--rounds 7] [--runs 30] [--threads 1] [--quick]
                                       [--runtimes onnxruntime,litert,executorch,mnn]
                                       [--layout export|edge] [--no-int8]
                                       [--json benchmarks/results/edge_runtimes.json]

Times ShuffleNet V2 0.5x and 1x (ours: the shuffle-free graph each runtime's export writes;
torchvision's: the same converter on its model) and V1 g=3 1x (ours only: torchvision has no V1)
in fp32 and int8, batch 1, in each runtime installed of ONNX Runtime (``onnxruntime_fast``;
int8: static QDQ of the plain graph, as ``export --calib`` writes it), LiteRT (int8:
full-integer), ExecuTorch (XNNPACK; int8: its PT2E quantizer) and MNN (int8: its offline
quantizer). int8 files are calibrated on 64 digits images at the input size (random weights: the
timing does not depend on what the net has learnt, but BatchNorm statistics are measured on
them so that activations keep their scale); each is checked against the fp32 output before
timing (the correlation of the logits, reported; under 0.5 aborts). Each (round,
runtime) is one fresh process (:func:`shufflenet.speed.worker.measure_in_process`) timing
all the graphs interleaved; the runtimes alternate within a round, so that machine load drifts
over all of them alike. Every fp32 output is checked against eager PyTorch before timing.
Reported: the median over rounds of each round's median, and the min..max over rounds, and per
V2 model torchvision's time over ours (the median of the per-round ratios); the CPU's name, SIMD
flags and the versions come from :func:`shufflenet.speed.bench.machine_info`. ``--quick`` (V2
0.5x at 64 px, 2 rounds of 5 runs) checks that it works; it measures nothing worth keeping.
``--layout edge`` converts ours in XNNPACK's layout in every edge runtime (MNN's export has its
own), to compare the layouts.

Wrap measuring runs in ``flock /tmp/shufflenet-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shufflenet.export import RUNTIMES as RUNTIME_ROWS
from shufflenet.export.calibration import calibration_data
from shufflenet.export.edge import EDGE_LAYOUT
from shufflenet.export.executorch import to_pte_int8
from shufflenet.export.int8 import default_int8_weights, quantize_onnx
from shufflenet.export.litert import to_tflite_int8
from shufflenet.export.metadata import model_metadata
from shufflenet.export.mnn import quantize_mnn
from shufflenet.export.onnx import plain_graph, to_onnx
from shufflenet.io import write_bytes, write_json
from shufflenet.models.base import ShuffleNetBase
from shufflenet.speed.baselines import build_model, build_torchvision_counterpart
from shufflenet.speed.bench import machine_info
from shufflenet.speed.engines import ENGINES, RuntimeEngine, available_engines
from shufflenet.speed.worker import measure_in_process

MODELS = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0"]
# engine (its export of our graph) -> the runtime that runs it
RUNTIMES = {
    "onnxruntime_fast": "onnxruntime",
    "litert": "litert",
    "executorch": "executorch",
    "mnn": "mnn",
}


def _subjects(models: list[str], images: torch.Tensor) -> dict[str, nn.Module]:
    """``MODEL/ours`` and, for V2, ``MODEL/torchvision``; random weights, then BatchNorm
    statistics measured on ``images`` and the classifier scaled to logits of order 1 (at
    initialisation activations shrink layer by layer to logits of ~1e-6, below an int8 output's
    resolution, so that int8 files could not be checked)."""
    out: dict[str, nn.Module] = {}
    for name in models:
        torch.manual_seed(0)
        out[f"{name}/ours"] = build_model(name)
        if "_v2_x" in name:
            out[f"{name}/torchvision"] = build_torchvision_counterpart(name)
    for model in out.values():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.reset_running_stats()
                bn.momentum = None  # a plain average over the batches seen
        fc = model.get_submodule("fc")
        assert isinstance(fc, nn.Linear)
        with torch.no_grad():
            model.train()(images)
            fc.weight.normal_(0.0, fc.in_features**-0.5)
        model.eval()
    return out


def _specs(engines: list[str], layout: str) -> dict[str, RuntimeEngine]:
    """Each engine's spec; with ``layout`` "edge", every edge engine converts ours in
    :data:`EDGE_LAYOUT` (XNNPACK's), whatever its export's own layout."""
    specs: dict[str, RuntimeEngine] = {}
    for engine in engines:
        spec = ENGINES[engine]
        assert isinstance(spec, RuntimeEngine)
        if layout == "edge" and spec.runtime.fixed_batch:
            spec = dataclasses.replace(spec, layout=EDGE_LAYOUT)
        specs[engine] = spec
    return specs


def _int8(
    engine: str,
    spec: RuntimeEngine,
    model: nn.Module,
    x: torch.Tensor,
    calib: torch.Tensor,
    fp32: str,
    workdir: str,
) -> str:
    """The int8 file of ``model`` for ``engine``'s runtime (``fp32``: its fp32 file)."""
    folder = Path(tempfile.mkdtemp(prefix="int8-", dir=workdir))
    if engine == "onnxruntime_fast":
        size = (x.shape[2], x.shape[3])
        module = plain_graph(model, size) if isinstance(model, ShuffleNetBase) else model
        proto = quantize_onnx(
            to_onnx(module, x, dynamic_batch=False), calib, batch=1, weights=default_int8_weights()
        )
        return str(write_bytes(folder / "model.int8.onnx", proto.SerializeToString()))
    module = spec.graph(model, x)
    if engine == "litert":
        return str(write_bytes(folder / "model.tflite", to_tflite_int8(module, x, calib)))
    if engine == "executorch":
        return str(write_bytes(folder / "model.pte", to_pte_int8(module, x, calib)))
    preprocessing = model_metadata(build_model(MODELS[0]), (x.shape[2], x.shape[3]))
    return str(quantize_mnn(fp32, folder / "model.mnn", calib, preprocessing["preprocessing"]))


def _int8_correlation(engine: str, path: str, x: np.ndarray, expected: np.ndarray) -> float:
    """The correlation of the int8 file's logits with the fp32 model's (random weights: int8
    noise builds up through a network that was never trained, so the logits move, but a wrong
    or degenerate file is uncorrelated)."""
    opened = RUNTIME_ROWS[RUNTIMES[engine]].load(path, 1, "cpu")
    out = opened.run(opened.inputs(x))
    out = np.asarray(out, dtype=np.float32).reshape(expected.shape)
    if not np.isfinite(out).all() or out.std() == 0:
        return 0.0
    return float(np.corrcoef(out.ravel(), expected.ravel())[0, 1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = 64 if args.quick else 224
    models = MODELS[:1] if args.quick else MODELS
    engines = [e for e in RUNTIMES if e in available_engines() and RUNTIMES[e] in args.runtimes]
    specs = _specs(engines, args.layout)
    meta = model_metadata(build_model(MODELS[0]), (size, size))
    calib, images, _ = calibration_data("digits", meta["preprocessing"], max_images=64)
    subjects = _subjects(models, calib)
    x = images[:1].clone()  # a validation digit
    with torch.inference_mode():
        expected = {key: m(x).numpy() for key, m in subjects.items()}
    keys = [f"{k}/fp32" for k in subjects] + ([f"{k}/int8" for k in subjects] if args.int8 else [])
    samples: dict[str, dict[str, list[float]]] = {e: {k: [] for k in keys} for e in engines}
    correlations: dict[str, dict[str, float]] = {e: {} for e in engines}
    with tempfile.TemporaryDirectory(prefix="edge-runtimes-") as workdir:
        files: dict[str, dict[str, str]] = {}
        for engine in engines:
            start = time.perf_counter()
            files[engine] = {
                f"{k}/fp32": str(specs[engine].export(m, x, workdir)) for k, m in subjects.items()
            }
            for k, m in subjects.items() if args.int8 else ():
                fp32 = files[engine][f"{k}/fp32"]
                path = _int8(engine, specs[engine], m, x, calib, fp32, workdir)
                files[engine][f"{k}/int8"] = path
                corr = _int8_correlation(engine, path, x.numpy(), expected[k])
                correlations[engine][k] = corr
                if corr < 0.5:
                    raise SystemExit(f"{engine} int8 {k}: logits correlate {corr:.2f} with fp32")
            print(f"{engine}: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        array = x.numpy()
        for r in range(args.rounds):
            for engine in engines if r % 2 == 0 else engines[::-1]:
                job = {k: (files[engine][k], array) for k in keys}
                (timings,) = measure_in_process(
                    RUNTIMES[engine],
                    [job],
                    threads=args.threads,
                    runs=args.runs,
                    warmup=args.warmup,
                    rounds=1,
                    expected=[{f"{k}/fp32": out for k, out in expected.items()}],
                )
                for key, t in timings.items():
                    samples[engine][key].append(t.median_ms)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    results = {
        RUNTIMES[e]: {
            key: {
                "median_ms": statistics.median(s),
                "min_ms": min(s),
                "max_ms": max(s),
                "round_medians_ms": s,
            }
            | ({"int8_correlation": correlations[e][key[:-5]]} if key.endswith("/int8") else {})
            for key, s in by_key.items()
        }
        for e, by_key in samples.items()
    }
    machine = machine_info("cpu")
    machine["threads"] = args.threads
    config = {
        "models": models,
        "input_size": size,
        "batch": 1,
        "rounds": args.rounds,
        "runs": args.runs,
        "warmup": args.warmup,
        "quick": args.quick,
        "int8": args.int8,
        "layout": args.layout,
        "int8_weights_onnxruntime": default_int8_weights(),
        "engines": {RUNTIMES[e]: e for e in engines},
    }
    return {"machine": machine, "config": config, "results": results}


def markdown(data: dict[str, Any]) -> str:
    """The times table (model, graph, precision x runtime) and, per V2 model, how many times
    faster ours runs than torchvision's (the median over rounds of each round's ratio)."""
    results = data["results"]
    runtimes = list(results)
    keys = list(next(iter(results.values()))) if runtimes else []
    lines = [
        "| model | graph | precision | " + " | ".join(f"{r} ms" for r in runtimes) + " |",
        "|---|---|---|" + "---:|" * len(runtimes),
    ]
    for key in keys:
        cells = []
        for r in runtimes:
            t = results[r][key]
            cells.append(f"{t['median_ms']:.2f} ({t['min_ms']:.2f}..{t['max_ms']:.2f})")
        lines.append(f"| {' | '.join(key.split('/'))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | precision | " + " | ".join(f"{r}: torchvision / ours" for r in runtimes) + " |",
        "|---|---|" + "---:|" * len(runtimes),
    ]
    for key in keys:
        name, graph, precision = key.split("/")
        theirs = f"{name}/torchvision/{precision}"
        if graph != "ours" or theirs not in keys:
            continue
        cells = []
        for r in runtimes:
            ratios = [
                t / o
                for t, o in zip(
                    results[r][theirs]["round_medians_ms"],
                    results[r][key]["round_medians_ms"],
                    strict=True,
                )
            ]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}..{max(ratios):.2f})")
        lines.append(f"| {name} | {precision} | " + " | ".join(cells) + " |")
    lowest = {
        r: min(t["int8_correlation"] for t in results[r].values() if "int8_correlation" in t)
        for r in runtimes
        if any("int8_correlation" in t for t in results[r].values())
    }
    correlations = [f"{r} {c:.2f}" for r, c in lowest.items()]
    if correlations:
        lines.append(
            "\nint8 logits against fp32 (random weights), lowest correlation: "
            + ", ".join(correlations)
        )
    m = data["machine"]
    packages = ("torch", "onnxruntime", "litert_torch", "executorch", "MNN")
    versions = ", ".join(f"{p} {m[p]}" for p in packages if p in m)
    lines.append(
        f"\n{m['cpu']} ({', '.join(m['simd'])}), {m['threads']} thread(s), batch 1, "
        f"{data['config']['input_size']} px; median over {data['config']['rounds']} rounds "
        f"(min..max); {versions}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="V2 0.5x, 64 px, 2 rounds of 5")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="fp32 only")
    parser.add_argument(
        "--runtimes",
        type=lambda s: s.split(","),
        default=list(RUNTIMES.values()),
        help="a comma-separated subset of " + ",".join(RUNTIMES.values()),
    )
    parser.add_argument(
        "--layout",
        choices=("export", "edge"),
        default="export",
        help="ours as each export lays it out, or in XNNPACK's layout in every edge runtime",
    )
    parser.add_argument("--json", type=Path, help="default benchmarks/results/edge_runtimes.json")
    args = parser.parse_args(argv)
    unknown = set(args.runtimes) - set(RUNTIMES.values())
    if unknown:
        parser.error(f"unknown runtimes: {', '.join(sorted(unknown))}")
    if args.quick:
        args.rounds, args.runs, args.warmup = 2, 5, 1
    out = args.json or Path(__file__).parent / "results" / (
        "edge_runtimes_quick.json" if args.quick else "edge_runtimes.json"
    )
    data = run(args)
    write_json(out, data)
    print(markdown(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
