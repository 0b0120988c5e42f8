"""Images per second of prediction over a folder of photo-sized JPEGs: today's ``predict``
(``shufflenet.predict.predict``: decoded one at a time in the main process, batches of 16; with
torch's threads, and with one), the streaming path (``shufflenet.stream.predict_to_file``) with
1 and 2 decoding workers and each installed engine, Ray Data on a local instance with 2 actors,
and decoding alone (the bound).

    python benchmarks/predict_throughput.py [--images 2000] [--model shufflenet_v2_x1_0]
        [--folder DIR] [--engines torch,onnxruntime,...] [--no-ray]
        [--json benchmarks/results/predict_throughput.json]

The folder holds ``--images`` JPEGs (quality 90) at photo sizes from 500x375 to 1600x1200, a
quarter of them portrait, with smooth colour fields and fine grain like photos; it is generated
once (seeded) and kept in ``--folder``. The model has random weights (1000 classes, ImageNet
preprocessing): its speed is that of a trained one. Each case runs in a fresh process of its
own and writes CSV rows; its figure is the images over the wall time of the whole call (the
model's open included; for Ray, its instance's start left out and given apart). Decoding alone
runs the streaming path's decoder over the same files with the same workers, no model. The
closeness of the fast decoder to today's preprocessing is measured on the folder: the mean and
99th percentile of the absolute difference of the model inputs, in 0..255 pixel steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = [(500, 375), (640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200)]
FOLDER = Path(tempfile.gettempdir()) / "shufflenet-predict-bench"
EXPORTS = {"litert": ".tflite", "executorch": ".pte", "mnn": ".mnn"}


def _photo(width: int, height: int, seed: int) -> Any:
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (max(2, height // 96), max(2, width // 96), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(field).resize((width, height), Image.BICUBIC), np.float32)
    grain = rng.normal(0.0, 12.0, (height, width, 1)).astype(np.float32)
    pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.7))


def _make_one(item: tuple[Path, int]) -> None:
    path, seed = item
    width, height = SIZES[seed % len(SIZES)]
    if seed % 4 == 3:
        width, height = height, width
    _photo(width, height, seed).save(path, quality=90)


def make_folder(folder: Path, count: int) -> None:
    """``count`` photo-sized JPEGs in ``folder`` (kept: made again only if the count differs)."""
    from multiprocessing import Pool

    stamp = folder / ".made"
    if stamp.exists() and stamp.read_text() == str(count):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    items = [(folder / f"{n:06d}.jpg", n) for n in range(count)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_make_one, items, chunksize=16)
    stamp.write_text(str(count))


# -- the cases, each run in a process of its own ----------------------------------------------
def _case(name: str, weights: str, folder: str, out: str, extra: dict[str, Any]) -> dict:
    import torch

    from shufflenet.predict import predict
    from shufflenet.stream import predict_on_ray, predict_to_file
    from shufflenet.stream.decode import FastDecoder
    from shufflenet.stream.local import decode_batches, iter_images
    from shufflenet.weights import read_metadata

    start = time.perf_counter()
    record: dict[str, Any] = {}
    if name == "today":
        if "threads" in extra:
            torch.set_num_threads(extra["threads"])
        images = len(predict(weights, [folder]))
    elif name == "decode":
        decoder = FastDecoder(read_metadata(weights)["preprocessing"])
        batches = decode_batches(decoder, iter_images([folder]), 64, extra["workers"])
        images = sum(len(batch.paths) for batch in batches)
    elif name == "ray":
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        record["ray_start_s"] = time.perf_counter() - start
        result = predict_on_ray(weights, [folder], out, actors=extra["actors"])
        ray.shutdown()
        images, start = result.images, time.perf_counter() - result.seconds
    else:  # streaming
        result = predict_to_file(
            extra.get("file", weights),
            [folder],
            out,
            workers=extra["workers"],
            engine=extra.get("engine"),
        )
        images = result.images
    seconds = time.perf_counter() - start
    return {**record, "images": images, "seconds": seconds, "images_per_s": images / seconds}


def _run_case(name: str, weights: Path, folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = json.dumps([name, str(weights), str(folder), str(Path(tmp, "rows.csv")), extra])
        command = [sys.executable, __file__, "--case", spec]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {name} {extra} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def closeness(weights: Path, folder: Path, count: int) -> dict[str, float]:
    """How far the fast decoder's model inputs are from today's, in 0..255 pixel steps."""
    import torch

    from shufflenet.predict import Predictor
    from shufflenet.stream.decode import FastDecoder

    predictor = Predictor(weights)
    decoder = FastDecoder(predictor.metadata["preprocessing"])
    std = torch.tensor(predictor.metadata["preprocessing"]["std"]).view(3, 1, 1) * 255
    diffs = []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        today = predictor.load_image(path)
        fast = decoder.normalize(decoder(path)[None])[0]
        diffs.append(((today - fast).abs() * std).flatten())
    every = torch.cat(diffs)
    return {
        "images": len(diffs),
        "mean_abs_diff": float(every.mean()),
        "p99_abs_diff": float(every.kthvalue(int(0.99 * len(every))).values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="shufflenet_v2_x1_0")
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--engines", help="streaming engines (default: each installed)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", default="benchmarks/results/predict_throughput.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(*json.loads(args.case))))
        return

    import torch

    import shufflenet
    from shufflenet.export import export_model
    from shufflenet.io import write_json
    from shufflenet.predict import ENGINES
    from shufflenet.runtimes import installed
    from shufflenet.speed.bench import machine_info

    make_folder(args.folder, args.images)
    record: dict[str, Any] = {
        "machine": machine_info(),
        "config": {
            "model": args.model,
            "images": args.images,
            "sizes": [f"{w}x{h}" for w, h in SIZES],
            "threads": f"today's {torch.get_num_threads()}; streaming: the CPUs the decoding "
            "workers leave, at least 1",
            "batch": {"today": 16, "streaming": 64},
        },
        "load": {"start": round(os.getloadavg()[0], 2)},
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp, "model.safetensors")
        shufflenet.save(shufflenet.create_model(args.model).eval(), weights)
        record["closeness"] = closeness(weights, args.folder, 200)
        print(f"fast decoder vs today's inputs: {record['closeness']}", flush=True)
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("today", "today", {}),
            ("today, 1 thread", "today", {"threads": 1}),
        ]
        for workers in (1, 2):
            cases.append((f"decode, {workers} workers", "decode", {"workers": workers}))
            cases.append((f"streaming torch, {workers} workers", "stream", {"workers": workers}))
        wanted = args.engines.split(",") if args.engines else list(ENGINES)
        for engine in wanted:
            if engine == "torch":
                continue
            runtime = next(
                (
                    s.runtime
                    for s in shufflenet.export.FORMATS.values()
                    if s.runtime and s.runtime.name == engine
                ),
                None,
            )
            if runtime is None or (runtime.extra and not installed(runtime.extra)):
                continue
            extra: dict[str, Any] = {"workers": 2, "engine": engine}
            if engine in EXPORTS:  # a file of its own
                file = Path(tmp, f"model{EXPORTS[engine]}")
                export_model(shufflenet.create_model(args.model).eval(), file, engine)
                extra["file"] = str(file)
            cases.append((f"streaming {engine}, 2 workers", "stream", extra))
        if not args.no_ray:
            cases.append(("ray local, 2 actors", "ray", {"actors": 2}))
        for label, name, extra in cases:
            result = _run_case(name, weights, args.folder, extra)
            record["cases"][label] = result
            print(f"{label}: {result['images_per_s']:.1f} images/s", flush=True)
    record["load"]["end"] = round(os.getloadavg()[0], 2)
    write_json(args.json, record)


if __name__ == "__main__":
    main()
