"""Published ImageNet weights by name: fetched once, checked against their hash, converted.

:data:`PRETRAINED` lists the files that torchvision and mmpretrain publish for this family, one
:class:`PretrainedWeights` per file, with the publisher's metrics, preprocessing and recipe.
Nothing is hosted here: :func:`fetch` downloads a publisher's file on the user's machine into
torch's hub cache (``$TORCH_HOME/hub/checkpoints``, the publisher's file name, so a file that
torchvision already downloaded is reused), and :func:`load_pretrained` (or
``create_model(name, pretrained=True)``) converts it into our model.

What is checked:

* the file's SHA-256 against the prefix its publisher puts in its name (torchvision's loader
  checks the same; OpenMMLab's publishing tool names files by the first 8 hex digits of their
  SHA-256), after every download and on every use of a file already there: a damaged or altered
  file is refused (``ValueError`` naming it);
* downloads go to a temporary file beside the target, renamed once complete and checked: an
  interrupted download leaves no file; the size is bounded (:data:`MAX_DOWNLOAD_BYTES`);
* the file is read with ``torch.load(weights_only=True)`` only
  (:func:`~shufflenet.convert.read_checkpoint`: tensors, never pickled code) and converted by
  its source's filter of :data:`~shufflenet.convert.SOURCES` with the strict checks of
  :func:`~shufflenet.convert.checkpoint_model`.

Offline use: a file in ``$SHUFFLENET_WEIGHTS_DIR`` (a folder, looked in first) or already in
the cache is used without any network access; ``$SHUFFLENET_WEIGHTS_URL`` replaces the
publisher's scheme and host with a mirror's (the URL's path is kept). Without network the error
names the URL and the path to put the file at; connecting, resolving the host and every read
give up after ``timeout`` seconds.

Megvii's releases sit on a cloud drive without stable direct links: :data:`MEGVII_RELEASES`
says where they are and how ``shufflenet convert --from megvii`` takes them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch

from .convert import checkpoint_model
from .io import atomic_path, open_regular
from .models import create_model
from .models.base import ShuffleNetBase, first_conv_name
from .models.registry import register_pretrained_loader
from .preprocessing import MEGVII_PREPROCESSING, Preprocessing, imagenet_classes
from .weights import FORMAT, error_reason, load_state_dict_checked, validate_metadata

__all__ = [
    "DIR_ENV",
    "MAX_DOWNLOAD_BYTES",
    "MEGVII_RELEASES",
    "PRETRAINED",
    "URL_ENV",
    "Download",
    "ManualRelease",
    "PretrainedWeights",
    "cache_dir",
    "cached_file",
    "download_url",
    "fetch",
    "get_pretrained",
    "list_pretrained",
    "load_pretrained",
]

DIR_ENV = "SHUFFLENET_WEIGHTS_DIR"  # a folder of published files, looked in first
URL_ENV = "SHUFFLENET_WEIGHTS_URL"  # a mirror: replaces the publisher's scheme and host
DEFAULT_TIMEOUT_S = 10.0
MAX_DOWNLOAD_BYTES = 512 << 20  # the largest file is 30 MB
_CHUNK = 1 << 16


@dataclass(frozen=True)
class PretrainedWeights:
    """One published file: the model it fits, who publishes it where, the SHA-256 prefix in
    its name, its license, the publisher's ImageNet-1k top-1/top-5 (%), the eval preprocessing,
    and the recipe it was trained with (``size_mb``: as published, if known). Its classes are
    ImageNet-1k's, in label order."""

    model: str
    source: str
    url: str
    sha256: str
    license: str
    top1: float
    top5: float
    preprocessing: Preprocessing
    recipe: str
    recipe_url: str
    size_mb: float | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def tag(self) -> str:
        """``MODEL:SOURCE``, as the CLI names it."""
        return f"{self.model}:{self.source}"

    @property
    def num_classes(self) -> int:
        return 1000

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "filename": self.filename}


@dataclass(frozen=True)
class ManualRelease:
    """Weights published without a stable direct link: where to get them by hand, and how to
    convert the file (``shufflenet convert --from SOURCE FILE OUT.safetensors``)."""

    name: str
    models: tuple[str, ...]
    source: str
    page: str
    download: str
    license: str
    preprocessing: Preprocessing

    @property
    def command(self) -> str:
        return f"shufflenet convert FILE OUT.safetensors --from {self.source}"


