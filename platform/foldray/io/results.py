"""The results table of a batch run: Parquet, one row per job, written atomically.

`foldray predict-batch` and `foldray featurize` share one schema and one status
vocabulary: `ok`, `error` (`error` says why), `skipped` (complete from an earlier run).
While a run goes, finished rows are also written as part files under `<out>/.results/`,
so they survive a killed driver; the end of the run merges them into
`<out>/results.parquet` and removes them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from foldray.io import storage

RESULTS_FILE = "results.parquet"
PARTS_FOLDER = ".results"     # a job folder name never starts with a dot (sanitize_name)
STATUSES = ("ok", "error", "skipped")
logger = logging.getLogger("foldray.batch")

# One row per job; metrics are the top-ranked sample's (skipped jobs: read back from their
# outputs; null when not predicted), seconds per stage, and where each stage ran.
RESULTS_SCHEMA = pa.schema([
    ("name", pa.string()), ("source", pa.string()), ("safe_name", pa.string()),
    ("status", pa.string()),            # ok / error / skipped
    ("error", pa.string()), ("n_tokens", pa.int64()), ("n_atoms", pa.int64()),
    ("ranking_score", pa.float64()), ("ptm", pa.float64()), ("iptm", pa.float64()),
    ("mean_plddt", pa.float64()),
    ("output", pa.string()),            # the job folder (featurize: its features.npz)
    ("featurize_seconds", pa.float64()), ("model_seconds", pa.float64()),
    ("write_seconds", pa.float64()), ("actor_id", pa.string()), ("node_id", pa.string()),
    ("featurize_node_id", pa.string()),   # where the CPU featurization ran (node_id: the model)
])
RESULT_COLUMNS = tuple(RESULTS_SCHEMA.names)

# `foldray screen`: one row per ligand, its columns first, then the engine's columns.
# ligand_plddt: mean pLDDT of the ligand's atoms; min_target_ligand_pae: smallest PAE
# between a target and a ligand token (Å); seconds: featurize + model + write; stage:
# 1 (the funnel's cheap first stage) or 2 (full settings; a screen without a funnel).
_SCREEN_FIELDS = [("ligand_id", pa.string()), ("smiles", pa.string()), ("status", pa.string()),
                  ("error", pa.string()), ("ranking_score", pa.float64()),
                  ("iptm", pa.float64()), ("ptm", pa.float64()), ("ligand_plddt", pa.float64()),
                  ("min_target_ligand_pae", pa.float64()), ("seconds", pa.float64()),
                  ("output", pa.string()), ("stage", pa.int64())]
SCREEN_SCHEMA = pa.schema(_SCREEN_FIELDS + [f for f in RESULTS_SCHEMA
                                            if f.name not in {n for n, _ in _SCREEN_FIELDS}])
SCREEN_COLUMNS = tuple(n for n, _ in _SCREEN_FIELDS if n not in RESULT_COLUMNS)


COUNT_COLUMNS = ("n_tokens", "n_atoms")   # -1 in engine rows (Arrow-friendly) = not known


def table_row(row: dict[str, Any], schema: pa.Schema = RESULTS_SCHEMA) -> dict[str, Any]:
    """A row as the table stores it: every column, unknown counts (-1) as null."""
    out = {k: row.get(k) for k in schema.names}
    for key in COUNT_COLUMNS:
        if out[key] is not None and out[key] < 0:
            out[key] = None
    return out


def _table(rows: Iterable[dict[str, Any]], schema: pa.Schema = RESULTS_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist([table_row(row, schema) for row in rows], schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_results_table(out_url: str, rows: list[dict[str, Any]],
                        schema: pa.Schema = RESULTS_SCHEMA) -> str:
    """Write `<out>/results.parquet` (RESULTS_SCHEMA, or SCREEN_SCHEMA); returns its URL."""
    url = storage.join(out_url, RESULTS_FILE)
    data = _parquet_bytes(_table(rows, schema))
    storage.retry_io(lambda: storage.write_bytes_atomic(url, data))
    return url


def parts_url(out_url: str) -> str:
    return storage.join(out_url, PARTS_FOLDER)


class ResultParts:
    """The rows of one run as they finish: `<out>/.results/part-<run>-<n>.parquet`."""

    def __init__(self, out_url: str, schema: pa.Schema = RESULTS_SCHEMA) -> None:
        self.out_url, self.run_id, self.count = out_url, uuid.uuid4().hex[:12], 0
        self.schema = schema

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Best effort: a part that cannot be written is logged, never fails the run (the
        final results.parquet and the job folders are the record)."""
        if not rows:
            return
        url = storage.join(parts_url(self.out_url), f"part-{self.run_id}-{self.count:05d}.parquet")
        self.count += 1
        try:
            data = _parquet_bytes(_table(rows, self.schema))
            storage.retry_io(lambda: storage.write_bytes_atomic(url, data))
        except Exception as err:
            logger.warning("could not write %s: %s: %s", url, type(err).__name__, err)


def read_parts(out_url: str) -> list[dict[str, Any]]:
    """Rows of every part file under `<out>/.results/` (earlier, interrupted runs too)."""
    try:
        files = list(storage.list_files(parts_url(out_url), (".parquet",)))
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    for url in files:
        with contextlib.suppress(Exception):   # a part being written by a dead driver
            rows.extend(pq.read_table(io.BytesIO(storage.read_bytes(url))).to_pylist())
    return rows


def read_results(out_url: str) -> list[dict[str, Any]]:
    """Rows of `<out>/results.parquet` ([] when there is none or it cannot be read)."""
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out_url, RESULTS_FILE)))
                             ).to_pylist()
    except Exception:
        return []


def clear_parts(out_url: str) -> None:
    """Remove `<out>/.results/` once results.parquet holds its rows."""
    with contextlib.suppress(FileNotFoundError):
        storage.remove_folder(parts_url(out_url))
