"""The per-record status row every batch stage emits (one schema, so tables concatenate)."""

from __future__ import annotations

from typing import Any


def status_row(row: dict[str, Any], status: str, error: str, **values: Any) -> dict[str, Any]:
    """A result row: status is "ok", "skipped" (done by an earlier run) or "input_error"."""
    out = {"source": row.get("source") or "", "name": row.get("name") or "",
           "safe_name": row.get("safe_name") or "", "status": status, "error": error,
           "output": "", "n_tokens": -1, "n_atoms": -1, "seconds": 0.0, "summary": ""}
    out.update(values)
    return out
