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


# --------------------------------------------------------------- foldray's own featurizer

def featurize_input(path: str, featurization, seed: int = SEED) -> dict[str, np.ndarray]:
    """foldray's featurizer on an AF3 JSON job, with the imported checkpoint's switches."""
    from foldray.errors import InputError
    from foldray.features.pipeline import featurize_job
    from foldray.inputs.load import read_jobs

    (job,) = read_jobs(path)
    if isinstance(job, InputError):
        raise job
    return featurize_job(job, seed=seed, with_targets=False, featurization=featurization).features


def _chain_rank(f: Mapping[str, np.ndarray]) -> np.ndarray:
    """Chains numbered 0.. in asym_id order (references number them from 0 or 1)."""
    return np.unique(np.asarray(f["asym_id"]), return_inverse=True)[1]


def atom_keys(f: Mapping[str, np.ndarray]) -> list[tuple]:
    """(chain rank, residue index, atom name) of every atom."""
    from foldray.features.reference_features import atom_names

    names = atom_names(np.asarray(f["ref_atom_name_chars"]).argmax(-1))
    tok = np.asarray(f["atom_to_token"]).astype(np.int64)
    return list(zip(_chain_rank(f)[tok].tolist(), np.asarray(f["residue_index"])[tok].tolist(),
                    names.tolist(), strict=True))


def token_keys(f: Mapping[str, np.ndarray]) -> list[tuple]:
    """(chain rank, residue index, atom name of a one-atom token else "") of every token."""
    from foldray.features.reference_features import atom_names

    names = atom_names(np.asarray(f["ref_atom_name_chars"]).argmax(-1))
    tok = np.asarray(f["atom_to_token"]).astype(np.int64)
    n_token = f["restype"].shape[0]
    counts = np.bincount(tok, minlength=n_token)
    first = {int(t): str(names[i]) for i, t in reversed(list(enumerate(tok)))}
    chain = _chain_rank(f)
    return [(int(chain[t]), int(f["residue_index"][t]), first[t] if counts[t] == 1 else "")
            for t in range(n_token)]


def match(ref_keys: list[tuple], our_keys: list[tuple]) -> tuple[np.ndarray, int, int]:
    """For each of our items the reference index with the same key (-1 = none); counts of
    ours without a partner and of the reference's left unmatched."""
    where = {k: i for i, k in enumerate(ref_keys)}
    idx = np.array([where.get(k, -1) for k in our_keys], np.int64)
    return idx, int((idx < 0).sum()), len(ref_keys) - len(set(idx[idx >= 0].tolist()))


def with_reference_draws(ours: dict[str, np.ndarray], ref: Mapping[str, np.ndarray],
                         saved: Mapping[str, np.ndarray], atoms: np.ndarray) -> dict[str, np.ndarray]:
    """foldray's features with only the reference's random draws put in: its generated
    conformers (`ref_pos`, atom by atom: ETKDG runs differ) and, for Protenix, the MSA rows
    its MSA module drew at inference (`msa_sample`). Everything else stays foldray's."""
    out = dict(ours)
    ref_pos = np.array(ours["ref_pos"], np.float32, copy=True)
    ok = atoms >= 0
    ref_pos[ok] = np.asarray(ref["ref_pos"], np.float32)[atoms[ok]]
    out["ref_pos"] = ref_pos
    if "feat.msa_sample" in saved:
        rows = np.asarray(saved["feat.msa_sample"]).astype(np.int64)
        if int(rows.max()) >= ours["msa"].shape[0]:
            raise ValueError(f"the reference drew MSA row {int(rows.max())}; foldray has "
                             f"{ours['msa'].shape[0]} rows")
        out.update({k: np.asarray(ours[k])[rows] for k in ("msa", "has_deletion", "deletion_value")})
    return out


def foldray_features(featurization, input_path: str, ref: Mapping[str, np.ndarray],
                     saved: Mapping[str, np.ndarray], seed: int = SEED,
                     ) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """foldray's featurizer with `featurization` on the JSON, the reference's draws put in
    (with_reference_draws); the atom and token matches (reference index per foldray item,
    -1 = none) and a summary of what still differs from the reference's model input. `ref` is
    the reference's features converted (foldray.features.reference_features)."""
    ours = featurize_input(input_path, featurization, seed)
    atoms, extra_atoms, missing_atoms = match(atom_keys(ref), atom_keys(ours))
    tokens, extra_tokens, missing_tokens = match(token_keys(ref), token_keys(ours))
    features = with_reference_draws(ours, ref, saved, atoms)
    info = {
        "featurization": featurization.to_dict(),
        "atoms": {"foldray": int(len(atoms)), "reference": int(ref["ref_pos"].shape[0]),
                  "foldray_only": extra_atoms, "reference_only": missing_atoms},
        "tokens": {"foldray": int(len(tokens)), "reference": int(ref["restype"].shape[0]),
                   "foldray_only": extra_tokens, "reference_only": missing_tokens},
        "msa_rows": {"foldray": int(ours["msa"].shape[0]), "reference": int(saved["feat.msa"].shape[0])},
        "same_atom_order": bool(np.array_equal(atoms, np.arange(len(atoms)))),
        "same_token_order": bool(np.array_equal(tokens, np.arange(len(tokens)))),
        "feature_differences": feature_differences(features, ref, atoms, tokens)}
    return features, atoms, tokens, info


