"""The Serve app's worker deployments: `Featurizer` (CPU) and `Model` (the network).

Kept apart from the HTTP ingress (`foldray.actors.serve_routes`) so the accelerator only
runs the model: the featurizer builds features (with a per-target cache for screens and,
with `msa_config`, MSA search through the MSA cache) and renders results; the model loads
the checkpoint once with the app's `RuntimeConfig` and runs `@serve.batch`ed requests
through `Predictor.predict_batch`, jobs of similar size in one forward pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from ray import serve

from foldray.chem.deadline import featurization_deadline
from foldray.errors import InputError
from foldray.features.config import FeaturizationConfig
from foldray.features.pipeline import FeaturizedJob, featurize_job
from foldray.inputs.job import Job
from foldray.io.confidences import SamplePrediction
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.predictor import Predictor, PredictSettings, group_by_size
from foldray.screening import LigandSpec, PreparedTarget, TargetCache, featurize_screen_job, ligand_job
from foldray.serving import job_error_line, render_result

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class MsaSearch:
    """Where the featurizer searches chains sent without an MSA (`foldray msa` settings)."""

    config: str                        # an msa.yaml
    cache: str | None = None
    workers: int = 1
    worker_cpus: float = 1.0


@serve.deployment(name="Featurizer")
class Featurizer:
    """CPU work before and after the model: features (target cache) and output rendering."""

    def __init__(self, target_cache_size: int = 16, msa: MsaSearch | None = None,
                 time_limit_s: float | None = None,
                 featurization: FeaturizationConfig | None = None) -> None:
        self.cache = TargetCache(target_cache_size)
        # Serve runs sync methods on a thread pool: ligands of one target arrive together, and
        # only one thread may parse a target the cache lacks (the others then hit the cache)
        self._cache_lock = threading.Lock()
        self.featurization = featurization   # the model's (ModelConfig.featurization); None: AF3
        self.time_limit_s = time_limit_s or None   # per job: a stalled conformer is an error
        self.msa = None
        if msa is not None:
            from foldray.actors.msa_stage import JobMsaFiller

            self.msa = JobMsaFiller(msa.config, cache_url=msa.cache, workers=msa.workers,
                                    num_cpus=msa.worker_cpus)

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
                    prepared = self._prepared(target)
                    features = {s: featurize_screen_job(job, prepared, seed=s,
                                                        max_tokens=request.max_tokens,
                                                        featurization=self.featurization)
                                for s in seeds}
                else:
                    features = {s: featurize_job(job, seed=s, max_tokens=request.max_tokens,
                                                 with_targets=False, featurization=self.featurization)
                                for s in seeds}
        except Exception as err:
            if not isinstance(err, InputError):
                log.warning("featurizing a job failed", exc_info=True)
            return {"error": job_error_line(err, job)}
        return {"features": features}

    def _prepared(self, target: Job) -> PreparedTarget:
        with self._cache_lock:
            return self.cache.get(target)

    def prepare_target(self, target: Job) -> bool:
        """A screen target's MSA search (through the MSA cache) and parsing, done once by the
        ingress before the target's ligands fan out over the replicas; False if it failed (each
        ligand's `featurize` then reports why)."""
        try:
            filled = self.msa.fill(target) if self.msa is not None else target
            with featurization_deadline(self.time_limit_s):
                self._prepared(filled)
        except Exception:   # noqa: BLE001
            log.warning("preparing a screen target failed", exc_info=True)
            return False
        return True

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

    def __init__(self, checkpoint: str | None, model_config: str | ModelConfig, device: str,
                 max_batch_size: int, batch_wait_timeout_s: float,
                 runtime: RuntimeConfig | None = None) -> None:
        self.predictor = Predictor.load(checkpoint, config=model_config, runtime=runtime,
                                        device=device)
        if self.predictor.random_weights:   # Serve's logger: the replica's log file and the console
            logging.getLogger("ray.serve").warning(
                "no checkpoint: the %r model has RANDOM weights; its structures and confidences "
                "are meaningless (give a checkpoint to serve a real model)",
                model_config if isinstance(model_config, str) else "configured")
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
        """Requests with the same settings share forward passes (`Predictor.predict_batch`)."""
        results: list[list[SamplePrediction]] = [[] for _ in requests]
        by_settings: dict[PredictSettings, list[int]] = {}
        for i, request in enumerate(requests):
            by_settings.setdefault(request.settings, []).append(i)
        for settings, indices in by_settings.items():
            items = [(requests[i].featurized, requests[i].seed) for i in indices]
            batch = self.predictor.predict_batch(items, settings, self.max_batch_size)
            for i, samples in zip(indices, batch, strict=True):
                results[i] = samples
            groups = group_by_size([f for f, _ in items], self.max_batch_size)   # the same groups
            self.n_forward += len(groups)
            self.largest_batch = max([self.largest_batch] + [len(g) for g in groups])
        self.n_jobs += len(requests)
        return results

    def takes_restraints(self) -> bool:
        """Whether the loaded network has the constraint embedder (pockets need it)."""
        return bool(getattr(self.predictor.config, "constraint_embedder", False))

    def stats(self) -> dict[str, Any]:
        return {"n_jobs": self.n_jobs, "n_forward": self.n_forward,
                "largest_batch": self.largest_batch, "pid": os.getpid(),
                "random_weights": self.predictor.random_weights,
                "device": str(self.predictor.device),
                "runtime": dataclasses.asdict(self.predictor.runtime)}
