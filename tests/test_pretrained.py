"""Published weights by name (shufflenet.hub): a loopback HTTP server (127.0.0.1) serves
checkpoints made here in torchvision's and mmpretrain's layouts, through table entries pointed
at it; no test touches the internet. mmpretrain's conversion is checked against a functional
forward of mmpretrain's units over the raw state dict, written here from its documented layout.
"""

import hashlib
import http.server
import json
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import MegviiMaker, rel_err
from PIL import Image

import shufflenet
from shufflenet import hub
from shufflenet.cli import build_parser, main
from shufflenet.convert import convert_checkpoint
from shufflenet.train import TrainConfig
from shufflenet.train.model import create_run_model

pytestmark = pytest.mark.usefixtures("one_thread")

V2 = "shufflenet_v2_x0_5"  # the smallest published model
V1 = "shufflenet_v1_g3_x1_0"
MM_V2 = "shufflenet_v2_x1_0"


# -- a loopback server ---------------------------------------------------------------------
class Files:
    """What the server holds: path -> bytes, the requests it answered, and paths whose body it
    cuts off halfway (the connection closed mid-transfer)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.cut: set[str] = set()


def _handler(files: Files) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            files.requests.append(self.path)
            body = files.data.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path in files.cut else body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server():
    files = Files()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    files.base = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield files
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """torch's hub cache in tmp_path, no offline folder or mirror from the environment."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(hub.DIR_ENV, raising=False)
    monkeypatch.delenv(hub.URL_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(files, monkeypatch, model, source, payload: bytes, stem: str, digits: int = 8):
    """Serve ``payload`` under the publisher's naming (``STEM-SHA256PREFIX.pth``) and point the
    table's entry of (model, source) at it; returns the entry."""
    digest = hashlib.sha256(payload).hexdigest()[:digits]
    name = f"{stem}-{digest}.pth"
    files.data[f"/models/{name}"] = payload
    old = hub.get_pretrained(model, source)
    entry = replace(old, url=f"{files.base}/models/{name}", sha256=digest)
    table = tuple(entry if w == old else w for w in hub.PRETRAINED)
    monkeypatch.setattr(hub, "PRETRAINED", table)
    return entry


def _saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def tv_model():
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5()
    for m in model.modules():  # running statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def tv_served(server, monkeypatch, tv_model):
    payload = _saved(tv_model.state_dict())
    return _serve(server, monkeypatch, V2, "torchvision", payload, "shufflenetv2_x0.5", 10)


# -- fetch: download, hash, cache, atomicity -------------------------------------------------
def test_pretrained_fetch_checks_converts_and_reuses_the_cache(
    server, tv_served, tv_model, torch_home
):
    seen = []
    path = shufflenet.fetch(V2, progress=seen.append)
    assert path == torch_home / tv_served.filename and path.is_file()
    assert server.requests == [f"/models/{tv_served.filename}"]
    assert seen[0].done == 0 and seen[-1].done == seen[-1].total == path.stat().st_size
    model = shufflenet.create_model(V2, pretrained=True)  # the default source: torchvision
    assert shufflenet.fetch(V2, "torchvision") == path
    assert len(server.requests) == 1  # cached: no second request
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tv_model(x), rtol=1e-5, atol=1e-5)
    meta = model.weights_metadata
    assert meta["class_names"] == shufflenet.preprocessing.imagenet_classes()
    assert meta["preprocessing"]["resize"] == 256 and meta["pretrained"]["source"] == "torchvision"
    assert model.model_config == {"name": V2}  # save/load rebuild it: no pretrained key


def test_pretrained_interrupted_download_leaves_no_file(server, tv_served, torch_home):
    server.cut.add(f"/models/{tv_served.filename}")
    with pytest.raises(OSError, match=r"stopped after \d+ of \d+ bytes") as info:
        shufflenet.fetch(V2)
    assert str(torch_home / tv_served.filename) in str(info.value)
    assert list(torch_home.iterdir()) == []  # neither the file nor a temporary one


def test_pretrained_wrong_bytes_are_refused_and_not_kept(server, tv_served, torch_home):
    server.data[f"/models/{tv_served.filename}"] = b"not the published file"
    with pytest.raises(ValueError, match="does not hold the published file"):
        shufflenet.fetch(V2)
    assert list(torch_home.iterdir()) == []


