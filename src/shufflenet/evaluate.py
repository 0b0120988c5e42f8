"""Accuracy of a model on a labelled set: top-1, top-5, mean cross-entropy and per class.

:func:`evaluate` runs any model over any ``(image, label)`` dataset; :func:`evaluate_weights`
evaluates a ``shufflenet.save`` file with the pipeline its metadata records. Training validates
with the same counting (:func:`eval_counts`, summed over processes, then :func:`eval_result`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .data import DIGITS, load_eval_data, match_classes
from .device import resolve_device
from .limits import check_workers
from .weights import load

__all__ = ["EvalResult", "evaluate", "evaluate_weights"]


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


# -- running batches (shared with training) ----------------------------------------------
def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: bf16, or fp16 on GPUs without bf16."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``; a no-op context for ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def to_device(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """A batch of images on ``device`` in the model's memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def loader_workers(data: str, world_size: int = 1) -> int:
    """Default loader processes: 0 for digits (held in memory), else ``min(8, cores per
    process)``."""
    if data == DIGITS:
        return 0
    return min(8, max(1, (os.cpu_count() or 1) // world_size))


# -- counting -----------------------------------------------------------------------------
def eval_counts(
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
            x, y = to_device(x, device, channels_last), y.to(device)
            with autocast(device, amp_dtype):
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


def eval_result(sums: Tensor, class_names: Sequence[str]) -> EvalResult:
    """The :class:`EvalResult` of counts from :func:`eval_counts`."""
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


# -- the API ------------------------------------------------------------------------------
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
    sums = eval_counts(
        model,
        dataset,
        len(class_names),
        batch_size=batch_size,
        device=dev,
        workers=workers,
        amp_dtype=autocast_dtype(dev, amp),
        channels_last=channels_last,
    )
    return eval_result(sums, class_names)


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
    class folders. The pipeline comes from the file's ``preprocessing`` metadata. Classes are
    matched by name (:func:`~shufflenet.data.match_classes`): data whose class names are not
    the model's is a ``ValueError``; a model without class names takes the data's order, if
    it has as many classes. Returns the result and the data it was computed on.
    """
    model = load(path)
    meta = model.weights_metadata
    if data is None:
        data = meta.get("data")
        if not data:
            raise ValueError(f"{path} does not record its data; pass data ('digits' or a folder)")
    if workers is not None:
        check_workers(workers)
    workers = loader_workers(data) if workers is None else workers
    dataset, classes, _ = load_eval_data(
        data, meta["preprocessing"], skip_bad_images=skip_bad_images, workers=max(1, workers)
    )
    names, mapping = match_classes(
        classes, meta.get("class_names") or None, model.num_classes, data, str(path)
    )
    if mapping is not None:
        dataset.target_transform = _Relabel(mapping)  # type: ignore[attr-defined]
    result = evaluate(model, dataset, names, batch_size=batch_size, device=device, workers=workers)
    return result, data
