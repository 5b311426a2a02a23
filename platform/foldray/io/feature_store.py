"""Featurized jobs on disk or object storage: one `.npz` per job, written atomically.

Arrays only (loaded with allow_pickle=False, so a features file cannot run code), plus a
JSON sidecar with the job's layout summary. The sidecar is written last: its presence
marks the job as finished, so a rerun skips it and a crash never leaves a file that looks
complete.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from foldray.io import storage

FEATURES_FILE = "features.npz"
DONE_FILE = "features.json"


def features_url(out_url: str, safe_name: str) -> str:
    return storage.join(out_url, safe_name, FEATURES_FILE)


def done_url(out_url: str, safe_name: str) -> str:
    return storage.join(out_url, safe_name, DONE_FILE)


def is_done(out_url: str, safe_name: str) -> bool:
    return storage.exists(done_url(out_url, safe_name))


def done_summary(out_url: str, safe_name: str) -> dict[str, Any] | None:
    """The sidecar of a finished job (its `input_sha256` names the input), None if absent."""
    try:
        value = json.loads(storage.read_text(done_url(out_url, safe_name)))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def save_features(out_url: str, safe_name: str, features: dict[str, np.ndarray],
                  summary: dict[str, Any]) -> str:
    """Write features then the completion marker (the sidecar, with `summary`, which should
    hold the input's `input_sha256`); returns the features URL."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **features)
    url = features_url(out_url, safe_name)
    storage.write_bytes_atomic(url, buffer.getvalue())
    storage.write_text_atomic(done_url(out_url, safe_name), json.dumps(summary, indent=2))
    return url


def load_features(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
