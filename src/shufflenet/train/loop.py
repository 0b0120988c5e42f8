""":func:`fit`: one training run, from its config to the files in its run directory."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..data import DIGITS, load_data
from ..device import idle_threads, resolve_device, torch_threads
from ..evaluate import (
    EvalResult,
    autocast,
    autocast_dtype,
    eval_counts,
    eval_result,
    loader_workers,
    to_device,
)
from ..weights import save
from .config import TrainConfig, check_resume_classes, checkpoint_to_resume
from .distributed import Dist, all_sum, broadcast, distributed, gather
from .fast import TrainFastModel, train_model
from .files import RunFiles, default_run_dir, hold_run_dir, write_checkpoint, write_metrics
from .model import create_run_model, training_loss
from .rng import rng_state, seed_all, seed_worker, set_rng_state
from .schedule import (
    MAX_EPOCHS,
    MIN_EPOCHS,
    OPTIMIZERS,
    STEP_BUDGET,
    choose_epochs,
    lr_scheduler,
    param_groups,
)

__all__ = ["FitResult", "StepProgress", "fit"]

Log = Callable[[str], None]
# The running loss, lr and rate are measured every this many steps (reading the loss waits for
# the device) and at the last step of each epoch.
MEASURE_EVERY = 5


@dataclass(frozen=True)
class StepProgress:
    """Where a run is after an optimizer step, as :func:`fit` reports it to ``progress``.

    ``step`` of ``steps`` (per epoch) and ``epoch`` of ``epochs`` count from 1. ``loss`` (this
    epoch's mean training loss so far, on this process's batches), ``lr`` and ``images_per_s``
    (all processes) are measured every :data:`MEASURE_EVERY` steps and at the epoch's last
    step, ``None`` in between.
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    lr: float | None = None
    images_per_s: float | None = None


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


def fit(
    config: TrainConfig,
    log: Log | None = None,
    progress: Callable[[StepProgress], None] | None = None,
) -> FitResult:
    """Train ``config.model`` as configured; ``log`` receives one line per epoch and
    ``progress`` a :class:`StepProgress` after every optimizer step (rank 0 only; no
    ``progress`` calls when ``config.progress`` is False).

    Under torchrun every process calls this with the same config. Raises ``ValueError`` /
    ``OSError`` for bad settings, data or run dir, before any training. The run holds a lock
    on its run dir throughout: a second run into the same dir fails at once.
    """
    config = config.validated()
    if config.threads is None and resolve_device(config.device).type == "cpu":
        config = replace(config, threads=idle_threads())
    with torch_threads(config.threads), distributed(config.device) as ctx:
        out = config.out if config.out is not None else str(default_run_dir(config.model))
        files = RunFiles(Path(broadcast(out, ctx)))
        with hold_run_dir(files, ctx):
            return _Run(config, ctx, files, log, progress).run()


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


