import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

import shufflenet
from shufflenet import data

torch.set_num_threads(2)


@functools.cache
def digits_model(steps=300, size=32):
    """A V2 0.5x trained on digits for a few hundred steps (about 96% val top-1), on one thread
    (two that wait on each other stall when another process holds a core); trained once per
    session: callers must not modify it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_digits(steps, size)
    finally:
        torch.set_num_threads(threads)


def _train_digits(steps, size):
    pre = data.make_preprocessing("digits", size)
    transform = data.build_eval_transform(pre)
    train, _ = data.digits_datasets(transform, transform)
    images = torch.stack([train[i][0] for i in range(len(train))])
    labels = torch.tensor(train.targets)
    torch.manual_seed(0)
    model = shufflenet.create_model("shufflenet_v2_x0_5", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (64,))
        loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), pre


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: small convolutions gain little from two, and two that wait on each
    other stall badly when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_folder(root: Path, classes=("ant", "bee"), per_class=4) -> Path:
    """A small ImageFolder tree: ROOT/{train,val}/CLASS/N.jpg, 40x36 images of distinct colours."""
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 36), (60 * c, 20 * i, 100)).save(
                    root / split / name / f"{i}.jpg"
                )
    return root


@contextmanager
def answering(fifo: Path) -> Iterator[None]:
    """Until the block ends, whoever opens ``fifo`` to read gets end-of-file at once: code
    that opens it fails the test instead of hanging it."""
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                done.wait(0.05)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
