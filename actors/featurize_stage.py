"""Ray Data stages of `foldray featurize`: read jobs from files, featurize each on CPU.

Thin by design: parsing and features live in the library; these stages loop rows, call
one library function, and turn `InputError` into a status row so one bad record never
sinks the batch.
"""

from __future__ import annotations

import json
import time
from typing import Any

from foldray.actors.status import status_row
from foldray.chem.ccd import warm_up
from foldray.errors import InputError
from foldray.features.pipeline import featurize_job
from foldray.inputs.load import read_jobs
from foldray.io import feature_store


def read_jobs_stage(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One input file -> one row per job (or per bad record)."""
    rows = []
    for item in read_jobs(row["source"]):
        if isinstance(item, InputError):
            rows.append({"source": item.source or row["source"], "name": item.job,
                         "safe_name": "", "job": None, "error": str(item)})
        else:
            rows.append({"source": item.source, "name": item.name, "safe_name": item.safe_name,
                         "job": item, "error": ""})
    return rows


class FeaturizeStage:
    """CPU stage: job row -> features written under `out_url`, status row out."""

    def __init__(self, out_url: str, max_tokens: int | None, seed: int,
                 duplicates: frozenset[str] = frozenset()) -> None:
        self.out_url, self.max_tokens, self.seed = out_url, max_tokens, seed
        self.duplicates = duplicates
        warm_up()  # decode the CCD once per actor, not inside the first job

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        job, started = row["job"], time.perf_counter()
        if row["error"]:
            return status_row(row, "input_error", row["error"])
        if row["safe_name"] in self.duplicates:
            return status_row(row, "input_error", f"{row['source']}: job {row['name']!r}: name: "
                              f"another job in this batch has the output name {row['safe_name']!r}")
        if feature_store.is_done(self.out_url, row["safe_name"]):
            return status_row(row, "skipped", "already featurized",
                              output=feature_store.features_url(self.out_url, row["safe_name"]))
        try:
            featurized = featurize_job(job, seed=self.seed, max_tokens=self.max_tokens,
                                       with_targets=False)
        except InputError as err:
            return status_row(row, "input_error", str(err.located(source=job.source, job=job.name)))
        summary = {"name": job.name, "source": job.source, "n_tokens": featurized.n_tokens,
                   "n_atoms": featurized.tokens.n_atoms,
                   "chains": [c.chain_id for c in featurized.tokens.chains]}
        url = feature_store.save_features(self.out_url, row["safe_name"], featurized.features,
                                          summary)
        return status_row(row, "ok", "", output=url, n_tokens=featurized.n_tokens,
                          n_atoms=featurized.tokens.n_atoms,
                          seconds=time.perf_counter() - started, summary=json.dumps(summary))
