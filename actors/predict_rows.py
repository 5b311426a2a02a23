"""The rows of `foldray predict-batch`: results columns plus one payload object.

Every row carries the results-table columns (`foldray.io.results.PREDICT_SCHEMA`) and a
`payload` that changes from stage to stage: Job -> FeaturizedSeeds -> PredictedJob ->
dropped by the writer. Rows that already have a final status (error, skipped) pass
through the later stages untouched. Torch-free, so CPU stages never import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foldray.errors import InputError, error_line
from foldray.features.pipeline import FeaturizedJob
from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.job import Job
from foldray.io.confidences import SamplePrediction
from foldray.io.results import PREDICT_SCHEMA

PENDING = "pending"   # still to predict; final statuses are ok / error / skipped
RESULT_COLUMNS = tuple(PREDICT_SCHEMA.names)


@dataclass(frozen=True)
class FeaturizedSeeds:
    """Features of one job per seed (a Python object, so Ray keeps the arrays as they are)."""

    by_seed: dict[int, FeaturizedJob]


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
               node_id="", featurize_node_id="")
    row.update(values, status=status, payload=payload)
    return row


def error_row(row: dict[str, Any], err: InputError) -> dict[str, Any]:
    """`row` turned into an error: the message is the line `foldray validate` prints."""
    return dict(row) | {"status": "error", "error": error_line(err), "payload": None}
