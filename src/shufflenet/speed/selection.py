"""Pick the most accurate model that meets a latency budget, measured on this device.

Every candidate is timed with :func:`shufflenet.speed.bench.run_bench` (one engine, one batch size,
all candidates interleaved), then ranked by published top-1 (the paper's number; torchvision's
for baselines without one). The Pareto front is the set of candidates that no other candidate
beats on both latency and accuracy; it is computed against measured latency and against FLOPs,
because the two fronts need not agree, which is V2's point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ..io import atomic_path
from ..models import get_model_info, list_models
from .baselines import BASELINES, expand_model_names, model_card
from .bench import BenchConfig, run_bench
from .engines import AUTO

__all__ = [
    "Candidate",
    "Selection",
    "default_candidates",
    "pareto_front",
    "plot_selection",
    "select_model",
]


@dataclass
class Candidate:
    """A measured model with its published accuracy."""

    name: str
    family: str
    top1: float
    top1_source: str
    mflops: float
    median_ms: float
    iqr_ms: float


@dataclass
class Selection:
    """The measured candidates, both Pareto fronts and the choice within the budget."""

    budget_ms: float
    settings: dict[str, Any]
    machine: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
    pareto_latency: list[str] = field(default_factory=list)
    pareto_flops: list[str] = field(default_factory=list)
    chosen: str | None = None
    skipped: list[str] = field(default_factory=list)  # no published top-1 to rank by

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another (lower cost and higher accuracy).

    ``points`` are (cost, accuracy); the front is returned by increasing cost. Of equal points
    only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# Default candidates stay in the mobile range: SE-ShuffleNet v2-164 takes seconds per image on
# a CPU and is only timed when named.
MOBILE_MFLOPS = 1000.0


def default_candidates() -> list[str]:
    """Our models with a published top-1 and at most :data:`MOBILE_MFLOPS` (the V2 widths, the
    V1 variants of the paper, ShuffleNetV2+)."""
    return [
        n
        for n in list_models()
        if (info := get_model_info(n)).paper_top1 is not None
        and (info.paper_mflops or 0.0) <= MOBILE_MFLOPS
    ]


def select_model(
    budget_ms: float,
    models: Sequence[str] | None = None,
    *,
    baselines: bool = False,
    engine: str = AUTO,
    device: str = "cpu",
    batch_size: int = 1,
    input_size: tuple[int, int] = (224, 224),
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
    progress: Callable[[str], None] | None = None,
) -> Selection:
    """Measure the candidates and choose the most accurate one within ``budget_ms`` per batch.

    ``models`` are names or shell patterns (default: :func:`default_candidates`); ``baselines``
    adds the torchvision reference architectures. ``engine`` ``auto``: the fastest installed for
    ``device`` (:func:`~shufflenet.speed.engines.resolve_engine`).
    """
    if not 0 < budget_ms < math.inf:
        raise ValueError(f"budget_ms must be a positive, finite number of ms, got {budget_ms}")
    names = expand_model_names(list(models)) if models else default_candidates()
    if baselines:
        names += [n for n in BASELINES if n not in names]
    ranked = [n for n in names if model_card(n).top1 is not None]
    if not ranked:
        raise ValueError("none of the candidates has a published top-1 to rank by")
    config = BenchConfig(
        models=ranked,
        engines=(engine,),
        batch_sizes=(batch_size,),
        input_size=input_size,
        threads=threads,
        device=device,
        runs=runs,
        warmup=warmup,
    )
    bench = run_bench(config, progress)
    selection = Selection(
        budget_ms=budget_ms,
        settings={k: v for k, v in bench.config.items() if k != "models"},
        machine=bench.machine,
        skipped=[n for n in names if n not in ranked],
    )
    for r in bench.records:
        card = model_card(r.model)
        top1, source = cast(float, card.top1), cast(str, card.top1_source)  # ranked: not None
        selection.candidates.append(
            Candidate(r.model, card.family, top1, source, r.mflops, r.median_ms, r.iqr_ms)
        )
    cands = selection.candidates
    selection.pareto_latency = [
        cands[i].name for i in pareto_front([(c.median_ms, c.top1) for c in cands])
    ]
    selection.pareto_flops = [
        cands[i].name for i in pareto_front([(c.mflops, c.top1) for c in cands])
    ]
    within = [c for c in cands if c.median_ms <= budget_ms]
    if within:
        selection.chosen = max(within, key=lambda c: (c.top1, -c.median_ms)).name
    return selection


def plot_selection(selection: Selection, path: str | Path) -> Path:
    """Top-1 against measured latency (with the budget) and against FLOPs, fronts drawn."""
    from matplotlib.figure import Figure

    cands = {c.name: c for c in selection.candidates}
    fig = Figure(figsize=(14, 6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, attr, front, xlabel in (
        (axes[0], "median_ms", selection.pareto_latency, "measured latency per batch (ms)"),
        (axes[1], "mflops", selection.pareto_flops, "MFLOPs per image (multiply-adds)"),
    ):
        for family in sorted({c.family for c in cands.values()}):
            members = [c for c in cands.values() if c.family == family]
            ax.scatter([getattr(c, attr) for c in members], [c.top1 for c in members], label=family)
        for c in cands.values():
            short = c.name.replace("shufflenet_", "")
            ax.annotate(
                short,
                (getattr(c, attr), c.top1),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.plot(
            [getattr(cands[n], attr) for n in front],
            [cands[n].top1 for n in front],
            "k--",
            linewidth=1,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("published top-1 (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axvline(
        selection.budget_ms, color="red", linewidth=1, label=f"budget {selection.budget_ms:g} ms"
    )
    if selection.chosen:
        c = cands[selection.chosen]
        axes[0].scatter(
            [c.median_ms],
            [c.top1],
            s=200,
            facecolors="none",
            edgecolors="red",
            label=f"chosen: {c.name}",
        )
    axes[0].legend(fontsize="small")
    axes[1].legend(fontsize="small")
    s = selection.settings
    fig.suptitle(
        f"{s['engines'][0]}, {s['device']}, batch {s['batch_sizes'][0]}, {s['threads']} threads, "
        f"{selection.machine.get('gpu') or selection.machine.get('cpu', '')}"
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
