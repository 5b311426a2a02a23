"""A machine-local copy of remote checkpoints, so each machine downloads a checkpoint once.

Every model actor, Serve replica and `foldray predict` loads the whole checkpoint (~1.5 GB for
AF3-size weights); eight actors on one node would otherwise download it eight times per run.
Entries live under `<FOLDRAY_CACHE_DIR>/checkpoints/`, named by a sha256 of the URL and the
remote object's identity (ETag, else size + modification time): a replaced object is fetched
again and a name can never leave the folder. Downloads go to a temporary file, are checked
against the remote size and renamed into place, so a crash never leaves a file that looks
complete. A per-entry `flock` lets one process download while the others wait and reuse it.
At most FOLDRAY_CHECKPOINT_CACHE_ENTRIES checkpoints are kept (least recently used go first).
Any cache problem falls back to reading the URL directly, never to an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from foldray.cache_dir import cache_folder
from foldray.io import storage

log = logging.getLogger(__name__)

ENTRIES_ENV = "FOLDRAY_CHECKPOINT_CACHE_ENTRIES"
DEFAULT_ENTRIES = 3
SUFFIX = ".safetensors"
_CHUNK = 16 * 1024 * 1024


# Already local or in this process: nothing to save by copying.
_LOCAL_PROTOCOLS = ("file://", "local://", "memory://")


def is_remote(url: str) -> bool:
    """Only remote URLs are cached; local files (and file:// URLs) are read where they are."""
    return storage.is_url(url) and not url.startswith(_LOCAL_PROTOCOLS)


def local_copy(url: str) -> Path | None:
    """A local file holding `url`'s current bytes, or None: read the URL directly (local URL,
    cache turned off, or a cache problem, which is logged once as a warning)."""
    if not is_remote(url):
        return None
    base = cache_folder()
    if base is None:
        return None
    try:
        return _fetch(url, base / "checkpoints")
    except Exception as err:   # unwritable folder, full disk, lock or network trouble
        log.warning("checkpoint cache unusable for %s (%s: %s); reading it directly",
                    url, err.__class__.__name__, err)
        return None


def discard(path: Path) -> None:
    """Remove a cached copy that turned out damaged, so later loads download it afresh."""
    with contextlib.suppress(OSError):
        path.unlink()


def max_entries() -> int:
    raw = os.environ.get(ENTRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_ENTRIES
    try:
        return max(1, int(raw))
    except ValueError:
        log.warning("%s=%r is not a whole number; keeping %d checkpoints", ENTRIES_ENV, raw,
                    DEFAULT_ENTRIES)
        return DEFAULT_ENTRIES


def entry_name(url: str, info: dict) -> str:
    """The cache file name: a hash of the URL and the remote object's identity."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated") or ""
    identity = f"{url}|{info.get('size')}|{etag}|{'' if etag else modified}"
    return hashlib.sha256(identity.encode()).hexdigest()


def _fetch(url: str, folder: Path) -> Path:
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)       # identity must be fresh: the object may have been replaced
    info = fs.info(path)
    size = info.get("size")
    if info.get("type") not in (None, "file") or not isinstance(size, int):
        raise OSError("not a single remote file")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = entry_name(url, info)
    entry = folder / f"{key}{SUFFIX}"
    with _locked(folder / f"{key}.lock"):
        fresh = not (entry.is_file() and entry.stat().st_size == size)
        if fresh:
            _download(fs, path, entry, size)
        os.utime(entry)             # recently used: eviction keeps it
    if fresh:
        _evict(folder, keep=entry)
    return entry


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)    # others wait here while one process downloads
        yield
    finally:
        os.close(fd)                      # closing releases the lock


def _download(fs, path: str, entry: Path, size: int) -> None:
    """Copy the remote object next to `entry`, check its size, then rename it into place."""
    for stale in entry.parent.glob(f"{entry.stem}.*.tmp"):   # a crashed earlier download
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(dir=entry.parent, prefix=f"{entry.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out, fs.open(path, "rb", block_size=_CHUNK) as remote:
            shutil.copyfileobj(remote, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        written = os.path.getsize(temporary)
        if written != size:
            raise OSError(f"downloaded {written} bytes, the object has {size}")
        os.replace(temporary, entry)      # mkstemp made it 0o600: checkpoints can be private
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _evict(folder: Path, keep: Path) -> None:
    """Delete least recently used checkpoints beyond the limit; one in use by a loader that
    holds its lock is skipped (non-blocking), so eviction never waits or breaks a download."""
    entries = sorted(folder.glob(f"*{SUFFIX}"), key=_mtime, reverse=True)
    excess = [e for e in entries if e != keep][max(0, max_entries() - 1):]
    for old in excess:
        lock_path = old.with_suffix(".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            old.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
