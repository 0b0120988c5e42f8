"""Our graphs and torchvision's in every runtime installed: ONNX Runtime and the edge runtimes.

    python benchmarks/edge_runtimes.py [--rounds 7] [--runs 30] [--threads 1] [--quick]
                                       [--json benchmarks/results/edge_runtimes.json]

Times ShuffleNet V2 0.5x and 1x (ours: the shuffle-free graph each runtime's export writes;
torchvision's: the same converter on its model) and V1 g=3 1x (ours only: torchvision has no V1)
in fp32, batch 1, in each runtime installed of ONNX Runtime (``onnxruntime_fast``), LiteRT,
ExecuTorch (XNNPACK) and MNN. Each (round, runtime) is one fresh process
(:func:`shufflenet.speed.ort_worker.measure_in_process`) timing all the graphs interleaved; the
runtimes alternate within a round, so that machine load drifts over all of them alike. Every
output is checked against eager PyTorch before timing. Reported: the median over rounds of each
round's median, and the min..max over rounds; the CPU's name, SIMD flags and the versions come
from :func:`shufflenet.speed.bench.machine_info`. ``--quick`` (V2 0.5x at 64 px, 2 rounds of 5
runs) checks that it works; it measures nothing worth keeping.

Wrap measuring runs in ``flock /tmp/shufflenet-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shufflenet.io import write_json
from shufflenet.speed.baselines import build_model, build_torchvision_counterpart
from shufflenet.speed.bench import machine_info
from shufflenet.speed.engines import ENGINES, EdgeEngine, OnnxEngine, available_engines
from shufflenet.speed.ort_worker import measure_in_process

MODELS = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0"]
# engine (its export of our graph) -> the runtime that runs it
RUNTIMES = {
    "onnxruntime_fast": "onnxruntime",
    "litert": "litert",
    "executorch": "executorch",
    "mnn": "mnn",
}


def _subjects(models: list[str]) -> dict[str, nn.Module]:
    """``MODEL/ours`` and, for V2, ``MODEL/torchvision``; one set of random weights each."""
    out: dict[str, nn.Module] = {}
    for name in models:
        torch.manual_seed(0)
        out[f"{name}/ours"] = build_model(name)
        if "_v2_x" in name:
            out[f"{name}/torchvision"] = build_torchvision_counterpart(name)
    return out


def _export(engine: str, model: nn.Module, x: torch.Tensor, workdir: str) -> str:
    spec = ENGINES[engine]
    assert isinstance(spec, OnnxEngine | EdgeEngine)
    return str(spec.export(model, x, workdir))


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = 64 if args.quick else 224
    models = MODELS[:1] if args.quick else MODELS
    engines = [e for e in RUNTIMES if e in available_engines()]
    subjects = _subjects(models)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = {key: m(x).numpy() for key, m in subjects.items()}
    samples: dict[str, dict[str, list[float]]] = {e: {k: [] for k in subjects} for e in engines}
    with tempfile.TemporaryDirectory(prefix="edge-runtimes-") as workdir:
        files: dict[str, dict[str, str]] = {}
        for engine in engines:
            start = time.perf_counter()
            files[engine] = {k: _export(engine, m, x, workdir) for k, m in subjects.items()}
            print(f"{engine}: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        array = x.numpy()
        for r in range(args.rounds):
            for engine in engines if r % 2 == 0 else engines[::-1]:
                job = {k: (files[engine][k], array) for k in subjects}
                (timings,) = measure_in_process(
                    RUNTIMES[engine],
                    [job],
                    threads=args.threads,
                    runs=args.runs,
                    warmup=args.warmup,
                    rounds=1,
                    expected=[expected],
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
        "engines": {RUNTIMES[e]: e for e in engines},
    }
    return {"machine": machine, "config": config, "results": results}


def markdown(data: dict[str, Any]) -> str:
    runtimes = list(data["results"])
    keys = list(next(iter(data["results"].values()))) if runtimes else []
    lines = [
        "| model | graph | " + " | ".join(f"{r} ms" for r in runtimes) + " |",
        "|---|---|" + "---:|" * len(runtimes),
    ]
    for key in keys:
        name, graph = key.split("/")
        cells = []
        for r in runtimes:
            t = data["results"][r][key]
            cells.append(f"{t['median_ms']:.2f} ({t['min_ms']:.2f}..{t['max_ms']:.2f})")
        lines.append(f"| {name} | {graph} | " + " | ".join(cells) + " |")
    m = data["machine"]
    packages = ("torch", "onnxruntime", "litert_torch", "executorch", "MNN")
    versions = ", ".join(f"{p} {m[p]}" for p in packages if p in m)
    lines.append(
        f"\n{m['cpu']} ({', '.join(m['simd'])}), {m['threads']} thread(s), batch 1, "
        f"{data['config']['input_size']} px, fp32; median over {data['config']['rounds']} rounds "
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
    parser.add_argument("--json", type=Path, help="default benchmarks/results/edge_runtimes.json")
    args = parser.parse_args(argv)
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
