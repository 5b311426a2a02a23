"""Feature parity with reference featurizers: one normalised representation, compared name by name.

The references (OpenFold3, Protenix) encode the same SI Table 5 features with their own class
orders, one-hot layouts and id numbering. Both sides are reduced here to a representation
where "equal" means the same model input: restype and MSA classes as residue names, elements
as atomic numbers, atom names as strings, partitions (chains, entities, symmetry copies,
ref_space_uid) as labels renumbered by first appearance, token bonds as sorted index pairs.
Conformer positions are generated, so ref_pos is compared through intra-residue distance
matrices and reported in Å. Used by benchmarks/equivalence/feature_parity.py and the CI test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldray.residues import MOL_TYPES, RESTYPES

# Identity features: equal or a reported difference. ref_pos is measured, not identity.
TOKEN_FEATURES = ("restype", "residue_index", "asym_id", "entity_id", "sym_id", "mol_type",
                  "is_atomized", "token_bonds")
ATOM_FEATURES = ("element", "charge", "atom_name", "atom_to_token", "ref_space_uid", "ref_mask")
# Compared on the atoms both sides have (matched by chain, residue_index and name), so one extra
# atom does not shift every later comparison; "atom_set" / "atom_order" report the matching.
MATCHED_ATOM_FEATURES = ("element", "charge", "atom_to_token", "ref_space_uid", "ref_mask")
MSA_FEATURES = ("msa_rows_total", "msa", "has_deletion", "deletion_value", "profile", "deletion_mean")
IDENTITY_FEATURES = ("n_tokens", *TOKEN_FEATURES, "n_atoms", "atom_set", "atom_order", *ATOM_FEATURES,
                     *MSA_FEATURES)
PARTITIONS = ("asym_id", "entity_id", "sym_id", "ref_space_uid")
FLOAT_TOLERANCE = 1e-5
CLASS_ALIASES = {"GAP": "-"}   # OpenFold3 names the gap class "GAP", foldray "-"


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel a partition 0, 1, ... in order of first appearance (two labelings of the same
    partition become equal arrays)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.reshape(-1)].astype(np.int64)


def bond_pairs(matrix: np.ndarray) -> np.ndarray:
    """[N, N] bond matrix -> [B, 2] sorted (i < j) index pairs, symmetric by construction."""
    m = np.asarray(matrix).astype(bool)
    return np.argwhere(np.triu(m | m.T, k=1)).astype(np.int64).reshape(-1, 2)


def normalise_foldray(features: dict[str, np.ndarray], is_standard: np.ndarray | None = None,
                      max_msa_rows: int | None = None) -> dict[str, np.ndarray]:
    """foldray's Table 5 features in the shared representation (see module docstring)."""
    names = np.array(RESTYPES)
    mol = np.stack([features[f"is_{k}"] for k in MOL_TYPES], -1)
    msa = np.asarray(features["msa"])
    rows = msa.shape[0] if max_msa_rows is None else min(max_msa_rows, msa.shape[0])
    chars = np.asarray(features["ref_atom_name_chars"]).argmax(-1) + 32
    out = {
        "restype": names[np.asarray(features["restype"]).argmax(-1)],
        "residue_index": np.asarray(features["residue_index"]).astype(np.int64),
        "asym_id": np.asarray(features["asym_id"]).astype(np.int64),
        "entity_id": np.asarray(features["entity_id"]).astype(np.int64),
        "sym_id": np.asarray(features["sym_id"]).astype(np.int64),
        "mol_type": np.array(MOL_TYPES)[mol.argmax(-1)],
        "token_bonds": bond_pairs(features["token_bonds"]),
        "element": np.asarray(features["ref_element"]).argmax(-1).astype(np.int64),  # index = Z
        "charge": np.asarray(features["ref_charge"]).astype(np.float32),
        "atom_name": np.array(["".join(map(chr, row)).strip() for row in chars]),
        "atom_to_token": np.asarray(features["atom_to_token"]).astype(np.int64),
        "ref_space_uid": np.asarray(features["ref_space_uid"]).astype(np.int64),
        "ref_mask": np.asarray(features["ref_mask"]).astype(bool),
        "ref_pos": np.asarray(features["ref_pos"]).astype(np.float32),
        "msa_rows_total": np.array(msa.shape[0]),
        "msa": names[msa[:rows].astype(np.int64)],
        "has_deletion": np.asarray(features["has_deletion"])[:rows].astype(np.float32),
        "deletion_value": np.asarray(features["deletion_value"])[:rows].astype(np.float32),
        "profile": np.asarray(features["profile"]).astype(np.float32),
        "deletion_mean": np.asarray(features["deletion_mean"]).astype(np.float32),
    }
    if is_standard is not None:
        out["is_atomized"] = ~np.asarray(is_standard).astype(bool)
    return out


def _value(x: Any) -> Any:
    x = np.asarray(x)
    return x.tolist() if x.size <= 8 else f"array{list(x.shape)}"


