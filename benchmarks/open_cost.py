"""What opening an exported file in a child process first costs: ``predict``'s open of a
``.tflite``, ``.pte`` and ``.mnn`` file with the first open in a child
(``shufflenet.runtimes.probe``) against the same open without it.

    python benchmarks/open_cost.py [--rounds 7] [--model shufflenet_v2_x0_5] [--json out.json]

Each format's file is exported once (224x224, batch 1). Each round times both opens, in
alternating order, each in a fresh process of its own (this script with ``--worker``), so that
neither gains from the other's imports or caches; the figure is the median over rounds of the
wall time of ``open_FORMAT(path)`` with and without the child, and of their difference, with
min..max. Results go to ``benchmarks/results/open_cost.json`` (``--json``) with the CPU, its SIMD
flags and versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXT = {"litert": ".tflite", "executorch": ".pte", "mnn": ".mnn"}


def _worker(fmt: str, path: str, child: bool) -> None:
    from shufflenet import export

    opener = getattr(export, f"open_{fmt}")
    start = time.perf_counter()
    opener(path, 1, first_in_child=child)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _time(fmt: str, path: Path, child: bool) -> float:
    command = [sys.executable, __file__, "--worker", fmt, str(path), str(int(child))]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--formats", default=",".join(EXT))
    parser.add_argument("--json", default="benchmarks/results/open_cost.json")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fmt, path, child = args.worker
        _worker(fmt, path, child == "1")
        return

    import shufflenet
    from shufflenet import cpu
    from shufflenet.export import export_model

    record: dict[str, Any] = {
        "cpu": cpu.cpu_name(),
        "simd": cpu.simd_features(),
        "model": args.model,
        "rounds": args.rounds,
        "versions": {"shufflenet": shufflenet.__version__},
        "formats": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            path = Path(tmp, f"model{EXT[fmt]}")
            export_model(shufflenet.create_model(args.model), path, fmt)
            times: dict[str, list[float]] = {"child": [], "direct": [], "cost": []}
            for r in range(args.rounds):
                order = (True, False) if r % 2 == 0 else (False, True)
                measured = {child: _time(fmt, path, child) for child in order}
                times["child"].append(measured[True])
                times["direct"].append(measured[False])
                times["cost"].append(measured[True] - measured[False])
            record["formats"][fmt] = {k: _summary(v) for k, v in times.items()}
            row = record["formats"][fmt]
            print(
                f"{fmt}: open {row['direct']['median']:.2f} s, with the child first "
                f"{row['child']['median']:.2f} s: +{row['cost']['median']:.2f} s "
                f"({row['cost']['min']:.2f}..{row['cost']['max']:.2f})"
            )
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
