"""Last stage of `foldray predict-batch`: one AF3 output folder per job, then its result row."""

from __future__ import annotations

import time
from typing import Any

from foldray.actors.predict_rows import PENDING, RESULT_COLUMNS, PredictedJob
from foldray.io.confidences import write_prediction


class WriteStage:
    """CPU actor: writes the AF3 layout (summary last, the completion marker).

    Idempotent: a retried write replaces the same files, and a job counts as done only
    once its summary exists, so a crash mid-write is redone on the next run.
    """

    def __init__(self, out_url: str) -> None:
        self.out_url = out_url

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] == PENDING:
            predicted: PredictedJob = row["payload"]
            started = time.perf_counter()
            url = write_prediction(self.out_url, predicted.job, predicted.tokens,
                                   predicted.samples)
            row = dict(row) | {"status": "ok", "output": url,
                               "write_seconds": time.perf_counter() - started}
        return {column: row.get(column) for column in RESULT_COLUMNS}
