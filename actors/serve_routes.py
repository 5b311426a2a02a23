"""The Serve app's HTTP ingress: FastAPI routes, checks before any work, the job table.

`Ingress` checks the bearer token first (401, no work done), request size (413), parses
AF3 JSON strictly (422 with `foldray validate`'s line), admits work only while fewer than
`max_pending_jobs` jobs are in flight (503 + Retry-After otherwise), answers with job ids
at once and runs each job as a background task through the `Featurizer` and `Model`
deployments (`foldray.actors.serve_deployments`). It holds the job table
(`foldray.job_store`: bounded by bytes, count and age), so it runs as one replica.
Outputs are written only under `output_allowlist` (`foldray.out_allowlist`), each job in
its own `<out>/<job id>/` folder, so no request replaces another's results. Calls to the
other deployments that fail because a replica died or is overloaded are retried with
backoff: Serve restarts the replica and every job finishes once.
"""

# no `from __future__ import annotations`: FastAPI must see `Request` as a class, not a string
import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from foldray.actors.serve_deployments import FeaturizeRequest, ModelRequest
from foldray.errors import InputError
from foldray.io import storage
from foldray.job_store import JobRecord, JobStore, KeyReused
from foldray.out_allowlist import OutAllowlist
from foldray.predictor import PredictSettings
from foldray.screening import target_key
from foldray.serve_config import ServeConfig
from foldray.serving import (
    Limits,
    RequestTooLarge,
    ScreenRequest,
    error_summary,
    job_id,
    output_names,
    parse_predict_body,
    parse_screen_request,
    pocket_parts,
    request_error_line,
    request_hash,
)

log = logging.getLogger(__name__)

RETRYABLE = (RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError)

