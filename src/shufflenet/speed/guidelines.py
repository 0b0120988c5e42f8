"""ShuffleNet V2's four guideline experiments (Tables 1-4), re-run on this device.

Each experiment stacks 10 identical blocks on a 56x56 input and holds FLOPs fixed across the rows
of a table while changing one thing:

* G1, equal channel width minimises MAC: two 1x1 convs c1 -> c2 -> c1 with c1:c2 = 1:1, 1:2, 1:6,
  1:12 (c1 * c2 held at c^2);
* G2, group convolution raises MAC: one 1x1 group conv c -> c with g = 1, 2, 4, 8 (c^2 / g held);
* G3, fragmentation reduces parallelism: 1, 2 or 4 1x1 convs in series (square convs of width
  about c / sqrt(k)) or in parallel (k convs c -> c/k on the same input, concatenated);
* G4, element-wise ops are not free: a ResNet bottleneck c -> c/4 -> (3x3) c/4 -> c with and
  without its ReLUs and its identity shortcut.

Our columns use the channel settings of the paper's GPU columns (G1, G2 and G3 at c = 128, 256
and 512 for x1, x2, x4; G4 at c = 32, 64, 128). Channel counts are whole numbers, so FLOPs are
matched to the nearest integer channel count: rows of a column differ by at most ~1.2%
(``profile`` counts them and the tests check it). The paper's numbers sit beside ours: GPU
batches/s on a GTX 1080Ti and ARM images/s on a Snapdragon 810 (one thread), with the paper's
own channel settings (the ARM columns use smaller widths).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..complexity import profile
from ..device import resolve_device, torch_threads
from ..io import atomic_path
from ..limits import check_batch, check_timing
from .bench import SpeedResult, machine_info
from .engines import AUTO, engine_spec, resolve_engine, time_engine

__all__ = [
    "GUIDELINE_TABLES",
    "INPUT_SIZE",
    "NUM_BLOCKS",
    "Bottleneck",
    "GuidelineResult",
    "GuidelineRow",
    "GuidelineTable",
    "GuidelinesConfig",
    "ParallelFragments",
    "RowResult",
    "TableResult",
    "build_benchmark",
    "plot_table",
    "run_guidelines",
]

INPUT_SIZE = 56
NUM_BLOCKS = 10


def _conv1x1(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, groups=groups, bias=False)


class ParallelFragments(nn.Module):
    """``k`` 1x1 convs ``c -> c/k`` on the same input, concatenated (a GoogLeNet-style block)."""

    def __init__(self, channels: int, fragments: int) -> None:
        super().__init__()
        if channels % fragments:
            raise ValueError(f"{channels} channels do not split into {fragments} fragments")
        self.branches = nn.ModuleList(
            _conv1x1(channels, channels // fragments) for _ in range(fragments)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Bottleneck(nn.Module):
    """ResNet bottleneck ``c -> c/4 -> (3x3) c/4 -> c``; the ReLUs and the shortcut are optional."""

    def __init__(self, channels: int, relu: bool = True, shortcut: bool = True) -> None:
        super().__init__()
        mid = channels // 4
        self.conv1 = _conv1x1(channels, mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.conv3 = _conv1x1(mid, channels)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))
        if self.shortcut:
            out = out + x
        return self.relu(out)


def _nearest(target: float, step: int, cost: Callable[[int], float], goal: float) -> int:
    """The multiple of ``step`` next to ``target`` whose ``cost`` is closest to ``goal``."""
    low = max(step, math.floor(target / step) * step)
    return min((low, low + step), key=lambda n: abs(cost(n) - goal))


def _g1(row: int, c: int) -> tuple[nn.Module, int, str]:
    ratio = (1, 2, 6, 12)[row]
    c1 = _nearest(c / math.sqrt(ratio), 1, lambda n: n * n * ratio, c * c)
    c2 = ratio * c1
    return nn.Sequential(_conv1x1(c1, c2), _conv1x1(c2, c1)), c1, f"({c1},{c2})"


def _g2(row: int, c: int) -> tuple[nn.Module, int, str]:
    g = (1, 2, 4, 8)[row]
    width = _nearest(c * math.sqrt(g), g, lambda n: n * n / g, c * c)
    return _conv1x1(width, width, groups=g), width, f"c={width}"


def _g3(row: int, c: int) -> tuple[nn.Module, int, str]:
    fragments, parallel = ((1, False), (2, False), (4, False), (2, True), (4, True))[row]
    if parallel:
        return ParallelFragments(c, fragments), c, f"{fragments}x ({c}->{c // fragments})"
    width = _nearest(c / math.sqrt(fragments), 1, lambda n: fragments * n * n, c * c)
    convs = [_conv1x1(width, width) for _ in range(fragments)]
    return nn.Sequential(*convs), width, f"{fragments}x ({width}->{width})"


def _g4(row: int, c: int) -> tuple[nn.Module, int, str]:
    relu, shortcut = ((True, True), (True, False), (False, True), (False, False))[row]
    return Bottleneck(c, relu, shortcut), c, f"c={c}, mid={c // 4}"


@dataclass(frozen=True)
class GuidelineRow:
    """A row of a paper table: its label, the paper's setting and speeds."""

    label: str
    paper_setting: str  # at the paper's first GPU column
    paper_gpu: tuple[float, float, float]  # batches/s, GTX 1080Ti
    paper_arm: tuple[float, float, float]  # images/s, Snapdragon 810, one thread