def test_pretrained_tampered_cached_file_is_refused(server, tv_served):
    path = shufflenet.fetch(V2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    for attempt in (
        lambda: shufflenet.fetch(V2),
        lambda: shufflenet.create_model(V2, pretrained=True),
    ):
        with pytest.raises(ValueError, match=r"not the published .*delete it") as info:
            attempt()
        assert str(path) in str(info.value)
    assert len(server.requests) == 1


def test_pretrained_no_network_is_one_quick_cli_error(monkeypatch, capsys, torch_home):
    entry = hub.get_pretrained(V2)
    url = f"http://127.0.0.1:{_closed_port()}/models/{entry.filename}"
    monkeypatch.setattr(hub, "PRETRAINED", (replace(entry, url=url),))
    for argv in (
        ["weights", "--download", V2],
        ["predict", "x.jpg", "--model", V2, "--pretrained"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot download ") and len(err.splitlines()) == 1
        assert url in err and str(torch_home / entry.filename) in err


def test_pretrained_host_lookup_is_bounded(monkeypatch, tv_served):
    stop = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: stop.wait(30))
    try:
        with pytest.raises(OSError, match=r"no answer looking up 127\.0\.0\.1 within 0\.2 s"):
            hub.fetch(V2, timeout=0.2)
    finally:
        stop.set()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pretrained_pickle_payload_never_runs(server, monkeypatch, tv_model, tmp_path):
    marker = tmp_path / "ran"
    state = {**tv_model.state_dict()}
    payload = _saved({"state_dict": state, "meta": _Payload(marker)})
    _serve(server, monkeypatch, V2, "torchvision", payload, "shufflenetv2_x0.5")
    assert shufflenet.fetch(V2).is_file()  # the hash matches what is served
    with pytest.raises(ValueError, match="never unpickled"):
        shufflenet.create_model(V2, pretrained=True)
    assert not marker.exists()


def test_pretrained_offline_folder_and_mirror(server, tv_served, monkeypatch, tmp_path, torch_home):
    folder = tmp_path / "offline"
    folder.mkdir()
    (folder / tv_served.filename).write_bytes(server.data[f"/models/{tv_served.filename}"])
    monkeypatch.setenv(hub.DIR_ENV, str(folder))
    assert shufflenet.fetch(V2) == folder / tv_served.filename
    assert server.requests == []
    monkeypatch.delenv(hub.DIR_ENV)
    mirror = replace(tv_served, url=f"https://publisher.invalid/models/{tv_served.filename}")
    monkeypatch.setattr(hub, "PRETRAINED", (mirror,))
    monkeypatch.setenv(hub.URL_ENV, server.base + "/")
    assert shufflenet.fetch(V2) == torch_home / tv_served.filename
    assert server.requests == [f"/models/{tv_served.filename}"]


# -- create_model / load_pretrained / timm ---------------------------------------------------
def test_pretrained_fine_tuning_backbones_and_bad_requests(tv_served, tv_model, tmp_path):
    model = shufflenet.create_model(V2, pretrained="torchvision", num_classes=10)
    state, theirs = model.state_dict(), tv_model.state_dict()
    assert state["fc.weight"].shape == (10, 1024) and model.weights_metadata["class_names"] is None
    assert all(torch.equal(v, theirs[k]) for k, v in state.items() if not k.startswith("fc."))
    feats = shufflenet.create_model(V2, pretrained=True, features_only=True, out_indices=(3,))
    assert torch.equal(feats.stage4[0].branch1[0].weight, theirs["stage4.0.branch1.0.weight"])
    path = shufflenet.save(model, tmp_path / "ft.safetensors")
    assert torch.equal(shufflenet.load(path).fc.weight, model.fc.weight)
    for kwargs, message in (
        (
            {"pretrained": "mmpretrain"},
            r"no published weights for shufflenet_v2_x0_5 from mmpretrain",
        ),
        ({"pretrained": True, "layout": "megvii"}, "default layout"),
        ({"pretrained": 1}, "pretrained must be"),
    ):
        with pytest.raises(ValueError, match=message):
            shufflenet.create_model(V2, **kwargs)
    with pytest.raises(ValueError, match="published: shufflenet_v2_x0_5:torchvision"):
        shufflenet.create_model("shufflenet_v2_plus_small", pretrained=True)


def test_pretrained_through_timm_and_torch_hub(tv_served, tv_model):
    timm = pytest.importorskip("timm")
    model = timm.create_model(V2, pretrained=True)
    assert torch.equal(model.fc.weight, tv_model.fc.weight)
    assert model.pretrained_cfg["crop_pct"] == pytest.approx(224 / 256)
    # timm's pretrained registry: a tag per published file, its url and license in the cfg
    assert {f"{V2}.torchvision", f"{MM_V2}.mmpretrain", f"{MM_V2}.torchvision"} <= set(
        timm.list_pretrained("shufflenet*")
    )
    assert "shufflenet_v2_plus_small" not in timm.list_models(pretrained=True)
    tagged = timm.create_model(f"{V2}.torchvision", pretrained=True)
    assert torch.equal(tagged.fc.weight, tv_model.fc.weight)
    cfg = tagged.pretrained_cfg
    assert cfg["tag"] == "torchvision" and cfg["url"].endswith(".pth") and "BSD" in cfg["license"]
    with pytest.raises(ValueError, match="mmpretrain"):  # V2 0.5x: torchvision's file only
        timm.create_model(f"{V2}.mmpretrain", pretrained=True)
    # other input channels, as timm adapts its own stems: one channel sees a grey image as the
    # RGB network sees its three copies
    grey = timm.create_model(V2, pretrained=True, in_chans=1, num_classes=0).eval()
    rgb = timm.create_model(V2, pretrained=True, num_classes=0).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert rel_err(grey(x), rgb(x.expand(-1, 3, -1, -1))) < 1e-5
    two = timm.create_model(V2, pretrained=True, in_chans=2, num_classes=5)
    assert two.conv1[0].weight.shape[1] == 2 and two.num_classes == 5
    feats = timm.create_model(V2, pretrained=True, features_only=True)
    assert torch.equal(feats.conv1[0].weight, tv_model.conv1[0].weight)
    repo = str(Path(__file__).resolve().parents[1])
    model = torch.hub.load(repo, V2, source="local", pretrained=True)
    assert torch.equal(model.fc.weight, tv_model.fc.weight)


def test_pretrained_run_model_and_bench_model(tv_served, tv_model):
    from shufflenet.speed.baselines import build_model

    config = TrainConfig(model=V2, pretrained=True, freeze_stages=1).validated()
    model = create_run_model(config, num_classes=10, fine_tune=True)
    assert torch.equal(model.conv1[0].weight, tv_model.conv1[0].weight)
    assert not model.conv1[0].weight.requires_grad and model.fc.weight.shape == (10, 1024)
    assert torch.equal(build_model(V2, pretrained=True).fc.weight, tv_model.fc.weight)
    with pytest.raises(ValueError, match="give one"):
        TrainConfig(model=V2, pretrained=True, init_weights="x.safetensors").validated()


# -- the table against the publishers --------------------------------------------------------
def test_pretrained_torchvision_entries_match_torchvision():
    entries = hub.list_pretrained(source="torchvision")
    assert [e.model for e in entries] == [
        f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")
    ]
    for entry in entries:
        weights = torchvision.models.get_model_weights(entry.model).IMAGENET1K_V1
        transform = weights.transforms()
        assert entry.url == weights.url
        assert entry.sha256 == torch.hub.HASH_REGEX.search(entry.filename).group(1)
        metrics = weights.meta["_metrics"]["ImageNet-1K"]
        assert (entry.top1, entry.top5) == (metrics["acc@1"], metrics["acc@5"])
        assert entry.preprocessing.resize == transform.resize_size[0]
        assert entry.preprocessing.input_size == (transform.crop_size[0],) * 2
        assert list(entry.preprocessing.mean) == transform.mean
        assert entry.size_mb == weights.meta["_file_size"]
        assert entry.recipe_url == weights.meta["recipe"]


def test_pretrained_table_fits_the_registry_and_sources():
    from shufflenet.convert import SOURCES

    for entry in hub.PRETRAINED:
        info = shufflenet.get_model_info(entry.model)
        assert entry.source in SOURCES and entry.preprocessing == info.preprocessing
        assert entry.filename.endswith(f"-{entry.sha256}.pth") and len(entry.sha256) >= 8
    assert hub.get_pretrained(MM_V2).source == "torchvision"  # the first entry is the default
    assert hub.get_pretrained(f"{MM_V2}:mmpretrain").source == "mmpretrain"
    for release in hub.MEGVII_RELEASES:
        assert all(shufflenet.get_model_info(m) for m in release.models)


def test_pretrained_docs_page_lists_the_table():
    page = (Path(__file__).resolve().parents[1] / "docs" / "pretrained.md").read_text()
    for entry in hub.PRETRAINED:
        assert entry.url in page and f"{entry.top1:g}" in page and f"{entry.top5:g}" in page
    for release in hub.MEGVII_RELEASES:
        assert release.page in page


# -- mmpretrain's layout ---------------------------------------------------------------------
def _mm_conv_bn(m, name, cout, cin_per_group, k):
    m.conv(f"{name}.conv", cout, cin_per_group, k)
    m.bn(f"{name}.bn", cout)


def mmpretrain_v1_state(groups=3, widths=(24, 240, 480, 960), seed=0):
    """mmpretrain's ShuffleNetV1 (``ShuffleUnit``) names and shapes, random values."""
    m = MegviiMaker(seed)
    stem, *stages = widths
    _mm_conv_bn(m, "backbone.conv1", stem, 3, 3)
    inp = stem
    for s, (oup, units) in enumerate(zip(stages, (4, 8, 4), strict=True)):
        for i in range(units):
            p, mid = f"backbone.layers.{s}.{i}", oup // 4
            first_groups = 1 if s == i == 0 else groups
            _mm_conv_bn(m, f"{p}.g_conv_1x1_compress", mid, inp // first_groups, 1)
            _mm_conv_bn(m, f"{p}.depthwise_conv3x3_bn", mid, 1, 3)
            _mm_conv_bn(m, f"{p}.g_conv_1x1_expand", oup - inp if i == 0 else oup, mid // groups, 1)
            inp = oup
    m.sd["head.fc.weight"] = torch.randn(1000, inp, generator=m.g) / inp**0.5
    m.sd["head.fc.bias"] = torch.randn(1000, generator=m.g) * 0.1
    return m.sd


def mmpretrain_v2_state(widths=(24, 116, 232, 464, 1024), seed=0):
    """mmpretrain's ShuffleNetV2 names and shapes, random values."""
    m = MegviiMaker(seed)
    stem, *stages, last = widths
    _mm_conv_bn(m, "backbone.conv1", stem, 3, 3)
    inp = stem
    for s, (oup, units) in enumerate(zip(stages, (4, 8, 4), strict=True)):
        for i in range(units):
            p, half = f"backbone.layers.{s}.{i}", oup // 2
            if i == 0:
                _mm_conv_bn(m, f"{p}.branch1.0", inp, 1, 3)
                _mm_conv_bn(m, f"{p}.branch1.1", half, inp, 1)
            _mm_conv_bn(m, f"{p}.branch2.0", half, inp if i == 0 else half, 1)
            _mm_conv_bn(m, f"{p}.branch2.1", half, 1, 3)
            _mm_conv_bn(m, f"{p}.branch2.2", half, half, 1)
            inp = oup
    _mm_conv_bn(m, "backbone.layers.3", last, inp, 1)
    m.sd["head.fc.weight"] = torch.randn(1000, last, generator=m.g) / last**0.5
    m.sd["head.fc.bias"] = torch.randn(1000, generator=m.g) * 0.1
    return m.sd


def _cb(sd, x, name, stride=1, groups=1, relu=True):
    """ConvModule ``name``: conv (no bias), BN, optional ReLU."""
    w = sd[f"{name}.conv.weight"]
    x = F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)
    bn = {k: sd[f"{name}.bn.{k}"] for k in ("running_mean", "running_var", "weight", "bias")}
    x = F.batch_norm(
        x, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], False, 0.0, 1e-5
    )
    return F.relu(x) if relu else x


def _shuffle(x, groups):
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def mmpretrain_v1_forward(sd, x, groups=3):
    x = F.max_pool2d(_cb(sd, x, "backbone.conv1", 2), 3, 2, 1)
    for s, units in enumerate((4, 8, 4)):
        for i in range(units):
            p = f"backbone.layers.{s}.{i}"
            out = _cb(sd, x, f"{p}.g_conv_1x1_compress", groups=1 if s == i == 0 else groups)
            mid = out.shape[1]
            out = _cb(sd, out, f"{p}.depthwise_conv3x3_bn", 2 if i == 0 else 1, mid, relu=False)
            out = _shuffle(out, groups)  # after the depthwise conv, as mmpretrain's unit
            out = _cb(sd, out, f"{p}.g_conv_1x1_expand", groups=groups, relu=False)
            pooled = F.avg_pool2d(x, 3, 2, 1)  # the concat's shortcut at stride 2
            x = torch.cat((pooled, F.relu(out)), 1) if i == 0 else F.relu(x + out)
    return F.linear(x.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


def mmpretrain_v2_forward(sd, x):
    x = F.max_pool2d(_cb(sd, x, "backbone.conv1", 2), 3, 2, 1)
    for s, units in enumerate((4, 8, 4)):
        for i in range(units):
            p = f"backbone.layers.{s}.{i}"
            if i == 0:
                left = _cb(sd, x, f"{p}.branch1.0", 2, x.shape[1], relu=False)
                left, right, stride = _cb(sd, left, f"{p}.branch1.1"), x, 2
            else:
                half = x.shape[1] // 2
                left, right, stride = x[:, :half], x[:, half:], 1
            right = _cb(sd, right, f"{p}.branch2.0")
            right = _cb(sd, right, f"{p}.branch2.1", stride, right.shape[1], relu=False)
            right = _cb(sd, right, f"{p}.branch2.2")
            x = _shuffle(torch.cat((left, right), 1), 2)
    x = _cb(sd, x, "backbone.layers.3")
    return F.linear(x.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


def _mm_file(sd) -> dict:
    """As OpenMMLab publishes: the state dict and a plain ``meta``."""
    return {
        "meta": {"mmcls_version": "0.14.0", "epoch": 300, "CLASSES": ("tench",)},
        "state_dict": sd,
    }


@pytest.mark.parametrize(
    ("name", "state", "forward"),
    [
        (V1, mmpretrain_v1_state, mmpretrain_v1_forward),
        (MM_V2, mmpretrain_v2_state, mmpretrain_v2_forward),
    ],
)
def test_pretrained_mmpretrain_conversion_matches_its_forward(tmp_path, name, state, forward):
    sd = state()
    src = tmp_path / "mm.pth"
    torch.save(_mm_file(sd), src)
    # V2 by the shapes that fit (few candidates); V1 named: a shape search over 25 is slow
    result = convert_checkpoint(
        src, tmp_path / "mm.safetensors", "mmpretrain", V1 if name == V1 else None
    )
    assert result.model == name and result.layout == ("paper" if name == V1 else "torchvision")
    model = shufflenet.load(result.path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), forward(sd, x)) < 1e-4


def test_pretrained_mmpretrain_entry_through_the_hub(server, monkeypatch):
    sd = mmpretrain_v1_state(seed=1)
    _serve(server, monkeypatch, V1, "mmpretrain", _saved(_mm_file(sd)), "shufflenet_v1_batch1024")
    model = shufflenet.load_pretrained(V1).eval()  # mmpretrain: V1's only source
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), mmpretrain_v1_forward(sd, x)) < 1e-4


# -- the command line ------------------------------------------------------------------------
def test_pretrained_cli_weights_lists_downloads_and_places(server, tv_served, capsys, torch_home):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for entry in hub.PRETRAINED:
        assert entry.model in out and entry.source in out
    assert "shufflenet_v2_plus_small" in out and "--from megvii" in out
    assert main(["weights", "--path", f"{V2}:torchvision"]) == 0
    assert capsys.readouterr().out.strip() == str(torch_home / tv_served.filename)
    assert main(["weights", "--download", V2]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(torch_home / tv_served.filename)
    assert captured.err.startswith(f"downloading {tv_served.url}")  # one line: not a terminal
    assert main(["weights", V2, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["published"]
    assert listed[0]["cached"] == str(torch_home / tv_served.filename)


def test_pretrained_cli_predict_and_flags(server, tv_served, tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.new("RGB", (80, 70), (200, 120, 40)).save(image)
    assert main(["predict", str(image), "--model", V2, "--pretrained", "--topk", "2"]) == 0
    out = capsys.readouterr().out
    names = shufflenet.preprocessing.imagenet_classes()
    assert out.startswith(f"{image}: ") and any(f" {n} " in out for n in names)
    assert main(["predict", str(image), "--model", V2]) == 2
    assert "--pretrained" in capsys.readouterr().err
    parser = build_parser()
    assert parser.parse_args(["train", V2, "--pretrained"]).pretrained is True
    bench = parser.parse_args(["bench", V2, "--pretrained", "torchvision"])
    assert bench.pretrained == "torchvision"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--pretrained", V2])  # a model name is not a source


@pytest.mark.slow
def test_pretrained_cli_export_carries_imagenet_names(server, tv_served, tmp_path, capsys):
    out = tmp_path / "v2.onnx"
    assert main(["export", "--model", V2, "--pretrained", "--out", str(out)]) == 0
    capsys.readouterr()
    meta = shufflenet.export.read_onnx_metadata(out)
    assert meta["class_names"][0] == "tench" and meta["pretrained"]["source"] == "torchvision"
