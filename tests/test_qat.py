"""Quantization-aware training: what it refuses, its schedule, an exact resume, and int8 files
that compute what its fake-quantized network computes (the learned ranges kept).

The runs fine-tune conftest's digits V2 0.5x (32x32) for a few steps; preparing the QAT graph
(``torch.export`` and ``prepare_qat_pt2e``) takes most of their time.
"""

import numpy as np
import pytest
import torch
from conftest import digits_model
from safetensors.torch import load_file

import shufflenet
from shufflenet import data
from shufflenet.export.calibration import model_calibration_data
from shufflenet.runtimes import ort_session
from shufflenet.train import TrainConfig, fit
from shufflenet.train.files import read_checkpoint
from shufflenet.train.qat import BN_FREEZE, OBSERVER_FREEZE, QATNet, export_qat, qat_int8

V2 = "shufflenet_v2_x0_5"


def _config(init, out, **kwargs):
    settings = dict(model=V2, init_weights=str(init), qat=True, epochs=2, batch_size=32,
                    limit_train_batches=4, image_size=32, threads=1, out=str(out))  # fmt: skip
    return TrainConfig(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    model, pre = digits_model()
    path = tmp_path_factory.mktemp("qat") / "init.safetensors"
    return shufflenet.save(model, path, preprocessing=pre, class_names=data.DIGITS_CLASSES)


def test_qat_refuses_what_it_cannot_train(tmp_path):
    base = dict(model=V2, qat=True, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="qat fine-tunes trained weights"):
        TrainConfig(**base).validated()
    init = shufflenet.save(shufflenet.create_model(V2, num_classes=10), tmp_path / "w.safetensors")
    for extra, match in (({"compile": True}, "without compile"), ({"amp": True}, "without amp"),
                         ({"ema_decay": 0.99}, "without an EMA")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TrainConfig(**base, init_weights=str(init), **extra).validated()
    config = TrainConfig(**base, init_weights=str(init)).validated()
    assert config.ema_decay == 0.0 and config.bn_recalibrate == 0
    # auto takes the qat recipe: a fiftieth of the fine-tuning rate
    plain = TrainConfig(**{**base, "qat": False}, init_weights=str(init)).validated()
    assert config.lr == pytest.approx(plain.lr / 50) and config.warmup_epochs == 0


@pytest.fixture(scope="module")
def run(init, tmp_path_factory):
    """A QAT run of 2 epochs of 4 steps (ExecuTorch's quantizer: its extra)."""
    pytest.importorskip("executorch")
    out = tmp_path_factory.mktemp("qat") / "run"
    fit(_config(init, out))
    return out


@pytest.mark.slow
def test_qat_run_freezes_on_schedule_and_saves_the_float_network(run, init):
    checkpoint = read_checkpoint(run / "checkpoint.pt")
    state = checkpoint["optimizer"]["qat"]
    assert state["steps"] == state["total"] == 8
    flags = {k: int(v) for k, v in state["buffers"].items() if k.endswith("observer_enabled")}
    assert flags and not any(flags.values())  # ranges frozen after 75% of the steps
    assert BN_FREEZE < OBSERVER_FREEZE
    # The weights file is the standard network, trained: every tensor the start has, moved.
    start, trained = load_file(init), load_file(run / "model.safetensors")
    assert start.keys() == trained.keys()
    assert not torch.equal(start["stage3.1.branch2.0.weight"], trained["stage3.1.branch2.0.weight"])
    model = shufflenet.load(run / "model.safetensors")
    assert model.weights_metadata["class_names"] == data.DIGITS_CLASSES
    # A QAT net rebuilt from the checkpoint: its BatchNorm frozen, its state the run's.
    net = QATNet(model.train(), 32, state["total"])
    net.load_state_dict(checkpoint["model"])
    net.load_graph_state(state)
    assert net.bn_frozen and {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


@pytest.mark.slow
def test_qat_resume_is_exact(run, init, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/2"):
            raise Stop

    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        fit(_config(init, cut), log=stop_after_first_epoch)
    assert read_checkpoint(cut / "checkpoint.pt")["epoch"] == 1
    fit(_config(init, cut, resume=True))
    a, b = (read_checkpoint(r / "checkpoint.pt") for r in (run, cut))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    qa, qb = a["optimizer"]["qat"], b["optimizer"]["qat"]
    assert qa["steps"] == qb["steps"] and qa["buffers"].keys() == qb["buffers"].keys()
    assert all(torch.equal(qa["buffers"][k], qb["buffers"][k]) for k in qa["buffers"])
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]


@pytest.fixture(scope="module")
def fake_quant(run):
    """The digits evaluation images, their labels and the logits of the run's fake-quantized
    network, rebuilt from its checkpoint."""
    checkpoint = read_checkpoint(run / "checkpoint.pt")
    state = checkpoint["optimizer"]["qat"]
    model = shufflenet.load(run / "model.safetensors")
    _, images, labels = model_calibration_data(model, "digits")
    net = QATNet(model.train(), 32, state["total"])
    net.load_state_dict(checkpoint["model"])
    net.load_graph_state(state)
    with torch.no_grad():
        return images, labels, net.eval()(images).numpy()


@pytest.mark.slow
def test_qat_int8_files_compute_the_fake_quantized_network(run, fake_quant, tmp_path):
    _, graph = qat_int8(run)
    images, labels, fake = fake_quant
    with torch.no_grad():
        converted = graph(images).numpy()
    assert (converted.argmax(1) == fake.argmax(1)).mean() >= 0.99
    result = export_qat(run, tmp_path / "q.onnx", "onnx", calib="digits")
    assert result.passed, result.int8.report
    session = ort_session(result.int8.path, 1)
    int8 = session.run(None, {"input": images.numpy()})[0]
    assert (int8.argmax(1) == fake.argmax(1)).mean() >= 0.99
    assert np.abs(int8 - converted).max() < 0.05 * np.abs(converted).max()
    assert result.int8.report.int8_top1 == (int8.argmax(1) == labels.numpy()).mean()


@pytest.mark.slow
def test_qat_executorch_file_keeps_the_learned_ranges(run, fake_quant, tmp_path):
    from shufflenet.export.executorch import open_executorch

    result = export_qat(run, tmp_path / "q.pte", "executorch", calib="digits")
    assert result.passed
    opened = open_executorch(result.int8.path)
    assert opened.metadata["quantization"]["activations"].endswith("learned in training")
    images, _, fake = fake_quant
    assert (opened(images).argmax(1) == fake.argmax(1)).mean() >= 0.98