def _first_difference(ref: np.ndarray, ours: np.ndarray, tolerance: float | None) -> dict:
    if ref.shape != ours.shape:
        n = min(len(ref), len(ours)) if ref.ndim and ours.ndim else 0
        if ref.shape[1:] != ours.shape[1:]:   # trailing dims differ: no common prefix to compare
            n = 0
        prefix = _first_difference(ref[:n], ours[:n], tolerance) if n else {"equal": True}
        result = {"equal": False, "shape_ref": list(ref.shape), "shape_ours": list(ours.shape)}
        if not prefix["equal"]:
            result.update({k: v for k, v in prefix.items() if k != "equal"})
        return result
    diff = ref != ours if tolerance is None else ~np.isclose(ref, ours, atol=tolerance, rtol=0.0)
    if not diff.any():
        return {"equal": True}
    index = np.argwhere(diff)[0]
    lead = tuple(index[:1])
    result = {"equal": False, "n_differ": int(diff.any(axis=tuple(range(1, diff.ndim))).sum())
              if diff.ndim > 1 else int(diff.sum()),
              "first_index": [int(i) for i in index],
              "ref": _value(ref[lead]), "ours": _value(ours[lead])}
    if tolerance is not None:
        result["max_abs_diff"] = float(np.abs(ref.astype(np.float64) - ours).max())
    return result


def _aliased(names: np.ndarray) -> np.ndarray:
    out = names.astype(str)
    for alias, name in CLASS_ALIASES.items():
        out = np.where(out == alias, name, out)
    return out


def _atom_keys(f: dict[str, np.ndarray]) -> list[tuple[int, int, str]]:
    token = f["atom_to_token"]
    chain = canonical_labels(f["asym_id"])[token]
    residue = f["residue_index"][token]
    return list(zip(chain.tolist(), residue.tolist(), f["atom_name"].tolist(), strict=True))


def atom_alignment(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray,
                                                                                      list, list]:
    """Indices of the atoms both sides have (by chain, residue_index, name), and the keys of
    the atoms only one side has."""
    ref_keys, our_keys = _atom_keys(ref), _atom_keys(ours)
    lookup = {key: i for i, key in enumerate(our_keys)}
    pairs = [(i, lookup[key]) for i, key in enumerate(ref_keys) if key in lookup]
    idx = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    ref_set = set(ref_keys)
    only_ref = [key for key in ref_keys if key not in lookup]
    only_ours = [key for key in our_keys if key not in ref_set]
    return idx[:, 0], idx[:, 1], only_ref, only_ours


def ref_pos_difference(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray],
                       idx_ref: np.ndarray, idx_ours: np.ndarray) -> dict:
    """Max |d_ref - d_ours| (Å) over intra-residue pairs of matched atoms (residue = the
    reference token's chain and residue_index), atoms with ref_mask on both sides."""
    token = ref["atom_to_token"][idx_ref]
    key = canonical_labels(ref["asym_id"])[token] * 1_000_000 + ref["residue_index"][token]
    mask = ref["ref_mask"][idx_ref] & ours["ref_mask"][idx_ours]
    pos_ref, pos_ours = ref["ref_pos"][idx_ref], ours["ref_pos"][idx_ours]
    worst, worst_atom = 0.0, None
    for label in np.unique(key):
        idx = np.flatnonzero((key == label) & mask)
        if len(idx) < 2:
            continue
        d_ref = np.linalg.norm(pos_ref[idx, None] - pos_ref[None, idx], axis=-1)
        d_ours = np.linalg.norm(pos_ours[idx, None] - pos_ours[None, idx], axis=-1)
        err = np.abs(d_ref - d_ours)
        if err.max() > worst:
            row = np.unravel_index(err.argmax(), err.shape)[0]
            worst, worst_atom = float(err.max()), int(idx_ref[idx[row]])
    return {"max_intra_residue_distance_diff_A": round(worst, 4), "worst_atom_ref_index": worst_atom,
            "atoms_compared": int(mask.sum())}


def compare(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict[str, dict]:
    """Feature name -> {"equal": bool, ...details}; ref_pos -> its distance report."""
    report: dict[str, dict] = {}
    report["n_tokens"] = _first_difference(np.array(len(ref["restype"])), np.array(len(ours["restype"])),
                                           None)
    report["n_atoms"] = _first_difference(np.array(len(ref["element"])), np.array(len(ours["element"])),
                                          None)
    idx_ref, idx_ours, only_ref, only_ours = atom_alignment(ref, ours)
    report["atom_set"] = {"equal": not only_ref and not only_ours, "n_only_ref": len(only_ref),
                          "n_only_ours": len(only_ours), "only_ref": [list(k) for k in only_ref[:6]],
                          "only_ours": [list(k) for k in only_ours[:6]]}
    report["atom_order"] = {"equal": bool(np.all(np.diff(idx_ours) > 0))}
    for name in (*TOKEN_FEATURES, *ATOM_FEATURES, *MSA_FEATURES):
        if name not in ref or name not in ours:
            report[name] = {"equal": None, "reason": "missing on one side"}
            continue
        r, o = np.asarray(ref[name]), np.asarray(ours[name])
        if name in MATCHED_ATOM_FEATURES:
            r, o = r[idx_ref], o[idx_ours]
        if name in PARTITIONS:
            r, o = canonical_labels(r), canonical_labels(o)
        if name in ("restype", "msa"):
            r, o = _aliased(r), _aliased(o)
        tolerance = FLOAT_TOLERANCE if r.dtype.kind == "f" or o.dtype.kind == "f" else None
        report[name] = _first_difference(r, o, tolerance)
        if name in MATCHED_ATOM_FEATURES and not report[name]["equal"] and "first_index" in report[name]:
            report[name]["first_index_ref_atom"] = int(idx_ref[report[name]["first_index"][0]])
    report["ref_pos"] = ref_pos_difference(ref, ours, idx_ref, idx_ours)
    return report


def differing(report: dict[str, dict]) -> set[str]:
    """Identity features the report finds unequal."""
    return {name for name in IDENTITY_FEATURES if report.get(name, {}).get("equal") is False}
