"""The Serve application `foldray.actors.serve:app`: HTTP ingress, CPU featurizer, model.

    serve run foldray.actors.serve:app            # token from FOLDRAY_SERVE_TOKEN
    serve deploy configs/serve.yaml               # import_path: foldray.actors.serve:build_app

Three deployments, so the accelerator only runs the model:
- `Ingress` (FastAPI): checks the bearer token first (401, no work done), request size
  (413), parses AF3 JSON strictly (422 with `foldray validate`'s line), admits work only
  while fewer than `max_pending_jobs` jobs are in flight (503 + Retry-After otherwise),
  answers with job ids at once and runs each job as a background task. It holds the job
  table (`foldray.job_store`: bounded by bytes, count and age), so it runs as one replica.
  Outputs are written only under `output_allowlist` (`foldray.out_allowlist`), each job
  in its own `<out>/<job id>/` folder, so no request replaces another's results.
- `Featurizer` (CPU): featurization with a per-target cache for screens, and rendering
  (mmCIF, confidences, AF3 output folders) after prediction. With `msa_config` (an
  msa.yaml, see `foldray msa`) chains sent without an MSA are searched on shard workers
  through the MSA cache (`msa_cache`): a screen's target is searched once.
- `Model`: loads the checkpoint once; `@serve.batch` collects requests and runs jobs of
  similar size in one forward pass; bounded queues, autoscaling, `num_gpus` per replica.
Calls to the model that fail because a replica died or is overloaded are retried by the
ingress with backoff: Serve restarts the replica and every job finishes once.
"""

# no `from __future__ import annotations`: FastAPI must see `Request` as a class, not a string
import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from foldray.actors.env_guard import check_runtime_env
from foldray.batched_predict import group_by_size, predict_many
from foldray.chem.deadline import featurization_deadline
from foldray.errors import InputError
from foldray.features.pipeline import FeaturizedJob, featurize_job
from foldray.inputs.job import Job
from foldray.io import storage
from foldray.io.confidences import SamplePrediction
from foldray.job_store import JobRecord, JobStore, KeyReused
from foldray.out_allowlist import OutAllowlist, server_outputs
from foldray.predictor import Predictor, PredictSettings
from foldray.screening import LigandSpec, TargetCache, featurize_screen_job, ligand_job, target_key
from foldray.serving import (
    Limits,
    RequestTooLarge,
    ScreenRequest,
    error_summary,
    job_error_line,
    job_id,
    output_names,
    parse_predict_body,
    parse_screen_request,
    render_result,
    request_error_line,
    request_hash,
    resolve_token,
)

log = logging.getLogger(__name__)

RETRYABLE = (RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError)

# Every knob of the app with its default; `build_app(args)` takes any subset (Serve config
# `args:`, `foldray serve --set`). Resources are wired here, not in the library.
DEFAULTS: dict[str, Any] = {
    "token_file": None, "insecure_no_auth": False, "debug_endpoints": False,
    "model_config": "tiny", "checkpoint": None, "device": "cpu", "num_gpus": 0.0,
    "model_num_cpus": 1.0, "model_replicas": 1, "autoscaling": None,
    "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
    "model_max_ongoing_requests": 16, "model_max_queued_requests": 64,
    "featurizer_replicas": 1, "featurizer_num_cpus": 1.0, "target_cache_size": 16,
    "ingress_max_ongoing_requests": 64, "ingress_max_queued_requests": 64,
    "max_pending_jobs": 256, "max_stored_jobs": 10_000, "max_stored_bytes": 512 << 20,
    "job_ttl_s": 3600.0, "output_allowlist": None,
    "n_sample": 5, "n_step": None, "n_cycle": None, "out": None,
    "max_body_bytes": Limits.max_body_bytes, "max_tokens": Limits.max_tokens,
    "max_jobs": Limits.max_jobs, "max_ligands": Limits.max_ligands,
    "retry_max_s": 300.0, "env_vars": None, "access_log": True,
    "msa_config": None, "msa_cache": None, "msa_workers": 1, "msa_worker_cpus": 1.0,
    "featurize_time_limit_s": 600.0,
}


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class FeaturizeRequest:
    """A job (predict) or target + ligand (screen), and the seeds to featurize."""

    seeds: tuple[int, ...] | None
    max_tokens: int
    job: Job | None = None
    target: Job | None = None
    ligand: LigandSpec | None = None
    name: str | None = None            # a screen job's output name (unique in its request)


@dataclass(frozen=True)
class ModelRequest:
    featurized: FeaturizedJob
    seed: int
    settings: PredictSettings


# --------------------------------------------------------------------------- deployments


