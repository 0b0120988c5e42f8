"""Safe file writes: a file is either its old version or its complete new one, never half.

Written files get the permissions the umask allows (like ``open``), a full disk is reported as
such, output paths can be checked before any work starts, and temporary files left by a killed
writer can be found and removed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "check_output_path",
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


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    If the body raises, the temporary file is removed and ``path`` is untouched; a failure on a
    (nearly) full file system raises ``OSError(ENOSPC)`` naming ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
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
    stale = sorted(target.parent.glob(f"{_temp_prefix(target)}*.tmp"))
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def check_output_path(
    path: str | os.PathLike[str],
    name: str = "out",
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """``path`` as a file about to be written: ``ValueError`` if it is a folder or one of the
    ``inputs``, ``PermissionError`` if its folder (or the nearest existing parent) is not
    writable. ``name`` is the parameter named in the messages."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{name} {target} is a folder: give a file path")
    if any(target.resolve() == Path(source).resolve() for source in inputs):
        raise ValueError(f"{name} {target} is also an input: writing it would destroy it")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{name} {target}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {target}: cannot write in {folder}")
    return target


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
