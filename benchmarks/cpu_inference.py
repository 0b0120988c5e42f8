"""Fast inference against torchvision's ShuffleNet: the speed ratios, measured in one run.

    python benchmarks/cpu_inference.py [--rounds 9] [--json out.json] [--sections ort,v1,...]

Sections (every ratio is a median over interleaved rounds, with the min..max over rounds):

* ``ort``: our shufflenet_v2_x1_0 export (shuffle-free graph) vs torchvision's model exported
  with the legacy and the dynamo exporter (dynamic batch axis; the faster is the baseline), in
  ONNX Runtime with all graph optimisations, batch 1 and 32. ONNX Runtime sessions are timed in
  a process of their own, sharing one pool of 2 intra-op threads (``shufflenet.speed.worker``):
  with a pool per session, the idle pools spin and slow whichever session runs next.
* ``v1``: the same for shufflenet_v1_g3_x1_0 against a straightforward export of our own model.
* ``layouts``: our V2 1x export padded to ONNX Runtime's AVX-512 and AVX2 NCHWc channel blocks
  (16 and 8; the default export uses this CPU's), each against torchvision's legacy export.
* ``engines``: each (engine, model) in its own process, alternated: OpenVINO (fp32) on
  torchvision's export, and ONNX Runtime / OpenVINO on ours.
* ``eager``: ``shufflenet.deploy.optimize`` (default backend, and ``jit``) vs torchvision eager,
  batch 1.
* ``int8``: our int8 export vs our fp32 export in ONNX Runtime, batch 1, and their agreement.
* ``gpu`` (only with CUDA): images/s of ours (fp16 channels_last, CUDA graphs) vs torchvision.

All models share one set of random weights with non-trivial BatchNorm statistics; outputs are
checked to agree within 1e-4 before anything is timed.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

import shufflenet
from shufflenet.deploy import optimize
from shufflenet.deploy.fastpath import EAGER, ONNXRUNTIME, OPENVINO, fast_model, onnxruntime_layout
from shufflenet.export import model_metadata, onnx_bytes, quantize_int8, sample_inputs
from shufflenet.export.onnx import to_onnx
from shufflenet.runtimes import openvino_core, ort_session
from shufflenet.speed.bench import machine_info
from shufflenet.speed.worker import measure_in_process
from shufflenet.timer import Timing

THREADS = 2
TOLERANCE = 1e-4
SECTIONS = ("ort", "v1", "layouts", "engines", "eager", "int8", "gpu")


# -- models -------------------------------------------------------------------------------------
def _with_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN affine parameters and running statistics of a few random batches (eval mode)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
            m.momentum = None  # running statistics = plain average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()


def v2_pair() -> tuple[torch.nn.Module, shufflenet.ShuffleNetV2]:
    """torchvision's shufflenet_v2_x1_0 and ours with the same weights."""
    torch.manual_seed(0)
    tv = _with_bn_statistics(torchvision.models.shufflenet_v2_x1_0())
    ours = shufflenet.create_model("shufflenet_v2_x1_0")
    ours.load_state_dict(tv.state_dict())
    return tv, ours.eval()


def export_plain(model: torch.nn.Module, path: Path, dynamo: bool = False) -> Path:
    """A user's export: torch.onnx.export with a dynamic batch axis."""
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(
                model, (x,), dynamo=True, input_names=["input"], dynamic_shapes=({0: batch},)
            )
            program.save(str(path))
        else:
            path.write_bytes(to_onnx(model, x))
    return path


def export_ours(model: shufflenet.ShuffleNetV2 | shufflenet.ShuffleNetV1, path: Path) -> Path:
    path.write_bytes(onnx_bytes(model))
    return path