@serve.deployment(name="Featurizer")
class Featurizer:
    """CPU work before and after the model: features (target cache) and output rendering."""

    def __init__(self, target_cache_size: int = 16, msa: dict[str, Any] | None = None,
                 time_limit_s: float | None = None) -> None:
        self.cache = TargetCache(target_cache_size)
        self.time_limit_s = time_limit_s or None   # per job: a stalled conformer is an error
        self.msa = None
        if msa and msa["msa_config"]:
            from foldray.actors.msa_stage import JobMsaFiller

            self.msa = JobMsaFiller(msa["msa_config"], cache_url=msa["msa_cache"],
                                    workers=msa["msa_workers"], num_cpus=msa["msa_worker_cpus"])

    def featurize(self, request: FeaturizeRequest) -> dict[str, Any]:
        """{"features": {seed: FeaturizedJob}} or {"error": validate line}. Anything raised
        while featurizing one job is that job's error ("Class: message"; the traceback stays
        in this replica's log); a failing MSA search is the server's problem and raises."""
        job, target = request.job, request.target
        try:
            if self.msa is not None:          # chains without an MSA: search (cached) first
                job = self.msa.fill(job) if job is not None else None
                target = self.msa.fill(target) if target is not None else None
        except InputError as err:
            return {"error": job_error_line(err, job)}
        try:
            if target is not None and request.ligand is not None:
                job = ligand_job(target, request.ligand)
                if request.name:
                    job = dataclasses.replace(job, name=request.name)
            assert job is not None
            seeds = request.seeds or job.seeds
            with featurization_deadline(self.time_limit_s):
                if target is not None:
                    prepared = self.cache.get(target)
                    features = {s: featurize_screen_job(job, prepared, seed=s,
                                                        max_tokens=request.max_tokens)
                                for s in seeds}
                else:
                    features = {s: featurize_job(job, seed=s, max_tokens=request.max_tokens,
                                                 with_targets=False) for s in seeds}
        except Exception as err:
            if not isinstance(err, InputError):
                log.warning("featurizing a job failed", exc_info=True)
            return {"error": job_error_line(err, job)}
        return {"features": features}

    def render(self, featurized: FeaturizedJob, samples: list[SamplePrediction], out: str | None,
               detail: str, ligand_chain: int | None) -> dict[str, Any]:
        """The result as the JSON the ingress keeps and serves (encoded here, not in the one
        ingress replica) and the output folder when one was written."""
        result = render_result(featurized, samples, out_url=out, detail=detail,
                               ligand_chain=ligand_chain)
        result.pop("name", None)          # the job record has it
        return {"json": json.dumps(result, allow_nan=True).encode(), "output": result.get("output")}

    def stats(self) -> dict[str, int]:
        return {"target_cache_hits": self.cache.hits, "target_cache_misses": self.cache.misses,
                "pid": os.getpid(), **(self.msa.counts if self.msa is not None else {})}


