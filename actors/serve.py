"""The Serve application `foldray.actors.serve:app`: HTTP ingress, CPU featurizer, model.

    serve run foldray.actors.serve:app            # token from FOLDRAY_SERVE_TOKEN
    serve deploy configs/serve.yaml               # import_path: foldray.actors.serve:build_app

Three deployments, so the accelerator only runs the model:
- `Ingress` (FastAPI): checks the bearer token first (401, no work done), request size
  (413), parses AF3 JSON strictly (422 with `foldray validate`'s line), admits work only
  while fewer than `max_pending_jobs` jobs are in flight (503 + Retry-After otherwise),
  answers with job ids at once and runs each job as a background task. It holds the job
  table, so it runs as one replica (the table is in its memory, bounded).
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
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from foldray.batched_predict import group_by_size, predict_many
from foldray.errors import InputError, error_line
from foldray.features.pipeline import FeaturizedJob, featurize_job
from foldray.inputs.job import Job
from foldray.io import storage
from foldray.io.confidences import SamplePrediction
from foldray.predictor import Predictor, PredictSettings
from foldray.screening import LigandSpec, TargetCache, featurize_screen_job, ligand_job, target_key
from foldray.serving import (
    Limits,
    RequestTooLarge,
    ScreenRequest,
    job_id,
    ligand_error,
    parse_predict_body,
    parse_screen_body,
    render_result,
)

log = logging.getLogger(__name__)

TOKEN_ENV = "FOLDRAY_SERVE_TOKEN"
TOKEN_FILE_ENV = "FOLDRAY_SERVE_TOKEN_FILE"
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
    "max_pending_jobs": 256, "max_stored_jobs": 10_000, "allow_local_out": False,
    "n_sample": 5, "n_step": None, "n_cycle": None, "out": None,
    "max_body_bytes": Limits.max_body_bytes, "max_tokens": Limits.max_tokens,
    "max_jobs": Limits.max_jobs, "max_ligands": Limits.max_ligands,
    "retry_max_s": 300.0, "env_vars": None, "access_log": True,
    "msa_config": None, "msa_cache": None, "msa_workers": 1, "msa_worker_cpus": 1.0,
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


@dataclass(frozen=True)
class ModelRequest:
    featurized: FeaturizedJob
    seed: int
    settings: PredictSettings


# --------------------------------------------------------------------------- deployments


@serve.deployment(name="Featurizer")
class Featurizer:
    """CPU work before and after the model: features (target cache) and output rendering."""

    def __init__(self, target_cache_size: int = 16, msa: dict[str, Any] | None = None) -> None:
        self.cache = TargetCache(target_cache_size)
        self.msa = None
        if msa and msa["msa_config"]:
            from foldray.actors.msa_stage import JobMsaFiller

            self.msa = JobMsaFiller(msa["msa_config"], cache_url=msa["msa_cache"],
                                    workers=msa["msa_workers"], num_cpus=msa["msa_worker_cpus"])

    def featurize(self, request: FeaturizeRequest) -> dict[str, Any]:
        """{"features": {seed: FeaturizedJob}} or {"error": validate line}."""
        job, target = request.job, request.target
        try:
            if self.msa is not None:          # chains without an MSA: search (cached) first
                job = self.msa.fill(job) if job is not None else None
                target = self.msa.fill(target) if target is not None else None
            if target is not None and request.ligand is not None:
                job = ligand_job(target, request.ligand)
                prepared = self.cache.get(target)
                seeds = request.seeds or job.seeds
                features = {s: featurize_screen_job(job, prepared, seed=s, max_tokens=request.max_tokens)
                            for s in seeds}
            else:
                assert job is not None
                features = {s: featurize_job(job, seed=s, max_tokens=request.max_tokens,
                                             with_targets=False)
                            for s in request.seeds or job.seeds}
        except InputError as err:
            return {"error": error_line(err.located(source=job.source if job else "",
                                                    job=job.name if job else ""))}
        return {"features": features}

    def render(self, featurized: FeaturizedJob, samples: list[SamplePrediction], out: str | None,
               detail: str, ligand_chain: int | None) -> dict[str, Any]:
        return render_result(featurized, samples, out_url=out, detail=detail, ligand_chain=ligand_chain)

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

api = FastAPI(title="foldray", summary="AlphaFold 3-class structure prediction")


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


@dataclass
class JobRecord:
    id: str
    name: str
    kind: str                          # predict | screen
    status: str = "queued"             # queued | running | done | error | failed
    error: str | None = None
    result: dict[str, Any] | None = None
    ligand: dict[str, str | None] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    completions: int = 0

    def view(self) -> dict[str, Any]:
        out = {"id": self.id, "name": self.name, "kind": self.kind, "status": self.status,
               "error": self.error, "created": self.created, "finished": self.finished}
        if self.ligand is not None:
            out["ligand"] = self.ligand
        if self.result is not None:
            out.update(self.result)
        return out


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
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self.tasks: set[asyncio.Task] = set()
        self.pending = 0
        self.counters = {"rejected_busy": 0, "unauthorized": 0, "model_retries": 0, "created": 0,
                         "deduplicated": 0}

    # ---- checks done before any work

    def _authorize(self, request: Request) -> None:
        if self.token_digest is None:        # started with --insecure-no-auth
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(given.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.token_digest):
            self.counters["unauthorized"] += 1
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

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
        """The output URL of a request: object storage, or a local path only if the server
        allows it (a token holder must not make the server write into its own disk)."""
        local = out and (not storage.is_url(out) or out.split("://", 1)[0].lower() in ("file", "local"))
        if local and not self.config["allow_local_out"]:
            raise InputError("local output paths are not allowed on this server; give an "
                             "object-storage URL (s3://...)", source="request", field="out")
        return out or self.config["out"]

    def _admit(self, n_new: int) -> None:
        if self.pending + n_new > self.config["max_pending_jobs"]:
            self.counters["rejected_busy"] += 1
            raise HTTPException(503, f"server busy: {self.pending} jobs in flight; retry later",
                                headers={"Retry-After": "1"})

    # ---- endpoints

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> Response:
        self._authorize(request)
        body = await self._body(request)
        try:
            jobs = await asyncio.to_thread(parse_predict_body, body, self.limits)
            out = self._out(request.query_params.get("out"))
        except InputError as err:
            return json_response({"error": error_line(err)}, 422)
        except RequestTooLarge as err:
            return json_response({"error": str(err)}, 413)
        key = request.headers.get("idempotency-key") or uuid.uuid4().hex
        ids = [job_id("predict", f"{key}:{i}") for i in range(len(jobs))]
        self._admit(sum(i not in self.jobs for i in ids))
        for i, job in zip(ids, jobs, strict=True):
            if self._exists(i):
                continue
            record = self._add(JobRecord(id=i, name=job.name, kind="predict"))
            self._start(record, FeaturizeRequest(seeds=None, max_tokens=self.limits.max_tokens, job=job),
                        out=out, detail="full",
                        samples=None, ligand_chain=None)
        return json_response({"ids": ids}, 202)

    @api.post("/v1/screen")
    async def screen(self, request: Request) -> Response:
        self._authorize(request)
        body = await self._body(request)
        try:
            screen = await asyncio.to_thread(parse_screen_body, body, self.limits)
            self._out(screen.out)
        except InputError as err:
            return json_response({"error": error_line(err)}, 422)
        except RequestTooLarge as err:
            return json_response({"error": str(err)}, 413)
        return json_response(self._submit_screen(screen), 202)

    def _submit_screen(self, screen: ScreenRequest) -> dict[str, Any]:
        tkey = target_key(screen.target)
        keys = [key or uuid.uuid4().hex for key in screen.keys]
        ids = [job_id("screen", f"{tkey}:{key}") for key in keys]
        self._admit(sum(i not in self.jobs for i in ids))
        out = screen.out or self.config["out"]
        rows = []
        for ligand, i in zip(screen.ligands, ids, strict=True):
            rows.append({"ligand_id": ligand.id, "id": i})
            if self._exists(i):
                continue
            record = self._add(JobRecord(id=i, name=ligand.id, kind="screen",
                                         ligand={"id": ligand.id, "smiles": ligand.smiles,
                                                 "ccd": ligand.ccd}))
            problem = ligand_error(ligand, screen.target)
            if problem is not None:          # bad chemistry: answered now, no worker involved
                self._finish(record, "error", error=problem)
                continue
            self._start(record, FeaturizeRequest(seeds=screen.target.seeds[:1],
                                                 max_tokens=self.limits.max_tokens,
                                                 target=screen.target, ligand=ligand),
                        out=out, detail="summary", samples=screen.samples, ligand_chain=-1)
        return {"target_key": tkey, "jobs": rows}

    @api.get("/v1/jobs")
    async def jobs_status(self, request: Request, ids: str = "") -> Response:
        """Several jobs in one call (`?ids=a,b,c`, at most 64): screens poll with this."""
        self._authorize(request)
        wanted = [i for i in ids.split(",") if i][:64]
        return json_response({"jobs": [self.jobs[i].view() if i in self.jobs
                                       else {"id": i, "status": "unknown"} for i in wanted]})

    @api.get("/v1/jobs/{job_id}")
    async def job(self, job_id: str, request: Request) -> Response:
        self._authorize(request)
        record = self.jobs.get(job_id)
        if record is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return json_response(record.view())

    @api.get("/v1/debug/stats")
    async def debug_stats(self, request: Request) -> Response:
        """Counters and replica PIDs for tests and operators; off unless debug_endpoints."""
        self._authorize(request)
        if not self.config["debug_endpoints"]:
            raise HTTPException(404, "debug endpoints are off")
        statuses: dict[str, int] = {}
        for record in self.jobs.values():
            statuses[record.status] = statuses.get(record.status, 0) + 1
        model = await self.model.stats.remote()
        featurizer = await self.featurizer.stats.remote()
        return json_response({"ingress": {**self.counters, "pending": self.pending, "jobs": statuses,
                                          "max_completions": max((r.completions for r in
                                                                  self.jobs.values()), default=0),
                                          "pid": os.getpid(), "rss_bytes": _rss_bytes()},
                              "model": model, "featurizer": featurizer})

    # ---- job table and background work

    def _exists(self, i: str) -> bool:
        if i in self.jobs:
            self.counters["deduplicated"] += 1
            return True
        return False

    def _add(self, record: JobRecord) -> JobRecord:
        self.counters["created"] += 1
        self.jobs[record.id] = record
        while len(self.jobs) > self.config["max_stored_jobs"]:   # forget the oldest finished
            oldest = next((k for k, r in self.jobs.items() if r.finished is not None), None)
            if oldest is None:
                break
            del self.jobs[oldest]
        return record

    def _finish(self, record: JobRecord, status: str, *, error: str | None = None,
                result: dict[str, Any] | None = None) -> None:
        record.status, record.error, record.result = status, error, result
        record.finished = time.time()
        record.completions += 1

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
                self._finish(record, "error", error=featurized["error"])
                return
            settings = PredictSettings(n_sample=samples or self.config["n_sample"],
                                       n_step=self.config["n_step"], n_cycle=self.config["n_cycle"])
            per_seed = await asyncio.gather(*[
                self._call(self.model.predict, ModelRequest(features, seed, settings))
                for seed, features in featurized["features"].items()])
            first = next(iter(featurized["features"].values()))
            result = await self._call(self.featurizer.render, first,
                                      [s for seed_samples in per_seed for s in seed_samples],
                                      out, detail, ligand_chain)
            self._finish(record, "done", result=result)
        except Exception as err:   # a bug or an outage beyond the retry budget: report it
            log.exception("job %s failed", record.id)
            self._finish(record, "failed", error=f"{type(err).__name__}: {err}")
        finally:
            self.pending -= 1


# --------------------------------------------------------------------------- wiring


def resolve_token(config: dict[str, Any]) -> str | None:
    """The bearer token (env var, else token file); None only with insecure_no_auth."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    path = config.get("token_file") or os.environ.get(TOKEN_FILE_ENV)
    if not token and path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    if token:
        return token
    if config.get("insecure_no_auth"):
        log.warning("foldray serve: authentication is OFF (--insecure-no-auth); local use only")
        return None
    raise ValueError(f"no serve token: set {TOKEN_ENV}, or {TOKEN_FILE_ENV} / token_file to a "
                     "file holding it (or pass --insecure-no-auth for local development)")


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The application, from Serve config `args` (any subset of DEFAULTS)."""
    unknown = set(args or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown foldray serve settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **(args or {})}
    token = resolve_token(config)
    digest = hashlib.sha256(token.encode()).hexdigest() if token else None  # the secret stays here
    runtime_env = {"env_vars": dict(config["env_vars"])} if config["env_vars"] else {}
    featurizer = Featurizer.options(
        num_replicas=config["featurizer_replicas"],
        ray_actor_options={"num_cpus": config["featurizer_num_cpus"], "runtime_env": runtime_env},
    ).bind(config["target_cache_size"], {k: config[k] for k in DEFAULTS if k.startswith("msa_")})
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