# -- timing -------------------------------------------------------------------------------------
def interleaved(
    runs: dict[str, Callable[[], object]], rounds: int, seconds: float = 0.4
) -> dict[str, list[float]]:
    """Per-round mean latency (ms) of every runner, runners alternated within each round."""
    iters = {}
    for name, run in runs.items():
        for _ in range(3):
            run()
        t0 = time.perf_counter()
        run()
        iters[name] = max(2, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            run()
            t0 = time.perf_counter()
            for _ in range(iters[name]):
                run()
            samples[name].append((time.perf_counter() - t0) / iters[name] * 1e3)
    return samples


def ratio(base: list[float], ours: list[float]) -> dict[str, float]:
    """Speed-up of ``ours`` over ``base``: median and spread of the per-round ratios."""
    per_round = [b / o for b, o in zip(base, ours, strict=True)]
    return {
        "median": statistics.median(per_round),
        "min": min(per_round),
        "max": max(per_round),
        "base_ms": statistics.median(base),
        "ours_ms": statistics.median(ours),
    }


def _ort_runner(path: Path, x: np.ndarray) -> tuple[Callable[[], object], np.ndarray]:
    session = ort_session(path, THREADS)
    feed = {session.get_inputs()[0].name: x}
    return (lambda: session.run(None, feed)), session.run(None, feed)[0]


def ort_interleaved(
    files: dict[str, Path], x: np.ndarray, rounds: int, seconds: float = 0.4
) -> dict[str, list[float]]:
    """Per-round median latency (ms) of each file in ONNX Runtime, interleaved in one process
    whose sessions share one pool of THREADS threads (``shufflenet.speed.worker``)."""
    probe = ort_session(next(iter(files.values())), THREADS)
    feed = {probe.get_inputs()[0].name: x}
    probe.run(None, feed)
    t0 = time.perf_counter()
    probe.run(None, feed)
    per_round = max(2, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    job = {name: (str(path), x) for name, path in files.items()}
    (timings,) = measure_in_process(
        "onnxruntime", [job], threads=THREADS, runs=rounds * per_round, warmup=3, rounds=rounds
    )
    return {name: round_medians(t, rounds) for name, t in timings.items()}


def round_medians(timing: Timing, rounds: int) -> list[float]:
    """The median of each round (``measure`` keeps the samples in round order)."""
    per_round = len(timing.samples_ms) // rounds
    samples = timing.samples_ms
    return [statistics.median(samples[r * per_round : (r + 1) * per_round]) for r in range(rounds)]


def check_agree(files: dict[str, Path], x: np.ndarray) -> float:
    """The largest difference between the files' outputs on ``x``; raises above TOLERANCE."""
    outputs = [_ort_runner(path, x)[1] for path in files.values()]
    diff = max(float(np.abs(out - outputs[0]).max()) for out in outputs)
    if diff > TOLERANCE:
        raise RuntimeError(f"outputs differ by {diff:.3g} at batch {len(x)}")
    return diff


def ort_compare(
    base_paths: dict[str, Path], ours_path: Path, batch: int, rounds: int
) -> dict[str, Any]:
    """Time the baselines and ours in ORT; the faster baseline (by median) is the reference."""
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), np.float32)
    files = {**base_paths, "ours": ours_path}
    diff = check_agree(files, x)
    samples = ort_interleaved(files, x, rounds)
    base = min(base_paths, key=lambda name: statistics.median(samples[name]))
    return {
        "batch": batch,
        "baseline": base,
        "max_abs_diff": diff,
        "ms": {name: statistics.median(s) for name, s in samples.items()},
        "speedup": ratio(samples[base], samples["ours"]),
    }


# -- sections -----------------------------------------------------------------------------------
def section_ort(workdir: Path, rounds: int) -> dict[str, Any]:
    tv, ours = v2_pair()
    bases = {
        "torchvision_legacy": export_plain(tv, workdir / "tv_legacy.onnx"),
        "torchvision_dynamo": export_plain(tv, workdir / "tv_dynamo.onnx", dynamo=True),
    }
    ours_path = export_ours(ours, workdir / "ours_v2.onnx")
    return {f"batch{b}": ort_compare(bases, ours_path, b, rounds) for b in (1, 32)}


def section_v1(workdir: Path, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = _with_bn_statistics(shufflenet.create_model("shufflenet_v1_g3_x1_0"))
    bases = {"ours_unoptimised": export_plain(model, workdir / "v1_plain.onnx")}
    ours_path = export_ours(model, workdir / "ours_v1.onnx")
    return {f"batch{b}": ort_compare(bases, ours_path, b, rounds) for b in (1, 32)}


def section_layouts(workdir: Path, rounds: int) -> dict[str, Any]:
    """Our V2 1x export padded to ONNX Runtime's AVX-512 and AVX2 channel blocks (16, 8)."""
    tv, ours = v2_pair()
    files = {"torchvision_legacy": export_plain(tv, workdir / "tv_layouts.onnx")}
    for block, flag in ((16, "avx512f"), (8, "avx2")):
        path = workdir / f"ours_block{block}.onnx"
        path.write_bytes(onnx_bytes(ours, fastpath=onnxruntime_layout(frozenset({flag}))))
        files[f"block{block}"] = path
    results = {}
    for batch in (1, 32):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), np.float32)
        check_agree(files, x)
        samples = ort_interleaved(files, x, rounds)
        base = samples["torchvision_legacy"]
        results[f"batch{batch}"] = {
            name: ratio(base, samples[name]) for name in files if name.startswith("block")
        }
    return results


