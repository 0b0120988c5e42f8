"""Generate the docs' reference pages that must not drift from the code.

* ``reference/cli.md``: every sub-command of ``shufflenet`` with its usage, description and every
  option (help and default), read from the argparse parsers (:func:`shufflenet.cli.build_parser`).
* ``reference/results.md``: the measured tables, read from ``benchmarks/results/*.json``, each
  with its machine and the command that produced it.

``mkdocs build`` runs this script through the ``gen-files`` plugin, so the pages are made from
the code at every build and never committed. To look at them without a build:

    python scripts/docs_gen.py OUT_DIR      # writes OUT_DIR/reference/{cli,results}.md
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --- CLI reference ---------------------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, one-line help) of each sub-command; aliases share a parser and come once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub, helps.get(name) or sub.description or ""


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        helptext = formatter._expand_help(action) if action.help else ""
        default = action.default
        shown = (
            ""
            if default in (None, False, argparse.SUPPRESS) or action.nargs == 0
            else f"`{default}`"
        )
        rows.append(f"| {_cell(names)} | {_cell(helptext)} | {_cell(shown)} |")
    return rows


def _parser_section(
    name: str, parser: argparse.ArgumentParser, summary: str, level: int
) -> list[str]:
    lines = [f"{'#' * level} `{name}`", "", "```text", parser.format_usage().strip(), "```", ""]
    for text in dict.fromkeys([summary, parser.description or ""]):  # each once, in order
        if text.strip():
            lines += [text.strip(), ""]
    rows = _option_rows(parser)
    if rows:
        lines += ["| argument | help | default |", "|---|---|---|", *rows, ""]
    for sub_name, sub, sub_summary in _subcommands(parser):
        lines += _parser_section(f"{name} {sub_name}", sub, sub_summary, level + 1)
    return lines


def cli_markdown() -> str:
    """The CLI reference page, from :func:`shufflenet.cli.build_parser`."""
    from shufflenet.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage to the terminal; make it reproducible
    try:
        parser = build_parser()
        lines = [
            "# Command line",
            "",
            "Generated from the argparse parsers (`shufflenet.cli.build_parser()`) at every docs "
            "build; `shufflenet COMMAND --help` prints the same.",
            "",
            "```text",
            parser.format_usage().strip(),
            "```",
            "",
            "| command | what it does |",
            "|---|---|",
        ]
        subs = list(_subcommands(parser))
        lines += [f"| [`{n}`](#{n}) | {_cell(summary)} |" for n, _, summary in subs]
        lines.append("")
        for name, sub, summary in subs:
            lines += _parser_section(name, sub, summary, 2)
        return "\n".join(lines)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


# --- measured tables -------------------------------------------------------------------------


def _command(script: str) -> str:
    """The usage lines (``python benchmarks/...``) of a benchmark script's docstring."""
    doc = ast.get_docstring(ast.parse((ROOT / "benchmarks" / script).read_text())) or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("python "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    ") or line.strip().startswith("python "):
            break
        block.append(line)
    return "\n".join(line[4:] for line in block)


def _machine(m: dict[str, Any], threads: object = None) -> str:
    threads = m.get("threads", threads)
    skip = ("cpu", "simd", "logical_cpus", "platform", "threads", "load_average_1min")
    versions = {k: v for k, v in m.items() if k not in skip}
    parts = [
        f"**Machine:** {m.get('cpu', '?')}",
        f"SIMD {', '.join(m.get('simd', [])) or '?'}",
    ]
    if "logical_cpus" in m:
        parts.append(f"{m['logical_cpus']} logical CPUs")
    if threads is not None:
        parts.append(f"threads: {threads}")
    flat = {**versions.pop("versions", {}), **versions}
    parts.append("versions: " + ", ".join(f"{k} {v}" for k, v in flat.items()))
    return "; ".join(parts) + "."


def _span(d: dict[str, float], scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"{d['median'] * scale:{fmt}} ({d['min'] * scale:{fmt}}..{d['max'] * scale:{fmt}})"


def _benchmark_module(script: str) -> Any:
    """A benchmark script imported as a module, to reuse its table renderer."""
    path = ROOT / "benchmarks" / script
    if str(path.parent) not in sys.path:  # the scripts import their shared modules
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(data: dict[str, Any]) -> list[str]:
    return [_benchmark_module("bench_table.py").markdown(data)]


def _int8_accuracy(data: dict[str, Any]) -> list[str]:
    return [_benchmark_module("int8_accuracy.py").markdown(data)]


def _guidelines(data: dict[str, Any]) -> list[str]:
    return [_benchmark_module("guidelines_table.py").markdown(data)]


def _recipe_ablation(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    runs = ", ".join(
        f"{n}: {d['epochs']} epochs at {d['image_size']} px" for n, d in s["data"].items()
    )
    first = ", ".join(f"{n} {100 * r['top1']:.1f}%" for n, r in data["first"].items())
    return [
        f"{s['model']}, batch {s['batch_size']}, {runs}; val top-1 in %, mean ± standard "
        f"deviation over {s['seeds']} seeds (min..max). Trained first, seed 0 (val top-1): "
        f"{first}.",
        "",
        _benchmark_module("recipe_ablation.py").markdown(data),
        *(f"\n{note}" for note in data.get("notes", [])),
    ]


def _edge(data: dict[str, Any]) -> list[str]:
    """ms per (model, graph, precision) with a column per runtime, then torchvision's time over
    ours (the median of the per-round ratios) where both graphs were timed."""
    cfg, results = data["config"], data["results"]
    runtimes = list(results)
    keys = list(dict.fromkeys(k for records in results.values() for k in records))
    lines = [
        f"Batch {cfg['batch']}, {cfg['input_size']} px, ms: median over {cfg['rounds']} rounds of "
        f"{cfg['runs']} runs (min..max over rounds); int8 files were checked against fp32 "
        "(correlation of the logits in brackets).",
        "",
        f"| model | graph | precision | {' | '.join(runtimes)} |",
        f"|---|---|---|{'---:|' * len(runtimes)}",
    ]
    for key in keys:
        cells = []
        for runtime in runtimes:
            r = results[runtime].get(key)
            cell = f"{r['median_ms']:.2f} ({r['min_ms']:.2f}..{r['max_ms']:.2f})" if r else ""
            if r and "int8_correlation" in r:
                cell += f" [{r['int8_correlation']:.3f}]"
            cells.append(cell)
        lines.append(f"| {' | '.join(key.split('/'))} | {' | '.join(cells)} |")
    ratios = []
    for key in keys:
        model, graph, precision = key.split("/")
        if graph != "ours":
            continue
        cells = []
        for runtime in runtimes:
            ours = results[runtime].get(key)
            theirs = results[runtime].get(f"{model}/torchvision/{precision}")
            if not (ours and theirs and "round_medians_ms" in ours):
                cells.append("")
                continue
            per_round = sorted(
                t / o
                for t, o in zip(theirs["round_medians_ms"], ours["round_medians_ms"], strict=True)
            )
            median = statistics.median(per_round)
            cells.append(f"{median:.2f}x ({per_round[0]:.2f}..{per_round[-1]:.2f})")
        if any(cells):
            ratios.append(f"| {model} | {precision} | {' | '.join(cells)} |")
    if ratios:
        lines += [
            "",
            "torchvision's time over ours, median of the per-round ratios (min..max); above 1: "
            "ours is faster.",
            "",
            f"| model | precision | {' | '.join(runtimes)} |",
            f"|---|---|{'---:|' * len(runtimes)}",
            *ratios,
        ]
    return lines


def _train_speed(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    lines = [
        f"Model {s['model']}, one training step (forward, loss, backward, SGD); images/s, median "
        f"over {s['rounds']} rounds (min..max), and the ratio to torchvision's in the same round.",
        "",
        "| device | batch | size | threads | AMP | configuration | images/s | vs torchvision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in data["cases"]:
        for config, r in case["summary"].items():
            ips = f"{r['images_per_s']:.1f} ({r['min']:.1f}..{r['max']:.1f})"
            ratio = _span(r["ratio"], fmt=".2f") if r.get("ratio") else ""
            lines.append(
                f"| {case['device']} | {case['batch']} | {case['size']} | {case.get('threads', '')}"
                f" | {case.get('amp', '')} | {config} | {ips} | {ratio} |"
            )
    return lines


def _open_cost(data: dict[str, Any]) -> list[str]:
    lines = [
        f"Model {data['model']}; seconds to open the file, median over {data['rounds']} rounds "
        "(min..max): with the first open in a child process, without it, and the difference.",
        "",
        "| format | with child, s | direct, s | cost, s |",
        "|---|---|---|---|",
    ]
    for fmt, r in data["formats"].items():
        lines.append(
            f"| {fmt} | {_span(r['child'], fmt='.3f')} | {_span(r['direct'], fmt='.3f')} "
            f"| {_span(r['cost'], fmt='.3f')} |"
        )
    return lines


def _int8(data: dict[str, Any]) -> list[str]:
    r = data["int8"]
    lines = [
        f"ONNX Runtime, batch {r['batch']}; agreement with fp32 over {r['images']} images; "
        "speed-up is fp32 time over int8 time (median over rounds, min..max).",
        "",
        "| graph | ms | top-1 agreement | mean cosine | speed-up vs fp32 |",
        "|---|---|---|---|---|",
        f"| fp32 | {r['ms']['fp32']:.2f} | | | |",
    ]
    for name in ("int8_plain", "int8_shuffle_free"):
        q = r[name]
        lines.append(
            f"| {name} | {r['ms'][name]:.2f} | {q['top1_agreement']:.3f} | "
            f"{q['mean_cosine']:.4f} | {_span(q['speedup'])} |"
        )
    return lines


def _speedup_rows(section: str, batch: object, r: dict[str, Any]) -> list[str]:
    if "ms" not in r:  # layouts: each padded export against torchvision's legacy export
        return [
            f"| {section} | {batch} | torchvision_legacy {q['base_ms']:.2f}, {name} "
            f"{q['ours_ms']:.2f} | {_span(q)} vs torchvision_legacy |"
            for name, q in r.items()
        ]
    ms = ", ".join(f"{k} {v:.2f}" for k, v in r["ms"].items())
    if "speedup" in r:
        base = r.get("baseline", "torchvision")
        return [f"| {section} | {batch} | {ms} | {_span(r['speedup'])} vs {base} |"]
    return [  # engines: each of ours against OpenVINO on torchvision's graph
        f"| {section} | {batch} | {ms} | {name}: {_span(q)} vs openvino/torchvision |"
        for name, q in r["speedup_vs_openvino_torchvision"].items()
    ]


def _cpu_inference(data: dict[str, Any]) -> list[str]:
    lines = [
        "Each speed-up is the baseline's time over ours, median over interleaved rounds "
        "(min..max); times in ms.",
        "",
        "| section | batch | ms | speed-up |",
        "|---|---|---|---|",
    ]
    for section, value in data.items():
        if section in ("machine", "int8", "gpu"):
            continue
        per_batch = {value["batch"]: value} if "batch" in value else value
        for batch, r in per_batch.items():
            lines += _speedup_rows(section, str(batch).removeprefix("batch"), r)
    if "int8" in data:
        lines += ["", *_int8(data)]
    return lines


def _curves(data: dict[str, Any]) -> list[str]:
    lines = [
        f"Model {data['model']} trained on digits with the standard and the fast (shuffle-free) "
        "form, and the standard form with another seed: the largest difference over epochs.",
        "",
        "| pair | train loss | val loss | val top-1 |",
        "|---|---|---|---|",
    ]
    for pair, d in data["largest_difference"].items():
        lines.append(
            f"| {pair} | {d['train_loss']:.3f} | {d['val_loss']:.3f} | {d['val_top1']:.3f} |"
        )
    return lines


def _predict_throughput(data: dict[str, Any]) -> list[str]:
    cfg, cases, close = data["config"], data["cases"], data["closeness"]
    today = cases["today"]["images_per_s"]
    decode = {
        case.split(", ")[1]: r["images_per_s"]
        for case, r in cases.items()
        if case.startswith("decode")
    }
    lines = [
        f"Model {cfg['model']} (random weights), {cfg['images']} JPEGs of {cfg['sizes'][0]} to "
        f"{cfg['sizes'][-1]} px; images/s over the whole call, the model's open included (Ray: "
        "its instance's start left out, in brackets), one run each in a fresh process. Load "
        "average (others' work on the same CPUs) "
        f"{data['load']['start']} at the start, {data['load']['end']} at the end. The fast "
        f"decoder's model inputs differ from today's by {close['mean_abs_diff']:.2f} pixel "
        f"steps (of 255) on average, {close['p99_abs_diff']:.1f} at the 99th percentile "
        f"({close['images']} images).",
        "",
        "| case | images/s | vs today | vs decoding alone, same workers |",
        "|---|---|---|---|",
    ]
    for case, r in cases.items():
        ips = r["images_per_s"]
        workers = next((w for w in decode if case.endswith(w)), None)
        alone = workers is None or case.startswith("decode")
        bound = "" if alone else f"{ips / decode[workers]:.2f}"
        start = f" [{r['ray_start_s']:.1f} s]" if "ray_start_s" in r else ""
        lines.append(f"| {case}{start} | {ips:.1f} | {ips / today:.2f}x | {bound} |")
    return lines


# (results file, title, benchmark script that writes it, table renderer)
SECTIONS = [
    ("bench.json", "Inference speed vs torchvision and the baselines", "bench_table.py", _bench),
    ("edge_runtimes.json", "ONNX Runtime and the edge runtimes", "edge_runtimes.py", _edge),
    (
        "edge_runtimes_mnn_export_layout.json",
        "MNN, export layout",
        "edge_runtimes.py",
        _edge,
    ),
    ("edge_runtimes_mnn_edge_layout.json", "MNN, XNNPACK layout", "edge_runtimes.py", _edge),
    ("train_speed.json", "Training speed", "train_speed.py", _train_speed),
    (
        "train_speed_compile.json",
        "Training speed with torch.compile",
        "train_speed.py",
        _train_speed,
    ),
    ("fast_training_curves.json", "Fast training form: curves", "fast_training_curves.py", _curves),
    ("recipe_ablation.json", "Training recipe ablation", "recipe_ablation.py", _recipe_ablation),
    ("open_cost.json", "Opening an exported file in a child process", "open_cost.py", _open_cost),
    ("cpu_inference_1.json", "Fast inference, run 1", "cpu_inference.py", _cpu_inference),
    ("cpu_inference_2.json", "Fast inference, run 2", "cpu_inference.py", _cpu_inference),
    ("cpu_inference_eager.json", "Fast eager inference", "cpu_inference.py", _cpu_inference),
    ("cpu_inference_int8.json", "int8 in ONNX Runtime", "cpu_inference.py", _int8),
    (
        "cpu_inference_int8_zen4_vnni.json",
        "int8 in ONNX Runtime on a CPU with VNNI",
        "cpu_inference.py",
        _int8,
    ),
    (
        "int8_accuracy.json",
        "int8 accuracy: calibration methods, float layers and QAT per runtime",
        "int8_accuracy.py",
        _int8_accuracy,
    ),
    (
        "int8_accuracy_photos.json",
        "int8 accuracy on photos: calibration methods, float layers and QAT per runtime",
        "int8_accuracy.py",
        _int8_accuracy,
    ),
    (
        "guidelines/guidelines.json",
        "ShuffleNet V2's guidelines G1-G4",
        "guidelines_table.py",
        _guidelines,
    ),
    (
        "predict_throughput.json",
        "Prediction throughput over a folder of photos",
        "predict_throughput.py",
        _predict_throughput,
    ),
]


def _machine_of(data: dict[str, Any]) -> str:
    if "machine" in data:
        threads = data.get("config", data.get("settings", {})).get("threads")
        return _machine(data["machine"], threads)
    return _machine({k: data[k] for k in ("cpu", "simd", "versions") if k in data})


def results_section(filename: str, level: int = 2) -> list[str]:
    """One results file as a section: its title at heading ``level``, the file, its machine,
    the command that measures it again, and its table."""
    found = [section for section in SECTIONS if section[0] == filename]
    if not found:
        raise ValueError(f"no results section for {filename!r}; known: {[s[0] for s in SECTIONS]}")
    _, title, script, render = found[0]
    data = json.loads((RESULTS / filename).read_text())
    return [
        f"{'#' * level} {title}",
        "",
        f"From `benchmarks/results/{filename}`.",
        "",
        _machine_of(data),
        "",
        "```bash",
        _command(script),
        "```",
        "",
        *render(data),
        "",
    ]


def results_markdown() -> str:
    """The measured tables page, from ``benchmarks/results/*.json``."""
    lines = [
        "# Measured results",
        "",
        "Generated from `benchmarks/results/*.json` at every docs build. Each section names the "
        "machine it was measured on and the command that measures it again; run measuring "
        "commands under `flock /tmp/shufflenet-bench.lock` on a shared machine.",
        "",
    ]
    for filename, *_ in SECTIONS:
        lines += results_section(filename)
    return "\n".join(lines)


# A page's marker for a generated results section: <!-- results: FILE [LEVEL] -->
RESULTS_MARKER = re.compile(r"<!-- results: ([\w./-]+\.json)(?: (\d))? -->")


def expand_results(markdown: str) -> str:
    """``markdown`` with each results marker replaced by its generated section (see
    ``scripts/docs_hooks.py``, which applies this to every page at build time)."""

    def section(match: re.Match[str]) -> str:
        return "\n".join(results_section(match[1], int(match[2] or 3)))

    return RESULTS_MARKER.sub(section, markdown)


PAGES = {"reference/cli.md": cli_markdown, "reference/results.md": results_markdown}


def _write_with_gen_files() -> None:
    import mkdocs_gen_files

    for path, make in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(make())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/docs_gen.py OUT_DIR")
    out = Path(sys.argv[1])
    for path, make in PAGES.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(make() + "\n")
        print(f"wrote {out / path}")
elif __name__ == "<run_path>":  # run by mkdocs' gen-files plugin (runpy.run_path)
    _write_with_gen_files()
