"""Regenerate the README's G1-G4 tables: our speeds next to the ShuffleNet V2 paper's.

    python benchmarks/guidelines_table.py --out benchmarks/results/guidelines   # measure + print
    python benchmarks/guidelines_table.py --from benchmarks/results/guidelines/guidelines.json

Measuring writes ``guidelines.json`` and one plot per table into ``--out``; ``--repeat N``
measures N times and reports the median speed of each cell. Each cell of the printed tables
reads "ours / paper GPU / paper ARM", speed relative to the table's first row. Wrap measuring
runs in ``flock /tmp/shufflenet-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from shufflenet.io import write_json
from shufflenet.speed.guidelines import GuidelinesConfig, plot_table, run_guidelines


def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = GuidelinesConfig(
        quick=args.quick, threads=args.threads, runs=args.runs, engine=args.engine
    )
    results = []
    for i in range(args.repeat):
        print(f"run {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
        results.append(run_guidelines(config))
    merged = results[0]
    for t, table in enumerate(merged.tables):  # median over repeats, cell by cell
        for r, row in enumerate(table.rows):
            cells = [res.tables[t].rows[r] for res in results]
            for field in ("median_ms", "iqr_ms", "images_per_s"):
                values = zip(*(getattr(c, field) for c in cells), strict=True)
                setattr(row, field, [statistics.median(v) for v in values])
    data = merged.to_dict()
    data["config"]["repeat"] = args.repeat
    data["config"]["load_average_1min"] = [r.machine["load_average_1min"] for r in results]
    write_json(args.out / "guidelines.json", data)
    for table in merged.tables:
        plot_table(table, args.out / f"{table.key.lower()}.png", "this CPU")
    print(f"wrote {args.out}", file=sys.stderr)
    return data


def markdown(data: dict[str, Any]) -> str:
    m, cfg = data["machine"], data["config"]
    lines = [
        f"Measured on {m['cpu']} ({m['logical_cpus']} logical CPUs), {cfg['threads']} threads, "
        f"eager PyTorch {m['torch']}, batch {cfg['batch_size']}, {cfg['runs']} timed runs, "
        f"median of {cfg.get('repeat', 1)} repeats (1-min load average at their starts: "
        f"{', '.join(map(str, cfg.get('load_average_1min', [])))}). "
        "Cells: speed relative to the first row, ours / paper GPU / paper ARM.",
    ]
    for table in data["tables"]:
        cols = table["columns"]
        lines += [
            "",
            f"**{table['title']}** ({table['guideline']})",
            "",
            f"| row | ours {cols[0]} | MFLOPs | MAC (M) | ours img/s | "
            + " | ".join(f"{c} (paper GPU {g}, ARM {a})" for c, g, a in _columns(table))
            + " |",
            "|---" * (5 + len(cols)) + "|",
        ]
        first = table["rows"][0]
        for row in table["rows"]:
            rel = []
            for j in range(len(cols)):
                ours = row["images_per_s"][j] / first["images_per_s"][j]
                gpu = row["paper_gpu"][j] / first["paper_gpu"][j]
                arm = row["paper_arm"][j] / first["paper_arm"][j]
                rel.append(f"{ours:.2f} / {gpu:.2f} / {arm:.2f}")
            lines.append(
                f"| {row['label']} | {row['settings'][0]} | {row['mflops'][0]:.0f} | "
                f"{row['mac_m'][0]:.1f} | {row['images_per_s'][0]:.1f} | " + " | ".join(rel) + " |"
            )
    return "\n".join(lines)


def _columns(table: dict[str, Any]) -> list[tuple[str, str, str]]:
    n = len(table["columns"])
    return list(
        zip(table["columns"], table["gpu_columns"][:n], table["arm_columns"][:n], strict=True)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="render this JSON, no timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/guidelines"))
    parser.add_argument("--quick", action="store_true", help="first column only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--engine", default="eager", help="bench engine (default eager: the README's table)"
    )
    args = parser.parse_args()
    data = json.loads(args.source.read_text()) if args.source else measure(args)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
