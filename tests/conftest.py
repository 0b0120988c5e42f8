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

# two threads on this 2-core machine; one per pytest-xdist worker (scripts/test.sh runs two)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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


THREE_CLASSES = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A V2 0.5x weights file of :data:`THREE_CLASSES` for 48x48 photos (BatchNorm and
    classifier randomized: confident, varied predictions)."""
    model = randomize_bn(shufflenet.create_model("shufflenet_v2_x0_5", num_classes=3))
    with torch.no_grad():
        model.fc.weight.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    preprocessing = data.make_preprocessing("x", 48)
    return shufflenet.save(
        model.eval(), path, class_names=THREE_CLASSES, preprocessing=preprocessing
    )


def varied_model(name: str, scaled_logits: bool = True, **kwargs: object) -> torch.nn.Module:
    """``name`` in eval mode with non-trivial BatchNorm statistics (:func:`randomize_bn`) and,
    with ``scaled_logits``, a classifier that gives logits of order 1, so that a wrong graph
    cannot hide in rounding."""
    model = randomize_bn(shufflenet.create_model(name, **kwargs))
    if scaled_logits:
        with torch.no_grad():
            model.fc.weight.normal_(0.0, model.num_features**-0.5)
    return model.eval()


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


# -- Megvii-format checkpoints, built from the release's documented names and shapes --------
STAGE_UNITS = (4, 8, 4)


class MegviiMaker:
    """Random tensors for conv and BN entries, scaled so that activations stay near 1."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def conv(self, name: str, cout: int, cin_per_group: int, k: int) -> None:
        w = torch.randn(cout, cin_per_group, k, k, generator=self.g)
        self.sd[f"{name}.weight"] = w / (cin_per_group * k * k) ** 0.5

    def bn(self, name: str, c: int, var_scale: float = 1.0) -> None:
        self.sd[f"{name}.weight"] = torch.rand(c, generator=self.g) + 0.5
        self.sd[f"{name}.bias"] = torch.rand(c, generator=self.g) * 0.4 - 0.2
        self.sd[f"{name}.running_mean"] = (torch.rand(c, generator=self.g) - 0.5) * var_scale**0.5
        self.sd[f"{name}.running_var"] = (torch.rand(c, generator=self.g) + 0.5) * var_scale
        self.sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    def stem_and_head(self, stem: int, last: int, classes: int) -> None:
        self.conv("first_conv.0", stem, 3, 3)
        self.bn("first_conv.1", stem, var_scale=1e4)  # 0-255 input
        self.sd["classifier.0.weight"] = torch.randn(classes, last, generator=self.g) / last**0.5


def megvii_v2_checkpoint(widths, classes=1000, seed=0):
    """A Megvii V2 state dict of the documented names and shapes, random values."""
    stem, *stages, last = widths
    m = MegviiMaker(seed)
    m.stem_and_head(stem, last, classes)
    n, inp = 0, stem
    for oup, units in zip(stages, STAGE_UNITS, strict=True):
        for i in range(units):
            p, mid = f"features.{n}", oup // 2
            cin = inp if i == 0 else oup // 2
            outputs = oup - cin
            m.conv(f"{p}.branch_main.0", mid, cin, 1)
            m.bn(f"{p}.branch_main.1", mid)
            m.conv(f"{p}.branch_main.3", mid, 1, 3)
            m.bn(f"{p}.branch_main.4", mid)
            m.conv(f"{p}.branch_main.5", outputs, mid, 1)
            m.bn(f"{p}.branch_main.6", outputs)
            if i == 0:
                m.conv(f"{p}.branch_proj.0", inp, 1, 3)
                m.bn(f"{p}.branch_proj.1", inp)
                m.conv(f"{p}.branch_proj.2", inp, inp, 1)
                m.bn(f"{p}.branch_proj.3", inp)
            n, inp = n + 1, oup
    m.conv("conv_last.0", last, inp, 1)
    m.bn("conv_last.1", last)
    return m.sd


def megvii_v1_checkpoint(groups, widths, classes=1000, seed=0):
    """A Megvii V1 state dict of the documented names and shapes, random values."""
    stem, *stages = widths
    m = MegviiMaker(seed)
    m.stem_and_head(stem, stages[-1], classes)
    n, inp = 0, stem
    for oup, units in zip(stages, STAGE_UNITS, strict=True):
        for i in range(units):
            p, mid = f"features.{n}", oup // 4
            g1 = 1 if n == 0 else groups
            m.conv(f"{p}.branch_main_1.0", mid, inp // g1, 1)
            m.bn(f"{p}.branch_main_1.1", mid)
            m.conv(f"{p}.branch_main_1.3", mid, 1, 3)
            m.bn(f"{p}.branch_main_1.4", mid)
            m.conv(f"{p}.branch_main_2.0", oup - inp if i == 0 else oup, mid // groups, 1)
            m.bn(f"{p}.branch_main_2.1", oup - inp if i == 0 else oup)
            n, inp = n + 1, oup
    return m.sd


def save_megvii(sd, path):
    """``sd`` saved as the release saves it: wrapped, ``module.`` prefixes."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return path


def rel_err(ours, ref):
    """The largest difference relative to the largest reference value."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()