@dataclass(frozen=True)
class GuidelineTable:
    """One of V2's Tables 1-4 and how to build its benchmark networks."""

    key: str
    title: str
    guideline: str
    columns: tuple[str, str, str]  # ours (= the paper's GPU columns)
    arm_columns: tuple[str, str, str]
    channels: tuple[int, int, int]  # the base width c of each column
    rows: tuple[GuidelineRow, ...]
    block: Callable[[int, int], tuple[nn.Module, int, str]]


# The paper's numbers (ShuffleNet V2, Tables 1-4). The x1 GPU column of each table is also in
# the project's facts file; the other columns are transcribed from the paper.
GUIDELINE_TABLES: dict[str, GuidelineTable] = {
    t.key: t
    for t in (
        GuidelineTable(
            "G1",
            "Table 1: two 1x1 convs c1 -> c2 -> c1",
            "G1: equal channel width minimizes memory access cost (MAC)",
            ("x1", "x2", "x4"),
            ("x1", "x2", "x4"),
            (128, 256, 512),
            (
                GuidelineRow("1:1", "(128,128)", (1480, 723, 232), (76.2, 21.7, 5.3)),
                GuidelineRow("1:2", "(90,180)", (1296, 586, 206), (72.9, 20.5, 5.1)),
                GuidelineRow("1:6", "(52,312)", (876, 489, 189), (69.1, 19.2, 4.7)),
                GuidelineRow("1:12", "(36,432)", (748, 392, 163), (57.6, 15.1, 4.1)),
            ),
            _g1,
        ),
        GuidelineTable(
            "G2",
            "Table 2: one 1x1 group conv c -> c",
            "G2: excessive group convolution increases MAC",
            ("x1", "x2", "x4"),
            ("x1", "x2", "x4"),
            (128, 256, 512),
            (
                GuidelineRow("g=1", "c=128", (2451, 1289, 437), (40.0, 10.2, 2.3)),
                GuidelineRow("g=2", "c=180", (1725, 873, 341), (35.0, 9.5, 2.2)),
                GuidelineRow("g=4", "c=256", (1026, 644, 338), (32.9, 8.7, 2.1)),
                GuidelineRow("g=8", "c=360", (634, 445, 230), (27.8, 7.5, 1.8)),
            ),
            _g2,
        ),
        GuidelineTable(
            "G3",
            "Table 3: 1x1 conv fragments in series or in parallel",
            "G3: network fragmentation reduces the degree of parallelism",
            ("c=128", "c=256", "c=512"),
            ("c=64", "c=128", "c=256"),
            (128, 256, 512),
            (
                GuidelineRow("1-fragment", "c=128", (2446, 1274, 434), (40.2, 10.1, 2.3)),
                GuidelineRow("2-fragment-series", "", (1790, 909, 336), (38.6, 10.1, 2.2)),
                GuidelineRow("4-fragment-series", "", (752, 745, 349), (38.4, 10.1, 2.3)),
                GuidelineRow("2-fragment-parallel", "", (1537, 803, 320), (33.4, 9.1, 2.2)),
                GuidelineRow("4-fragment-parallel", "", (691, 572, 292), (35.0, 8.4, 2.1)),
            ),
            _g3,
        ),
        GuidelineTable(
            "G4",
            "Table 4: ResNet bottleneck with/without ReLU and shortcut",
            "G4: element-wise operations are non-negligible",
            ("c=32", "c=64", "c=128"),
            ("c=32", "c=64", "c=128"),
            (32, 64, 128),
            (
                GuidelineRow("ReLU, shortcut", "c=32", (2427, 2066, 1436), (56.7, 16.9, 5.0)),
                GuidelineRow("ReLU, no shortcut", "", (2647, 2256, 1735), (61.9, 18.8, 5.2)),
                GuidelineRow("no ReLU, shortcut", "", (2672, 2121, 1458), (57.3, 18.2, 5.1)),
                GuidelineRow("no ReLU, no shortcut", "", (2842, 2376, 1782), (66.3, 20.2, 5.4)),
            ),
            _g4,
        ),
    )
}


