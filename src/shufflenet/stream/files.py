"""Files of prediction rows: CSV, JSON Lines or Parquet by the suffix, written as rows are
computed and continued after an interruption without repeating or losing a row.

One row per image: ``path``, ``error`` (empty where the image was predicted), then
``top{i}_class``, ``top{i}_index`` and ``top{i}_probability`` for i = 1..k, and ``features``
(the pooled embedding: a list in JSON Lines and Parquet, numbers separated by spaces in CSV)
where asked for. Paths are text: bytes of a file name that are not UTF-8 are written as
``\\xNN``.

* **CSV, JSON Lines**: whole rows are appended to the file with one write per batch; a failed
  write is cut back to the last whole row. A process killed in a write can leave part of a
  row at the end: :func:`open_writer` with ``resume`` reads the rows back, cuts that part off
  and continues after the last whole row.
* **Parquet**: a file is readable only once complete, so rows go to part files in
  ``OUT.parts/`` (each written whole, atomically, every few thousand rows or minute) that
  :meth:`RowWriter.close` merges into ``OUT`` (atomically) and removes. A resumed run reads
  ``OUT`` and the parts; a row already in ``OUT`` is never written twice.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path
from ..predict import Prediction
from ..runtimes import Extra, require

__all__ = [
    "FORMATS",
    "PARQUET",
    "RowWriter",
    "check_new",
    "columns",
    "format_of",
    "open_writer",
    "path_text",
    "read_rows",
    "row_of",
    "table_of",
]

# The pip extra that brings pyarrow (with Ray Data).
PARQUET = Extra("ray", "ray[data] (pyarrow)", "pyarrow", "pyarrow")
# Suffix -> format.
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Files Ray Data writes in a folder, by format.
_PART_SUFFIXES = {"csv": (".csv",), "jsonl": (".json", ".jsonl"), "parquet": (".parquet",)}
_SYNC_SECONDS = 10.0  # CSV and JSON Lines: fsync at most this often (and at the end)


def format_of(out: str | os.PathLike[str]) -> str:
    """The row format of a file named ``out``; ``ValueError`` for another suffix."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"out {out}: name it .csv, .jsonl or .parquet (the format of its rows)")
    return FORMATS[suffix]


def columns(k: int, features: bool) -> list[str]:
    """The columns of a row with ``k`` classes."""
    names = ["path", "error"]
    for i in range(1, k + 1):
        names += [f"top{i}_class", f"top{i}_index", f"top{i}_probability"]
    return [*names, "features"] if features else names


