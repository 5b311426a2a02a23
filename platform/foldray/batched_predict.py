"""Several featurized jobs in one forward pass (Serve's `@serve.batch`, screens).

Jobs are grouped by size so padding stays small: a group is padded to its own largest
job (`collate` with no buckets), not to the global buckets, because on a 35-token screen
job the 128-token bucket multiplies pair work ~13x. Real tokens come first in every
padded job, so per-job outputs are sliced exactly as `Predictor` does for one job.

SI deviation: one random generator (seeded by the group's first seed) drives the whole
group's diffusion noise, so a job's sample depends on its batch-mates; a job alone
(group of one) reproduces `Predictor.predict_featurized` exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from foldray.features.batch import collate
from foldray.features.pipeline import FeaturizedJob
from foldray.io.confidences import SamplePrediction
from foldray.model.alphafold3 import Prediction
from foldray.predictor import Predictor, PredictSettings

TOKEN_STEP = 16   # jobs whose token counts round up to the same multiple share a forward
ATOM_STEP = 64


def size_group(featurized: FeaturizedJob) -> tuple[int, int, int]:
    """Key of jobs that batch well: token and atom counts rounded up, MSA rows exactly."""
    n_msa = int(featurized.features["msa"].shape[0])
    return (-(-featurized.tokens.n_tokens // TOKEN_STEP), -(-featurized.tokens.n_atoms // ATOM_STEP),
            n_msa)


def group_by_size(items: Sequence[FeaturizedJob], max_group: int) -> list[list[int]]:
    """Indices of `items` split into same-size groups of at most `max_group`, in order."""
    groups: dict[tuple[int, int, int], list[list[int]]] = {}
    for i, item in enumerate(items):
        chunks = groups.setdefault(size_group(item), [[]])
        if len(chunks[-1]) >= max_group:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


def _take(prediction: Prediction, i: int) -> Prediction:
    """Batch element i of a prediction, keeping a batch axis of 1."""
    confidence = dataclasses.replace(prediction.confidence, **{
        f.name: getattr(prediction.confidence, f.name)[i:i + 1]
        for f in dataclasses.fields(prediction.confidence)})
    return Prediction(x=prediction.x[i:i + 1], confidence=confidence,
                      distogram_logits=prediction.distogram_logits[i:i + 1], trunk=prediction.trunk)


def predict_group(predictor: Predictor, items: Sequence[tuple[FeaturizedJob, int]],
                  settings: PredictSettings) -> list[list[SamplePrediction]]:
    """One forward pass over (features, seed) pairs; the samples of each, in order."""
    batch = collate([f.features for f, _ in items], token_buckets=None, atom_buckets=None)
    batch = {k: v.to(predictor.device) for k, v in batch.items()}
    generator = torch.Generator(device=predictor.device).manual_seed(items[0][1])
    autocast = predictor.runtime.precision == "bf16" and predictor.device.type == "cuda"
    with torch.autocast(predictor.device.type, dtype=torch.bfloat16, enabled=autocast):
        prediction = predictor.model.predict(batch, n_sample=settings.n_sample,
                                             n_cycle=settings.n_cycle, n_step=settings.n_step,
                                             generator=generator, runtime=predictor.runtime)
    out = []
    for i, (featurized, seed) in enumerate(items):
        single = {k: v[i:i + 1] for k, v in batch.items()}
        # Predictor._samples is the one place per-sample AF3 metrics are computed
        out.append(predictor._samples(_take(prediction, i), single, seed, featurized.tokens))
    return out


def predict_many(predictor: Predictor, items: Sequence[tuple[FeaturizedJob, int]],
                 settings: PredictSettings, max_group: int = 8) -> list[list[SamplePrediction]]:
    """`predict_group` over same-size groups; results in the order of `items`."""
    results: list[list[SamplePrediction] | None] = [None] * len(items)
    for group in group_by_size([f for f, _ in items], max_group):
        for index, samples in zip(group, predict_group(predictor, [items[i] for i in group], settings),
                                  strict=True):
            results[index] = samples
    return [r for r in results if r is not None]