def build_benchmark(key: str, row: int, column: int) -> tuple[nn.Sequential, int, str]:
    """The network of ``row`` in ``column`` of table ``key``: 10 blocks, its input channels and
    its channel setting as text."""
    table = _table(key)
    if not 0 <= row < len(table.rows) or not 0 <= column < 3:
        raise ValueError(f"{key} has rows 0..{len(table.rows) - 1} and columns 0..2")
    blocks, in_channels, setting = [], 0, ""
    for _ in range(NUM_BLOCKS):
        block, in_channels, setting = table.block(row, table.channels[column])
        blocks.append(block)
    return nn.Sequential(*blocks).eval(), in_channels, setting


def _table(key: str) -> GuidelineTable:
    try:
        return GUIDELINE_TABLES[key.upper()]
    except KeyError:
        raise ValueError(
            f"unknown table {key!r}; choose from {', '.join(GUIDELINE_TABLES)}"
        ) from None


@dataclass
class GuidelinesConfig:
    """How to run the experiments; ``quick`` measures only the first column with fewer runs."""

    device: str = "cpu"
    quick: bool = False
    batch_size: int = 1
    threads: int | None = None
    engine: str = AUTO  # the fastest installed for the device (resolve_engine)
    runs: int | None = None  # default 15 (quick) or 30
    warmup: int | None = None  # default 2 (quick) or 5
    tables: Sequence[str] = ("G1", "G2", "G3", "G4")

    def validate(self) -> None:
        """Raise ``ValueError`` with an actionable message for any bad setting."""
        if not self.tables:
            raise ValueError(f"tables is empty; choose from {', '.join(GUIDELINE_TABLES)}")
        for key in self.tables:
            _table(key)
        resolve_device(self.device)
        engine_spec(self.engine, self.device)
        check_timing(self.runs, self.warmup, self.threads)
        # the widest input of a column is G2's g=8 row, about 2.8 times its base width
        widest = max(3 * _table(key).channels[c] for key in self.tables for c in self.columns)
        check_batch(self.batch_size, (widest, INPUT_SIZE, INPUT_SIZE))

    @property
    def columns(self) -> tuple[int, ...]:
        return (0,) if self.quick else (0, 1, 2)


@dataclass
class RowResult:
    """Our measurements of one row (one value per measured column) beside the paper's."""

    label: str
    settings: list[str]
    mflops: list[float]
    mac_m: list[float]  # memory access cost, millions of elements per image
    median_ms: list[float]
    iqr_ms: list[float]
    images_per_s: list[float]
    paper_setting: str
    paper_gpu: list[float]
    paper_arm: list[float]


@dataclass
class TableResult:
    """One table: which columns we measured and every row."""

    key: str
    title: str
    guideline: str
    columns: list[str]  # the columns we measured
    gpu_columns: list[str]
    arm_columns: list[str]
    rows: list[RowResult] = field(default_factory=list)

    def relative(self, series: str, column: int) -> list[float]:
        """Speed of each row divided by the first row's: ``ours``, ``gpu`` or ``arm``."""
        values = {
            "ours": [r.images_per_s[column] for r in self.rows],
            "gpu": [r.paper_gpu[column] for r in self.rows],
            "arm": [r.paper_arm[column] for r in self.rows],
        }[series]
        return [v / values[0] for v in values]


