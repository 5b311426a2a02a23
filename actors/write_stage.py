"""Last stage of `foldray predict-batch`: one AF3 output folder per job, then its result row."""

from __future__ import annotations

import time
from typing import Any

from foldray.actors.predict_rows import PENDING, PredictedJob, failed_row, final_row
from foldray.io import storage
from foldray.io.confidences import job_dir, write_prediction
from foldray.io.outputs import OutputOptions


class WriteStage:
    """CPU actor: writes the AF3 layout (summary last, the completion marker).

    The job folder is cleared first, so outputs of an earlier run (more samples, another
    seed, a crash mid-write) never mix with this one's. Idempotent: a retried write
    replaces the same files, and a job counts as done only once its summary exists.
    Transient storage errors are retried (`storage.retry_io`); a write that still fails
    (full disk, a file where the folder belongs) is that job's error row.
    """

    def __init__(self, out_url: str, outputs: OutputOptions | None = None) -> None:
        self.out_url = out_url
        self.outputs = outputs    # extra files (PDB, SDF, PDE, ...): foldray.io.outputs

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] == PENDING:
            started = time.perf_counter()
            try:
                url = storage.retry_io(lambda: self._write(row))
            except Exception as err:
                row = failed_row(row, err, "write")
            else:
                row = dict(row) | {"status": "ok", "output": url}
            row["write_seconds"] = time.perf_counter() - started
        return final_row(row)

    def _write(self, row: dict[str, Any]) -> str:
        predicted: PredictedJob = row["payload"]
        storage.remove_folder(job_dir(self.out_url, predicted.job))
        return write_prediction(self.out_url, predicted.job, predicted.tokens, predicted.samples,
                                input_digest=row.get("input_sha256") or None,
                                outputs=self.outputs)
