"""BatchNorm statistics re-estimated after training, as the official release does."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..evaluate import autocast, to_device

__all__ = ["recalibrate_bn"]


def recalibrate_bn(
    model: nn.Module,
    dataset: Dataset[Any],
    batches: int,
    *,
    batch_size: int,
    seed: int,
    workers: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> None:
    """Re-estimate ``model``'s BN statistics as exact averages over ``batches`` batches of
    ``dataset`` (training images through the eval pipeline), in an order fixed by ``seed``:
    every process uses the same batches. Frozen BatchNorms (``freeze_stages``), which stay in
    eval mode, keep theirs."""
    model.train()
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            with autocast(device, amp_dtype):
                model(to_device(x, device, channels_last))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