@dataclass
class GuidelineResult(SpeedResult):
    """The measured tables."""

    tables: list[TableResult] = field(default_factory=list)


def run_guidelines(
    config: GuidelinesConfig, progress: Callable[[str], None] | None = None
) -> GuidelineResult:
    """Measure every row of the chosen tables; rows of a column are timed interleaved."""
    config.validate()
    runs = config.runs or (15 if config.quick else 30)
    warmup = config.warmup if config.warmup is not None else (2 if config.quick else 5)
    settings = {**asdict(config), "runs": runs, "warmup": warmup, "input_size": INPUT_SIZE}
    settings["tables"] = [key.upper() for key in config.tables]
    settings["device"] = resolve_device(config.device).type
    settings["engine"] = resolve_engine(config.engine, config.device)
    result = GuidelineResult(machine_info(config.device), settings)
    note = progress or (lambda _msg: None)
    with torch_threads(config.threads) as threads:
        result.config["threads"] = threads
        for key in settings["tables"]:
            table = GUIDELINE_TABLES[key]
            out = TableResult(
                key,
                table.title,
                table.guideline,
                [table.columns[c] for c in config.columns],
                list(table.columns),
                list(table.arm_columns),
            )
            for row in table.rows:
                out.rows.append(
                    RowResult(
                        row.label,
                        [],
                        [],
                        [],
                        [],
                        [],
                        [],
                        row.paper_setting,
                        list(row.paper_gpu),
                        list(row.paper_arm),
                    )
                )
            for column in config.columns:
                note(f"{key} {table.columns[column]}: timing {len(table.rows)} rows")
                nets, inputs = {}, {}
                for i in range(len(table.rows)):
                    net, c_in, setting = build_benchmark(key, i, column)
                    stats = profile(net, (c_in, INPUT_SIZE, INPUT_SIZE))
                    measured = out.rows[i]
                    measured.settings.append(setting)
                    measured.mflops.append(stats.flops / 1e6)
                    measured.mac_m.append(stats.mac / 1e6)
                    nets[i] = net
                    inputs[i] = torch.randn(config.batch_size, c_in, INPUT_SIZE, INPUT_SIZE)
                (timings,) = time_engine(
                    settings["engine"],
                    nets,
                    {i: x[:1] for i, x in inputs.items()},
                    [inputs],
                    device=config.device,
                    threads=config.threads,
                    runs=runs,
                    warmup=warmup,
                )
                for i, t in timings.items():
                    out.rows[i].median_ms.append(t.median_ms)
                    out.rows[i].iqr_ms.append(t.iqr_ms)
                    out.rows[i].images_per_s.append(t.images_per_s(config.batch_size))
            result.tables.append(out)
    return result


def plot_table(table: TableResult, path: str | Path, device_label: str = "this device") -> Path:
    """Bar chart of each row's speed relative to the first row: ours, paper GPU, paper ARM."""
    from matplotlib.figure import Figure

    n = len(table.columns)
    fig = Figure(figsize=(max(8.0, 5.5 * n), 5.0), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    labels = [r.label for r in table.rows]
    x = torch.arange(len(labels)).numpy()
    for column, ax in enumerate(axes[0]):
        series = (
            (f"ours ({device_label}), {table.columns[column]}", "ours"),
            (f"paper GPU, {table.gpu_columns[column]}", "gpu"),
            (f"paper ARM, {table.arm_columns[column]}", "arm"),
        )
        for k, (label, name) in enumerate(series):
            ax.bar(x + (k - 1) * 0.27, table.relative(name, column), width=0.27, label=label)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(
            x,
            labels,
            rotation=20 if len(labels) > 4 else 0,
            ha="right" if len(labels) > 4 else "center",
        )
        ax.set_ylabel(f"speed relative to '{labels[0]}'")
        ax.legend(fontsize="small")
    fig.suptitle(f"{table.title} (FLOPs fixed per column)\n{table.guideline}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