class _Run:
    """One training run of :func:`fit`: everything it needs, built and checked (or restored
    from the checkpoint) by the constructor, then the per-epoch work."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: Dist,
        files: RunFiles,
        log: Log | None,
        progress: Callable[[StepProgress], None] | None,
    ) -> None:
        self.config, self.ctx, self.files = config, ctx, files
        self._log = log
        self._progress = progress if config.progress and ctx.is_main else None
        self.started = time.perf_counter()
        self._place()
        checkpoint = checkpoint_to_resume(config, files)
        self._load_data(checkpoint)
        self._plan_length(checkpoint)
        seed_all(config.seed)  # the same initial weights in every process
        self._build_model(fine_tune=checkpoint is None)
        self._build_step()
        seed_all(config.seed + ctx.rank)  # each process draws its own augmentation and dropout
        self.start_epoch = 0
        self.history: list[dict[str, float]] = []
        if checkpoint is not None:
            self.start_epoch, self.history = self._restore(checkpoint)

    # -- the constructor's steps ----------------------------------------------------------
    def _place(self) -> None:
        """The device, mixed precision, loader processes and this process's share of a batch."""
        c, ctx = self.config, self.ctx
        self.device = resolve_device(c.device, ctx.local_rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = autocast_dtype(self.device, c.amp)
        self.workers = loader_workers(c.data, ctx.world_size) if c.workers is None else c.workers
        if c.batch_size % ctx.world_size:
            raise ValueError(
                f"batch size {c.batch_size} does not split over {ctx.world_size} processes"
            )
        self.local_batch = c.batch_size // ctx.world_size

    def _load_data(self, checkpoint: dict[str, Any] | None) -> None:
        """The datasets and their classes, which a resumed run must share with its checkpoint."""
        c = self.config
        self.data = load_data(
            c.data,
            cast(int, c.image_size),
            augment=c.augment,
            skip_bad_images=c.skip_bad_images,
            workers=max(1, self.workers),
        )
        if checkpoint is not None:
            check_resume_classes(checkpoint["classes"], self.data.classes, c.data)
        if self.data.num_train < c.batch_size:
            raise ValueError(
                f"{self.data.num_train} training images is fewer than one batch of "
                f"{c.batch_size}; lower batch_size"
            )
        self.classes = self.data.classes

    def _plan_length(self, checkpoint: dict[str, Any] | None) -> None:
        """Steps per epoch and epochs: the config's, else a resumed run's, else chosen from
        the data (then logged); the config records them."""
        c = self.config
        # What a DistributedSampler with drop_last gives each process, in whole batches.
        n_batches = self.data.num_train // self.ctx.world_size // self.local_batch
        self.steps_per_epoch = min(n_batches, c.limit_train_batches or n_batches)
        self.epochs_chosen = c.epochs is None and checkpoint is None
        saved = checkpoint["config"].get("epochs") if checkpoint else None
        self.epochs: int = c.epochs or saved or choose_epochs(self.steps_per_epoch)
        self.config = replace(c, epochs=self.epochs)

    def _build_model(self, fine_tune: bool) -> None:
        """The model, the module the optimizer updates (the model, or with ``fast`` its
        shuffle-free training form: the same parameter names and order, state dicts in the
        standard layout) and the module the step runs (DDP's wrapper under torchrun)."""
        c = self.config
        self.model = create_run_model(c, len(self.classes), fine_tune=fine_tune)
        self.model.to(self.device)
        if c.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.fast: TrainFastModel | None = train_model(self.model) if c.fast else None
        self.trained: nn.Module = self.model if self.fast is None else self.fast
        self.net: nn.Module = self.trained
        if self.ctx.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.trained, device_ids=ids)
        # Loss weights of the auxiliary classifiers (SE-ShuffleNet v2-164), read from the model
        # itself, not the DDP wrapper.
        self.aux_loss_weights = tuple(getattr(self.model, "aux_loss_weights", ()))

    def _build_step(self) -> None:
        """The optimizer (a row of ``OPTIMIZERS``, its state saved in the standard layout), the
        lr scheduler, the grad scaler and the loss, compiled with ``compile``."""
        c = self.config
        groups = param_groups(self.trained, c.weight_decay)
        self.optimizer = OPTIMIZERS[c.optimizer](groups, cast(float, c.lr), c.momentum)
        if self.fast is not None:
            self.fast.register_optimizer(self.optimizer)
        self.scheduler = lr_scheduler(
            self.optimizer, self.epochs, self.steps_per_epoch, c.warmup_epochs, c.schedule
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        self.step_loss = self._loss
        if c.compile:
            self.step_loss = torch.compile(self._loss)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (what ``compile`` compiles, with its backward)."""
        with autocast(self.device, self.amp_dtype):
            return training_loss(self.criterion, self.net(x), y, self.aux_loss_weights)

    def sync_model(self) -> None:
        """Copy the fast form's weights and statistics into the standard model."""
        if self.fast is not None:
            self.model.load_state_dict(self.fast.state_dict())  # in the standard layout

    def log(self, message: str) -> None:
        if self._log is not None and self.ctx.is_main:
            self._log(message)

    def _restore(self, ckpt: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
        """Load the checkpoint's states (the standard layout, which the trained module and its
        optimizer speak in either form); returns its epoch and history."""
        self.trained.load_state_dict(ckpt["model"])
        self.sync_model()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        epoch = int(ckpt["epoch"])
        states = ckpt["rng"]
        if len(states) == self.ctx.world_size:
            set_rng_state(states[self.ctx.rank])
        else:  # another process count: exactness is lost anyway, keep runs distinct
            seed_all(self.config.seed + 1000 * epoch + self.ctx.rank)
        return epoch, list(ckpt["history"])

    # -- one epoch ------------------------------------------------------------------------
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
            worker_init_fn=seed_worker if self.workers else None,
            generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch),
        )

    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """Returns (mean train loss, images/s, lr at the end)."""
        c = self.config
        self.net.train()
        loader = self._train_loader(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            x = to_device(x, self.device, c.channels_last)
            y = y.to(self.device, non_blocking=True)
            loss = self.step_loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            where = StepProgress(epoch + 1, self.epochs, step + 1, self.steps_per_epoch)
            if step % MEASURE_EVERY == 0 or step + 1 == self.steps_per_epoch:
                running = loss_sum.item() / seen
                if not math.isfinite(running):
                    raise ValueError(
                        f"the loss became {running} in epoch {epoch + 1}; lower lr "
                        "(or turn off amp)"
                    )
                rate = seen * self.ctx.world_size / (time.perf_counter() - start)
                lr = float(self.scheduler.get_last_lr()[0])
                where = replace(where, loss=running, lr=lr, images_per_s=rate)
            if self._progress is not None:
                self._progress(where)
        elapsed = time.perf_counter() - start
        totals = all_sum(
            torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64), self.ctx
        )
        train_loss = float(totals[0] / max(1.0, float(totals[1])))
        return train_loss, float(totals[1]) / elapsed, float(self.scheduler.get_last_lr()[0])

    def validate(self) -> EvalResult:
        """Accuracy on the val set, each process taking every world_size-th image."""
        val = self.data.val
        if self.ctx.active:
            val = Subset(val, range(self.ctx.rank, len(val), self.ctx.world_size))  # type: ignore[arg-type]
        sums = eval_counts(
            self.model,
            val,
            len(self.classes),
            batch_size=max(self.local_batch, 128),
            device=self.device,
            workers=self.workers,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
        )
        return eval_result(all_sum(sums, self.ctx), self.classes)

    def recalibrate_bn(self, batches: int) -> None:
        """Re-estimate BN statistics as exact averages over ``batches`` batches of training
        images (eval pipeline, fixed order); every process uses the same batches. Frozen
        BatchNorms (``freeze_stages``), which stay in eval mode, keep theirs."""
        self.model.train()
        bns = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]
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
        with torch.no_grad():
            for i, (x, _) in enumerate(loader):
                if i >= batches:
                    break
                with autocast(self.device, self.amp_dtype):
                    self.model(to_device(x, self.device, self.config.channels_last))
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum

    # -- outputs --------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        rng = gather(rng_state(), self.ctx)  # a collective: every process calls it
        if not self.ctx.is_main:
            return
        state = {
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
        write_checkpoint(self.files.checkpoint, state)

    def save_model(self, epoch: int, result: EvalResult) -> None:
        if not self.ctx.is_main:
            return
        c = self.config
        data = c.data if c.data == DIGITS else str(Path(c.data).resolve())
        save(
            self.model,
            self.files.model,
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

        write_metrics(self.files.metrics, self.history)
        plot_curves(self.history, self.files.curves, final_top1)

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> FitResult:
        c = self.config
        skipped = [str(p) for p, _ in self.data.skipped]
        if skipped:
            self.log(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
        self.log(
            f"training {c.model} on {c.data}: {self.data.num_train} train / "
            f"{self.data.num_val} val images, {len(self.classes)} classes, "
            f"{c.image_size}x{c.image_size}, {self.epochs} epochs of {self.steps_per_epoch} "
            f"batches of {c.batch_size}, lr {c.lr:g}, {self.device.type}"
            + (
                f" ({_plural(torch.get_num_threads(), 'thread')})"
                if self.device.type == "cpu"
                else ""
            )
            + (f" x {self.ctx.world_size} processes" if self.ctx.active else "")
            + f"; run dir {self.files.dir}"
        )
        if self.epochs_chosen:
            self.log(
                f"epochs: {self.epochs}, chosen for about {STEP_BUDGET} optimizer steps at "
                f"{self.steps_per_epoch} per epoch ({MIN_EPOCHS} to {MAX_EPOCHS}; --epochs sets it)"
            )
        if self.start_epoch:
            self.log(f"resuming after epoch {self.start_epoch} from {self.files.checkpoint}")
        result: EvalResult | None = None
        for epoch in range(self.start_epoch, self.epochs):
            epoch_start = time.perf_counter()
            train_loss, rate, lr = self.train_epoch(epoch)
            self.sync_model()  # validation and the files see the standard model
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
                f"epoch {epoch + 1:>{len(str(self.epochs))}}/{self.epochs}  "
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
            self.save_model(self.epochs, result)
        return FitResult(
            run_dir=self.files.dir,
            model_path=self.files.model,
            checkpoint_path=self.files.checkpoint,
            metrics_path=self.files.metrics,
            curves_path=self.files.curves,
            epochs=self.epochs,
            final=result,
            history=self.history,
            seconds=time.perf_counter() - self.started,
            is_main=self.ctx.is_main,
            resumed_from=self.start_epoch if c.resume else None,
            skipped_images=skipped,
        )