_TV = "https://download.pytorch.org/models"
_MM = "https://download.openmmlab.com/mmclassification/v0"
_TV_LICENSE = "BSD-3-Clause (torchvision)"
_MM_LICENSE = "Apache-2.0 (mmpretrain)"
_TV_OLD = "trained from scratch to reproduce the paper (torchvision's reference)"
_TV_NEW = "torchvision's new training recipe (long schedule, heavy augmentation, EMA)"
_MM_RECIPE = "SGD lr 0.5 for batch 1024, poly decay, no BN weight decay, 300 epochs"
_MM_URL = "https://github.com/open-mmlab/mmpretrain/tree/main/configs"

# Every published file, in table order: the first entry of a model is its default source.
PRETRAINED: tuple[PretrainedWeights, ...] = (
    PretrainedWeights(
        "shufflenet_v2_x0_5", "torchvision", f"{_TV}/shufflenetv2_x0.5-f707e7126e.pth",
        "f707e7126e", _TV_LICENSE, 60.552, 81.746, Preprocessing(resize=256), _TV_OLD,
        "https://github.com/ericsun99/Shufflenet-v2-Pytorch", 5.282,
    ),
    PretrainedWeights(
        "shufflenet_v2_x1_0", "torchvision", f"{_TV}/shufflenetv2_x1-5666bf0f80.pth",
        "5666bf0f80", _TV_LICENSE, 69.362, 88.316, Preprocessing(resize=256), _TV_OLD,
        "https://github.com/ericsun99/Shufflenet-v2-Pytorch", 8.791,
    ),
    PretrainedWeights(
        "shufflenet_v2_x1_5", "torchvision", f"{_TV}/shufflenetv2_x1_5-3c479a10.pth",
        "3c479a10", _TV_LICENSE, 72.996, 91.086, Preprocessing(resize=232), _TV_NEW,
        "https://github.com/pytorch/vision/pull/5906", 13.557,
    ),
    PretrainedWeights(
        "shufflenet_v2_x2_0", "torchvision", f"{_TV}/shufflenetv2_x2_0-8be3c8ee.pth",
        "8be3c8ee", _TV_LICENSE, 76.230, 93.006, Preprocessing(resize=232), _TV_NEW,
        "https://github.com/pytorch/vision/pull/5906", 28.433,
    ),
    PretrainedWeights(
        "shufflenet_v1_g3_x1_0", "mmpretrain",
        f"{_MM}/shufflenet_v1/shufflenet_v1_batch1024_imagenet_20200804-5d6cec73.pth",
        "5d6cec73", _MM_LICENSE, 68.13, 87.81, Preprocessing(resize=256), _MM_RECIPE,
        f"{_MM_URL}/shufflenet_v1",
    ),
    PretrainedWeights(
        "shufflenet_v2_x1_0", "mmpretrain",
        f"{_MM}/shufflenet_v2/shufflenet_v2_batch1024_imagenet_20200812-5bf4721e.pth",
        "5bf4721e", _MM_LICENSE, 69.55, 88.92, Preprocessing(resize=256), _MM_RECIPE,
        f"{_MM_URL}/shufflenet_v2",
    ),
)  # fmt: skip

_MEGVII = "https://github.com/megvii-model/ShuffleNet-Series/tree/master"
_ONEDRIVE = "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo"

# The official (Megvii) releases: the links of the repository's README, converted by hand.
MEGVII_RELEASES: tuple[ManualRelease, ...] = tuple(
    ManualRelease(name, models, "megvii", f"{_MEGVII}/{folder}", _ONEDRIVE, "MIT",
                  MEGVII_PREPROCESSING)
    for name, folder, models in (
        ("ShuffleNetV1", "ShuffleNetV1", tuple(
            f"shufflenet_v1_g{g}_x{w}" for g in (3, 8) for w in ("0_5", "1_0", "1_5", "2_0")
        )),
        ("ShuffleNetV2", "ShuffleNetV2", tuple(
            f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")
        )),
        ("ShuffleNetV2+", "ShuffleNetV2%2B", tuple(
            f"shufflenet_v2_plus_{s}" for s in ("small", "medium", "large")
        )),
        ("ShuffleNetV2.Large", "ShuffleNetV2.Large", ("shufflenet_v2_large",)),
    )
)  # fmt: skip


