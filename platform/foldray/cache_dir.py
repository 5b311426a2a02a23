"""The machine-local cache folder shared by foldray's caches (decoded CCD, checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FOLDRAY_CACHE_DIR"   # default: $XDG_CACHE_HOME/foldray or ~/.cache/foldray
OFF_VALUES = ("", "0", "off", "none")


def cache_folder() -> Path | None:
    """Where foldray keeps machine-local caches; None when turned off (FOLDRAY_CACHE_DIR=off)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in OFF_VALUES else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "foldray"
