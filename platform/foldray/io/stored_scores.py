"""The scores of a finished job, read back from its output folder (for `skipped` rows).

A rerun skips complete jobs; their rows must still carry the top sample's scores, or tables
and histograms count only the jobs of the latest run. `foldray_job.json` (written before the
summary) holds them; a folder without it (written before markers existed, or by AlphaFold 3
itself) gives the summary's scores and the mean pLDDT of the top model's confidences.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from foldray.io import storage

SCORE_KEYS = ("ranking_score", "ptm", "iptm", "mean_plddt")


def read_json(url: str, storage_options: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON object file, or None when absent or half-written by a killed writer."""
    try:
        value = json.loads(storage.read_text(url, **storage_options))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _score(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def stored_scores(folder_url: str, name: str, marker: dict[str, Any] | None = None,
                  **storage_options: Any) -> dict[str, float | None]:
    """SCORE_KEYS of the job in `folder_url` (files `<name>_*`): from `marker` (the parsed
    foldray_job.json) where it has them, else from the summary and the full confidences."""
    values = {key: _score((marker or {}).get(key)) for key in SCORE_KEYS}
    if any(values[k] is None for k in ("ranking_score", "ptm")):
        summary = read_json(storage.join(folder_url, f"{name}_summary_confidences.json"),
                            storage_options) or {}
        for key in ("ranking_score", "ptm", "iptm"):
            if values[key] is None:
                values[key] = _score(summary.get(key))
    if values["mean_plddt"] is None:
        full = read_json(storage.join(folder_url, f"{name}_confidences.json"), storage_options)
        plddts = [v for v in (full or {}).get("atom_plddts") or [] if isinstance(v, int | float)]
        values["mean_plddt"] = float(np.mean(plddts)) if plddts else None
    return values