def list_pretrained(
    pattern: str | None = None, source: str | None = None
) -> list[PretrainedWeights]:
    """The published files (:data:`PRETRAINED`) of the models matching the shell-style
    ``pattern``, from ``source`` if given, in table order."""
    return [
        w
        for w in PRETRAINED
        if (pattern is None or fnmatch.fnmatchcase(w.model, pattern))
        and (source is None or w.source == source)
    ]


def get_pretrained(model: str, source: str | None = None) -> PretrainedWeights:
    """The published file of ``model`` from ``source`` (default: the model's first entry);
    ``ValueError`` listing what is published otherwise. ``model`` may be ``MODEL:SOURCE``."""
    if source is None and ":" in model:
        model, source = model.split(":", 1)
    found = [w for w in PRETRAINED if w.model == model and source in (None, w.source)]
    if found:
        return found[0]
    published = ", ".join(w.tag for w in PRETRAINED)
    sources = [w.source for w in PRETRAINED if w.model == model]
    what = f"{model} from {source}" if source else model
    hint = f" ({model} comes from {', '.join(sources)})" if sources else ""
    manual = [r.name for r in MEGVII_RELEASES if model in r.models]
    if manual:
        hint += f"; Megvii's {manual[0]} is downloaded by hand: see `shufflenet weights`"
    raise ValueError(f"no published weights for {what}{hint}; published: {published}")


def cache_dir() -> Path:
    """torch's hub cache for checkpoints (``$TORCH_HOME/hub/checkpoints``), as torchvision's."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _places(entry: PretrainedWeights) -> list[Path]:
    """Where ``entry``'s file is looked for, in order: ``$SHUFFLENET_WEIGHTS_DIR``, the cache."""
    folder = os.environ.get(DIR_ENV)
    return [*([Path(folder) / entry.filename] if folder else []), cache_dir() / entry.filename]


def cached_file(entry: PretrainedWeights) -> Path | None:
    """The file of ``entry`` already on this machine (not checked yet), or ``None``."""
    return next((p for p in _places(entry) if p.is_file()), None)


def download_url(entry: PretrainedWeights) -> str:
    """``entry``'s URL, or its path on the mirror ``$SHUFFLENET_WEIGHTS_URL``."""
    mirror = os.environ.get(URL_ENV)
    if not mirror:
        return entry.url
    from urllib.parse import urlsplit

    return mirror.rstrip("/") + urlsplit(entry.url).path


@dataclass(frozen=True)
class Download:
    """How far a download is: ``done`` bytes of ``total`` (``None``: not announced)."""

    url: str
    path: Path
    done: int
    total: int | None


Progress = Callable[[Download], None]


def fetch(
    model: str | PretrainedWeights,
    source: str | None = None,
    *,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """The checked file of ``model``'s published weights (:func:`get_pretrained`), downloaded
    into :func:`cache_dir` unless found there or in ``$SHUFFLENET_WEIGHTS_DIR``.

    ``progress`` is called as the bytes arrive. A file whose SHA-256 does not match raises
    ``ValueError`` naming it; no network, or a transfer that stops, raises ``OSError`` naming
    the URL and where to put the file for offline use, leaving no file behind.
    """
    entry = model if isinstance(model, PretrainedWeights) else get_pretrained(model, source)
    found = cached_file(entry)
    if found is not None:
        _check_file(entry, found)
        return found
    target = cache_dir() / entry.filename
    url = download_url(entry)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            digest = _download(url, out, entry, target, progress, timeout)
        if not digest.startswith(entry.sha256):
            raise ValueError(
                f"{url} does not hold the published file: its SHA-256 starts {digest[:12]}, "
                f"the publisher's name says {entry.sha256}; nothing was kept"
            )
    return target


def _check_file(entry: PretrainedWeights, path: Path) -> None:
    sha = hashlib.sha256()
    with open_regular(path) as f:  # a FIFO swapped in never blocks
        if os.fstat(f.fileno()).st_size > MAX_DOWNLOAD_BYTES:
            raise ValueError(f"{path} is larger than any weights file ({MAX_DOWNLOAD_BYTES} bytes)")
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    digest = sha.hexdigest()
    if not digest.startswith(entry.sha256):
        raise ValueError(
            f"{path} is not the published {entry.filename}: its SHA-256 starts {digest[:12]}, "
            f"not {entry.sha256} (damaged or altered); delete it to download it again from "
            f"{entry.url}"
        )


def _offline_hint(entry: PretrainedWeights, target: Path) -> str:
    return (
        f"to use it offline, put the file from {entry.url} at {target} (or in a folder named by "
        f"${DIR_ENV}, or name a mirror in ${URL_ENV})"
    )


def _download(
    url: str,
    out: IO[bytes],
    entry: PretrainedWeights,
    target: Path,
    progress: Progress | None,
    timeout: float,
) -> str:
    """Copy ``url`` into ``out``; its SHA-256 hex digest. Network failures become one
    ``OSError`` naming the URL and :func:`_offline_hint`."""
    import http.client
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"weights are fetched over http(s) only, got {url!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "shufflenet"})
    sha = hashlib.sha256()
    try:
        _resolve(parts.scheme, parts.hostname, parts.port, timeout)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise ValueError(f"{url} announces {total} bytes, more than any weights file")
            done = 0
            report = progress or (lambda _: None)
            report(Download(url, target, 0, total))
            while chunk := response.read(_CHUNK):
                done += len(chunk)
                if done > MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"{url} sends more than {MAX_DOWNLOAD_BYTES} bytes")
                sha.update(chunk)
                out.write(chunk)
                report(Download(url, target, done, total))
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        reason = error_reason(e.reason) if isinstance(e.reason, Exception) else str(e.reason)
    except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
        reason = error_reason(e)
    else:
        reason = ""
    if reason:
        raise OSError(f"cannot download {url} ({reason}); {_offline_hint(entry, target)}")
    if total is not None and done != total:
        raise OSError(
            f"the download of {url} stopped after {done} of {total} bytes; nothing was kept: "
            f"run again, or {_offline_hint(entry, target)}"
        )
    return sha.hexdigest()