def foldray_features_case(predictor, input_path: str, ref: Mapping[str, np.ndarray],
                          saved: Mapping[str, np.ndarray], seed: int = SEED) -> dict:
    """foldray_features with the loaded checkpoint's featurization switches, predicted with
    the reference's sampler draws (mapped atom by atom); outputs compared with the
    reference's on the matched atoms and tokens."""
    features, atoms, tokens, info = foldray_features(predictor.config.featurization, input_path, ref,
                                                     saved, seed)
    noise = noise_of(saved)
    mapped = dict(noise)
    for key in ("x0", "eps"):                       # atom axis -2; atoms without a partner: 0
        value = noise[key]
        new = torch.zeros(*value.shape[:-2], len(atoms), 3, dtype=value.dtype)
        new[..., atoms >= 0, :] = value[..., atoms[atoms >= 0], :]
        mapped[key] = new
    out = predict(predictor, features, mapped, seed=seed)
    full = reference_outputs(saved)
    ok_a, ok_t = atoms >= 0, tokens >= 0
    ref_sub = {"x": full["x"][:, atoms[ok_a]], "plddt": full["plddt"][:, atoms[ok_a]],
               "pae": full["pae"][:, tokens[ok_t]][:, :, tokens[ok_t]], "ptm": full["ptm"],
               "iptm": full["iptm"]}
    our_sub = {"x": out["x"][:, ok_a], "plddt": out["plddt"][:, ok_a],
               "pae": out["pae"][:, ok_t][:, :, ok_t], "ptm": out["ptm"], "iptm": out["iptm"]}
    return {**compare(our_sub, ref_sub), **info}


PARTITIONS = ("asym_id", "entity_id", "ref_space_uid")
OFFSETS = ("sym_id", "token_index")       # relative positions (SI Algorithm 3) use differences
# float32 rounding of a transform computed in another order (deletion_value's arctan: 6e-8..1.2e-7)
FLOAT_TOLERANCE = 1e-6


def feature_differences(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                        atoms: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """Max |difference| of every model input both sides have, after the atom and token
    matching (ids compared as partitions, for which the number of label pairs is given, or
    up to a constant offset; floats to FLOAT_TOLERANCE); empty when foldray's features are the reference's."""
    if (atoms < 0).any() or (tokens < 0).any():
        return {"unmatched": float((atoms < 0).sum() + (tokens < 0).sum())}
    n_atom, n_token = len(atoms), len(tokens)
    diffs: dict[str, float] = {}
    for key in sorted(set(ours) & set(ref)):
        a, b = np.asarray(ours[key]), np.asarray(ref[key])
        if key in ("atom_to_token", "token_centre_atom", "token_rep_atom"):
            a = tokens[a] if key == "atom_to_token" else atoms[a]    # into the reference's numbering
        if a.shape[:1] == b.shape[:1] == (n_atom,):
            b = b[atoms]
        elif a.shape[:1] == b.shape[:1] == (n_token,):
            b = b[tokens]
            if key == "token_bonds":
                b = b[:, tokens]
        elif a.ndim == 2 and a.shape[-1] == b.shape[-1] == n_token:     # MSA rows
            b = b[:, tokens]
        if a.shape != b.shape:
            diffs[key] = float("inf")
        elif key in PARTITIONS:                     # labels are arbitrary, only equality counts
            pairs = set(zip(a.tolist(), b.tolist(), strict=True))
            if not len(pairs) == len(set(a.tolist())) == len(set(b.tolist())):
                diffs[key] = float(len(pairs))
        elif key in OFFSETS:                        # only differences of ids enter the model
            d = a.astype(np.int64) - b.astype(np.int64)
            if d.size and (d != d.flat[0]).any():
                diffs[key] = float(np.abs(d - d.flat[0]).max())
        elif a.size:
            d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            if d > (FLOAT_TOLERANCE if np.issubdtype(a.dtype, np.floating) else 0):
                diffs[key] = d
    return diffs
