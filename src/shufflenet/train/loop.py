""":func:`fit`: one training run, from its config to the files in its run directory."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import DIGITS, batch_mixer, load_data
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
from ..models.base import AuxOutputs
from ..weights import save
from .calibrate import recalibrate_bn
from .config import TrainConfig, check_resume_classes, checkpoint_to_resume
from .distributed import Dist, all_sum, broadcast, distributed, gather
from .ema import RunEMA
from .fast import TrainFastModel, train_model
from .files import RunFiles, default_run_dir, hold_run_dir, write_checkpoint, write_metrics
from .model import create_run_model, training_loss
from .progress import FitResult, StepProgress
from .qat import QATNet
from .recipe import OVERRIDABLE, RECIPES, describe_recipe, ema_decay_for
from .rng import rng_state, seed_all, seed_worker, set_rng_state
from .sampler import RepeatSampler
from .schedule import (
    MAX_EPOCHS,
    MIN_EPOCHS,
    OPTIMIZERS,
    choose_epochs,
    lr_scheduler,
    param_groups,
    warmup_steps,
)
from .teacher import Teacher, distill_loss, load_teacher

__all__ = ["FitResult", "StepProgress", "fit"]

Log = Callable[[str], None]
# The running loss, lr and rate are measured every this many steps (reading the loss waits for
# the device) and at the last step of each epoch.
MEASURE_EVERY = 5


def fit(
    config: TrainConfig,
    log: Log | None = None,
    progress: Callable[[StepProgress], None] | None = None,
) -> FitResult:
    """Train ``config.model`` as configured; ``log`` receives one line per epoch and
    ``progress`` a :class:`StepProgress` after every optimizer step (rank 0 only; no
    ``progress`` calls when ``config.progress`` is False). The first line logged names the
    recipe and its parts, and which of them ``config`` sets over it.

    Under torchrun every process calls this with the same config. Raises ``ValueError`` /
    ``OSError`` for bad settings, data or run dir, before any training. The run holds a lock
    on its run dir throughout: a second run into the same dir fails at once.
    """
    given = [] if config.resume else [n for n in OVERRIDABLE if getattr(config, n) is not None]
    config = config.validated()
    if config.threads is None and resolve_device(config.device).type == "cpu":
        config = replace(config, threads=idle_threads())
    with torch_threads(config.threads), distributed(config.device) as ctx:
        out = config.out if config.out is not None else str(default_run_dir(config.model))
        files = RunFiles(Path(broadcast(out, ctx)))
        with hold_run_dir(files, ctx):
            return _Run(config, ctx, files, log, progress, given).run()


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
        given: list[str] | None = None,
    ) -> None:
        self.config, self.ctx, self.files = config, ctx, files
        self.given = given or []
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
            train_size=c.train_size,
            val_resize=c.val_resize,
            auto_augment=cast(str, c.auto_augment),
            random_erase=cast(float, c.random_erase),
        )
        if checkpoint is not None:
            check_resume_classes(checkpoint["classes"], self.data.classes, c.data)
        if self.data.num_train < c.batch_size:
            raise ValueError(
                f"{self.data.num_train} training images is fewer than one batch of "
                f"{c.batch_size}; lower batch_size"
            )
        self.classes = self.data.classes
        self.sampler = RepeatSampler(
            self.data.num_train,
            cast(int, c.repeats),
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            seed=c.seed,
        )

    def _plan_length(self, checkpoint: dict[str, Any] | None) -> None:
        """Steps per epoch and epochs (the config's, else a resumed run's, else chosen from the
        data by the recipe's step budget, then logged) and the EMA's decay (likewise, from the
        run's length); the config records them."""
        c = self.config
        # What the sampler gives each process (its share of the set), in whole batches.
        n_batches = self.data.num_train // self.ctx.world_size // self.local_batch
        self.steps_per_epoch = min(n_batches, c.limit_train_batches or n_batches)
        self.epochs_chosen = c.epochs is None and checkpoint is None
        saved = checkpoint["config"] if checkpoint else {}
        self.recipe = c.recipe_name
        self.budget = RECIPES[self.recipe].step_budget
        self.epochs: int = (
            c.epochs or saved.get("epochs") or choose_epochs(self.steps_per_epoch, self.budget)
        )
        decay = c.ema_decay
        if decay is None:
            decay = saved.get("ema_decay", ema_decay_for(self.epochs * self.steps_per_epoch))
        self.config = replace(c, epochs=self.epochs, ema_decay=decay)

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
        if c.qat:  # the QAT graph speaks the fast form's protocol (train/qat.py)
            steps, size = self.epochs * self.steps_per_epoch, cast(int, c.train_size)
            self.fast = cast(TrainFastModel, QATNet(self.model, size, steps))
        self.trained: nn.Module = self.model if self.fast is None else self.fast
        self.net: nn.Module = self.trained
        if self.ctx.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.trained, device_ids=ids)
        # Loss weights of the auxiliary classifiers (SE-ShuffleNet v2-164), read from the model
        # itself, not the DDP wrapper.
        self.aux_loss_weights = tuple(getattr(self.model, "aux_loss_weights", ()))
        # The EMA of the weights, and the model that is validated and saved (the EMA's if on).
        warmup = warmup_steps(self.epochs, self.steps_per_epoch, cast(float, c.warmup_epochs))
        self.ema: RunEMA | None = None
        if c.ema_decay:
            self.ema = RunEMA(self.trained, self.model, self.fast, c.ema_decay, warmup)
        self.eval_model: nn.Module = self.model if self.ema is None else self.ema.model
        self.teacher: Teacher | None = None
        if c.teacher:
            self.teacher = load_teacher(
                c.teacher, self.classes, self.data.preprocessing, self.device
            )
            if c.channels_last:
                self.teacher.to(memory_format=torch.channels_last)

    def _build_step(self) -> None:
        """The optimizer (a row of ``OPTIMIZERS``, its state saved in the standard layout), the
        lr scheduler, the grad scaler and the loss, compiled with ``compile``."""
        c = self.config  # validated: the recipe filled every None
        groups = param_groups(self.trained, cast(float, c.weight_decay))
        self.optimizer = OPTIMIZERS[cast(str, c.optimizer)](groups, cast(float, c.lr), c.momentum)
        if self.fast is not None:
            self.fast.register_optimizer(self.optimizer)
        self.scheduler = lr_scheduler(
            self.optimizer,
            self.epochs,
            self.steps_per_epoch,
            cast(float, c.warmup_epochs),
            cast(str, c.schedule),
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cast(float, c.label_smoothing))
        self.mix = batch_mixer(cast(float, c.mixup), cast(float, c.cutmix), len(self.classes))
        self.step_loss = self._loss
        if c.compile:
            self.step_loss = torch.compile(self._loss)

    def _loss(
        self, x: torch.Tensor, y: torch.Tensor, taught: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The training loss of one batch (what ``compile`` compiles, with its backward): the
        label loss (class indices or mixed labels ``y``), mixed with the distillation loss
        towards the teacher's logits ``taught`` if given."""
        with autocast(self.device, self.amp_dtype):
            output = self.net(x)
            loss = training_loss(self.criterion, output, y, self.aux_loss_weights)
        if taught is None:
            return loss
        c = self.config
        logits = output.logits if isinstance(output, AuxOutputs) else output
        kd = distill_loss(logits, taught, c.distill_temperature)
        return (1.0 - c.distill_alpha) * loss + c.distill_alpha * kd

    def sync_model(self) -> None:
        """Copy the fast form's weights and statistics into the standard model, and the EMA
        into the model that is validated and saved."""
        if self.fast is not None:
            self.model.load_state_dict(self.fast.state_dict())  # in the standard layout
        if self.ema is not None:
            self.ema.sync()

    def log(self, message: str) -> None:
        if self._log is not None and self.ctx.is_main:
            self._log(message)

    def _restore(self, ckpt: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
        """Load the checkpoint's states (the standard layout, which the trained module and its
        optimizer speak in either form); returns its epoch and history."""
        self.trained.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if "ema" not in ckpt:
                raise ValueError("resume: the checkpoint holds no average of the weights (EMA)")
            self.ema.load_state_dict(ckpt["ema"])
        if "sampler" in ckpt:
            self.sampler.load_state_dict(ckpt["sampler"])
        self.sync_model()
        epoch = int(ckpt["epoch"])
        states = ckpt["rng"]
        if len(states) == self.ctx.world_size:
            set_rng_state(states[self.ctx.rank])
        else:  # another process count: exactness is lost anyway, keep runs distinct
            seed_all(self.config.seed + 1000 * epoch + self.ctx.rank)
        return epoch, list(ckpt["history"])

    # -- one epoch ------------------------------------------------------------------------
    def _train_loader(self, epoch: int) -> DataLoader[Any]:
        """This process's shard of the training set, shuffled as a function of (seed, epoch)
        (each image ``repeats`` times)."""
        self.sampler.set_epoch(epoch)
        return DataLoader(
            self.data.train,
            batch_size=self.local_batch,
            sampler=self.sampler,
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
            if self.mix is not None:
                x, y = self.mix(x, y)
            taught = None
            if self.teacher is not None:
                with autocast(self.device, self.amp_dtype):
                    taught = self.teacher(x)
            loss = self.step_loss(x, y, taught)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.step(epoch * self.steps_per_epoch + step)
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
            self.eval_model,
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
        """Re-estimate the BN statistics of the model that is validated and saved."""
        recalibrate_bn(
            self.eval_model,
            self.data.train_plain,
            batches,
            batch_size=self.local_batch,
            seed=self.config.seed,
            workers=self.workers,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
        )

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
            "sampler": self.sampler.state_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        write_checkpoint(self.files.checkpoint, state)

    def save_model(self, epoch: int, result: EvalResult) -> None:
        if not self.ctx.is_main:
            return
        c = self.config
        data = c.data if c.data == DIGITS else str(Path(c.data).resolve())
        save(
            self.eval_model,
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
        self.log(describe_recipe(c, self.recipe, self.given))
        if self.epochs_chosen:
            self.log(
                f"epochs: {self.epochs}, chosen for about {self.budget} optimizer steps at "
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
