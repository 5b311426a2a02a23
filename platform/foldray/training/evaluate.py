"""Validation during training: all-atom lDDT of structures sampled on held-out examples.

The model (normally a copy holding the EMA weights, SI 5.6) runs the full sampler
(Algorithm 18) from noise on each held-out structure; the score is `lddt` against the
ground truth over resolved atoms, pairs inside one token left out (lDDT's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from foldray.features.batch import collate
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import RuntimeConfig
from foldray.training.step import lddt


@torch.no_grad()
def validation_lddt(model: AlphaFold3, samples: Sequence[dict[str, np.ndarray]], *,
                    device: torch.device, n_sample: int = 1, n_step: int | None = None,
                    seed: int = 0, runtime: RuntimeConfig | None = None) -> dict[str, float]:
    """Mean and per-structure lDDT (best of `n_sample` samples) -> {"val_lddt", "val_lddt_<i>"}."""
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        for sample in samples:
            batch = {k: v.to(device) for k, v in collate([sample], token_buckets=None,
                                                          atom_buckets=None).items()}
            prediction = model.predict(batch, n_sample=n_sample, n_step=n_step, runtime=runtime,
                                       generator=torch.Generator(device).manual_seed(seed))
            mask = (batch["gt_mask"] & batch["atom_mask"])[:, None]
            per_sample = lddt(prediction.x, batch["gt_coords"][:, None], mask,
                              atom_to_token=batch["atom_to_token"][:, None])      # [1, S]
            scores.append(float(per_sample.max()))
    finally:
        model.train(was_training)
    if not scores:
        return {}
    return {"val_lddt": float(np.mean(scores)),
            **{f"val_lddt_{i}": score for i, score in enumerate(scores)}}
