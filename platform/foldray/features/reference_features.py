"""A reference's own model input, converted into foldray's feature dict (end_to_end.py's
"reference features" mode: it isolates the model, sampler and confidence path from any
featurization or conformer difference).

Reads the `feat.*` arrays a reference_<reference>_e2e.py script saves (one-hots stored as
class indices) and writes foldray's Table 5 names, dtypes and index conventions
(foldray.features.featurize): ref_element indexed by Z (0 = unknown), restype / msa in
foldray's 32-class order, `token_centre_atom` / `token_rep_atom` chosen with foldray's own
rules (foldray.residues) from the reference's atom and residue names, no template slots.
Needs no reference package (CI replays it on committed fixtures).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from foldray.features.featurize import NAME_CHAR_CLASSES, NUM_ELEMENTS, one_hot
from foldray.residues import CENTRE_ATOM, MOL_TYPES, RESTYPE_INDEX, representative_atom

# Reference 32-class restype orders, by name (both use AF3's order; mapped by name anyway).
OPENFOLD3_RESTYPES = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU",
                      "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "UNK", "A",
                      "G", "C", "U", "N", "DA", "DG", "DC", "DT", "DN", "-")
OPENFOLD3_UNKNOWN_ELEMENT = 118    # its ref_element column for "unknown" (others: Z - 1)


def atom_names(name_chars: np.ndarray) -> np.ndarray:
    """[N_atom, 4] character classes (ord(c) - 32) -> atom names."""
    chars = (name_chars.astype(np.int64) + 32).astype(np.uint32)
    return np.array(["".join(map(chr, row)).strip() for row in chars])


def centre_and_rep(atom_to_token: np.ndarray, names: np.ndarray, res_names: np.ndarray,
                   mol_type: np.ndarray, n_token: int) -> tuple[np.ndarray, np.ndarray]:
    """foldray's token centre (SI 2.6) and distogram (SI 4.4) atoms: for a one-atom token the
    atom itself, else the named atom of the token's residue (foldray.features.tokenize)."""
    centre = np.zeros(n_token, np.int32)
    rep = np.zeros(n_token, np.int32)
    for token in range(n_token):
        atoms = np.flatnonzero(atom_to_token == token)
        if len(atoms) == 1:
            centre[token] = rep[token] = atoms[0]
            continue
        kind = MOL_TYPES[int(mol_type[token])]
        by_name = {str(names[a]): int(a) for a in atoms}
        centre[token] = by_name.get(CENTRE_ATOM[kind], int(atoms[0]))
        rep_name = representative_atom(kind, str(res_names[atoms[0]]))
        rep[token] = by_name.get(rep_name, int(centre[token]))
    return centre, rep