def _resolve(scheme: str, host: str, port: int | None, timeout: float) -> None:
    """Look up the host that will be connected to (``host``, or the proxy's) within
    ``timeout``: the system resolver has no timeout of its own and may wait long offline."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname or host, parts.port
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
        except OSError as e:
            failure.append(e)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer looking up {host} within {timeout:g} s")
    if failure:
        raise ConnectionError(f"cannot look up {host}: {error_reason(failure[0])}")


def _check_config(entry: PretrainedWeights, config: dict[str, Any]) -> None:
    """Published weights fit the default layout."""
    if config.get("layout") not in (None, "paper", "torchvision"):
        raise ValueError(
            f"{entry.tag} fits the default layout, not layout={config['layout']!r}; Megvii's "
            "weights load with `shufflenet convert --from megvii`"
        )


def adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB stem conv's ``weight`` for ``in_chans`` input channels, as timm adapts its own:
    summed over RGB for one channel (a grey image gets the response its RGB copy got), else
    RGB repeated over the channels and scaled by ``3 / in_chans``."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def _load_into(model: ShuffleNetBase, pretrained: str | bool) -> None:
    """Load the published weights named by ``pretrained`` (``True``: the default source) into
    ``model``, which ``create_model`` built; a classifier of another size stays fresh."""
    config = model.model_config
    entry = get_pretrained(config["name"], None if pretrained is True else str(pretrained))
    _check_config(entry, config)
    path = fetch(entry)
    net, _ = checkpoint_model(path, entry.source, entry.model)
    state = net.state_dict()
    if model.in_chans != net.in_chans:
        key = first_conv_name(model)
        state[f"{key}.weight"] = adapt_stem(state[f"{key}.weight"], model.in_chans)
    if model.num_classes != net.num_classes:  # fine-tuning: the new classifier keeps its init
        fresh = model.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state.update({k: v for k, v in fresh.items() if k.startswith("fc.")})
    load_state_dict_checked(model, state)
    model.weights_metadata = validate_metadata(
        {
            "format": FORMAT,
            "model_config": dict(config),
            "num_classes": model.num_classes,
            "class_names": imagenet_classes() if model.num_classes == 1000 else None,
            "preprocessing": asdict(entry.preprocessing),
            "pretrained": {"source": entry.source, "url": entry.url, "file": entry.filename},
        },
        entry.url,
    )


def load_pretrained(
    model: str, source: str | None = None, *, progress: Progress | None = None, **kwargs: Any
) -> ShuffleNetBase:
    """``create_model(model, pretrained=source or True, **kwargs)``, the file fetched first
    with ``progress`` (:func:`fetch`)."""
    entry = get_pretrained(model, source)
    fetch(entry, progress=progress)
    return create_model(entry.model, pretrained=entry.source, **kwargs)


def _sources(model: str) -> list[PretrainedWeights]:
    return [w for w in PRETRAINED if w.model == model]


register_pretrained_loader(_load_into, _sources)
