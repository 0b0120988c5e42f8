"""The streaming job on Ray (``pip install 'shufflenet[ray]'``): a Ray Data pipeline whose
dataset is the image paths, decoded and classified in ``map_batches`` by a pool of actors that
each open the model file once, and written by Ray Data's own writers as a folder of Parquet,
CSV or JSON Lines part files, with the rows of :mod:`shufflenet.stream.files`.

With no ``address`` a local Ray instance is started (and stopped after); ``"auto"`` or a
``ray://`` address joins a cluster, whose nodes must all see the weights file and the images at
the same paths and have shufflenet installed. The actors run the same decoder and model as the
single-machine path (:mod:`shufflenet.stream.local`), so the rows are the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..io import check_output_path
from ..limits import MAX_THREADS
from ..runtimes import Extra, require
from .files import PARQUET, columns, format_of, path_text, read_rows, row_of, table_of
from .local import (
    DEFAULT_BATCH,
    StreamResult,
    classify_decoded,
    decode_paths,
    iter_images,
    open_predictor,
)

__all__ = ["RAY", "predict_on_ray"]

RAY = Extra("ray", "ray[data]", "ray", "ray")
_BLOCK_BATCHES = 4  # batches of paths per block of the paths dataset


class _Scorer:
    """One actor of the pool: the model opened once, then batches of paths -> rows."""

    def __init__(
        self,
        weights: str,
        engine: str | None,
        topk: int,
        batch_size: int,
        features: bool,
        text_features: bool,
    ) -> None:
        self.predictor, self.decoder, k = open_predictor(
            weights, engine, topk, batch_size, features
        )
        self.topk, self.features, self.text_features = topk, features, text_features
        self.names = columns(k, features)

    def __call__(self, batch: Any) -> Any:
        paths = [os.fsdecode(p) for p in batch.column("path").to_pylist()]
        decoded = decode_paths(self.decoder, paths)
        predictions = classify_decoded(
            self.predictor, self.decoder, decoded, self.topk, self.features
        )
        rows = [row_of(p, self.names) for p in predictions]
        return table_of(rows, self.names, self.text_features)


def _unique(paths: Iterable[str]) -> tuple[list[bytes], int]:
    seen: set[str] = set()
    unique, repeated = [], 0
    for path in paths:
        key = path_text(path)
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        unique.append(os.fsencode(path))
    return unique, repeated


@contextlib.contextmanager
def _quiet(ray: Any) -> Iterator[None]:
    """Ray's own logging and progress bars off while the job runs (the caller reports)."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in loggers]
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    context.enable_progress_bars = False
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        context.enable_progress_bars = bars


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Ray, started locally (on the loopback address) when ``address`` is None and not already
    running in this process, and stopped after; else the running instance or ``address``."""
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        options["_node_ip_address"] = "127.0.0.1"
    ray.init(address=address, **options)
    try:
        yield
    finally:
        ray.shutdown()


def predict_on_ray(
    weights: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    address: str | None = None,
    list_file: str | os.PathLike[str] | None = None,
    topk: int = 5,
    batch_size: int = DEFAULT_BATCH,
    actors: int | None = None,
    features: bool = False,
    engine: str | None = None,
) -> StreamResult:
    """Write a row for each image of ``inputs`` and ``list_file`` with a Ray Data pipeline of
    ``actors`` actors (default: one per CPU of the cluster), into the new folder ``out``: part
    files of the format its suffix names (``preds.parquet/``: Parquet files). Each path is
    written once. ``seconds`` counts from the paths listed to the files written, Ray's start
    left out."""
    kind = format_of(out)
    out = Path(out)
    if out.exists():
        raise ValueError(f"out {out} exists: Ray writes a new folder of part files there")
    if actors is not None and not 1 <= actors <= MAX_THREADS:
        raise ValueError(f"actors must be an integer within 1..{MAX_THREADS}, got {actors!r}")
    check_output_path(out, "out", inputs=[weights])
    ray = require(RAY, "--ray")
    require(PARQUET, "--ray")
    open_predictor(weights, engine, topk, batch_size, features)  # its errors, before Ray's start
    paths, repeated = _unique(iter_images(inputs, list_file))
    if not paths:
        out.mkdir(parents=True)
        return StreamResult(0, 0, repeated, 0.0, out=out)
    with _quiet(ray), _ray_session(ray, address):
        start = time.perf_counter()
        pa = require(PARQUET)
        step = batch_size * _BLOCK_BATCHES
        blocks = [
            pa.table({"path": pa.array(paths[i : i + step], pa.binary())})
            for i in range(0, len(paths), step)
        ]
        pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        dataset = ray.data.from_arrow(blocks).map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "weights": str(Path(weights).resolve()),
                "engine": engine,
                "topk": topk,
                "batch_size": batch_size,
                "features": features,
                "text_features": kind == "csv",
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=1,
        )
        if kind == "parquet":
            dataset.write_parquet(str(out))
        elif kind == "csv":
            dataset.write_csv(str(out))
        else:  # pandas writes 10 decimals unless asked for more
            dataset.write_json(str(out), pandas_json_args_fn=lambda: {"double_precision": 15})
        seconds = time.perf_counter() - start
    images, errors = _count(out, kind)
    return StreamResult(images, errors, repeated, seconds, out=out)


def _count(out: Path, kind: str) -> tuple[int, int]:
    """Rows and error rows in the folder Ray wrote."""
    errors = [row["error"] for row in read_rows(out, kind, columns=["path", "error"])]
    return len(errors), sum(1 for error in errors if error)
