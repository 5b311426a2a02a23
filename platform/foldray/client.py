"""Python client of the foldray Serve app (`foldray.actors.serve`): predictions and screens.

Standard library HTTP (urllib) in threads, so it needs nothing beyond foldray's own
dependencies; the async variants run the same code in a worker thread.

Retries: 503 (server busy, Retry-After honoured up to `max_retry_after_s`), 502/504 and
connection errors are retried with exponential backoff. Response bodies are read up to
`max_response_bytes`, so a misbehaving server cannot exhaust the client's memory.
Every POST carries an idempotency key (one per job, one per ligand of a screen) and the
server derives job ids from it, so a retried POST whose first attempt did reach the
server gets the same job back: a ligand is never submitted twice (the server refuses a
key sent again with a different request: 422). Finished jobs are kept by the server for a
while (`job_ttl_s`); one fetched later is "expired" (HTTP 410, a screen row "failed").

    client = FoldrayClient("http://127.0.0.1:8000", token=os.environ["FOLDRAY_SERVE_TOKEN"])
    table = client.screen({"protein": "NLYIQWLKDGGPSSGRPPPS"}, "ligands.smi", concurrency=8)
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import queue
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gemmi
import pyarrow as pa
import pyarrow.parquet as pq

from foldray.io import storage

RETRY_STATUS = (502, 503, 504)
DONE = ("done", "error", "failed")
MAX_ERROR_BODY = 64 << 10          # bytes of an error response read for its message
ROW_SCHEMA = pa.schema([
    ("ligand_id", pa.string()), ("smiles", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("ranking_score", pa.float64()), ("iptm", pa.float64()),
    ("ptm", pa.float64()), ("ligand_plddt", pa.float64()),
    ("min_target_ligand_pae", pa.float64()), ("seconds", pa.float64()), ("output", pa.string()),
    ("job_id", pa.string()),
])
# the screen metrics, named as in `foldray screen`'s results table (foldray.screening.screen_metrics)
METRICS = ("ranking_score", "iptm", "ptm", "ligand_plddt", "min_target_ligand_pae")


class FoldrayError(Exception):
    """An HTTP error the client does not retry (401, 404, 413, 422, ...), with the server's
    message (for 422: the `foldray validate` line)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


@dataclass(frozen=True)
class Prediction:
    """A finished prediction: top-ranked structure and its confidences."""

    job_id: str
    name: str
    mmcif: str | None
    confidences: dict[str, Any] | None           # per token / atom (AF3 confidences.json)
    summary_confidences: dict[str, Any]
    output: str | None = None                    # AF3 output folder when the server wrote one

    @property
    def structure(self) -> gemmi.Structure:
        if self.mmcif is None:
            raise ValueError(f"job {self.name!r}: outputs were written to {self.output}, not returned")
        return gemmi.make_structure_from_block(gemmi.cif.read_string(self.mmcif).sole_block())


# --------------------------------------------------------------------------- ligands and targets


def _ligand_item(value: Any, index: int) -> dict[str, Any]:
    """A SMILES string, "ccd:ATP", {"id", "smiles"|"ccd", "pocket"?, "pocket_distance"?} -> the
    wire form (a ligand's own pocket replaces the screen's; the server checks it)."""
    if isinstance(value, Mapping):
        item: dict[str, Any] = {k: str(v) for k, v in value.items()
                                if k in ("id", "smiles", "ccd") and v is not None}
        item.update({k: value[k] for k in ("pocket", "pocket_distance") if value.get(k) is not None})
        item.setdefault("id", f"ligand_{index}")
        return item
    text = str(value).strip()
    if text.lower().startswith("ccd:"):
        return {"id": text[4:], "ccd": text[4:]}
    return {"id": f"ligand_{index}", "smiles": text}


def _read_smi(text: str) -> list[dict[str, str]]:
    items = []
    for n, line in enumerate(text.splitlines()):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        items.append({"id": parts[1] if len(parts) > 1 else f"ligand_{n}", "smiles": parts[0]})
    return items


def _read_sdf(data: bytes) -> list[dict[str, str]]:
    from rdkit import Chem

    items = []
    for n, mol in enumerate(Chem.ForwardSDMolSupplier(io.BytesIO(data))):
        if mol is None:   # an unreadable record still gets a row (the server reports it)
            items.append({"id": f"record_{n}", "smiles": ""})
            continue
        name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        items.append({"id": name or f"record_{n}", "smiles": Chem.MolToSmiles(mol)})
    return items


