"""Batch manifests: a Parquet or CSV table that lists the jobs of a batch run.

Schema: exactly one of these columns (others are ignored, so a manifest can carry the
user's own bookkeeping):

- `input`: path or URL of an input file or folder (AF3 JSON, JSONL, mmCIF/PDB), one per
  row; relative paths are resolved against the manifest's folder.
- `json`: the text of an AF3 JSON job (or a list of jobs), one per row. Such jobs report
  `<manifest>#row=<i>` (0-based) as their source; relative `...Path` fields resolve
  against the manifest's folder.

Empty cells come back as `InputError`s naming the row, so one bad row never hides the rest.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from foldray.errors import InputError
from foldray.inputs.af3_json import parse_af3_json_lenient
from foldray.inputs.job import Job
from foldray.inputs.load import read_jobs
from foldray.io import storage

MANIFEST_SUFFIXES = (".parquet", ".csv")
INPUT_COLUMN = "input"
JSON_COLUMN = "json"


@dataclass(frozen=True)
class ManifestEntry:
    """One unit of reading: an input file (`text` None) or an inline AF3 JSON text."""

    source: str
    text: str | None = None


def is_manifest(url: str) -> bool:
    return url.lower().endswith(MANIFEST_SUFFIXES)


def _read_table(url: str) -> pa.Table:
    try:
        data = storage.read_bytes(url)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        raise InputError(f"cannot read the manifest ({err.__class__.__name__})", source=url) from None
    try:
        if url.lower().endswith(".csv"):
            return pa_csv.read_csv(io.BytesIO(data))
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as err:
        # Arrow's CSV errors quote the offending row: keep the row number, never the text
        reason = re.search(r"Expected \d+ columns, got \d+", str(err))
        raise InputError(f"cannot read the manifest table ({err.__class__.__name__}"
                         f"{f': {reason.group(0)}' if reason else ''})", source=url) from None


def read_manifest(url: str) -> list[ManifestEntry | InputError]:
    """The rows of a manifest, in order. Raises InputError if the table or schema is wrong."""
    table = _read_table(url)
    present = [c for c in (INPUT_COLUMN, JSON_COLUMN) if c in table.column_names]
    if len(present) != 1:
        raise InputError(f"a manifest needs exactly one of the columns {INPUT_COLUMN!r} (input "
                         f"paths/URLs) or {JSON_COLUMN!r} (AF3 JSON texts); it has "
                         f"{table.column_names}", source=url, field="columns")
    column = present[0]
    entries: list[ManifestEntry | InputError] = []
    for i, value in enumerate(table.column(column).to_pylist()):
        if value is None or not str(value).strip():
            entries.append(InputError("empty cell", source=url, field=f"row {i}.{column}"))
        elif column == INPUT_COLUMN:
            entries.append(ManifestEntry(storage.resolve_relative(str(value).strip(), url)))
        else:
            entries.append(ManifestEntry(f"{url}#row={i}", str(value)))
    return entries


def read_entry_jobs(entry: ManifestEntry) -> list[Job | InputError]:
    """Every job of one entry (or the errors that stand in for bad ones)."""
    if entry.text is None:
        return read_jobs(entry.source)
    return parse_af3_json_lenient(entry.text, source=entry.source)
