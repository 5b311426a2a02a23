"""The results table of a batch run: Parquet, one row per record, written atomically."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from foldray.io import storage

RESULTS_FILE = "results.parquet"
STATUS_COLUMNS = ("source", "name", "safe_name", "status", "error", "output", "n_tokens",
                  "n_atoms", "seconds", "summary")


# `foldray predict-batch`: one row per job; metrics are the top-ranked sample's (null when
# the job was not predicted in this run), seconds per stage, and where each stage ran.
PREDICT_SCHEMA = pa.schema([
    ("name", pa.string()), ("source", pa.string()), ("safe_name", pa.string()),
    ("status", pa.string()),            # ok / error / skipped
    ("error", pa.string()), ("n_tokens", pa.int64()), ("n_atoms", pa.int64()),
    ("ranking_score", pa.float64()), ("ptm", pa.float64()), ("iptm", pa.float64()),
    ("mean_plddt", pa.float64()), ("output", pa.string()),
    ("featurize_seconds", pa.float64()), ("model_seconds", pa.float64()),
    ("write_seconds", pa.float64()), ("actor_id", pa.string()), ("node_id", pa.string()),
    ("featurize_node_id", pa.string()),   # where the CPU featurization ran (node_id: the model)
])


def write_results_table(out_url: str, rows: list[dict[str, Any]],
                        schema: pa.Schema | None = None) -> str:
    """Write `<out>/results.parquet`; `schema` fixes column types (else STATUS_COLUMNS, inferred)."""
    if schema is None:
        table = pa.Table.from_pylist([{k: row.get(k) for k in STATUS_COLUMNS} for row in rows])
    else:
        table = pa.Table.from_pylist([{k: row.get(k) for k in schema.names} for row in rows],
                                     schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    url = storage.join(out_url, RESULTS_FILE)
    storage.write_bytes_atomic(url, buffer.getvalue())
    return url
