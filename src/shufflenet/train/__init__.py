"""Training and evaluation with the papers' recipe, exact resume and torchrun DDP.

:func:`fit` trains a registered model on ``digits`` or an ImageFolder tree as described by a
:class:`TrainConfig` and writes into the run directory, each file atomically:

- ``checkpoint.pt``: model, optimizer, scheduler, grad scaler, epoch, metrics history and every
  RNG state (of each process), after every epoch. Plain tensors and containers, read back with
  ``torch.load(weights_only=True)``;
- ``model.safetensors``: weights plus metadata (architecture, classes, preprocessing), for
  ``shufflenet.load``, ``shufflenet eval`` and ``predict``;
- ``metrics.csv`` (one line per finished epoch) and ``curves.png``.

**Recipe** (V1 paper and the official release): SGD with momentum 0.9 and Nesterov off, a
linear warm-up then linear decay to 0 per step (cosine optional), weight decay 4e-5 on
convolution and linear weights only (not on BN parameters or biases), label smoothing 0.1, and
an optional pass that re-estimates the BN statistics at the end.

**Exact resume.** Shuffling is a function of (seed, epoch) and the loader's worker seeds come
from a generator seeded the same way; augmentation in the main process and dropout draw from the
global RNGs, whose states the checkpoint stores. A run killed at any moment and resumed from its
last checkpoint therefore ends bitwise identical to an uninterrupted one (on CPU, same threads).

**Distributed.** Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`fit` joins the process group
(gloo on CPU, nccl on GPU), wraps the model in ``DistributedDataParallel`` and shards the data
with a ``DistributedSampler``; ``batch_size`` stays the global batch, so the same command line
trains the same recipe with any number of processes. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..data import DIGITS, load_data, load_eval_data
from ..io import atomic_path, write_text
from ..models import create_model, get_model_info
from ..weights import load, load_state_dict_checked, save

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_COLUMNS",
    "EvalResult",
    "FitResult",
    "TrainConfig",
    "evaluate",
    "evaluate_weights",
    "fit",
    "idle_threads",
    "lr_factor",
    "param_groups",
    "read_run_config",
    "resolve_device",
]

CHECKPOINT_FORMAT = "shufflenet-checkpoint/1"
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "seconds",
    "images_per_s",
)
SCHEDULES = ("linear", "cosine")
# Fields that may change when a run is resumed; every other field is the recipe.
RUNTIME_FIELDS = ("out", "device", "workers", "threads", "progress", "resume")
# The V1 paper: lr 0.5 for a batch of 1024, decayed linearly to 0.
PAPER_LR = 0.5
PAPER_BATCH = 1024
DIGITS_IMAGE_SIZE = 64
FOLDER_IMAGE_SIZE = 224

Log = Callable[[str], None]


@dataclass
class TrainConfig:
    """Everything that defines a training run; defaults train on the embedded digits.

    ``lr`` is the peak learning rate; ``None`` scales the paper's 0.5 for a batch of 1024
    linearly to ``batch_size`` (the global batch across processes): 0.015625 for 32.
    ``image_size`` ``None`` means 64 for digits and 224 for folders. ``workers`` ``None`` means 0
    for digits (held in memory) and ``min(8, cores per process)`` for folders.
    ``threads`` sets PyTorch's CPU threads for the run; ``None`` on CPU means
    :func:`idle_threads` (the checkpoint records the number, so a CLI resume reuses it).
    ``limit_train_batches`` caps the batches per epoch (quick trials). ``bn_recalibrate`` is
    the number of batches for the final BN-statistics pass, as the official release does
    (0: none). ``init_weights`` starts
    from a ``shufflenet.save`` file of the same architecture (fine-tuning; a classifier of
    another size is replaced).
    """

    model: str = "shufflenet_v2_x0_5"
    data: str = DIGITS
    out: str | None = None
    epochs: int = 15
    batch_size: int = 32
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    schedule: str = "linear"
    warmup_epochs: float = 1.0
    image_size: int | None = None
    augment: str = "auto"
    drop_rate: float = 0.0
    bn_recalibrate: int = 20
    init_weights: str | None = None
    limit_train_batches: int | None = None
    skip_bad_images: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None
    amp: bool = False
    channels_last: bool = False
    progress: bool = True
    resume: bool = False

    def validated(self) -> TrainConfig:
        """A copy with ``image_size`` and ``lr`` resolved; raises ``ValueError`` on a bad
        setting."""
        get_model_info(self.model)
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "limit_train_batches": self.limit_train_batches,
        }
        for name, value in positive.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        lr = PAPER_LR * self.batch_size / PAPER_BATCH if self.lr is None else self.lr
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.bn_recalibrate < 0:
            raise ValueError("weight_decay, warmup_epochs and bn_recalibrate must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        size = self.image_size
        if size is None:
            size = DIGITS_IMAGE_SIZE if self.data == DIGITS else FOLDER_IMAGE_SIZE
        if size < 32:
            raise ValueError(f"image size must be at least 32 (five stride-2 steps), got {size}")
        resolve_device(self.device)
        return replace(self, image_size=size, lr=lr)


@dataclass
class EvalResult:
    """Accuracy of a model on a labelled set; ``top1``/``top5`` are fractions.

    ``per_class`` is each class's top-1 (``None`` for a class without images).
    """

    top1: float
    top5: float
    loss: float
    num_images: int
    per_class: dict[str, float | None]
    class_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """Where a run wrote its outputs and how it ended (``is_main``: rank 0 of the run)."""

    run_dir: Path
    model_path: Path
    checkpoint_path: Path
    metrics_path: Path
    curves_path: Path
    epochs: int
    final: EvalResult
    history: list[dict[str, float]]
    seconds: float
    is_main: bool = True
    resumed_from: int | None = None
    skipped_images: list[str] = field(default_factory=list)


# -- small pure pieces --------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` -> this process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here (use --device cpu)")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device("cpu")


def idle_threads() -> int:
    """PyTorch's CPU threads, less the cores that other processes kept busy over the last minute.

    ShuffleNet is many small ops: an OpenMP thread that shares its core with another process
    stalls every op, which on a busy 2-core machine made two threads 20-70x slower than one.
    """
    threads = torch.get_num_threads()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, min(threads, (os.cpu_count() or threads) - busy))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear") -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` steps, then linear (or cosine) decay that reaches 0
    after the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: weights of convolutions and linear layers decay; BN and biases don't."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": list(random.getstate()[1]),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((3, tuple(state["python"]), None))


# -- distributed --------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


@contextmanager
def _distributed(device_name: str) -> Iterator[_Dist]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (and leave it afterwards)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield _Dist()
        return
    ctx = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ctx
    finally:
        if owns:
            dist.destroy_process_group()


def _all_sum(values: Tensor, ctx: _Dist) -> Tensor:
    if ctx.active:
        device = torch.device("cuda", ctx.local_rank) if dist.get_backend() == "nccl" else "cpu"
        values = values.to(device)
        dist.all_reduce(values)
    return values.cpu()


def _broadcast(value: Any, ctx: _Dist) -> Any:
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value: Any, ctx: _Dist) -> list[Any]:
    if not ctx.active:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


# -- evaluation ---------------------------------------------------------------------------
def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _to_device(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def _eval_counts(
    model: nn.Module,
    dataset: Dataset[Any],
    num_classes: int,
    *,
    batch_size: int,
    device: torch.device,
    workers: int,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> Tensor:
    """[loss sum, top-1 hits, top-5 hits, count, per-class hits..., per-class counts...]."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    sums = torch.zeros(4 + 2 * num_classes, dtype=torch.float64)
    k = min(5, num_classes)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            x, y = _to_device(x, device, channels_last), y.to(device)
            with _autocast(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")
            top = logits.topk(k, dim=1).indices
            hit1 = top[:, 0] == y
            hit5 = (top == y[:, None]).any(dim=1)
            sums[0] += loss.item()
            sums[1] += hit1.sum().item()
            sums[2] += hit5.sum().item()
            sums[3] += len(y)
            y_cpu = y.cpu()
            sums[4 : 4 + num_classes] += torch.bincount(
                y_cpu[hit1.cpu()], minlength=num_classes
            ).double()
            sums[4 + num_classes :] += torch.bincount(y_cpu, minlength=num_classes).double()
    model.train(was_training)
    return sums


def _eval_result(sums: Tensor, class_names: Sequence[str]) -> EvalResult:
    n = max(1.0, float(sums[3]))
    nc = len(class_names)
    hits, counts = sums[4 : 4 + nc], sums[4 + nc :]
    return EvalResult(
        top1=float(sums[1]) / n,
        top5=float(sums[2]) / n,
        loss=float(sums[0]) / n,
        num_images=int(sums[3]),
        per_class={
            name: float(hits[i] / counts[i]) if counts[i] else None
            for i, name in enumerate(class_names)
        },
        class_counts={name: int(counts[i]) for i, name in enumerate(class_names)},
    )


def evaluate(
    model: nn.Module,
    dataset: Dataset[Any],
    class_names: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 0,
    amp: bool = False,
    channels_last: bool = False,
) -> EvalResult:
    """Top-1, top-5, mean cross-entropy and per-class accuracy of ``model`` on ``dataset``.

    ``dataset`` yields (input tensor, label index); top-5 counts a hit within the
    ``min(5, classes)`` best scores.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sums = _eval_counts(
        model,
        dataset,
        len(class_names),
        batch_size=batch_size,
        device=dev,
        workers=workers,
        amp_dtype=_amp_dtype(dev, amp),
        channels_last=channels_last,
    )
    return _eval_result(sums, class_names)


class _Relabel:
    """Map a dataset's label index to the model's (picklable, for loader workers)."""

    def __init__(self, mapping: list[int]) -> None:
        self.mapping = mapping

    def __call__(self, label: int) -> int:
        return self.mapping[label]


def evaluate_weights(
    path: str | os.PathLike[str],
    data: str | None = None,
    *,
    batch_size: int = 256,
    device: str = "auto",
    workers: int | None = None,
    skip_bad_images: bool = False,
) -> tuple[EvalResult, str]:
    """Evaluate a ``shufflenet.save`` file on ``data`` (default: the data it was trained on).

    ``data`` is ``"digits"`` (its val split), an ImageFolder root (its ``val/``) or a folder of
    class folders. The pipeline comes from the file's ``preprocessing`` metadata. Returns the
    result and the data it was computed on.
    """
    model = load(path)
    meta = model.weights_metadata
    if data is None:
        data = meta.get("data")
        if not data:
            raise ValueError(f"{path} does not record its data; pass --data digits or a folder")
    workers = _default_workers(data, 1) if workers is None else workers
    dataset, classes, _ = load_eval_data(
        data, meta["preprocessing"], skip_bad_images=skip_bad_images, workers=max(1, workers)
    )
    names = meta.get("class_names") or classes
    if len(names) != model.num_classes:
        raise ValueError(f"{path} has {model.num_classes} classes, the data has {len(names)}")
    if set(classes) != set(names):
        raise ValueError(
            f"the classes in {data} ({', '.join(classes[:5])}...) are not the model's "
            f"({', '.join(names[:5])}...)"
        )
    if classes != list(names):
        dataset.target_transform = _Relabel([names.index(c) for c in classes])  # type: ignore[attr-defined]
    result = evaluate(model, dataset, names, batch_size=batch_size, device=device, workers=workers)
    return result, data


# -- files of a run -----------------------------------------------------------------------
def _default_run_dir(model: str) -> Path:
    base = Path("runs") / model
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _default_workers(data: str, world_size: int) -> int:
    if data == DIGITS:
        return 0
    return min(8, max(1, (os.cpu_count() or 1) // world_size))


def _write_metrics(path: Path, history: Sequence[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say so in one line
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a shufflenet training checkpoint")
    return ckpt


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The config of the run in ``run_dir``, from its checkpoint (to resume it)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {run_dir} ({path.name} not found)")
    saved = _read_checkpoint(path)["config"]
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def _recipe_differences(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    return [
        f"{f.name} {getattr(config, f.name)!r} (checkpoint: {saved.get(f.name)!r})"
        for f in fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS and getattr(config, f.name) != saved.get(f.name)
    ]


# -- the run ------------------------------------------------------------------------------
class _Run:
    """One training run: state, loaders and the per-epoch work of :func:`fit`."""

    def __init__(self, config: TrainConfig, ctx: _Dist, log: Log | None) -> None:
        self.config = config
        self.ctx = ctx
        self._log = log
        self.device = resolve_device(config.device, ctx.local_rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = _amp_dtype(self.device, config.amp)
        self.workers = (
            _default_workers(config.data, ctx.world_size)
            if config.workers is None
            else config.workers
        )
        if config.batch_size % ctx.world_size:
            raise ValueError(
                f"batch size {config.batch_size} does not split over {ctx.world_size} processes"
            )
        self.local_batch = config.batch_size // ctx.world_size
        out = config.out if config.out is not None else str(_default_run_dir(config.model))
        self.run_dir = Path(_broadcast(out, ctx))
        self.paths = {
            name: self.run_dir / name
            for name in ("checkpoint.pt", "model.safetensors", "metrics.csv", "curves.png")
        }

    def log(self, message: str) -> None:
        if self._log is not None and self.ctx.is_main:
            self._log(message)

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        ckpt_path = self.paths["checkpoint.pt"]
        self.checkpoint: dict[str, Any] | None = None
        if c.resume:
            if not ckpt_path.is_file():
                raise FileNotFoundError(
                    f"--resume: no checkpoint in {self.run_dir} (train without --resume first)"
                )
            self.checkpoint = _read_checkpoint(ckpt_path)
            diffs = _recipe_differences(c, self.checkpoint["config"])
            if diffs:
                raise ValueError(
                    "--resume continues a run as it was started; these settings differ from "
                    f"its checkpoint: {'; '.join(diffs)}"
                )
        elif ckpt_path.exists():
            raise ValueError(
                f"{self.run_dir} already holds a run; continue it with --resume or choose "
                "another --out"
            )
        self.data = load_data(
            c.data,
            cast(int, c.image_size),
            augment=c.augment,
            skip_bad_images=c.skip_bad_images,
            workers=max(1, self.workers),
        )
        if self.data.num_train < c.batch_size:
            raise ValueError(
                f"{self.data.num_train} training images is fewer than one batch of "
                f"{c.batch_size}; lower --batch-size"
            )
        self.classes = self.data.classes
        _seed_all(c.seed)
        kwargs: dict[str, Any] = {"num_classes": len(self.classes)}
        if c.drop_rate:
            kwargs["drop_rate"] = c.drop_rate
        self.model = create_model(c.model, **kwargs)
        if c.init_weights and self.checkpoint is None:
            self._init_from(c.init_weights)
        self.model.to(self.device)
        if c.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.ctx.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, c.weight_decay), lr=cast(float, c.lr), momentum=c.momentum
        )
        # What a DistributedSampler with drop_last gives each process, in whole batches.
        n_batches = self.data.num_train // self.ctx.world_size // self.local_batch
        self.steps_per_epoch = min(n_batches, c.limit_train_batches or n_batches)
        total = c.epochs * self.steps_per_epoch
        # A short warm-up: warmup_epochs, but at most a fifth of the run.
        warmup = min(round(c.warmup_epochs * self.steps_per_epoch), total // 5)

        def factor(step: int) -> float:
            return lr_factor(step, total, warmup, c.schedule)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        # Each process draws its own augmentation and dropout.
        _seed_all(c.seed + self.ctx.rank)
        if self.checkpoint is not None:
            self._restore(self.checkpoint)

    def _init_from(self, path: str) -> None:
        source = load(path)
        if source.model_config.get("name") != self.config.model:
            raise ValueError(
                f"--init-weights {path} holds {source.model_config.get('name')}, "
                f"not {self.config.model}"
            )
        state = source.state_dict()
        if source.num_classes != self.model.num_classes:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            state.update({k: v for k, v in self.model.state_dict().items() if k.startswith("fc.")})
        load_state_dict_checked(self.model, state)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        states = ckpt["rng"]
        if len(states) == self.ctx.world_size:
            _set_rng_state(states[self.ctx.rank])
        else:  # another process count: exactness is lost anyway, keep runs distinct
            _seed_all(self.config.seed + 1000 * self.start_epoch + self.ctx.rank)

    # -- loaders --------------------------------------------------------------------------
    def _train_loader(self, epoch: int) -> DataLoader[Any]:
        """This process's shard of the training set, shuffled as a function of (seed, epoch)."""
        dataset = self.data.train
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            batch_size=self.local_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker if self.workers else None,
            generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch),
        )

    # -- one epoch ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """Returns (mean train loss, images/s, lr at the end)."""
        from tqdm.auto import tqdm

        c = self.config
        self.net.train()
        loader = self._train_loader(epoch)
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{c.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not (c.progress and self.ctx.is_main),
        )
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            x = _to_device(x, self.device, c.channels_last)
            y = y.to(self.device, non_blocking=True)
            with _autocast(self.device, self.amp_dtype):
                loss = self.criterion(self.net(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            bar.update()
            if step % 5 == 0 or step + 1 == self.steps_per_epoch:
                running = loss_sum.item() / seen
                if not math.isfinite(running):
                    raise ValueError(
                        f"the loss became {running} in epoch {epoch + 1}; lower --lr "
                        "(or turn off --amp)"
                    )
                rate = seen * self.ctx.world_size / (time.perf_counter() - start)
                stats = {
                    "loss": f"{running:.4f}",
                    "lr": f"{self.scheduler.get_last_lr()[0]:.4g}",
                    "img/s": f"{rate:.0f}",
                }
                bar.set_postfix(stats, refresh=False)
        bar.close()
        elapsed = time.perf_counter() - start
        totals = _all_sum(
            torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64), self.ctx
        )
        train_loss = float(totals[0] / max(1.0, float(totals[1])))
        return train_loss, float(totals[1]) / elapsed, float(self.scheduler.get_last_lr()[0])

    def validate(self) -> EvalResult:
        """Accuracy on the val set, each process taking every world_size-th image."""
        val = self.data.val
        if self.ctx.active:
            val = Subset(val, range(self.ctx.rank, len(val), self.ctx.world_size))  # type: ignore[arg-type]
        sums = _eval_counts(
            self.model,
            val,
            len(self.classes),
            batch_size=max(self.local_batch, 128),
            device=self.device,
            workers=self.workers,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
        )
        return _eval_result(_all_sum(sums, self.ctx), self.classes)

    def recalibrate_bn(self, batches: int) -> None:
        """Re-estimate BN statistics as exact averages over ``batches`` batches of training
        images (eval pipeline, fixed order); every process uses the same batches."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        loader = DataLoader(
            self.data.train_plain,
            batch_size=self.local_batch,
            shuffle=True,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        self.model.train()
        with torch.no_grad():
            for i, (x, _) in enumerate(loader):
                if i >= batches:
                    break
                with _autocast(self.device, self.amp_dtype):
                    self.model(_to_device(x, self.device, self.config.channels_last))
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum

    # -- outputs --------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        rng = _gather(_rng_state(), self.ctx)  # a collective: every process calls it
        if not self.ctx.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "epoch": epoch,
            "world_size": self.ctx.world_size,
            "classes": self.classes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": self.history,
        }
        with atomic_path(self.paths["checkpoint.pt"]) as tmp:
            torch.save(state, tmp)

    def save_model(self, epoch: int, result: EvalResult) -> None:
        if not self.ctx.is_main:
            return
        c = self.config
        data = c.data if c.data == DIGITS else str(Path(c.data).resolve())
        save(
            self.model,
            self.paths["model.safetensors"],
            class_names=self.classes,
            preprocessing=self.data.preprocessing,
            data=data,
            epoch=epoch,
            val_top1=result.top1,
            val_top5=result.top5,
        )

    def write_reports(self, final_top1: float | None = None) -> None:
        if not self.ctx.is_main:
            return
        from ..plots import plot_curves

        _write_metrics(self.paths["metrics.csv"], self.history)
        plot_curves(self.history, self.paths["curves.png"], final_top1)

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> FitResult:
        c = self.config
        started = time.perf_counter()
        self.setup()
        skipped = [str(p) for p, _ in self.data.skipped]
        if skipped:
            self.log(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
        self.log(
            f"training {c.model} on {c.data}: {self.data.num_train} train / "
            f"{self.data.num_val} val images, {len(self.classes)} classes, "
            f"{c.image_size}x{c.image_size}, {c.epochs} epochs of {self.steps_per_epoch} "
            f"batches of {c.batch_size}, lr {c.lr:g}, {self.device.type}"
            + (
                f" ({_plural(torch.get_num_threads(), 'thread')})"
                if self.device.type == "cpu"
                else ""
            )
            + (f" x {self.ctx.world_size} processes" if self.ctx.active else "")
            + f"; run dir {self.run_dir}"
        )
        if self.start_epoch:
            self.log(f"resuming after epoch {self.start_epoch} from {self.paths['checkpoint.pt']}")
        result: EvalResult | None = None
        for epoch in range(self.start_epoch, c.epochs):
            epoch_start = time.perf_counter()
            train_loss, rate, lr = self.train_epoch(epoch)
            result = self.validate()
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": result.loss,
                "val_top1": result.top1,
                "val_top5": result.top5,
                "lr": lr,
                "seconds": time.perf_counter() - epoch_start,
                "images_per_s": rate,
            }
            self.history.append(row)
            self.save_checkpoint(epoch + 1)
            self.write_reports()
            self.save_model(epoch + 1, result)
            self.log(
                f"epoch {epoch + 1:>{len(str(c.epochs))}}/{c.epochs}  "
                f"train loss {train_loss:.4f}  val loss {result.loss:.4f}  "
                f"top-1 {100 * result.top1:6.2f}%  top-5 {100 * result.top5:6.2f}%  "
                f"{row['seconds']:.1f} s ({rate:.0f} img/s)"
            )
        if result is None or c.bn_recalibrate:
            if c.bn_recalibrate:
                self.recalibrate_bn(c.bn_recalibrate)
            result = self.validate()
            if c.bn_recalibrate:
                self.log(
                    f"BN statistics re-estimated on {c.bn_recalibrate} batches: "
                    f"val loss {result.loss:.4f}  top-1 {100 * result.top1:.2f}%  "
                    f"top-5 {100 * result.top5:.2f}%"
                )
            self.write_reports(result.top1 if c.bn_recalibrate else None)
            self.save_model(c.epochs, result)
        return FitResult(
            run_dir=self.run_dir,
            model_path=self.paths["model.safetensors"],
            checkpoint_path=self.paths["checkpoint.pt"],
            metrics_path=self.paths["metrics.csv"],
            curves_path=self.paths["curves.png"],
            epochs=c.epochs,
            final=result,
            history=self.history,
            seconds=time.perf_counter() - started,
            is_main=self.ctx.is_main,
            resumed_from=self.start_epoch if c.resume else None,
            skipped_images=skipped,
        )


def fit(config: TrainConfig, log: Log | None = None) -> FitResult:
    """Train ``config.model`` as configured; ``log`` receives one line per epoch (rank 0).

    Under torchrun every process calls this with the same config. Raises ``ValueError`` /
    ``FileNotFoundError`` for bad settings or data, before any training.
    """
    config = config.validated()
    threads = torch.get_num_threads()
    if config.threads is None and resolve_device(config.device).type == "cpu":
        config = replace(config, threads=idle_threads())
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        with _distributed(config.device) as ctx:
            return _Run(config, ctx, log).run()
    finally:
        torch.set_num_threads(threads)
