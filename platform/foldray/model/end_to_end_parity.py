"""End-to-end parity with a reference: foldray's predictor with the reference sampler's
draws injected, compared with the reference's own outputs.

Shared by benchmarks/equivalence/end_to_end.py (against live references) and
tests/lib/test_end_to_end_parity.py (against committed fixtures), so it lives in the
package: tests never import benchmarks. Targets: coordinates within 1e-3 Å RMS,
confidences within 1e-4 relative (issue 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import numpy as np
import torch

N_CYCLE, SEED = 1, 1
TARGET_RMS = 1e-3          # Å
TARGET_REL = 1e-4


def noise_of(saved: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k[len("noise."):]: torch.as_tensor(np.asarray(v)) for k, v in saved.items()
            if k.startswith("noise.")}


def predict(predictor, features: dict[str, np.ndarray], noise: Mapping[str, torch.Tensor],
            n_cycle: int = N_CYCLE, seed: int = SEED) -> dict[str, np.ndarray]:
    """foldray's Predictor on one job's features (no padding), the sampler's draws injected;
    the samples' coordinates and AF3 metrics as Predictor reports them."""
    from foldray.model.parity import injected
    from foldray.predictor import PredictSettings

    n_step, n_sample = noise["rot"].shape[0], noise["x0"].shape[1]
    settings = PredictSettings(n_sample=n_sample, n_cycle=n_cycle, n_step=n_step)
    torch.manual_seed(0)
    with injected(noise):
        prediction, batch = predictor._forward([features], seed, settings)
    sizes = SimpleNamespace(n_tokens=features["restype"].shape[0], n_atoms=features["ref_pos"].shape[0])
    samples = predictor._samples(prediction, batch, 0, seed, sizes)
    return {"x": np.stack([s.coords for s in samples]), "plddt": np.stack([s.atom_plddt for s in samples]),
            "pae": np.stack([s.pae for s in samples]), "ptm": np.array([s.ptm for s in samples]),
            "iptm": np.array([s.iptm for s in samples])}


def compare(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict:
    """Coordinates: RMS and max |difference| in Å; confidences: max |difference| over max |ref|
    (pTM / ipTM per sample; NaN on both sides counts as equal)."""
    x, xr = np.asarray(ours["x"], np.float64), np.asarray(ref["x"], np.float64)
    d = np.linalg.norm(x - xr, axis=-1)
    out: dict = {"coords_rms_A": float(np.sqrt((d ** 2).mean())), "coords_max_A": float(d.max())}
    for key in ("plddt", "pae", "ptm", "iptm"):
        a, b = np.asarray(ours[key], np.float64), np.asarray(ref[key], np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        scale = float(np.nanmax(np.abs(b))) if np.isfinite(b).any() else 1.0
        out[f"{key}_max_abs"] = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))
        out[f"{key}_rel"] = out[f"{key}_max_abs"] / scale if scale > 0 else out[f"{key}_max_abs"]
    out["within_target"] = bool(out["coords_rms_A"] < TARGET_RMS and all(
        out[f"{k}_rel"] < TARGET_REL for k in ("plddt", "pae", "ptm", "iptm")))
    return out


def reference_outputs(saved: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("out."):]: np.asarray(v) for k, v in saved.items() if k.startswith("out.")}