# no docs UI or schema: only /healthz answers without a token (the OpenAPI schema would too)
api = FastAPI(title="foldray", summary="AlphaFold 3-class structure prediction",
              docs_url=None, redoc_url=None, openapi_url=None)


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with NaN kept (AF3 metrics are NaN where undefined, e.g. ipTM of one chain)."""
    return Response(json.dumps(payload, allow_nan=True), status_code=status_code,
                    media_type="application/json", headers=headers)


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _bad_request(err: Exception) -> Response:
    """422 for anything raised while reading one request, never a 500 or a traceback."""
    return json_response({"error": request_error_line(err)}, 422)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP API: auth, limits and validation here; work goes to the other deployments."""

    def __init__(self, featurizer: Any, model: Any, config: ServeConfig,
                 token_digest: str | None) -> None:
        self.featurizer, self.model = featurizer, model
        self.config = config
        self.token_digest = token_digest
        self.limits = Limits(max_body_bytes=config.max_body_bytes, max_tokens=config.max_tokens,
                             max_jobs=config.max_jobs, max_ligands=config.max_ligands)
        self.allowlist = OutAllowlist(list(config.output_allowlist))
        self.store = JobStore(max_jobs=config.max_stored_jobs, max_bytes=config.max_stored_bytes,
                              ttl_s=config.job_ttl_s)
        self.tasks: set[asyncio.Task] = set()
        self.pending = 0
        self.counters = {"rejected_busy": 0, "unauthorized": 0, "model_retries": 0, "created": 0,
                         "deduplicated": 0, "targets_prepared": 0}
        # screen targets: the first ligand of a new target has one featurizer replica search
        # and parse it (MSA search, through the shared MSA cache) while the others wait, so
        # replicas never search the same target at once (bounded: oldest forgotten first)
        self.targets: dict[str, asyncio.Future] = {}
        self.max_targets = max(16, config.target_cache_size)
        self._constraints: bool | None = None      # the model has the constraint embedder

    # ---- checks done before any work

    def _authorize(self, request: Request) -> str:
        """The caller's scope for idempotency keys (a hash of their token), or 401."""
        if self.token_digest is None:        # started with --insecure-no-auth
            return ""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(given.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.token_digest):
            self.counters["unauthorized"] += 1
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        return digest

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise HTTPException(413, f"request body is {declared} bytes, above the limit of "
                                     f"{self.limits.max_body_bytes} bytes")
        body = b""
        async for chunk in request.stream():   # stop reading as soon as the limit is passed
            body += chunk
            if len(body) > self.limits.max_body_bytes:
                raise HTTPException(413, f"request body is above the limit of "
                                         f"{self.limits.max_body_bytes} bytes")
        return body

    def _out(self, out: str | None) -> str | None:
        """The request's output URL, normalised, only under `output_allowlist` (422 naming
        the field otherwise); the server's own `out` when the request names none."""
        return self.allowlist.check(out) if out else self.config.out

    def _admit(self, n_new: int) -> None:
        if self.pending + n_new > self.config.max_pending_jobs:
            self.counters["rejected_busy"] += 1
            raise HTTPException(503, f"server busy: {self.pending} jobs in flight; retry later",
                                headers={"Retry-After": "1"})

    def _existing(self, ids: list[str], hashes: list[str], field: str) -> list[JobRecord | None]:
        """Jobs these keys already made (a retried POST); 422 if a key comes with another
        request than the one that made its job (`field` names where the key was given)."""
        try:
            found = self.store.find_all(ids, hashes)
        except KeyReused as err:
            raise InputError("this idempotency key was used before with a different request; "
                             "use a new key", source="request", field=field.format(err.index)) from None
        self.counters["deduplicated"] += sum(r is not None for r in found)
        return found

    # ---- endpoints

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> Response:
        caller = self._authorize(request)
        body = await self._body(request)
        key = request.headers.get("idempotency-key") or uuid.uuid4().hex
        try:
            if len(key) > self.limits.max_key_chars:
                raise InputError(f"longer than {self.limits.max_key_chars} characters",
                                 source="request", field="Idempotency-Key")
            jobs = await asyncio.to_thread(parse_predict_body, body, self.limits)
            out = self._out(request.query_params.get("out"))
            ids = [job_id("predict", f"{key}:{i}", caller) for i in range(len(jobs))]
            digest = request_hash(body, out or "")
            existing = self._existing(ids, [digest] * len(ids), "Idempotency-Key")
        except RequestTooLarge as err:
            return json_response({"error": str(err)}, 413)
        except Exception as err:          # any problem with the body: 422, never a 500
            return _bad_request(err)
        self._admit(sum(r is None for r in existing))
        for i, job, old in zip(ids, jobs, existing, strict=True):
            if old is not None:
                continue
            record = self._add(JobRecord(id=i, name=job.name, kind="predict", request_hash=digest))
            self._start(record, FeaturizeRequest(seeds=None, max_tokens=self.limits.max_tokens, job=job),
                        out=self._job_out(out, i), detail="full", samples=None, ligand_chain=None)
        return json_response({"ids": ids}, 202)

    @api.post("/v1/screen")
    async def screen(self, request: Request) -> Response:
        caller = self._authorize(request)
        body = await self._body(request)
        try:
            screen, problems = await asyncio.to_thread(parse_screen_request, body, self.limits)
            if any(lig.pocket for lig in screen.ligands):
                await self._check_constraints(screen)
            out = self._out(screen.out)
            return json_response(self._submit_screen(screen, problems, out, caller), 202)
        except RequestTooLarge as err:
            return json_response({"error": str(err)}, 413)
        except HTTPException:
            raise
        except Exception as err:          # any problem with the body: 422, never a 500
            return _bad_request(err)

    async def _check_constraints(self, screen: ScreenRequest) -> None:
        """A pocket needs a model with the constraint embedder (as `foldray screen --pocket`):
        refused before any ligand runs, never silently ignored."""
        if self._constraints is None:                 # the loaded model's own config, asked once
            try:
                self._constraints = bool(await self._call(self.model.takes_restraints))
            except RETRYABLE as err:   # the model, not the request: retry later (asked again then)
                raise HTTPException(503, f"the model deployment is unavailable ({type(err).__name__}, "
                                         f"retried {self.config.retry_max_s:g} s); retry later",
                                    headers={"Retry-After": "5"}) from None
        if not self._constraints:
            field = "pocket" if screen.pocket else next(
                f"ligands[{i}].pocket" for i, lig in enumerate(screen.ligands) if lig.pocket)
            raise InputError(f"the model ({self.config.checkpoint or 'random weights'}) has no constraint "
                             "embedder; use a checkpoint imported from a Protenix constraint model "
                             "(docs/restraints.md) or remove the pocket", source="request", field=field)

    def _submit_screen(self, screen: ScreenRequest, problems: list[str | None], out: str | None,
                       caller: str) -> dict[str, Any]:
        tkey = target_key(screen.target)
        ids = [job_id("screen", key or uuid.uuid4().hex, caller) for key in screen.keys]
        hashes = [request_hash(tkey, lig.id, lig.smiles or "", lig.ccd or "", str(screen.samples),
                               out or "", *pocket_parts(lig)) for lig in screen.ligands]
        existing = self._existing(ids, hashes, "ligands[{}].key")
        self._admit(len({i for i, old in zip(ids, existing, strict=True) if old is None}))
        names = output_names(screen.ligands)
        rows = []
        for ligand, i, digest, name, problem in zip(screen.ligands, ids, hashes, names, problems,
                                                    strict=True):
            rows.append({"ligand_id": ligand.id, "id": i})
            if self.store.get(i) is not None:       # made before, or earlier in this request
                continue
            record = self._add(JobRecord(id=i, name=ligand.id, kind="screen", request_hash=digest,
                                         ligand={"id": ligand.id, "smiles": ligand.smiles,
                                                 "ccd": ligand.ccd, "output_name": name}))
            if problem is not None:          # bad chemistry: answered now, no worker involved
                self.store.finish(record, "error", error=problem)
                continue
            self._start(record, FeaturizeRequest(seeds=screen.target.seeds[:1],
                                                 max_tokens=self.limits.max_tokens,
                                                 target=screen.target, ligand=ligand, name=name),
                        out=self._job_out(out, i), detail="summary", samples=screen.samples,
                        ligand_chain=-1)
        return {"target_key": tkey, "jobs": rows}

    @api.get("/v1/jobs")
    async def jobs_status(self, request: Request, ids: str = "") -> Response:
        """Several jobs in one call (`?ids=a,b,c`, at most 64): screens poll with this.
        A job no longer held has status "expired" and says why in `error`."""
        self._authorize(request)
        wanted = [i for i in ids.split(",") if i][:64]
        return Response(b'{"jobs": [' + b", ".join(self.store.view_json(i) for i in wanted) + b"]}",
                        media_type="application/json")

    @api.get("/v1/jobs/{job_id}")
    async def job(self, job_id: str, request: Request) -> Response:
        """The job; 410 once it expired or was evicted (finished jobs are kept for
        `job_ttl_s` and within `max_stored_bytes`), 404 if it never existed here."""
        self._authorize(request)
        record = self.store.get(job_id)
        if record is not None:
            return Response(record.to_json(), media_type="application/json")
        reason = self.store.gone_reason(job_id)
        if reason is not None:
            return json_response({"id": job_id, "status": "expired", "error": reason}, 410)
        raise HTTPException(404, f"no job {job_id!r} (unknown here, or forgotten after a restart)")

    @api.get("/v1/debug/stats")
    async def debug_stats(self, request: Request) -> Response:
        """Counters and replica PIDs for tests and operators; off unless debug_endpoints."""
        self._authorize(request)
        if not self.config.debug_endpoints:
            raise HTTPException(404, "debug endpoints are off")
        model = await self.model.stats.remote()
        featurizer = await self.featurizer.stats.remote()
        return json_response({"ingress": {**self.counters, **self.store.counters,
                                          "pending": self.pending, "jobs": self.store.statuses(),
                                          "stored_bytes": self.store.nbytes,
                                          "max_completions": max((r.completions for r in
                                                                  self.store.values()), default=0),
                                          "pid": os.getpid(), "rss_bytes": _rss_bytes()},
                              "model": model, "featurizer": featurizer})

    # ---- job table and background work

    def _add(self, record: JobRecord) -> JobRecord:
        self.counters["created"] += 1
        return self.store.add(record)

    @staticmethod
    def _job_out(out: str | None, i: str) -> str | None:
        """Each job writes into its own `<out>/<job id>/`: no job replaces another's folder."""
        return storage.join(out, i) if out else None

    def _start(self, record: JobRecord, request: FeaturizeRequest, **kwargs: Any) -> None:
        self.pending += 1
        task = asyncio.get_running_loop().create_task(self._run(record, request, **kwargs))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, method: Any, *args: Any) -> Any:
        """A deployment call, retried while replicas are dead, restarting or full."""
        deadline = time.monotonic() + self.config.retry_max_s
        delay = 0.2
        while True:
            try:
                return await method.remote(*args)
            except RETRYABLE as err:
                if time.monotonic() > deadline:
                    raise
                self.counters["model_retries"] += 1
                log.warning("deployment call failed (%s); retrying in %.1f s", type(err).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _target_ready(self, request: FeaturizeRequest) -> None:
        """The first job of a target has one featurizer replica prepare it (MSA search into the
        shared MSA cache, parsing); the target's other jobs wait for that instead of searching
        it on every replica at once. A failed preparation is forgotten: each job then reports
        its own error from `featurize`, and the next screen tries again."""
        assert request.target is not None
        key = target_key(request.target)
        future = self.targets.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.targets[key] = future
            while len(self.targets) > self.max_targets:
                self.targets.pop(next(iter(self.targets)))
            self.counters["targets_prepared"] += 1
            ok = False
            try:
                ok = bool(await self._call(self.featurizer.prepare_target, request.target))
            except Exception:              # noqa: BLE001  (the job's own featurize call reports it)
                log.warning("preparing a screen target failed", exc_info=True)
            finally:                       # also when cancelled: the waiting jobs go on
                if not ok:
                    self.targets.pop(key, None)
                future.set_result(ok)
        await asyncio.shield(future)

    async def _run(self, record: JobRecord, request: FeaturizeRequest, *, out: str | None,
                   detail: str, samples: int | None, ligand_chain: int | None) -> None:
        try:
            self.store.start(record)
            if request.target is not None:
                await self._target_ready(request)
            featurized = await self._call(self.featurizer.featurize, request)
            if "error" in featurized:
                self.store.finish(record, "error", error=featurized["error"])
                return
            settings = PredictSettings(n_sample=samples or self.config.n_sample,
                                       n_step=self.config.n_step, n_cycle=self.config.n_cycle)
            per_seed = await asyncio.gather(*[
                self._call(self.model.predict, ModelRequest(features, seed, settings))
                for seed, features in featurized["features"].items()])
            first = next(iter(featurized["features"].values()))
            rendered = await self._call(self.featurizer.render, first,
                                        [s for seed_samples in per_seed for s in seed_samples],
                                        out, detail, ligand_chain)
            self.store.finish(record, "done", result=rendered["json"], output=rendered["output"])
        except Exception as err:   # a bug or an outage beyond the retry budget: class + message
            log.exception("job %s failed", record.id)
            self.store.finish(record, "failed", error=error_summary(err))
        finally:
            self.pending -= 1
