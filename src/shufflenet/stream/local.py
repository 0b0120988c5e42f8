"""Streaming prediction on one machine: images decoded in worker processes while the model runs
on the batch before, results given out (:func:`iter_predictions`) or written
(:func:`predict_to_file`) as they are computed, and a written file continued after an
interruption.

Paths are listed lazily (:func:`iter_images`): folders are walked in sorted order, a file of
paths is read line by line: a run over millions of files starts at once and holds no list.
A :class:`torch.utils.data.DataLoader` decodes them (:class:`~shufflenet.stream.decode.FastDecoder`)
in ``workers`` processes (0: in this one), batches in order; the model runs in this process.
An image that cannot be read is an error row, not an abort.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..io import check_output_path
from ..limits import check_timing, check_workers
from ..predict import Prediction, Predictor
from .decode import FastDecoder
from .files import check_new, columns, open_writer, path_text, row_of

__all__ = [
    "Decoded",
    "StreamProgress",
    "StreamResult",
    "classify_decoded",
    "decode_batches",
    "decode_paths",
    "inference_threads",
    "iter_images",
    "iter_predictions",
    "open_predictor",
    "predict_to_file",
]

DEFAULT_BATCH = 64


@dataclass(frozen=True)
class StreamProgress:
    """Where a run stands: rows given out (``errors`` of them error rows), paths ``skipped``
    (already in the file, or repeated), seconds since it started."""

    images: int
    errors: int
    skipped: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class StreamResult(StreamProgress):
    """A finished run: its :class:`StreamProgress` and the file (or folder) written."""

    out: Path = Path()

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "images": self.images,
            "errors": self.errors,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
        }


Progress = Callable[[StreamProgress], None]


def iter_images(
    inputs: Iterable[str | os.PathLike[str]] = (), list_file: str | os.PathLike[str] | None = None
) -> Iterator[str]:
    """The image paths of ``inputs`` and of ``list_file`` (one path per line; a pipe works),
    lazily: a file as given, a folder as the image files below it in sorted order (hidden files
    and linked folders left out), or as itself where it has none (an error row). The list file
    is opened now: a missing one fails before any work."""
    listed = None
    if list_file is not None:
        listed = open(list_file, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    return _images(inputs, listed)


def _images(inputs: Iterable[str | os.PathLike[str]], listed: IO[str] | None) -> Iterator[str]:
    for item in inputs:
        yield from _expand(os.fspath(item))
    if listed is not None:
        with listed:
            for line in listed:
                line = line.rstrip("\r\n")
                if line:
                    yield from _expand(line)


def _expand(item: str) -> Iterator[str]:
    if not os.path.isdir(item):
        yield item
        return
    found = False
    for path in _walk(item):
        found = True
        yield path
    if not found:
        yield item


def _walk(folder: str) -> Iterator[str]:
    from ..data import IMAGE_EXTENSIONS

    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        elif (
            not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            and entry.is_file()
        ):
            yield entry.path


class Decoded(NamedTuple):
    """A batch decoded: every path, each one's error (``None`` where decoded), and the uint8
    crops of those decoded, in order."""

    paths: list[str]
    errors: list[str | None]
    images: Tensor | None


class _Decode(Dataset[tuple[str, Tensor | None, str | None]]):
    """Paths -> (path, uint8 crop or None, error or None); indexed by the path itself."""

    def __init__(self, decoder: FastDecoder) -> None:
        self.decoder = decoder

    def __getitem__(self, path: str) -> tuple[str, Tensor | None, str | None]:  # type: ignore[override]
        try:
            return path, self.decoder(path), None
        except ValueError as e:
            return path, None, str(e)


def decode_paths(decoder: FastDecoder, paths: list[str]) -> Decoded:
    """``paths`` decoded in this process."""
    return _collate([_Decode(decoder)[path] for path in paths])


def _collate(items: list[tuple[str, Tensor | None, str | None]]) -> Decoded:
    images = [image for _, image, _ in items if image is not None]
    return Decoded(
        [path for path, _, _ in items],
        [error for _, _, error in items],
        torch.stack(images) if images else None,
    )


class _Batches:
    """Lists of ``size`` paths, what the DataLoader hands its workers."""

    def __init__(self, paths: Iterable[str], size: int) -> None:
        self.paths, self.size = paths, size

    def __iter__(self) -> Iterator[list[str]]:
        batch: list[str] = []
        for path in self.paths:
            batch.append(path)
            if len(batch) == self.size:
                yield batch
                batch = []
        if batch:
            yield batch


def decode_batches(
    decoder: FastDecoder, paths: Iterable[str], batch_size: int, workers: int
) -> Iterator[Decoded]:
    """``paths`` decoded in batches of ``batch_size``, in order, by ``workers`` processes."""
    check_workers(workers)
    loader = DataLoader(
        _Decode(decoder),  # type: ignore[arg-type]
        batch_sampler=_Batches(paths, batch_size),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def classify_decoded(
    predictor: Predictor, decoder: FastDecoder, batch: Decoded, topk: int, features: bool
) -> list[Prediction]:
    """A :class:`~shufflenet.predict.Prediction` per path of ``batch``, in order."""
    good = [path for path, error in zip(batch.paths, batch.errors, strict=True) if not error]
    predicted: Iterator[Prediction] = iter(())
    if batch.images is not None:
        x = decoder.normalize(batch.images)
        predicted = iter(predictor.classify(good, x, topk, features))
    return [
        Prediction(path, error=error) if error else next(predicted)
        for path, error in zip(batch.paths, batch.errors, strict=True)
    ]


def inference_threads(threads: int | None, workers: int) -> int:
    """PyTorch's threads for the model: ``threads``, by default the CPUs that ``workers``
    decoding processes leave, at least one (threads that wait on each other stall while a
    decoder holds one of their cores)."""
    if threads is None:
        return max(1, (os.cpu_count() or 1) - workers)
    check_timing(threads=threads)
    return threads


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def open_predictor(
    weights: str | os.PathLike[str], engine: str | None, topk: int, batch_size: int, features: bool
) -> tuple[Predictor, FastDecoder, int]:
    """The model of ``weights`` (the torch engine in its optimised form), its decoder, and the
    number of classes each row lists."""
    predictor = Predictor(weights, engine, fast=True)
    k = predictor.check(topk, batch_size, features)
    return predictor, FastDecoder(predictor.metadata["preprocessing"]), k


class _Meter:
    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.start = progress, time.perf_counter()
        self.images = self.errors = self.skipped = 0

    def count(self, predictions: list[Prediction]) -> None:
        self.images += len(predictions)
        self.errors += sum(1 for p in predictions if p.error)
        if self.progress is not None:
            self.progress(self.now())

    def now(self) -> StreamProgress:
        seconds = time.perf_counter() - self.start
        return StreamProgress(self.images, self.errors, self.skipped, seconds)


def iter_predictions(
    weights: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    *,
    topk: int = 5,
    batch_size: int = DEFAULT_BATCH,
    workers: int = 0,
    features: bool = False,
    engine: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Prediction]:
    """A :class:`~shufflenet.predict.Prediction` for each image of ``inputs`` (files and
    folders, :func:`iter_images`), in order, as they are computed; ``features`` adds the pooled
    embedding (engine ``torch``). ``threads``: PyTorch's threads for the model
    (:func:`inference_threads`). ``progress`` is called after each batch."""
    threads = inference_threads(threads, workers)
    check_workers(workers)
    predictor, decoder, _ = open_predictor(weights, engine, topk, batch_size, features)
    batches = decode_batches(decoder, iter_images(inputs), batch_size, workers)
    return _predictions(predictor, decoder, batches, topk, features, threads, _Meter(progress))


def _predictions(
    predictor: Predictor,
    decoder: FastDecoder,
    batches: Iterator[Decoded],
    topk: int,
    features: bool,
    threads: int,
    meter: _Meter,
) -> Iterator[Prediction]:
    for batch in batches:
        with _torch_threads(threads):
            predictions = classify_decoded(predictor, decoder, batch, topk, features)
        meter.count(predictions)
        yield from predictions


def predict_to_file(
    weights: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    list_file: str | os.PathLike[str] | None = None,
    topk: int = 5,
    batch_size: int = DEFAULT_BATCH,
    workers: int = 0,
    features: bool = False,
    engine: str | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    part_rows: int = 4096,
) -> StreamResult:
    """Write a row for each image of ``inputs`` and ``list_file`` (:func:`iter_images`) to
    ``out`` as it is computed: CSV, JSON Lines or Parquet by the suffix
    (:mod:`shufflenet.stream.files`). Each path is written once: with ``resume``, the paths
    already in ``out`` are skipped and the run continues the file (an existing ``out`` is
    otherwise a ``ValueError``). ``threads``: PyTorch's threads for the model
    (:func:`inference_threads`). ``part_rows``: Parquet's rows per part file (at most a
    minute's apart)."""
    check_new(out, resume)
    check_output_path(out, "out", inputs=[weights])
    check_workers(workers)
    threads = inference_threads(threads, workers)
    predictor, decoder, k = open_predictor(weights, engine, topk, batch_size, features)
    names = columns(k, features)
    paths = iter_images(inputs, list_file)
    writer = open_writer(out, names, resume, part_rows=part_rows)
    meter = _Meter(progress)

    def todo() -> Iterator[str]:
        for path in paths:
            key = path_text(path)
            if key in writer.done:
                meter.skipped += 1
                continue
            writer.done.add(key)
            yield path

    try:
        for batch in decode_batches(decoder, todo(), batch_size, workers):
            with _torch_threads(threads):
                predictions = classify_decoded(predictor, decoder, batch, topk, features)
            writer.write([row_of(p, names) for p in predictions])
            meter.count(predictions)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    done = meter.now()
    return StreamResult(done.images, done.errors, done.skipped, done.seconds, out=Path(out))