@serve.deployment(name="Model")
class Model:
    """The network, loaded once per replica; batches of requests share forward passes."""

    def __init__(self, checkpoint: str | None, model_config: str, device: str,
                 max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.predictor = Predictor.load(checkpoint, config=model_config, device=device)
        self.max_batch_size = max_batch_size
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.n_jobs = 0
        self.n_forward = 0
        self.largest_batch = 0

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def predict(self, requests: list[ModelRequest]) -> list[list[SamplePrediction]]:
        return await asyncio.to_thread(self._predict, requests)

    def _predict(self, requests: list[ModelRequest]) -> list[list[SamplePrediction]]:
        results: list[list[SamplePrediction] | None] = [None] * len(requests)
        by_settings: dict[PredictSettings, list[int]] = {}
        for i, request in enumerate(requests):
            by_settings.setdefault(request.settings, []).append(i)
        for settings, indices in by_settings.items():
            items = [(requests[i].featurized, requests[i].seed) for i in indices]
            groups = group_by_size([f for f, _ in items], self.max_batch_size)
            for i, samples in zip(indices, predict_many(self.predictor, items, settings,
                                                        self.max_batch_size), strict=True):
                results[i] = samples
            self.n_forward += len(groups)
            self.largest_batch = max([self.largest_batch] + [len(g) for g in groups])
        self.n_jobs += len(requests)
        return [r for r in results if r is not None]

    def stats(self) -> dict[str, Any]:
        return {"n_jobs": self.n_jobs, "n_forward": self.n_forward,
                "largest_batch": self.largest_batch, "pid": os.getpid(),
                "random_weights": self.predictor.random_weights}


# --------------------------------------------------------------------------- ingress

# no docs UI or schema: only /healthz answers without a token (the OpenAPI schema would too)
api = FastAPI(title="foldray", summary="AlphaFold 3-class structure prediction",
              docs_url=None, redoc_url=None, openapi_url=None)


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with NaN kept (AF3 metrics are NaN where undefined, e.g. ipTM of one chain)."""
    return Response(json.dumps(payload, allow_nan=True), status_code=status_code,
                    media_type="application/json", headers=headers)


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere).

    Defined above the deployments: Serve pickles a deployment class when it is decorated,
    so globals its methods use must exist by then."""
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

    def __init__(self, featurizer: Any, model: Any, config: dict[str, Any],
                 token_digest: str | None) -> None:
        self.featurizer, self.model = featurizer, model
        self.config = config
        self.token_digest = token_digest
        self.limits = Limits(max_body_bytes=config["max_body_bytes"], max_tokens=config["max_tokens"],
                             max_jobs=config["max_jobs"], max_ligands=config["max_ligands"])
        self.allowlist = OutAllowlist(config["output_allowlist"])
        self.store = JobStore(max_jobs=config["max_stored_jobs"], max_bytes=config["max_stored_bytes"],
                              ttl_s=config["job_ttl_s"])
        self.tasks: set[asyncio.Task] = set()
        self.pending = 0
        self.counters = {"rejected_busy": 0, "unauthorized": 0, "model_retries": 0, "created": 0,
                         "deduplicated": 0}

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
        return self.allowlist.check(out) if out else self.config["out"]

    def _admit(self, n_new: int) -> None:
        if self.pending + n_new > self.config["max_pending_jobs"]:
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
            out = self._out(screen.out)
            return json_response(self._submit_screen(screen, problems, out, caller), 202)
        except RequestTooLarge as err:
            return json_response({"error": str(err)}, 413)
        except HTTPException:
            raise
        except Exception as err:          # any problem with the body: 422, never a 500
            return _bad_request(err)

    def _submit_screen(self, screen: ScreenRequest, problems: list[str | None], out: str | None,
                       caller: str) -> dict[str, Any]:
        tkey = target_key(screen.target)
        ids = [job_id("screen", key or uuid.uuid4().hex, caller) for key in screen.keys]
        hashes = [request_hash(tkey, lig.id, lig.smiles or "", lig.ccd or "", str(screen.samples),
                               out or "") for lig in screen.ligands]
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
        if not self.config["debug_endpoints"]:
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
        deadline = time.monotonic() + self.config["retry_max_s"]
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

    async def _run(self, record: JobRecord, request: FeaturizeRequest, *, out: str | None,
                   detail: str, samples: int | None, ligand_chain: int | None) -> None:
        try:
            record.status = "running"
            featurized = await self._call(self.featurizer.featurize, request)
            if "error" in featurized:
                self.store.finish(record, "error", error=featurized["error"])
                return
            settings = PredictSettings(n_sample=samples or self.config["n_sample"],
                                       n_step=self.config["n_step"], n_cycle=self.config["n_cycle"])
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


# --------------------------------------------------------------------------- wiring


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The application, from Serve config `args` (any subset of DEFAULTS)."""
    unknown = set(args or {}) - set(DEFAULTS) - {"allow_local_out"}
    if unknown:
        raise ValueError(f"unknown foldray serve settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **(args or {})}
    config["out"], config["output_allowlist"] = server_outputs(config)   # ValueError: bad setting
    token = resolve_token(config)
    digest = hashlib.sha256(token.encode()).hexdigest() if token else None  # the secret stays here
    runtime_env = {"env_vars": dict(config["env_vars"])} if config["env_vars"] else {}
    check_runtime_env(runtime_env, "foldray serve setting env_vars")   # non-secret names only
    featurizer = Featurizer.options(
        num_replicas=config["featurizer_replicas"],
        ray_actor_options={"num_cpus": config["featurizer_num_cpus"], "runtime_env": runtime_env},
    ).bind(config["target_cache_size"], {k: config[k] for k in DEFAULTS if k.startswith("msa_")},
           config["featurize_time_limit_s"])
    model_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config["model_num_cpus"], "num_gpus": config["num_gpus"],
                              "runtime_env": runtime_env},
        "max_ongoing_requests": config["model_max_ongoing_requests"],
        "max_queued_requests": config["model_max_queued_requests"],
    }
    if config["autoscaling"]:
        model_options["autoscaling_config"] = dict(config["autoscaling"])
    else:
        model_options["num_replicas"] = config["model_replicas"]
    device = config["device"] if config["num_gpus"] else "cpu"
    model = Model.options(**model_options).bind(config["checkpoint"], config["model_config"], device,
                                                config["max_batch_size"], config["batch_wait_timeout_s"])
    return Ingress.options(
        num_replicas=1, ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": bool(config["access_log"])},
        max_ongoing_requests=config["ingress_max_ongoing_requests"],
        max_queued_requests=config["ingress_max_queued_requests"],
    ).bind(featurizer, model, config, digest)


def __getattr__(name: str) -> Any:
    """`app` is built when `serve run foldray.actors.serve:app` asks for it, so importing
    this module needs no token; building without one refuses to start."""
    if name == "app":
        return build_app({})
    raise AttributeError(name)
