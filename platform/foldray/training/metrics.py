"""The run's metrics file: one JSON object per reported step, local or in object storage.

Object stores cannot append, so the whole (small) file is rewritten at each report; on
resume the lines after the restored step are dropped (that work is being redone), so the
file always describes one consistent history.
"""

from __future__ import annotations

import json
import math
from typing import Any

from foldray.io import storage


class MetricsLog:
    def __init__(self, url: str, *, resume_step: int) -> None:
        self.url = url
        self.rows: list[dict[str, Any]] = []
        if resume_step > 0 and storage.exists(url):
            for line in storage.read_text(url).splitlines():
                row = json.loads(line) if line.strip() else None
                if row is not None and int(row.get("step", 0)) <= resume_step:
                    self.rows.append(row)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                          for k, v in row.items()})
        storage.write_text_atomic(self.url, "".join(json.dumps(r) + "\n" for r in self.rows))


def read_metrics(url: str) -> list[dict[str, Any]]:
    """The rows written so far (empty before the first report); for progress and tooling."""
    if not storage.exists(url):
        return []
    return [json.loads(line) for line in storage.read_text(url).splitlines() if line.strip()]