def load_ligands(ligands: str | Path | Iterable[Any]) -> list[dict[str, Any]]:
    """Ligands as wire items with unique ids: from a .smi/.sdf path or URL, or an iterable
    of SMILES strings, "ccd:CODE" strings or dicts."""
    if isinstance(ligands, str | Path) and str(ligands).lower().endswith((".smi", ".smiles", ".sdf")):
        url = str(ligands)
        items = (_read_sdf(storage.read_bytes(url)) if url.lower().endswith(".sdf")
                 else _read_smi(storage.read_text(url)))
    elif isinstance(ligands, str):
        items = [_ligand_item(ligands, 0)]
    else:
        items = [_ligand_item(value, i) for i, value in enumerate(ligands)]
    seen: dict[str, int] = {}
    for item in items:                 # ids are row keys: make repeats unique
        count = seen.get(item["id"], 0)
        seen[item["id"]] = count + 1
        if count:
            item["id"] = f"{item['id']}_{count}"
    return items


def target_job(target: Mapping[str, Any] | str | Iterable[str], msa: str | None = None,
               name: str = "target") -> dict[str, Any]:
    """An AF3 job dict for the target: given as is, or built from protein sequence(s) with
    an optional unpaired MSA (a3m text) for a single chain."""
    if isinstance(target, Mapping) and "sequences" in target:
        return dict(target)
    if isinstance(target, Mapping) and "protein" in target:
        sequences = [target["protein"]] if isinstance(target["protein"], str) else list(target["protein"])
        msa = target.get("msa", msa)
    elif isinstance(target, str):
        sequences = [target]
    else:
        sequences = list(target)      # type: ignore[arg-type]
    chains = []
    for i, sequence in enumerate(sequences):
        body: dict[str, Any] = {"id": chr(ord("A") + i), "sequence": sequence}
        if msa is not None and len(sequences) == 1:
            body.update(unpairedMsa=msa, pairedMsa="", templates=[])
        chains.append({"protein": body})
    return {"dialect": "alphafold3", "version": 2, "name": name, "modelSeeds": [1],
            "sequences": chains}


def _done_ids(resume_from: pa.Table | str | Path | None) -> dict[str, dict[str, Any]]:
    if resume_from is None:
        return {}
    table = resume_from if isinstance(resume_from, pa.Table) else pq.read_table(str(resume_from))
    return {row["ligand_id"]: row for row in table.to_pylist() if row["status"] in ("ok", "error")}


# --------------------------------------------------------------------------- client


