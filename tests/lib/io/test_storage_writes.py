"""Atomic writes leave no `.tmp-*` file behind when they fail; transient I/O errors retry."""

import errno

import fsspec
import pytest

from foldray.io import storage


def test_failed_local_write_removes_its_temp_file(tmp_path):
    (tmp_path / "taken").mkdir()                      # a folder where the file should go
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(OSError):
        storage.write_bytes_atomic(str(tmp_path / "taken"), b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_failed_local_write_of_bad_data_removes_its_temp_file(tmp_path):
    with pytest.raises(TypeError):
        storage.write_bytes_atomic(str(tmp_path / "f.bin"), "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_failed_fsspec_write_removes_its_temp_file():
    fs = fsspec.filesystem("memory")
    fs.pipe("/atomic-test/keep.bin", b"ok")
    with pytest.raises(TypeError):
        storage.write_bytes_atomic("memory://atomic-test/f.bin", "not bytes")  # type: ignore[arg-type]
    assert [p.rsplit("/", 1)[1] for p in fs.find("/atomic-test")] == ["keep.bin"]
    storage.write_bytes_atomic("memory://atomic-test/f.bin", b"fine")
    assert fs.cat("/atomic-test/f.bin") == b"fine"
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find("/atomic-test")) == ["f.bin", "keep.bin"]
    fs.rm("/atomic-test", recursive=True)


def test_transient_errors_are_retried_permanent_ones_are_not():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EIO, "I/O error")
        return "done"

    assert storage.retry_io(flaky, delay_s=0.01) == "done" and len(calls) == 3

    def full() -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    calls.clear()
    with pytest.raises(OSError, match="No space"):
        storage.retry_io(full, attempts=3, delay_s=0.01)
    assert len(calls) == 3                           # bounded

    def in_the_way() -> None:
        calls.append(1)
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory")

    calls.clear()
    with pytest.raises(NotADirectoryError):
        storage.retry_io(in_the_way, delay_s=0.01)
    assert len(calls) == 1                           # the same call would fail the same way
