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


def _screen_metrics(tokens: Any, best: SamplePrediction) -> dict[str, float | None]:
    """`foldray screen` rows: the ligand (last chain) pLDDT and the target-ligand PAE."""
    from foldray.screening import screen_metrics

    found = screen_metrics(tokens, best)
    return {"ligand_plddt": _metric(found["ligand_mean_plddt"]),
            "min_target_ligand_pae": _metric(found["min_pae_target_ligand"])}


class PredictStage:
    """Featurized job in, samples and top-sample metrics out."""

    def __init__(self, checkpoint: str | None, config: str, runtime: RuntimeConfig,
                 device: str, settings: PredictSettings) -> None:
        import ray  # the actor's identity, for the results table

        self.predictor = Predictor.load(checkpoint, config=config, runtime=runtime,
                                        device=device)
        self.settings = settings
        context = ray.get_runtime_context()
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
        seconds = time.perf_counter() - started
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
