"""Safe file writes: a file is either its old version or its complete new one, never half.

Written files get the permissions the umask allows (like ``open``), a full disk is reported as
such, output paths can be checked before any work starts, and temporary files left by a killed
writer can be found and removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_path",
    "check_output_path",
    "open_regular",
    "read_regular",
    "remove_stale_temps",
    "write_bytes",
    "write_json",
    "write_text",
]

# Free bytes below which a failed write is taken to be a full disk: libraries that write files
# (torch.save, safetensors) do not always pass ENOSPC on as an OSError.
_NEARLY_FULL = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A temporary file's name: the prefix, mkstemp's random characters, ".tmp".
_RANDOM_PART = re.compile(r"[a-z0-9_]+\.tmp")
_NAME_MAX = 255  # bytes in a file name on the usual file systems


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _NAME_MAX


def _check_name(target: Path, folder: Path) -> None:
    """``OSError(ENAMETOOLONG)`` naming ``target`` if its name is too long for ``folder``."""
    if len(os.fsencode(target.name)) > _name_max(folder):
        raise OSError(
            errno.ENAMETOOLONG,
            f"file name too long ({len(os.fsencode(target.name))} bytes, at most "
            f"{_name_max(folder)}): {target}",
        )


def _temp_prefix(target: Path) -> str:
    """``.NAME.``, or for a name too long to fit in a temporary name of :data:`_NAME_MAX`
    bytes, ``.START~HASH.``: the name's start and a hash of the whole name."""
    name = target.name
    room = _NAME_MAX - len("..") - len("abcdefgh.tmp")
    if len(os.fsencode(name)) <= room:
        return f".{name}."
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    start = name
    while len(os.fsencode(start)) > room - len(digest) - 1:
        start = start[:-1]
    return f".{start}~{digest}."


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    If the body raises, the temporary file is removed and ``path`` is untouched; a failure on a
    (nearly) full file system raises ``OSError(ENOSPC)`` naming ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_name(target, target.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, target)
    except Exception as e:  # torch.save and safetensors raise their own types on a full disk
        full = getattr(e, "errno", None) == errno.ENOSPC
        if full or (not isinstance(e, ValueError) and _nearly_full(target.parent)):
            raise OSError(errno.ENOSPC, f"no space left on the device writing {target}") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that a killed :func:`atomic_path` writer of ``path`` left."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    prefix = _temp_prefix(target)
    stale = sorted(
        file
        for file in target.parent.iterdir()
        if file.name.startswith(prefix) and _RANDOM_PART.fullmatch(file.name[len(prefix) :])
    )
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def check_output_path(
    path: str | os.PathLike[str],
    name: str = "out",
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """``path`` as a file about to be written: ``ValueError`` if it is a folder or one of the
    ``inputs``, ``PermissionError`` if no file can be made in its folder (or the nearest
    existing parent), ``OSError(ENAMETOOLONG)`` if its name is too long. ``name`` is the
    parameter named in the messages.

    Writing is tried (a temporary file made and removed), not inferred from permissions: root
    may write anywhere by its permissions, yet not in ``/proc`` or on a read-only mount."""
    target = Path(path)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        _check_name(target, folder)
    except OSError as e:
        raise OSError(e.errno, f"{name} {e.strerror}") from None
    if target.is_dir():
        raise ValueError(f"{name} {target} is a folder: give a file path")
    if any(target.resolve() == Path(source).resolve() for source in inputs):
        raise ValueError(f"{name} {target} is also an input: writing it would destroy it")
    if not folder.is_dir():
        raise ValueError(f"{name} {target}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {target}: cannot write in {folder}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".shufflenet-probe-", dir=folder)
    except OSError as e:
        raise PermissionError(
            f"{name} {target}: cannot write in {folder} ({e.strerror or type(e).__name__})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return target


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file; ``ValueError`` if it is a FIFO,
    socket, device or folder, ``FileNotFoundError`` if it is missing.

    The file is opened without blocking and checked on the open descriptor: a FIFO swapped in
    for a checked file never blocks the reader, and nothing can change between check and read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise ValueError(f"{path} is not a regular file ({kind}): refused")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), at most ``max_bytes``:
    ``ValueError`` for a larger file, read no further than that (``/dev/zero`` and growing
    files included)."""
    with open_regular(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes} bytes: refused")
    return data


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")