class FoldrayClient:
    """HTTP client; thread-safe (one urllib request per call)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, *,
                 max_retries: int = 10, backoff_s: float = 0.5, poll_s: float = 0.5,
                 max_retry_after_s: float = 60.0, max_response_bytes: int = 256 << 20) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.max_retry_after_s = max_retry_after_s      # a server's Retry-After is capped here
        self.max_response_bytes = max_response_bytes
        self.retries = 0                  # how many retries this client made (tests, logs)

    # ---- transport

    def _request(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url + path, data=data, method=method,
                                             headers=all_headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    data = response.read(self.max_response_bytes + 1)
                if len(data) > self.max_response_bytes:
                    raise FoldrayError(0, f"{method} {path}: the response is larger than "
                                          f"max_response_bytes ({self.max_response_bytes})")
                return json.loads(data or b"null")
            except urllib.error.HTTPError as err:
                text = err.read(MAX_ERROR_BODY).decode("utf-8", "replace")
                if err.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise FoldrayError(err.code, _message(text)) from None
                wait = _retry_after(err.headers.get("Retry-After"))
                wait = None if wait is None else min(wait, self.max_retry_after_s)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if attempt == self.max_retries:
                    raise FoldrayError(0, f"cannot reach {self.url}: {err}") from None
                wait = None
            self.retries += 1
            base = min(self.backoff_s * 2 ** min(attempt, 6), self.max_retry_after_s)
            time.sleep(max(wait or 0.0, base) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def health(self) -> bool:
        return self._request("GET", "/healthz").get("status") == "ok"

    def stats(self) -> dict[str, Any]:
        """Server counters (only when the server runs with debug_endpoints)."""
        return self._request("GET", "/v1/debug/stats")

    # ---- single jobs

    def submit(self, job: Mapping[str, Any] | list[Mapping[str, Any]], out: str | None = None,
               idempotency_key: str | None = None) -> list[str]:
        """POST /v1/predict: the job id(s), at once."""
        path = "/v1/predict" + (f"?out={urllib.request.quote(out, safe='')}" if out else "")
        key = idempotency_key or uuid.uuid4().hex
        return self._request("POST", path, job, {"Idempotency-Key": key})["ids"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """Status of several jobs in one request (at most 64 ids)."""
        return self._request("GET", "/v1/jobs?ids=" + ",".join(job_ids))["jobs"]

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["status"] in DONE:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not done after {timeout} s")
            time.sleep(self.poll_s)

    def predict(self, job: Mapping[str, Any], out: str | None = None,
                timeout: float | None = None) -> Prediction:
        """Submit one AF3 job and wait for it; FoldrayError if it could not be predicted."""
        (job_id,) = self.submit(job, out=out)
        record = self.wait(job_id, timeout)
        if record["status"] != "done":
            raise FoldrayError(422 if record["status"] == "error" else 500, record["error"])
        return Prediction(job_id=job_id, name=record["name"], mmcif=record.get("mmcif"),
                          confidences=record.get("confidences"),
                          summary_confidences=record["summary_confidences"],
                          output=record.get("output"))

    async def apredict(self, job: Mapping[str, Any], out: str | None = None,
                       timeout: float | None = None) -> Prediction:
        return await asyncio.to_thread(self.predict, job, out, timeout)

    async def asubmit(self, job: Mapping[str, Any] | list[Mapping[str, Any]], out: str | None = None
                      ) -> list[str]:
        return await asyncio.to_thread(self.submit, job, out)

    async def ajob(self, job_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.job, job_id)

    # ---- screens

    def iter_screen(self, target: Any, ligands: Any, out: str | None = None, samples: int = 1,
                    concurrency: int = 4, chunk_size: int = 8, resume_from: Any = None,
                    msa: str | None = None, screen_id: str | None = None,
                    pocket: str | list[str] | None = None,
                    pocket_distance: float | None = None) -> Iterator[dict[str, Any]]:
        """Rows as ligands finish (any order); see `screen`."""
        job = target_job(target, msa)
        extra = {k: v for k, v in (("pocket", pocket), ("pocket_distance", pocket_distance)) if v is not None}
        items = load_ligands(ligands)
        done = _done_ids(resume_from)
        todo = [item for item in items if item["id"] not in done]
        screen_id = screen_id or uuid.uuid4().hex
        rows: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
        stop = threading.Event()

        def run_chunk(chunk: list[dict[str, Any]]) -> None:
            try:
                for row in self._screen_chunk(job, chunk, out, samples, screen_id, stop, extra):
                    rows.put(row)
            except BaseException as err:   # surfaced in the caller's thread
                rows.put(err)

        pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="foldray-screen")
        try:
            for chunk in chunks:
                pool.submit(run_chunk, chunk)
            for item in items:
                if item["id"] in done:
                    yield done[item["id"]]
            for _ in range(len(todo)):
                row = rows.get()
                if isinstance(row, BaseException):
                    raise row
                yield row
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _screen_chunk(self, job: dict[str, Any], chunk: list[dict[str, Any]], out: str | None,
                      samples: int, screen_id: str, stop: threading.Event,
                      extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
        def submit(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            wire = [{**item, "key": f"{screen_id}:{item['id']}"} for item in items]
            body: dict[str, Any] = {"target": job, "ligands": wire, "samples": samples, **extra}
            if out:
                body["out"] = out
            submitted = self._request("POST", "/v1/screen", body)["jobs"]
            return {entry["id"]: item for entry, item in zip(submitted, items, strict=True)}

        try:
            pending = submit(chunk)
        except FoldrayError as err:      # the whole chunk was refused: a row per ligand says why
            for item in chunk:
                yield _row(item, None, {"status": "failed", "error": str(err)})
            return
        delay = min(0.1, self.poll_s)
        resubmits = 0
        while pending and not stop.is_set():
            lost = []
            for record in self.jobs(list(pending)):
                if record["status"] in DONE:
                    yield _row(pending.pop(record["id"]), record["id"], record)
                elif record["status"] == "expired":   # finished, but dropped before we polled
                    yield _row(pending.pop(record["id"]), record["id"],
                               {"status": "failed", "error": record.get("error")})
                elif record["status"] == "unknown":   # the server lost its job table (restart)
                    lost.append(pending.pop(record["id"]))
            if lost and resubmits < self.max_retries:
                resubmits += 1                        # same keys: the same job ids again
                pending.update(submit(lost))
            elif lost:
                for item in lost:
                    yield _row(item, None, {"status": "failed", "error": "server lost the job"})
            if pending:
                time.sleep(delay)
                delay = min(delay * 1.5, self.poll_s)

    def screen(self, target: Any, ligands: Any, out: str | None = None, samples: int = 1,
               concurrency: int = 4, resume_from: Any = None,
               on_row: Callable[[dict[str, Any]], None] | None = None, *, chunk_size: int = 8,
               msa: str | None = None, progress: bool | None = None,
               screen_id: str | None = None, pocket: str | list[str] | None = None,
               pocket_distance: float | None = None) -> pa.Table:
        """Screen ligands against one target; one row per ligand, in input order.

        target: an AF3 job dict, a protein sequence or sequences, or {"protein": ..., "msa": ...}.
        ligands: SMILES strings, "ccd:CODE" strings, {"id", "smiles"|"ccd"} dicts, or a .smi /
        .sdf path or URL. `pocket` ("A:12,45" or a list of such, `foldray screen --pocket`'s
        syntax) and `pocket_distance` (the server's default 6 Å when None): target residues every
        ligand binds near; a ligand dict's own "pocket" / "pocket_distance" replace them. The
        server refuses a bad residue, or a model without the constraint embedder, before any
        ligand runs (HTTP 422: every row "failed" with its line). Rows (ligand_id, smiles, status
        ok|error|failed, error, ranking_score, iptm, ptm, ligand_plddt, min_target_ligand_pae,
        seconds, output, job_id) stream to `on_row` as they finish; `seconds` is the server's
        wall time from the ligand's job being created to its result (featurize, model and
        output, waiting for replicas included). `resume_from` (a table or Parquet path from an
        earlier screen) skips ligands whose row is ok or error. `screen_id` fixes the
        idempotency keys, so rerunning an interrupted screen with the same id against the same
        server reuses its jobs.
        """
        from tqdm.auto import tqdm

        items = load_ligands(ligands)
        by_id: dict[str, dict[str, Any]] = {}
        show = progress if progress is not None else len(items) >= 50
        with tqdm(total=len(items), disable=not show, desc="screen", unit="ligand") as bar:
            for row in self.iter_screen(target, items, out=out, samples=samples,
                                        concurrency=concurrency, chunk_size=chunk_size,
                                        resume_from=resume_from, msa=msa, screen_id=screen_id,
                                        pocket=pocket, pocket_distance=pocket_distance):
                by_id[row["ligand_id"]] = row
                if on_row is not None:
                    on_row(row)
                bar.update(1)
        ordered = [by_id[item["id"]] for item in items]
        return pa.Table.from_pylist([{k: row.get(k) for k in ROW_SCHEMA.names} for row in ordered],
                                    schema=ROW_SCHEMA)

    async def ascreen(self, *args: Any, **kwargs: Any) -> pa.Table:
        return await asyncio.to_thread(self.screen, *args, **kwargs)


def _seconds(record: dict[str, Any]) -> float | None:
    """The job's wall seconds on the server (its record's `created` to `finished`)."""
    created, finished = record.get("created"), record.get("finished")
    if not isinstance(created, int | float) or not isinstance(finished, int | float):
        return None
    return max(0.0, float(finished) - float(created))


def _row(item: dict[str, Any], job_id: str | None, record: dict[str, Any]) -> dict[str, Any]:
    status = {"done": "ok"}.get(record["status"], record["status"])
    metrics = record.get("metrics") or {}
    row: dict[str, Any] = {"ligand_id": item["id"], "smiles": item.get("smiles") or item.get("ccd"),
                           "status": status, "error": record.get("error"), "seconds": _seconds(record),
                           "output": record.get("output"), "job_id": job_id}
    for name in METRICS:
        value = metrics.get(name)
        row[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
    return row


def _message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return str(data.get("error") or data.get("detail") or text) if isinstance(data, dict) else text


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
