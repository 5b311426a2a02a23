"""CPU stages of `foldray predict-batch` before the model: read + size, then featurize.

Thin: parsing, tokenizing and features live in the library; these stages loop rows, call
it, and turn `InputError` into a status row so one bad record never sinks the batch.
MSA parsing and conformer generation happen here, never on the inference actor.
"""

from __future__ import annotations

import time
from typing import Any

from foldray.actors.predict_rows import PENDING, FeaturizedSeeds, error_row, result_row
from foldray.chem.ccd import warm_up
from foldray.errors import InputError, error_line
from foldray.features.pipeline import featurize_seeds
from foldray.features.tokenize import tokenize
from foldray.inputs.job import Job
from foldray.inputs.manifest import ManifestEntry, read_entry_jobs
from foldray.io.confidences import is_complete, job_dir


def read_stage(row: dict[str, Any], *, out_url: str, max_tokens: int | None,
               overwrite: bool) -> list[dict[str, Any]]:
    """One input (file or inline manifest JSON) -> one row per job, sized and checked.

    Tokenizing here gives each job its size (for grouping) and rejects jobs over the
    token budget before any featurization or model work. Complete jobs become `skipped`
    unless `overwrite`.
    """
    rows = []
    for item in read_entry_jobs(ManifestEntry(row["source"], row.get("text"))):
        if isinstance(item, InputError):
            rows.append(result_row("error", source=item.source or row["source"], name=item.job,
                                   error=error_line(item)))
            continue
        base = result_row(PENDING, source=item.source, name=item.name,
                          safe_name=item.safe_name, payload=item)
        try:
            tokens = tokenize(item, max_tokens=max_tokens)
        except InputError as err:
            rows.append(error_row(base, err.located(source=item.source, job=item.name)))
            continue
        base.update(n_tokens=tokens.n_tokens, n_atoms=tokens.n_atoms)
        if not overwrite and is_complete(out_url, item):
            base.update(status="skipped", output=job_dir(out_url, item), payload=None)
        rows.append(base)
    return rows


class FeaturizeStage:
    """CPU actor: features per seed for a pending job (same seeds `Predictor.predict_job` uses)."""

    def __init__(self, seeds: tuple[int, ...] | None, max_tokens: int | None,
                 share_trunk: bool = False) -> None:
        import ray

        self.seeds, self.max_tokens, self.share_trunk = seeds, max_tokens, share_trunk
        self.node_id = ray.get_runtime_context().get_node_id()   # reported per row: placement
        warm_up()  # decode the CCD once per actor, not inside the first job

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] != PENDING:
            return row
        job: Job = row["payload"]
        started = time.perf_counter()
        try:
            by_seed = featurize_seeds(job, self.seeds, max_tokens=self.max_tokens,
                                      share_trunk=self.share_trunk)
        except InputError as err:
            return error_row(row, err.located(source=job.source, job=job.name))
        return dict(row) | {"payload": FeaturizedSeeds(by_seed), "featurize_node_id": self.node_id,
                            "featurize_seconds": time.perf_counter() - started}
