"""Training speed against torchvision's ShuffleNet V2 1x: images/s of one step.

    python benchmarks/train_speed.py [--rounds 3] [--quick] [--json out.json] [--devices cpu,cuda]

One step is forward, CrossEntropy loss, backward and SGD (momentum 0.9, weight decay 4e-5 on
conv and linear weights: ``shufflenet.train.schedule.param_groups``) on a channels_last batch of
random images, for

* ``torchvision``: ``torchvision.models.shufflenet_v2_x1_0(weights=None)`` in the same loop;
* ``ours``: ``shufflenet_v2_x1_0``;
* ``fast``: its shuffle-free training form, ``shufflenet.train.train_model``;
* ``fast_compile``: ``fast`` with the whole step function (forward, loss, backward, SGD step)
  under ``torch.compile``. Dynamo (torch 2.14) splits it at ``loss.backward()``: forward + loss
  is one graph, whose backward AOTAutograd compiles too, and the SGD step another. With
  ``--compile-mode fwd`` (or where the whole step fails to compile, which the record says),
  the forward + loss function and ``optimizer.step`` are compiled separately.

at batch 32 and 128 and 224x224 and the digits size (64x64), on the CPU with 2 threads, and on
CUDA (if present) with AMP (bf16, fp16 without bf16). Each (configuration, batch, size) runs in
its own process (this script with ``--worker``); the configurations alternate within each
round, and each ratio is the median over rounds of the per-round ratio to torchvision, with its
min..max. The first steps (compilation included: ``warmup_s``) are not timed. Results go to
``benchmarks/results/train_speed.json`` (``--json``), with the CPU, its SIMD flags and versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = ("torchvision", "ours", "fast", "fast_compile")
THREADS = 2
MODEL = "shufflenet_v2_x1_0"  # torchvision has the same name
RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"


# -- one configuration, in its own process ---------------------------------------------------
def _model(config: str, name: str = MODEL) -> torch.nn.Module:
    import torchvision

    import shufflenet
    from shufflenet.train import train_model

    torch.manual_seed(0)
    if config == "torchvision":
        return torchvision.models.get_model(name, weights=None)
    model = shufflenet.create_model(name)
    return model if config == "ours" else train_model(model)


def _step_function(config: str, model: torch.nn.Module, opt: Any, amp: Any, mode: str) -> Any:
    """The training step, and how it was compiled (``None``: eager)."""
    import torch.nn.functional as F

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with amp():
            return F.cross_entropy(model(x), y)

    if not config.endswith("_compile"):

        def eager(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = forward_loss(x, y)
            loss.backward()
            opt.step()
            return loss

        return eager, None
    if mode == "step":

        @torch.compile
        def whole(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = forward_loss(x, y)
            loss.backward()
            opt.step()
            return loss.detach()

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            return whole(x, y)

        return step, "the step function: forward+loss (with its backward), SGD step"
    compiled_loss = torch.compile(forward_loss)
    compiled_sgd = torch.compile(opt.step)

    def split(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = compiled_loss(x, y)
        loss.backward()
        compiled_sgd()
        return loss

    return split, "forward+loss (and their backward), SGD step separately"


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Time one configuration: ``job`` has config, batch, size, device, threads, seconds."""
    from shufflenet.train.schedule import param_groups

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    model = (
        _model(job["config"], job["model"]).to(device, memory_format=torch.channels_last).train()
    )
    opt = torch.optim.SGD(param_groups(model, 4e-5), lr=0.01, momentum=0.9)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

        def amp() -> Any:
            return torch.autocast("cuda", dtype=dtype)
    else:
        import contextlib

        amp = contextlib.nullcontext
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(job["batch"], 3, job["size"], job["size"], generator=gen)
    x = x.to(device, memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (job["batch"],), generator=gen).to(device)
    record: dict[str, Any] = {"config": job["config"], "compiled": None}
    mode = job.get("compile_mode", "step")
    step, record["compiled"] = _step_function(job["config"], model, opt, amp, mode)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    try:
        for _ in range(3):
            step(x, y)
    except Exception as e:  # a failed whole-step compile falls back
        if mode != "step" or record["compiled"] is None:
            raise
        record["fallback"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        model = (
            _model(job["config"], job["model"])
            .to(device, memory_format=torch.channels_last)
            .train()
        )
        opt = torch.optim.SGD(param_groups(model, 4e-5), lr=0.01, momentum=0.9)
        step, record["compiled"] = _step_function(job["config"], model, opt, amp, "fwd")
        for _ in range(3):
            step(x, y)
    sync()
    record["warmup_s"] = time.perf_counter() - start
    times: list[float] = []
    cpu_times: list[float] = []
    deadline = time.perf_counter() + job["seconds"]
    while len(times) < job["min_steps"] or time.perf_counter() < deadline:
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(x, y)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    record["loss"] = float(loss)
    record["step_ms"] = [t * 1e3 for t in times]
    record["images_per_s"] = job["batch"] / statistics.median(times)
    # CPU time of the process: a steadier measure on a shared machine (with 1 thread)
    record["images_per_cpu_s"] = job["batch"] / statistics.median(cpu_times)
    return record


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the table ------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    from shufflenet.speed.bench import machine_info

    results: dict[str, Any] = {"machine": machine_info(), "cases": []}
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    for device in devices:
        if device == "cuda":
            results["machine"]["gpu"] = torch.cuda.get_device_name()
        for size in args.sizes:
            for batch in args.batches:
                case: dict[str, Any] = {
                    "device": device,
                    "batch": batch,
                    "size": size,
                    "threads": args.threads if device == "cpu" else None,
                    "amp": device == "cuda",
                    "rounds": [],
                }
                for r in range(args.rounds):
                    per_round = {}
                    for config in args.configs:
                        job = {
                            "config": config,
                            "model": args.model,
                            "batch": batch,
                            "size": size,
                            "device": device,
                            "threads": args.threads,
                            "seconds": args.seconds,
                            "min_steps": args.min_steps,
                            "compile_mode": args.compile_mode,
                        }
                        per_round[config] = run_worker(job)
                        rec = per_round[config]
                        print(
                            f"  {device} {size}px batch {batch} round {r + 1}: {config} "
                            f"{rec['images_per_s']:.1f} img/s, {rec['images_per_cpu_s']:.1f} "
                            f"img/CPU-s (warm-up {rec['warmup_s']:.0f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
                    case["rounds"].append(per_round)
                case["summary"] = summarise(case["rounds"], args.clock)
                results["cases"].append(case)
    return results


def summarise(rounds: list[dict[str, Any]], clock: str = "wall") -> dict[str, Any]:
    """Per configuration: median images/s (per second of wall or process CPU time), min..max
    over rounds, ratio to torchvision."""
    rate = "images_per_s" if clock == "wall" else "images_per_cpu_s"
    summary = {}
    for config in rounds[0]:
        rates = [r[config][rate] for r in rounds]
        entry: dict[str, Any] = {
            "images_per_s": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "warmup_s": statistics.median(r[config]["warmup_s"] for r in rounds),
            "compiled": rounds[0][config]["compiled"],
        }
        if any("fallback" in r[config] for r in rounds):
            entry["fallback"] = next(
                r[config]["fallback"] for r in rounds if "fallback" in r[config]
            )
        if "torchvision" in rounds[0]:
            ratios = [r[config][rate] / r["torchvision"][rate] for r in rounds]
            entry["ratio"] = {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            }
        summary[config] = entry
    return summary


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    clock = results.get("settings", {}).get("clock", "wall")
    lines = [
        f"{results.get('settings', {}).get('model', MODEL)}; "
        f"CPU: {m['cpu']} ({', '.join(m.get('simd') or [])}); torch {m['torch']}; "
        f"load average {m.get('load_average_1min')}"
        + (f"; GPU: {m['gpu']}" if "gpu" in m else "")
        + ("; images per second of process CPU time" if clock == "cpu" else ""),
        "",
        "| device | size | batch | configuration | images/s (min..max) | vs torchvision "
        "| warm-up |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in results["cases"]:
        where = f"cpu, {case['threads']} threads" if case["device"] == "cpu" else "cuda, AMP"
        for config, s in case["summary"].items():
            ratio = s.get("ratio")
            r = f"{ratio['median']:.2f}x ({ratio['min']:.2f}..{ratio['max']:.2f})" if ratio else ""
            note = " (fell back: forward+loss)" if "fallback" in s else ""
            lines.append(
                f"| {where} | {case['size']} | {case['batch']} | {config}{note} | "
                f"{s['images_per_s']:.1f} ({s['min']:.1f}..{s['max']:.1f}) | {r} | "
                f"{s['warmup_s']:.0f} s |"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--model", default=MODEL, help="a ShuffleNet V2 that torchvision has too (same name)"
    )
    parser.add_argument(
        "--batches", type=lambda s: [int(b) for b in s.split(",")], default=[32, 128]
    )
    parser.add_argument("--sizes", type=lambda s: [int(b) for b in s.split(",")], default=[224, 64])
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    parser.add_argument("--devices", default="cpu,cuda", help="cuda is skipped without a GPU")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed per process")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="rate per second of wall time, or of process CPU time (steadier on a shared "
        "machine with --threads 1)",
    )
    parser.add_argument("--min-steps", type=int, default=5)
    parser.add_argument("--compile-mode", choices=("step", "fwd"), default="step")
    parser.add_argument("--quick", action="store_true", help="1 round, batch 32, a few steps")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batches, args.seconds, args.min_steps = 1, [32], 3.0, 3
    results = measure(args)
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    from shufflenet.io import write_json

    write_json(args.json, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
