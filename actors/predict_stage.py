"""Inference stage of the batch engine: the actor that holds the model.

Loads the checkpoint once per actor (on its GPU when it has one) and only runs the model:
features arrive ready from the CPU stage, files are written by the next stage. A job the
model fails on (CUDA out of memory included) becomes that job's error row; the actor
frees what the failed job held and takes the next one.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any

import numpy as np

from foldray.actors.predict_rows import PENDING, FeaturizedSeeds, PredictedJob, failed_row
from foldray.io.confidences import SamplePrediction
from foldray.model.config import RuntimeConfig
from foldray.predictor import Predictor, PredictSettings


def _rank(sample: SamplePrediction) -> float:
    score = sample.score()
    return -math.inf if math.isnan(score) else score


def _metric(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _release_memory() -> None:
    """After a failed job (an OOM above all): drop its tensors before the next job."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _match_threads_to_cpus(assigned: dict[str, float]) -> None:
    """torch's intra-op threads = the CPUs Ray gave this actor (at least 1). Ray sets
    OMP_NUM_THREADS for a worker it starts for the actor, but a reused idle worker (one that
    preloaded torch, `foldray.actors.worker_preload`) keeps the thread pool it started with:
    more threads than CPUs oversubscribe the node and slow every actor on it."""
    import torch

    cpus = assigned.get("CPU", 0.0)
    if cpus > 0:
        torch.set_num_threads(max(1, int(cpus)))


def _screen_metrics(tokens: Any, best: SamplePrediction) -> dict[str, float | None]:
    """`foldray screen` rows: the ligand (last chain) pLDDT and the target-ligand PAE."""
    from foldray.screening import screen_metrics

    found = screen_metrics(tokens, best)
    return {key: _metric(found[key]) for key in ("ligand_plddt", "min_target_ligand_pae")}


class PredictStage:
    """Featurized job in, samples and top-sample metrics out (`Dataset.map`: one row a call)."""

    def __init__(self, checkpoint: str | None, config: str, runtime: RuntimeConfig,
                 device: str, settings: PredictSettings, batch_size: int = 1) -> None:
        import ray  # the actor's identity, for the results table

        context = ray.get_runtime_context()
        if context.worker.mode == ray.WORKER_MODE:   # an actor (a driver has no assignment)
            _match_threads_to_cpus(context.get_assigned_resources())
        self.predictor = Predictor.load(checkpoint, config=config, runtime=runtime,
                                        device=device)
        self.settings = settings
        self.batch_size = batch_size     # PredictBatchStage: jobs in one forward pass, at most
        self.actor_id, self.node_id = context.get_actor_id() or "", context.get_node_id()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] != PENDING:
            return row
        try:
            return self._predict(row)
        except Exception as err:   # torch.OutOfMemoryError, a model bug on odd input, ...
            failed = failed_row(row, err, "predict")
            _release_memory()
            return failed | {"actor_id": self.actor_id, "node_id": self.node_id}

    def _predict(self, row: dict[str, Any]) -> dict[str, Any]:
        featurized: FeaturizedSeeds = row["payload"]
        started = time.perf_counter()
        tokens, samples = self.predictor.predict_featurized(featurized.by_seed, self.settings)
        return self._finish(row, tokens, samples, time.perf_counter() - started)

    def _finish(self, row: dict[str, Any], tokens: Any, samples: list[SamplePrediction],
                seconds: float) -> dict[str, Any]:
        """The predicted row: samples as payload, the top sample's metrics as columns."""
        featurized: FeaturizedSeeds = row["payload"]
        best = max(samples, key=_rank)          # the sample write_prediction ranks first
        job = next(iter(featurized.by_seed.values())).job
        screen = _screen_metrics(tokens, best) if "ligand_id" in row else {}
        return dict(row) | screen | {
            "payload": PredictedJob(job=job, tokens=tokens, samples=samples),
            "model_seconds": seconds, "actor_id": self.actor_id, "node_id": self.node_id,
            "ranking_score": _metric(best.score()), "ptm": _metric(best.ptm),
            "iptm": _metric(best.iptm),
            "mean_plddt": float(np.mean(best.atom_plddt[:tokens.n_atoms])),
        }


class PredictBatchStage(PredictStage):
    """`Dataset.map_batches`: the pending jobs of a batch share forward passes.

    Every (job, seed) of the batch goes to `Predictor.predict_batch`, which runs jobs of
    the same padded size (`foldray.predictor.group_by_size`) together, at most
    `batch_size` per pass; each job's samples equal those it gets alone (its own seed's
    noise; fp32 rounding apart). `model_seconds` is the batch's model time shared equally
    by its jobs. A batch that fails as a whole (out of memory above all) is retried one
    job at a time, so only the job that fails alone becomes an error row.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:   # type: ignore[override]
        rows = batch_rows(batch)
        pending = [i for i, row in enumerate(rows) if row["status"] == PENDING]
        if len(pending) > 1 and not self.settings.share_trunk:
            try:
                for i, done in zip(pending, self._predict_together([rows[i] for i in pending]),
                                   strict=True):
                    rows[i] = done
                return batch_columns(rows)
            except Exception:   # retried one by one below: each job's own outcome
                _release_memory()
        return batch_columns([super(PredictBatchStage, self).__call__(row) for row in rows])

    def _predict_together(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items, owners = [], []
        for index, row in enumerate(rows):
            for seed, featurized in row["payload"].by_seed.items():
                items.append((featurized, seed))
                owners.append(index)
        started = time.perf_counter()
        results = self.predictor.predict_batch(items, self.settings, max_group=self.batch_size)
        share = (time.perf_counter() - started) / len(rows)
        by_row: list[list[SamplePrediction]] = [[] for _ in rows]
        for owner, samples in zip(owners, results, strict=True):
            by_row[owner].extend(samples)         # seeds in order, as predict_featurized
        return [self._finish(row, next(iter(row["payload"].by_seed.values())).tokens, samples, share)
                for row, samples in zip(rows, by_row, strict=True)]


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy batch as rows of Python values (numpy scalars unwrapped)."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{key: value.item() if isinstance(value := column[i], np.generic) else value
             for key, column in batch.items()} for i in range(n)]


def batch_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows back to a numpy batch; object arrays, so payloads stay Python objects."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    out = {}
    for key in keys:
        column = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):       # one by one: numpy must not unpack a value
            column[i] = row.get(key)
        out[key] = column
    return out