def from_openfold3(saved: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OpenFold3's model input (reference_openfold3_e2e.py) -> foldray's features."""
    f = {k[len("feat."):]: np.asarray(v) for k, v in saved.items() if k.startswith("feat.")}
    n_token = f["restype"].shape[0]
    to_foldray = np.array([RESTYPE_INDEX[name] for name in OPENFOLD3_RESTYPES], np.int64)
    element = f["ref_element"].astype(np.int64)
    z = np.where(element == OPENFOLD3_UNKNOWN_ELEMENT, 0, element + 1)
    mol_type = np.stack([f[f"is_{k}"] for k in MOL_TYPES], -1).argmax(-1)
    names = atom_names(f["ref_atom_name_chars"])
    atom_to_token = f["atom_to_token_index"].astype(np.int32)
    centre, rep = centre_and_rep(atom_to_token, names, f["atom_res_name"], mol_type, n_token)
    if not np.all(f["msa_mask"] == 1) or not np.all(f["token_mask"] == 1) or not np.all(f["atom_mask"] == 1):
        raise ValueError("reference features carry padding; only unpadded inputs are converted")
    return _features(f, to_foldray, z, kinds={k: f[f"is_{k}"].astype(np.float32) for k in MOL_TYPES},
                     atom_to_token=atom_to_token, centre=centre, rep=rep)


def _features(f: Mapping[str, np.ndarray], to_foldray: np.ndarray, z: np.ndarray, *,
              kinds: Mapping[str, np.ndarray], atom_to_token: np.ndarray, centre: np.ndarray,
              rep: np.ndarray) -> dict[str, np.ndarray]:
    """foldray's feature dict from a reference's arrays once the reference-specific parts
    (restype order, element numbering, per-token molecule types, atoms) are resolved."""
    out = {
        "residue_index": f["residue_index"].astype(np.int32),
        "token_index": f["token_index"].astype(np.int32),
        "asym_id": f["asym_id"].astype(np.int32), "entity_id": f["entity_id"].astype(np.int32),
        "sym_id": f["sym_id"].astype(np.int32),
        "restype": one_hot(to_foldray[f["restype"].astype(np.int64)], 32),
        **{f"is_{k}": v for k, v in kinds.items()},
        "ref_pos": f["ref_pos"].astype(np.float32), "ref_mask": f["ref_mask"].astype(np.float32),
        "ref_element": one_hot(z, NUM_ELEMENTS), "ref_charge": f["ref_charge"].astype(np.float32),
        "ref_atom_name_chars": one_hot(f["ref_atom_name_chars"].astype(np.int64), NAME_CHAR_CLASSES),
        "ref_space_uid": f["ref_space_uid"].astype(np.int32),
        "msa": to_foldray[f["msa"].astype(np.int64)].astype(np.int8),
        "has_deletion": f["has_deletion"].astype(np.float32),
        "deletion_value": f["deletion_value"].astype(np.float32),
        "profile": f["profile"][:, np.argsort(to_foldray)].astype(np.float32),
        "deletion_mean": f["deletion_mean"].astype(np.float32),
        "token_bonds": f["token_bonds"].astype(np.float32),
        "atom_to_token": atom_to_token, "token_centre_atom": centre,
        "token_rep_atom": rep.astype(np.int32),
    }
    out.update(empty_templates(f["restype"].shape[0]))
    return out


def empty_templates(n_token: int) -> dict[str, np.ndarray]:
    """No template slots (the imported config pads the reference's empty slots itself)."""
    return {"template_restype": np.zeros((0, n_token), np.int8),
            "template_pseudo_beta_mask": np.zeros((0, n_token), np.float32),
            "template_backbone_frame_mask": np.zeros((0, n_token), np.float32),
            "template_distogram": np.zeros((0, n_token, n_token, 39), np.float32),
            "template_unit_vector": np.zeros((0, n_token, n_token, 3), np.float32)}


def from_protenix(saved: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Protenix's input_feature_dict (reference_protenix_e2e.py) -> foldray's features.

    Protenix keeps the molecule-type masks per atom (read here at each token's first atom), its
    ref_element column is Z - 1 with "unknown" in the last column, and it marks each token's
    distogram atom itself (distogram_rep_atom_mask), which is used as token_rep_atom. Its MSA
    module draws a random subset of MSA rows at inference too; the rows it drew in the run
    (msa_sample) are the MSA given to foldray."""
    f = {k[len("feat."):]: np.asarray(v) for k, v in saved.items() if k.startswith("feat.")}
    n_token = f["restype"].shape[0]
    to_foldray = np.array([RESTYPE_INDEX[name] for name in OPENFOLD3_RESTYPES], np.int64)
    atom_to_token = f["atom_to_token_idx"].astype(np.int32)
    first = np.full(n_token, -1, np.int64)
    for atom in range(len(atom_to_token) - 1, -1, -1):
        first[atom_to_token[atom]] = atom
    kinds = {k: f[f"is_{k}"][first].astype(np.float32) for k in MOL_TYPES}
    mol_type = np.stack([kinds[k] for k in MOL_TYPES], -1).argmax(-1)
    element = f["ref_element"].astype(np.int64)
    z = np.where(element == NUM_ELEMENTS - 1, 0, element + 1)
    names = atom_names(f["ref_atom_name_chars"])
    centre, rep = centre_and_rep(atom_to_token, names, f["atom_res_name"], mol_type, n_token)
    rep_atoms = np.flatnonzero(f["distogram_rep_atom_mask"])
    if len(rep_atoms) != n_token or not np.array_equal(atom_to_token[rep_atoms], np.arange(n_token)):
        raise ValueError("Protenix's distogram_rep_atom_mask is not one atom per token")
    if not np.all(f["msa_mask"]):
        raise ValueError("reference MSA carries padding rows; only unpadded inputs are converted")
    rows = f["msa_sample"].astype(np.int64)   # the rows its MSA module drew (1 cycle)
    f.update({k: f[k][rows] for k in ("msa", "has_deletion", "deletion_value")})
    return _features(f, to_foldray, z, kinds=kinds, atom_to_token=atom_to_token, centre=centre,
                     rep=rep_atoms)


CONVERTERS = {"openfold3": from_openfold3, "protenix": from_protenix}
_COMMON = ("residue_index", "token_index", "asym_id", "entity_id", "sym_id", "restype", "is_protein",
           "is_rna", "is_dna", "is_ligand", "ref_pos", "ref_mask", "ref_element", "ref_charge",
           "ref_atom_name_chars", "ref_space_uid", "msa", "has_deletion", "deletion_value", "profile",
           "deletion_mean", "token_bonds", "msa_mask", "atom_res_name")
# The reference features each converter reads (what the CI fixtures keep).
FIXTURE_FEATURES = {
    "openfold3": (*_COMMON, "atom_to_token_index", "token_mask", "atom_mask"),
    "protenix": (*_COMMON, "atom_to_token_idx", "distogram_rep_atom_mask", "msa_sample"),
}
