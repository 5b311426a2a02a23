"""The rows of the batch engine (`foldray predict-batch`, `foldray featurize`).

Every row carries the results-table columns (`foldray.io.results.RESULTS_SCHEMA`), the
job's `input_sha256`, and a `payload` that changes from stage to stage: Job ->
FeaturizedSeeds -> PredictedJob -> dropped at the end. Rows that already have a final
status (error, skipped) pass through the later stages untouched. Any exception a stage
raises for one job becomes that job's error row (`failed_row`), so one bad record never
sinks the batch. Torch-free, so CPU stages never import it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from foldray.errors import InputError, error_line, short_message
from foldray.features.pipeline import FeaturizedJob
from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.job import Job
from foldray.io.confidences import SamplePrediction
from foldray.io.results import RESULT_COLUMNS, SCREEN_COLUMNS

PENDING = "pending"   # still to do; final statuses are ok / error / skipped
logger = logging.getLogger("foldray.batch")


@dataclass(frozen=True)
class FeaturizedSeeds:
    """Features of one job per seed (a Python object, so Ray keeps the arrays as they are)."""

    by_seed: dict[int, FeaturizedJob]


@dataclass(frozen=True)
class StoredFeatures:
    """A job featurized by `foldray featurize`: where its features and layout are stored
    (loaded by the featurize stage, so the read stage and the sort stay light)."""

    job: Job
    features_url: str
    layout_url: str
    sidecar_url: str = ""
    # the sidecar's featurization entry, as read with the job ({} when it records none):
    # checked against the model's by the featurize stage without reading the sidecar again
    featurization_record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScreenLigand:
    """A ligand of `foldray screen` (a `foldray.screening.LigandSpec`): the featurize stage
    builds its complex with the target it holds, so rows never carry the target's MSAs."""

    spec: Any


@dataclass(frozen=True)
class PredictedJob:
    """What the writer needs: the job, its token layout and every sample."""

    job: Job
    tokens: TokenizedStructure
    samples: list[SamplePrediction]


def result_row(status: str, *, payload: Any = None, **values: Any) -> dict[str, Any]:
    """A row with every results column (unset metrics null, counts -1) plus `payload`."""
    row: dict[str, Any] = {column: None for column in RESULT_COLUMNS}
    row.update(name="", source="", safe_name="", error="", output="", n_tokens=-1, n_atoms=-1,
               featurize_seconds=0.0, model_seconds=0.0, write_seconds=0.0, actor_id="",
               node_id="", featurize_node_id="", input_sha256="")
    row.update(values, status=status, payload=payload)
    return row


def final_row(row: dict[str, Any]) -> dict[str, Any]:
    """The results-table columns of a row (payload and bookkeeping dropped); screen rows
    (`ligand_id` set) keep the screen columns, `seconds` the sum of their stages."""
    out = {column: row.get(column) for column in RESULT_COLUMNS}
    if "ligand_id" in row:
        out.update({column: row.get(column) for column in SCREEN_COLUMNS})
        out["seconds"] = sum(float(row.get(k) or 0.0) for k in
                             ("featurize_seconds", "model_seconds", "write_seconds"))
    return out


def failure_line(err: BaseException, *, source: str = "", job: str = "", stage: str = "") -> str:
    """The results-table error of a failed job: an InputError's located line, else
    `<source>: <job>: <stage>: ExceptionClass: message` (the traceback goes to the log)."""
    if isinstance(err, InputError):
        return error_line(err.located(source=source, job=job))
    logger.error("%s: job %r: %s stage failed", source or "-", job or "-", stage or "a",
                 exc_info=err)
    return error_line(InputError(short_message(err), source=source, job=job, field=stage))


def failed_row(row: dict[str, Any], err: BaseException, stage: str) -> dict[str, Any]:
    """`row` turned into an error row for `err` raised in `stage`."""
    line = failure_line(err, source=row.get("source") or "", job=row.get("name") or "",
                        stage=stage)
    return dict(row) | {"status": "error", "error": line, "payload": None}
