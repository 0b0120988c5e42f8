"""Safe writes: permissions follow the umask, a full disk says so, temp files can be swept,
output paths are checked before work starts."""

import errno
import os
import shutil
from collections import namedtuple

import pytest

from shufflenet import io


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = io.write_text(tmp_path / "a.txt", "x")
        assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0600
        os.umask(0o077)
        assert io.write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_full_disk_is_reported_as_such_and_nothing_is_left(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 0))
    target = tmp_path / "model.bin"
    target.write_text("old")
    with pytest.raises(OSError, match="no space left") as err, io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_other_errors_pass_through_when_space_is_free(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), io.atomic_path(tmp_path / "x") as _tmp:
        raise RuntimeError("boom")


def test_stale_temps_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    other = tmp_path / ".model.safetensors.abc.tmp"
    other.write_bytes(b"not ours")
    assert io.remove_stale_temps(target) == [stale]
    assert not stale.exists() and other.exists()


def test_output_paths_are_checked_before_work(tmp_path):
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"weights")
    with pytest.raises(ValueError, match="is also an input"):
        io.check_output_path(src, "out", inputs=[src])
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    with pytest.raises(ValueError, match="is also an input"):
        io.check_output_path(link, "out", inputs=[src])
    with pytest.raises(ValueError, match="is a folder"):
        io.check_output_path(tmp_path, "out")
    deep = tmp_path / "new" / "deep" / "f.onnx"
    assert io.check_output_path(deep) == deep  # folders to be made are fine
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        io.check_output_path(afile / "f.onnx")


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)  # as for a non-root user
    with pytest.raises(PermissionError, match="cannot write in"):
        io.check_output_path(tmp_path / "f.onnx", "out")
