"""Local paths and fsspec URLs (s3://, gs://, memory://, ...) behind one small API.

Writes are atomic where the backend allows: data goes to a temporary name first and is
moved into place, so a crash never leaves a half-written file that looks complete. On
object stores a single PUT is already atomic, so objects are written directly.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs


def is_url(path: str) -> bool:
    return "://" in path


def filesystem(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it; S3 settings also come from AWS_* variables."""
    if url.startswith("s3://") and "client_kwargs" not in storage_options:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            storage_options = {**storage_options, "client_kwargs": {"endpoint_url": endpoint}}
    return url_to_fs(url, **storage_options)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URL (always '/' for URLs)."""
    if is_url(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def resolve_relative(path: str, relative_to: str) -> str:
    """Resolve `path` against the folder holding `relative_to` (a file path or URL)."""
    if is_url(path) or os.path.isabs(path) or not relative_to:
        return path
    if is_url(relative_to):
        return posixpath.normpath(posixpath.join(posixpath.dirname(relative_to), path)).replace(
            ":/", "://", 1)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(relative_to)), path))


def read_bytes(url: str, **storage_options: Any) -> bytes:
    fs, path = filesystem(url, **storage_options)
    with fs.open(path, "rb") as handle:
        return handle.read()


def read_text(url: str, **storage_options: Any) -> str:
    return read_bytes(url, **storage_options).decode("utf-8")


def exists(url: str, **storage_options: Any) -> bool:
    fs, path = filesystem(url, **storage_options)
    return fs.exists(path)


# Object stores: one PUT is atomic and a failed upload leaves no object behind.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "r2"})


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def write_bytes_atomic(url: str, data: bytes, **storage_options: Any) -> None:
    """Write so readers see either nothing or the whole file, never a prefix.

    Elsewhere than object stores the data goes to `<name>.tmp-<random>` first and is moved
    into place; the temporary file is removed when the write fails (full disk, a folder in
    the way), so failures leave nothing behind.
    """
    fs, path = filesystem(url, **storage_options)
    parent = posixpath.dirname(path) if is_url(url) else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    protocols = _protocols(fs)
    if OBJECT_STORES.intersection(protocols):
        with fs.open(path, "wb") as handle:
            handle.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    local = "file" in protocols or "local" in protocols
    try:
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        if local:
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


def write_text_atomic(url: str, text: str, **storage_options: Any) -> None:
    write_bytes_atomic(url, text.encode("utf-8"), **storage_options)


def list_files(url: str, suffixes: tuple[str, ...], **storage_options: Any) -> Iterator[str]:
    """Files under a folder/prefix whose names end in one of `suffixes`, sorted, as URLs/paths."""
    fs, path = filesystem(url, **storage_options)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    for found in sorted(fs.find(path)):
        if found.lower().endswith(suffixes):
            yield found if not is_url(url) else f"{protocol}://{found}"


def check_writable(url: str, **storage_options: Any) -> None:
    """Fail now, not after hours of compute, if `url` cannot take outputs.

    Writes and deletes a small probe object under `url`. On object stores the bucket must
    exist first: s3fs's makedirs, and some servers on a PUT, would create it, hiding a
    typo in the bucket name. Raises
    FileNotFoundError (missing bucket/folder), PermissionError (refused credentials) or
    OSError, each naming the URL.
    """
    fs, path = filesystem(url, **storage_options)
    probe = posixpath.join(path, f".foldray-write-probe-{uuid.uuid4().hex}")
    prefix = f"{url}: cannot write outputs here"
    try:
        if is_url(url) and not url.startswith("file://"):
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):   # some servers create a bucket on the first PUT
                fs.info(bucket)         # raises the reason: refused credentials, no bucket
                raise FileNotFoundError(f"bucket {bucket!r} not found")
            fs.pipe(probe, b"ok")
        else:
            fs.makedirs(path, exist_ok=True)
            with fs.open(probe, "wb") as handle:
                handle.write(b"ok")
        fs.rm(probe)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{prefix}: the bucket or folder does not exist ({err})") from err
    except PermissionError as err:
        raise PermissionError(f"{prefix}: access denied, check the credentials ({err})") from err
    except OSError as err:
        raise OSError(f"{prefix}: {err}") from err
    except Exception as err:  # botocore/aiobotocore client errors are not OSErrors
        raise OSError(f"{prefix}: {err.__class__.__name__}: {err}") from err


def remove_folder(url: str, **storage_options: Any) -> None:
    """Delete a folder/prefix and everything under it; a file at `url` is left alone."""
    fs, path = filesystem(url, **storage_options)
    if fs.isdir(path):
        fs.rm(path, recursive=True)


# OSErrors a retry cannot fix: the same call fails the same way.
_PERMANENT = (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
              FileNotFoundError)
T = TypeVar("T")


def is_transient(err: BaseException) -> bool:
    """An I/O error worth retrying: an OSError that is not about the path itself (a full
    disk, a dropped connection, a throttled request) or a botocore/aiobotocore client error."""
    if isinstance(err, _PERMANENT):
        return False
    if isinstance(err, OSError):
        return True
    module = type(err).__module__ or ""
    return module.startswith(("botocore", "aiobotocore"))


def retry_io(call: Callable[[], T], *, attempts: int = 3, delay_s: float = 0.5) -> T:
    """`call()`, retried on transient I/O errors with doubling delays (0.5 s, 1 s, ...);
    the last error is raised. Only for idempotent calls (atomic writes, reads)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:
            if attempt == attempts or not is_transient(err):
                raise
            time.sleep(delay_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
