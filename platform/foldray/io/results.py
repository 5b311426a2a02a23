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


def write_results_table(out_url: str, rows: list[dict[str, Any]]) -> str:
    table = pa.Table.from_pylist([{k: row.get(k) for k in STATUS_COLUMNS} for row in rows])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    url = storage.join(out_url, RESULTS_FILE)
    storage.write_bytes_atomic(url, buffer.getvalue())
    return url
