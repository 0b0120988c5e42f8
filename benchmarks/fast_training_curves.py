"""Does ``train --fast`` follow the standard run? Full digits runs, standard and fast, compared.

    python benchmarks/fast_training_curves.py [--model shufflenet_v2_x0_5] [--threads 2]
                                              [--json benchmarks/results/fast_training_curves.json]

Three runs of ``shufflenet train MODEL --data digits`` (the main job's settings), each in a
process of its own: standard with seed 0, ``--fast`` with seed 0 (the same initial weights and
batches: in exact arithmetic the same trajectory), and standard with seed 1, whose distance from
the first is what a different draw of weights and batches does. Reported per epoch: train loss,
val loss and val top-1 of each, and the largest differences standard-vs-fast and
seed-0-vs-seed-1; the run times (sequential runs, so a rough speed figure; the speed benchmark
is ``train_speed.py``). The curves go to ``fast_training_curves.png`` beside the JSON.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "fast_training_curves.json"
RUNS = {"standard": ("0", False), "fast": ("0", True), "standard_seed1": ("1", False)}
COLUMNS = ("train_loss", "val_loss", "val_top1")


def train(model: str, seed: str, fast: bool, threads: int, out: Path) -> dict[str, Any]:
    """One run through the CLI; its metrics.csv rows and wall time."""
    command = [sys.executable, "-m", "shufflenet", "train", model, "--data", "digits"]
    command += ["--seed", seed, "--threads", str(threads), "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command + (["--fast"] if fast else []), check=True, capture_output=True)
    seconds = time.perf_counter() - start
    with open(out / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"seconds": seconds, "epochs": rows}


def largest_difference(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
    return max(abs(x[key] - y[key]) for x, y in zip(a, b, strict=True))


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, run in results["runs"].items():
        epochs = [row["epoch"] for row in run["epochs"]]
        style = "--" if name == "fast" else "-"
        axes[0].plot(epochs, [r["train_loss"] for r in run["epochs"]], style, label=name)
        axes[1].plot(epochs, [r["val_top1"] for r in run["epochs"]], style, label=name)
    axes[0].set(xlabel="epoch", ylabel="train loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="val top-1")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results['model']} on digits: standard vs --fast")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    from shufflenet.io import write_json
    from shufflenet.speed.bench import machine_info

    results: dict[str, Any] = {"model": args.model, "machine": machine_info(), "runs": {}}
    results["machine"]["threads"] = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        for name, (seed, fast) in RUNS.items():
            results["runs"][name] = train(args.model, seed, fast, args.threads, Path(tmp, name))
            print(f"{name}: {results['runs'][name]['seconds']:.0f} s", file=sys.stderr)
    runs = results["runs"]
    results["largest_difference"] = {
        pair: {
            key: largest_difference(runs[a]["epochs"], runs[b]["epochs"], key) for key in COLUMNS
        }
        for pair, (a, b) in {
            "standard_vs_fast": ("standard", "fast"),
            "seed0_vs_seed1": ("standard", "standard_seed1"),
        }.items()
    }
    write_json(args.json, results)
    plot(results, args.json.with_suffix(".png"))
    print("| epoch | " + " | ".join(f"{n} loss / top-1" for n in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for i, row in enumerate(runs["standard"]["epochs"]):
        cells = [
            f"{r['epochs'][i]['train_loss']:.4f} / {r['epochs'][i]['val_top1']:.4f}"
            for r in runs.values()
        ]
        print(f"| {int(row['epoch'])} | " + " | ".join(cells) + " |")
    for pair, diffs in results["largest_difference"].items():
        print(f"{pair}: " + ", ".join(f"{k} {v:.4f}" for k, v in diffs.items()))
    print("seconds: " + ", ".join(f"{n} {r['seconds']:.0f}" for n, r in runs.items()))


if __name__ == "__main__":
    main()
