"""A decoded copy of the bundled CCD on local disk, so each process loads it in ~0.1 s.

Decoding biotite's BinaryCIF CCD takes ~1.5 s of CPU in every process that featurizes or
sizes a job: the CLI driver, each Ray stage actor, each Serve replica, each test process.
The decoded columns are plain numpy arrays, so they are written once as an uncompressed
`.npz` (`allow_pickle=False` both ways: nothing executable is ever loaded) and read back
by later processes. The file name carries biotite's version and the CCD file's size and
mtime, so an upgraded CCD is decoded afresh. Writes go to a temporary name and are renamed
into place, so processes racing to write never read a partial file. Any problem with the
cache (no writable folder, a damaged file) falls back to decoding, never to an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from foldray.cache_dir import cache_folder

log = logging.getLogger(__name__)


def cache_key(source: Path, version: str) -> str:
    """Names one decoded CCD: the source file's identity and the decoder's version."""
    stat = source.stat()
    text = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{version}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_decode(key: str, decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored under `key`, or `decode()`'s (then stored for the next process)."""
    folder = cache_folder()
    path = folder / f"ccd-{key}.npz" if folder is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except Exception as err:   # damaged, truncated, not a zip: decode and replace it
            log.warning("decoded CCD cache %s unreadable (%s); decoding again", path, err)
    arrays = decode()
    if path is not None:
        _store(path, arrays)
    return arrays


def _store(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except OSError as err:   # read-only home, full disk: the next process decodes too
        log.info("cannot store the decoded CCD in %s: %s", path.parent, err)
