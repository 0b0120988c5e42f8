"""Regenerate the README's speed tables: our models vs torchvision's V2 and the papers' baselines.

Times every V2 width, V1 g=3 and g=8 at 0.5x/1x/2x, and the baselines (AlexNet, MobileNet V2,
MobileNet V3 Small) with eager PyTorch and ONNX Runtime at batch 1 and 32 on 2 threads, with
torchvision's V2 timed in the same run. ``--repeat N`` runs it N times; the tables report the
median over repeats of each latency and of each ratio (every ratio is taken within one run).

    python benchmarks/bench_table.py --out benchmarks/results/bench.json     # measure + print
    python benchmarks/bench_table.py --from benchmarks/results/bench.json    # print only

Wrap measuring runs in ``flock /tmp/shufflenet-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from shufflenet.io import write_json
from shufflenet.speed.baselines import BASELINES
from shufflenet.speed.bench import BenchConfig, run_bench

MODELS = [
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    *(f"shufflenet_v1_g{g}_x{w}" for g in (3, 8) for w in ("0_5", "1_0", "2_0")),
    "alexnet",
    "mobilenet_v2",
    "mobilenet_v3_small",
]

# (label, ShuffleNet, baseline, what the paper measured: baseline time / ShuffleNet time)
COMPARISONS = [
    (
        "V1 0.5x (g=3) vs AlexNet",
        "shufflenet_v1_g3_x0_5",
        "alexnet",
        "12.1 (184.0 / 15.2 ms, Snapdragon 820)",
    ),
    (
        "V1 1x (g=3) vs AlexNet",
        "shufflenet_v1_g3_x1_0",
        "alexnet",
        "4.9 (184.0 / 37.8 ms, Snapdragon 820)",
    ),
    ("V2 1.5x vs MobileNet V2 (~300 MFLOPs)", "shufflenet_v2_x1_5", "mobilenet_v2", ""),
    ("V2 1x vs MobileNet V2", "shufflenet_v2_x1_0", "mobilenet_v2", ""),
    ("V2 0.5x vs MobileNet V3 Small", "shufflenet_v2_x0_5", "mobilenet_v3_small", ""),
]
SETTINGS = [("eager", 1), ("onnxruntime", 1), ("eager", 32), ("onnxruntime", 32)]


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def measure(repeat: int, runs: int, threads: int) -> dict[str, Any]:
    config = BenchConfig(
        models=MODELS,
        engines=("eager", "onnxruntime"),
        batch_sizes=(1, 32),
        threads=threads,
        runs=runs,
        warmup=3,
        compare="torchvision",
    )
    results = []
    for i in range(repeat):
        print(f"run {i + 1}/{repeat}", file=sys.stderr, flush=True)
        results.append(run_bench(config, progress=_log).to_dict())
    return {"machine": results[0]["machine"], "config": results[0]["config"], "runs": results}


def _median_over_runs(data: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Per (model, implementation, engine, batch): median over repeats of latency and ratio."""
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for run in data["runs"]:
        for r in run["records"]:
            key = (r["model"], r["implementation"], r["engine"], r["batch_size"])
            grouped.setdefault(key, []).append(r)
    table = {}
    for key, records in grouped.items():
        ratios = [r["speedup_vs_torchvision"] for r in records if r["speedup_vs_torchvision"]]
        table[key] = {
            **records[0],
            "median_ms": statistics.median(r["median_ms"] for r in records),
            "speedup_vs_torchvision": statistics.median(ratios) if ratios else None,
            "repeats": len(records),
        }
    return table


def _ratio_over_runs(data: dict[str, Any], baseline: str, ours: str, engine: str, batch: int):
    ratios = []
    for run in data["runs"]:
        ms = {
            r["model"]: r["median_ms"]
            for r in run["records"]
            if r["engine"] == engine
            and r["batch_size"] == batch
            and r["implementation"] == ("torchvision" if r["model"] in BASELINES else "shufflenet")
        }
        ratios.append(ms[baseline] / ms[ours])
    return statistics.median(ratios)


def markdown(data: dict[str, Any]) -> str:
    m, cfg = data["machine"], data["config"]
    table = _median_over_runs(data)
    lines = [
        f"Measured on {m['cpu']} ({m['logical_cpus']} logical CPUs), {cfg['threads']} threads, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; input {cfg['input_size'][0]}px, "
        f"{cfg['runs']} timed runs after {cfg['warmup']} warm-up, median of "
        f"{len(data['runs'])} repeats (1-min load average at their starts: "
        + ", ".join(str(run["machine"].get("load_average_1min", "?")) for run in data["runs"])
        + ").",
        "",
        "| model | MFLOPs | top-1 | eager b1 ms | ORT b1 ms | eager b32 img/s | ORT b32 img/s "
        "| vs torchvision: eager b1 | ORT b1 | eager b32 | ORT b32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        impl = "torchvision" if name in BASELINES else "shufflenet"
        recs = [table[name, impl, e, b] for e, b in SETTINGS]
        speed = [
            f"{r['median_ms']:.2f}" if r["batch_size"] == 1 else f"{1000 * 32 / r['median_ms']:.0f}"
            for r in recs
        ]
        ratios = [
            "" if r["speedup_vs_torchvision"] is None else f"{r['speedup_vs_torchvision']:.2f}x"
            for r in recs
        ]
        top1 = "" if recs[0]["top1"] is None else f"{recs[0]['top1']:.1f}"
        lines.append(
            f"| {name} | {recs[0]['mflops']:.0f} | {top1} | " + " | ".join(speed + ratios) + " |"
        )
    lines += [
        "",
        "| comparison | top-1 (ours / baseline) | MFLOPs | eager b1 | ORT b1 | eager b32 | ORT b32 "
        "| paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, ours, baseline, paper in COMPARISONS:
        a = table[ours, "shufflenet", "eager", 1]
        b = table[baseline, "torchvision", "eager", 1]
        ratios = [f"{_ratio_over_runs(data, baseline, ours, e, n):.1f}x" for e, n in SETTINGS]
        lines.append(
            f"| {label} | {a['top1']:.1f} / {b['top1']:.1f} | {a['mflops']:.0f} / "
            f"{b['mflops']:.0f} | " + " | ".join(ratios) + f" | {paper} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="render this JSON, no timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench.json"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.source:
        data = json.loads(args.source.read_text())
    else:
        data = measure(args.repeat, args.runs, args.threads)
        write_json(args.out, data)
        print(f"wrote {args.out}", file=sys.stderr)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