def path_text(path: str | os.PathLike[str]) -> str:
    """A path as its rows name it: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def row_of(prediction: Prediction, names: Sequence[str]) -> dict[str, Any]:
    """``prediction`` as a row of ``names`` (:func:`columns`)."""
    row: dict[str, Any] = dict.fromkeys(names)
    row["path"] = path_text(prediction.path)
    row["error"] = prediction.error
    for i, (name, index, probability) in enumerate(prediction.top, 1):
        row[f"top{i}_class"], row[f"top{i}_index"] = name, index
        row[f"top{i}_probability"] = probability
    if "features" in row and prediction.features is not None:
        row["features"] = [float(f"{v:.9g}") for v in prediction.features]  # float32's digits
    return row


def _features_text(values: Sequence[float] | None) -> str | None:
    return None if values is None else " ".join(f"{v:.9g}" for v in values)


def table_of(rows: Sequence[dict[str, Any]], names: Sequence[str], text_features: bool = False):
    """``rows`` as a pyarrow Table (Parquet's types; ``text_features``: the features as CSV's
    text)."""
    pa = require(PARQUET, "Parquet files")
    fields = []
    for name in names:
        if name == "features":
            kind = pa.string() if text_features else pa.list_(pa.float32())
        elif name.endswith("_index"):
            kind = pa.int64()
        elif name.endswith("_probability"):
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    data: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in names}
    if text_features and "features" in data:
        data["features"] = [_features_text(v) for v in data["features"]]
    return pa.table(data, schema=pa.schema(fields))


def _csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return out.getvalue()


def _csv_row(row: dict[str, Any]) -> str:
    return _csv_line(_features_text(v) if k == "features" else v for k, v in row.items())


def _jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(row, allow_nan=False) + "\n"


class RowWriter:
    """Appends rows to one file (:func:`open_writer`); ``done`` holds the paths it already
    has. :meth:`close` finishes the file; :meth:`abort` keeps the whole rows written so far."""

    done: set[str]

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _TextWriter(RowWriter):
    """CSV or JSON Lines: whole rows appended, one write per batch."""

    def __init__(self, out: Path, names: list[str], kind: str, resume: bool) -> None:
        self.out, self.names, self.kind = out, names, kind
        self.done = set()
        end = 0
        check_new(out, resume)
        if out.exists():
            self.done, end = _scan(out, names, kind)
        self._fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.ftruncate(self._fd, end)  # a row cut short by a killed process goes
            os.lseek(self._fd, end, os.SEEK_SET)
            self._end = end
            if end == 0 and kind == "csv":
                self._append(_csv_line(names).encode())
        except BaseException:
            os.close(self._fd)
            raise
        self._synced = time.monotonic()

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)
                os.lseek(self._fd, self._end, os.SEEK_SET)
            raise
        self._end += len(data)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        line = _csv_row if self.kind == "csv" else _jsonl_line
        self._append("".join(line(row) for row in rows).encode())
        if time.monotonic() - self._synced > _SYNC_SECONDS:
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


class _Lines:
    """The whole lines of a file, decoded; :attr:`end` is the byte after the last line given
    out, :attr:`count` the lines read, :attr:`exhausted` whether no whole line is left. A last
    line without its newline is a row cut short: never given out."""

    def __init__(self, file: io.BufferedReader) -> None:
        self.file, self.end, self.count, self.exhausted = file, 0, 0, False

    def __iter__(self) -> Iterator[str]:
        for line in self.file:
            if not line.endswith(b"\n"):
                break
            self.count += 1
            text = line.decode("utf-8")
            self.end += len(line)
            yield text
        self.exhausted = True


def _scan(out: Path, names: list[str], kind: str) -> tuple[set[str], int]:
    """The paths of the whole rows in ``out`` and the byte after the last of them."""
    done: set[str] = set()
    good = 0
    damaged = f"{out} is not a {kind} file of prediction rows with these columns"
    with open(out, "rb") as file:
        lines = _Lines(file)
        try:
            if kind == "csv":
                reader = csv.reader(lines, strict=True)
                header = next(reader, None)
                if header is not None and header != names:
                    raise ValueError(f"{damaged} ({', '.join(names)}); its header: {header}")
                good = lines.end
                for record in reader:
                    if len(record) != len(names):
                        raise ValueError(f"{damaged}: line {lines.count} has {len(record)} fields")
                    done.add(record[0])
                    good = lines.end
            else:
                for line in lines:
                    record = json.loads(line)
                    if not isinstance(record, dict) or list(record) != names:
                        raise ValueError(f"{damaged} ({', '.join(names)}): line {lines.count}")
                    done.add(str(record["path"]))
                    good = lines.end
        except csv.Error:
            if not lines.exhausted:  # not the end of the file in a quoted field: damage
                raise ValueError(f"{damaged}: line {lines.count} cannot be read") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{damaged}: line {lines.count} cannot be read") from None
    return done, good


class _ParquetWriter(RowWriter):
    """Parquet: part files, merged into one file at :meth:`close`."""

    def __init__(
        self, out: Path, names: list[str], resume: bool, part_rows: int, part_seconds: float
    ) -> None:
        self.pq = require(PARQUET, "Parquet files", "pyarrow.parquet")
        self.out, self.names, self.parts = out, names, out.with_name(out.name + ".parts")
        self.part_rows, self.part_seconds = part_rows, part_seconds
        self.done, self._since = set(), time.monotonic()
        self._rows: list[dict[str, Any]] = []
        check_new(out, resume)
        for file in self._sources():
            self.done.update(self._paths(file))
        self.parts.mkdir(exist_ok=True)
        for stale in self.parts.glob(".part-*.tmp"):  # a killed atomic write
            stale.unlink()
        numbers = [int(p.stem.split("-")[1]) for p in self._part_files()]
        self._next = max(numbers, default=-1) + 1

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(self.parts.glob("part-*.parquet"))

    def _sources(self) -> list[Path]:
        return ([self.out] if self.out.exists() else []) + self._part_files()

    def _paths(self, file: Path) -> list[str]:
        schema = self.pq.read_schema(file)
        if schema.names != self.names:
            raise ValueError(
                f"{file} is not a Parquet file of prediction rows with these columns "
                f"({', '.join(self.names)}); its columns: {', '.join(schema.names)}"
            )
        return [str(p) for p in self.pq.read_table(file, columns=["path"])["path"].to_pylist()]

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._rows += rows
        waited = time.monotonic() - self._since
        if len(self._rows) >= self.part_rows or waited >= self.part_seconds:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            with atomic_path(self.parts / f"part-{self._next:06d}.parquet") as tmp:
                self.pq.write_table(table_of(self._rows, self.names), tmp)
            self._next += 1
            self._rows = []
        self._since = time.monotonic()

    def close(self) -> None:
        self._flush()
        if self._part_files() or not self.out.exists():
            self._merge()
        shutil.rmtree(self.parts, ignore_errors=True)

    def _merge(self) -> None:
        """``OUT`` and the parts, in order, into a new ``OUT``: each path once."""
        seen: set[str] = set()
        schema = table_of([], self.names).schema
        with atomic_path(self.out) as tmp, self.pq.ParquetWriter(tmp, schema) as writer:
            for source in self._sources():
                with self.pq.ParquetFile(source) as file:
                    for batch in file.iter_batches():
                        keep = []
                        for n, path in enumerate(batch.column("path").to_pylist()):
                            if path not in seen:
                                seen.add(path)
                                keep.append(n)
                        writer.write_batch(batch.take(keep))

    def abort(self) -> None:
        self._flush()


def check_new(out: str | os.PathLike[str], resume: bool) -> None:
    """``ValueError`` if ``out`` (or its Parquet parts) exists and ``resume`` is not set."""
    path = Path(out)
    parts = path.with_name(path.name + ".parts")
    for taken in (path, parts) if format_of(path) == "parquet" else (path,):
        if taken.exists() and not resume:
            raise ValueError(f"{taken} exists: continue it with resume (--resume), or remove it")


def open_writer(
    out: str | os.PathLike[str],
    names: list[str],
    resume: bool = False,
    part_rows: int = 4096,
    part_seconds: float = 60.0,
) -> RowWriter:
    """A :class:`RowWriter` of rows of ``names`` into ``out``, of its suffix's format; with
    ``resume``, an existing file of the same columns is continued (``ValueError`` for other
    columns or a damaged file), else an existing file is a ``ValueError``."""
    kind = format_of(out)
    path = Path(out)
    if kind == "parquet":
        return _ParquetWriter(path, names, resume, part_rows, part_seconds)
    return _TextWriter(path, names, kind, resume)


def _number(value: Any, kind: type) -> Any:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return kind(value)


def _normal(record: dict[str, Any]) -> dict[str, Any]:
    """A row read back with its values typed, whatever wrote it (our writers, Ray Data's)."""
    row: dict[str, Any] = {}
    for name, value in record.items():
        if name.endswith("_index"):
            row[name] = _number(value, int)
        elif name.endswith("_probability"):
            row[name] = _number(value, float)
        elif name == "features":
            text = isinstance(value, str)
            row[name] = (
                None
                if value in (None, "")
                else [float(v) for v in (value.split() if text else value)]
            )
        else:
            row[name] = None if value in (None, "") else str(value)
    return row


def _read_file(file: Path, kind: str, names: Sequence[str] | None) -> Iterator[dict[str, Any]]:
    if kind == "parquet":
        pq = require(PARQUET, "Parquet files", "pyarrow.parquet")
        yield from pq.read_table(file, columns=names).to_pylist()
        return
    with open(file, newline="", encoding="utf-8") as f:
        records = csv.DictReader(f) if kind == "csv" else map(json.loads, filter(str.strip, f))
        for record in records:
            yield record if names is None else {name: record[name] for name in names}


def read_rows(
    path: str | os.PathLike[str], kind: str | None = None, columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The rows of a file of predictions, or of a folder of part files of one format (what
    Ray Data writes), their values typed; ``kind`` (csv, jsonl, parquet) defaults to the
    suffix of ``path``; ``columns``: only these."""
    path = Path(path)
    kind = kind or format_of(path)
    files: Iterable[Path] = [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in _PART_SUFFIXES[kind] and p.is_file()
        )
    return [_normal(record) for file in files for record in _read_file(file, kind, columns)]