def _engine_worker(engine: str, path: str, batch: int, rounds: int) -> list[float]:
    """Run in a child process: per-round latencies of one (engine, model)."""
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), np.float32)
    if engine == "onnxruntime":
        run, _ = _ort_runner(Path(path), x)
    else:
        core = openvino_core()
        model = core.read_model(path)
        model.reshape({model.inputs[0]: list(x.shape)})
        config = {
            "INFERENCE_NUM_THREADS": THREADS,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # OpenVINO defaults to bf16 on AMX CPUs
        }
        request = core.compile_model(model, "CPU", config).create_infer_request()

        def run() -> object:
            return request.infer({0: x})

    return interleaved({"x": run}, rounds)["x"]


def section_engines(workdir: Path, rounds: int) -> dict[str, Any]:
    """Each (engine, model) alone in a fresh process; processes alternated ``rounds`` times."""
    tv, ours = v2_pair()
    subjects = {"onnxruntime/ours": ("onnxruntime", export_ours(ours, workdir / "ours_ort.onnx"))}
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {"skipped": "openvino is not installed"}
    tv_path = export_plain(tv, workdir / "tv_engines.onnx")
    ov_path = workdir / "ours_ov.onnx"
    ov_path.write_bytes(onnx_bytes(ours, fastpath=OPENVINO))
    subjects["openvino/torchvision"] = ("openvino", tv_path)
    subjects["openvino/ours"] = ("openvino", ov_path)
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(max(3, rounds // 2)):
        for name, (engine, path) in subjects.items():
            command = [sys.executable, __file__, "--worker", engine, str(path), "1", "3"]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            samples[name].append(statistics.median(json.loads(out)))
    base = samples["openvino/torchvision"]
    return {
        "batch": 1,
        "ms": {name: statistics.median(s) for name, s in samples.items()},
        "speedup_vs_openvino_torchvision": {
            name: ratio(base, s) for name, s in samples.items() if name != "openvino/torchvision"
        },
    }


def section_eager(workdir: Path, rounds: int) -> dict[str, Any]:
    """``deploy.optimize`` (default backend, and TorchScript) vs torchvision eager, batch 1."""
    tv, ours = v2_pair()
    x = torch.randn(1, 3, 224, 224)
    fast = {"ours": optimize(ours, example=x), "ours_jit": optimize(ours, example=x, backend="jit")}
    with torch.inference_mode():
        diff = max(float((f(x) - tv(x)).abs().max()) for f in fast.values())
        if diff > TOLERANCE:
            raise RuntimeError(f"optimize() differs from torchvision by {diff:.3g}")
        runs = {"torchvision": lambda: tv(x)} | {
            k: functools.partial(f, x) for k, f in fast.items()
        }
        samples = interleaved(runs, rounds)
    return {
        "batch": 1,
        "max_abs_diff": diff,
        "ms": {k: statistics.median(v) for k, v in samples.items()},
        "speedup": ratio(samples["torchvision"], samples["ours"]),
        "speedup_jit": ratio(samples["torchvision"], samples["ours_jit"]),
    }


def section_int8(workdir: Path, rounds: int) -> dict[str, Any]:
    """Our int8 exports (plain and shuffle-free graph quantized) vs our fp32 export."""
    _, ours = v2_pair()
    preprocessing = model_metadata(ours)["preprocessing"]
    fp32 = export_ours(ours, workdir / "ours_fp32.onnx")
    calibration = sample_inputs(32, 3, preprocessing, seed=1)
    int8 = {
        "int8_plain": quantize_int8(ours, workdir / "int8_plain.onnx", calibration),
        "int8_shuffle_free": quantize_int8(
            ours, workdir / "int8_fast.onnx", calibration, fastpath=ONNXRUNTIME
        ),
    }
    images = sample_inputs(64, 3, preprocessing, seed=2).numpy()
    ref = ort_session(fp32, THREADS).run(None, {"input": images})[0]
    result: dict[str, Any] = {"batch": 1, "images": len(images)}
    for name, path in int8.items():
        got = ort_session(path, THREADS).run(None, {"input": images})[0]
        cosine = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        result[name] = {
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
            "mean_cosine": float(cosine.mean()),
        }
    samples = ort_interleaved({"fp32": fp32, **int8}, images[:1], rounds)
    result["ms"] = {k: statistics.median(v) for k, v in samples.items()}
    for name in int8:
        result[name]["speedup"] = ratio(samples["fp32"], samples[name])
    return result


def section_gpu(workdir: Path, rounds: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    tv, ours = v2_pair()
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name()}
    for dtype in (torch.float16, torch.bfloat16):
        for batch in (1, 64, 256):
            x = torch.randn(batch, 3, 224, 224, device="cuda")
            runs = {}
            for name, model in (("torchvision", tv), ("ours", ours)):
                runs[name] = _cuda_graph_runner(model, x, dtype, fast=name == "ours")
            with torch.inference_mode():
                samples = interleaved(runs, rounds)
            key = f"{str(dtype).split('.')[-1]}_batch{batch}"
            results[key] = {
                "images_per_s": {k: batch * 1e3 / statistics.median(v) for k, v in samples.items()},
                "speedup": ratio(samples["torchvision"], samples["ours"]),
            }
    return results


def _cuda_graph_runner(
    model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, fast: bool
) -> Callable[[], object]:
    """channels_last, ``dtype`` weights and input, replayed as a CUDA graph (synchronised).

    Ours is the shuffle-free graph in its unpadded layout (one conv and a split per branch).
    """
    net = fast_model(model, EAGER) if fast else copy.deepcopy(model)
    net = net.cuda().to(dtype).to(memory_format=torch.channels_last).eval()
    static_x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                net(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            net(static_x)

    def run() -> object:
        graph.replay()
        torch.cuda.synchronize()
        return None

    return run


# -- report -------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {**machine_info(), "threads": THREADS}


def _fmt(r: dict[str, float]) -> str:
    return f"{r['median']:.2f}x [{r['min']:.2f}..{r['max']:.2f}]"


def print_report(results: dict[str, Any]) -> None:
    print(f"machine: {results['machine']}")
    rows = []
    for key, label, target in (
        ("ort", "V2 1x ONNX Runtime vs torchvision export", (1.4, 1.15)),
        ("v1", "V1 g3 1x ONNX Runtime vs plain export", (1.4, 1.15)),
    ):
        for (batch, r), goal in zip(results.get(key, {}).items(), target, strict=False):
            rows.append(
                (
                    f"{label}, {batch} (vs {r['baseline']})",
                    r["speedup"],
                    goal,
                    f"{r['speedup']['base_ms']:.2f} -> {r['speedup']['ours_ms']:.2f} ms",
                )
            )
    for batch, by_block in results.get("layouts", {}).items():
        for name, r in by_block.items():
            label = f"V2 1x ours padded to {name.removeprefix('block')}-channel blocks"
            rows.append(
                (
                    f"{label} vs torchvision legacy export, {batch}",
                    r,
                    1.0,
                    f"{r['base_ms']:.2f} -> {r['ours_ms']:.2f} ms",
                )
            )
    eng = results.get("engines", {})
    for name, r in eng.get("speedup_vs_openvino_torchvision", {}).items():
        rows.append(
            (
                f"{name} vs openvino/torchvision, batch1 (own processes)",
                r,
                1.0,
                f"{r['base_ms']:.2f} -> {r['ours_ms']:.2f} ms",
            )
        )
    for key, label in (("speedup", "deploy.optimize"), ("speedup_jit", 'optimize(backend="jit")')):
        if key in results.get("eager", {}):
            r = results["eager"][key]
            rows.append(
                (
                    f"{label} vs torchvision eager, batch1",
                    r,
                    2.0,
                    f"{r['base_ms']:.2f} -> {r['ours_ms']:.2f} ms",
                )
            )
    for name in ("int8_plain", "int8_shuffle_free"):
        if name in results.get("int8", {}):
            q = results["int8"][name]
            note = f"top-1 agreement {q['top1_agreement']:.2f}, cosine {q['mean_cosine']:.3f}"
            rows.append((f"our {name} vs our fp32 export (ORT), batch1", q["speedup"], 1.8, note))
    print("\n| ratio | median [min..max] over rounds | target | notes |\n|---|---|---|---|")
    for label, r, goal, note in rows:
        print(f"| {label} | {_fmt(r)} | >= {goal}x | {note} |")
    gpu = results.get("gpu", {})
    if "gpu" in gpu:
        print(f"\nGPU ({gpu['gpu']}): images/s, torchvision -> ours")
        for key, r in gpu.items():
            if key != "gpu":
                ips = r["images_per_s"]
                print(
                    f"  {key}: {ips['torchvision']:.0f} -> {ips['ours']:.0f} ({_fmt(r['speedup'])})"
                )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, path, batch, rounds = sys.argv[2:6]
        print(json.dumps(_engine_worker(engine, path, int(batch), int(rounds))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    sections = args.sections.split(",")
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="shufflenet-cpu-") as tmp:
        for name in sections:
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            results[name] = globals()[f"section_{name}"](Path(tmp), args.rounds)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
