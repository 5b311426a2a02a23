"""The Serve ingress's job table, bounded by bytes and by age (no Ray, no HTTP).

The table lives in the memory of the one ingress replica, so it must not grow with the
size of results: one finished 2,048-token job holds tens of MiB of per-token confidences.
Results are kept as the encoded JSON a GET returns, so their size is known exactly and
nothing is re-encoded per poll. Finished jobs leave the table, oldest first, when

- they finished more than `ttl_s` ago, or
- the bytes held exceed `max_bytes`, or the jobs held exceed `max_jobs`.

A job that left is remembered (a bounded tombstone), so a GET says why (HTTP 410: expired,
with the output URL when the job wrote one) instead of "no such job" (404). Jobs still
queued or running are never dropped.

Idempotency: a job id comes from the caller's key (`foldray.serving.job_id`), and the
record keeps a hash of the request that created it; the same key with another request
raises `KeyReused` (HTTP 422) instead of returning the first job.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

RECORD_OVERHEAD = 1024          # bytes charged per record besides its result (ids, names, dicts)
FINISHED = ("done", "error", "failed")


class KeyReused(Exception):
    """An idempotency key sent again with a different request (HTTP 422); `index` is its
    place in the request's list of keys."""

    def __init__(self, job_id: str, index: int = 0) -> None:
        super().__init__(job_id)
        self.job_id, self.index = job_id, index


@dataclass
class JobRecord:
    id: str
    name: str
    kind: str                          # predict | screen
    request_hash: str = ""
    status: str = "queued"             # queued | running | done | error | failed
    error: str | None = None
    result: bytes | None = None        # a JSON object, merged into the record's view
    output: str | None = None          # the job's output folder when it wrote one
    ligand: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    completions: int = 0

    @property
    def nbytes(self) -> int:
        return RECORD_OVERHEAD + len(self.result or b"") + len(self.error or "")

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind,
                               "status": self.status, "error": self.error, "created": self.created,
                               "finished": self.finished}
        if self.ligand is not None:
            out["ligand"] = self.ligand
        return out

    def to_json(self) -> bytes:
        """The record's JSON: its fields, then the result's keys (spliced, not re-encoded)."""
        head = json.dumps(self.meta(), allow_nan=True).encode()
        body = (self.result or b"").strip()
        if len(body) <= 2:             # no result, or {}
            return head
        return head[:-1] + b", " + body[1:]


class JobStore:
    """Job records by id, with a byte budget, a count limit and a time to live."""

    def __init__(self, *, max_jobs: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_jobs, self.max_bytes, self.ttl_s = max_jobs, max_bytes, ttl_s
        self.clock = clock
        self.records: dict[str, JobRecord] = {}
        self.finished: OrderedDict[str, float] = OrderedDict()     # id -> finish time, oldest first
        self.gone: OrderedDict[str, str] = OrderedDict()           # id -> why it left (410 text)
        self.nbytes = 0
        self.counters = {"expired": 0, "evicted": 0, "too_large": 0}

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, job_id: str) -> bool:
        self.sweep()
        return job_id in self.records

    def get(self, job_id: str) -> JobRecord | None:
        self.sweep()
        return self.records.get(job_id)

    def gone_reason(self, job_id: str) -> str | None:
        """Why a job is no longer held (it existed and was expired or evicted), else None."""
        return self.gone.get(job_id)

    def find(self, job_id: str, request_hash: str) -> JobRecord | None:
        """The live job made by the same key and request; KeyReused if the request differs."""
        record = self.get(job_id)
        if record is None:
            return None
        if not hmac.compare_digest(record.request_hash, request_hash):
            raise KeyReused(job_id)
        return record

    def find_all(self, ids: list[str], hashes: list[str]) -> list[JobRecord | None]:
        """`find` for each key of one request; a key repeated within the request with
        another request hash is reused too."""
        seen: dict[str, str] = {}
        found = []
        for n, (job_id, digest) in enumerate(zip(ids, hashes, strict=True)):
            try:
                if seen.setdefault(job_id, digest) != digest:
                    raise KeyReused(job_id)
                found.append(self.find(job_id, digest))
            except KeyReused:
                raise KeyReused(job_id, n) from None
        return found

    def view_json(self, job_id: str) -> bytes:
        """A job's JSON for a status list: the record, or {"status": "expired", "error": why}
        for one no longer held, or {"status": "unknown"}."""
        record = self.get(job_id)
        if record is not None:
            return record.to_json()
        reason = self.gone_reason(job_id)
        return json.dumps({"id": job_id, "status": "expired", "error": reason} if reason
                          else {"id": job_id, "status": "unknown"}).encode()

    def add(self, record: JobRecord) -> JobRecord:
        old = self.records.pop(record.id, None)
        if old is not None:
            self.nbytes -= old.nbytes
            self.finished.pop(record.id, None)
        self.gone.pop(record.id, None)
        self.records[record.id] = record
        self.nbytes += record.nbytes
        self._shrink()
        return record

    def start(self, record: JobRecord) -> None:
        """queued -> running (the job's work began); any other state is a bug of the caller."""
        if record.status != "queued":
            raise ValueError(f"job {record.id} is {record.status}, not queued: it cannot start")
        record.status = "running"

    def finish(self, record: JobRecord, status: str, *, error: str | None = None,
               result: bytes | None = None, output: str | None = None) -> None:
        """Record the outcome (`status` one of FINISHED: done, error = the job's input,
        failed = the server); a result bigger than the whole budget is not kept (the job
        fails with a message saying to write outputs to storage instead)."""
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a finished status ({', '.join(FINISHED)})")
        if result is not None and len(result) + RECORD_OVERHEAD > self.max_bytes:
            self.counters["too_large"] += 1
            error = (f"ResultTooLarge: the result is {len(result)} bytes, above the server's "
                     f"max_stored_bytes ({self.max_bytes}); give an `out` URL so outputs are "
                     "written to storage")
            status, result = "failed", None
        live = self.records.get(record.id) is record
        if live:
            self.nbytes -= record.nbytes
        record.status, record.error, record.result, record.output = status, error, result, output
        record.finished = self.clock()
        record.completions += 1
        if live:
            self.nbytes += record.nbytes
            self.finished[record.id] = record.finished
            self.finished.move_to_end(record.id)
            self._shrink()

    def sweep(self) -> None:
        """Drop finished jobs older than the time to live (cheap: oldest first)."""
        cutoff = self.clock() - self.ttl_s
        while self.finished:
            job_id, finished = next(iter(self.finished.items()))
            if finished > cutoff:
                break
            self.counters["expired"] += 1
            self._drop(job_id, f"job {job_id} expired: finished jobs are kept for {self.ttl_s:g} s")

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def values(self) -> Iterable[JobRecord]:
        return self.records.values()

    # ---- internals

    def _shrink(self) -> None:
        self.sweep()
        while self.finished and (self.nbytes > self.max_bytes or len(self.records) > self.max_jobs):
            job_id = next(iter(self.finished))
            self.counters["evicted"] += 1
            self._drop(job_id, f"job {job_id} was dropped to keep the server's job table within "
                               f"{self.max_bytes} bytes / {self.max_jobs} jobs; fetch results "
                               "sooner, or give an `out` URL so outputs are written to storage")

    def _drop(self, job_id: str, reason: str) -> None:
        self.finished.pop(job_id, None)
        record = self.records.pop(job_id, None)
        if record is None:
            return
        self.nbytes -= record.nbytes
        if record.output:
            reason += f"; its outputs were written to {record.output}"
        self.gone[job_id] = reason
        while len(self.gone) > self.max_jobs:
            self.gone.popitem(last=False)
