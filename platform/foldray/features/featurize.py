"""Model input features (SI 2.8, Table 5) from tokens, MSA and templates.

Feature names are Table 5's. Shapes and dtypes (before batching/padding):
  token features  [N_token] int32; restype [N_token, 32] float32 one-hot; is_* float32
  reference       ref_pos [N_atom, 3] float32, ref_mask [N_atom] float32,
                  ref_element [N_atom, 128] float32, ref_charge [N_atom] float32,
                  ref_atom_name_chars [N_atom, 4, 64] float32, ref_space_uid [N_atom] int32
  MSA             msa [N_msa, N_token] int8 class indices (SI deviation: not one-hot, which
                  would be 32x larger at 16,384 rows; `one_hot_msa` expands it, the model
                  one-hots on device), has_deletion / deletion_value [N_msa, N_token]
                  float32, profile [N_token, 32] float32, deletion_mean [N_token] float32
  templates       template_restype [N_templ, N_token] int8, template_*_mask
                  [N_templ, N_token] float32, template_distogram [N_templ, N_token, N_token, 39]
                  float32, template_unit_vector [N_templ, N_token, N_token, 3] float32
  bonds           token_bonds [N_token, N_token] float32
Extra indices the model and losses need: atom_to_token [N_atom], token_centre_atom and
token_rep_atom [N_token] (atom indices of the SI 2.6 centre and SI 4.4 distogram atoms).
"""

from __future__ import annotations

import numpy as np

from foldray.features.msa import MsaFeatures
from foldray.features.tokenize import TokenizedStructure
from foldray.residues import MOL_TYPES, NUM_RESTYPES

NUM_ELEMENTS = 128
NAME_CHARS = 4
NAME_CHAR_CLASSES = 64
DISTOGRAM_BINS = 39


def one_hot(indices: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 one-hot of an integer array along a new last axis."""
    out = np.zeros(indices.shape + (n_classes,), np.float32)
    np.put_along_axis(out, indices[..., None].astype(np.int64), 1.0, axis=-1)
    return out


def one_hot_msa(msa: np.ndarray) -> np.ndarray:
    """[N_msa, N_token] class indices -> the Table 5 one-hot [N_msa, N_token, 32]."""
    return one_hot(msa, NUM_RESTYPES)


def atom_name_chars(names: np.ndarray) -> np.ndarray:
    """[N_atom] names -> [N_atom, 4, 64] one-hot of ord(c) - 32, padded with spaces."""
    padded = np.char.ljust(names.astype(f"<U{NAME_CHARS}"), NAME_CHARS)
    codes = padded.view(np.uint32).reshape(len(names), NAME_CHARS).astype(np.int64) - 32
    return one_hot(np.clip(codes, 0, NAME_CHAR_CLASSES - 1), NAME_CHAR_CLASSES)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3, 3] rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def augment_reference(ref_pos: np.ndarray, ref_mask: np.ndarray, space_uid: np.ndarray,
                      rng: np.random.Generator, translation_scale: float = 1.0) -> np.ndarray:
    """Table 5 ref_pos: each conformer centred, randomly rotated and translated.

    The model must not learn absolute frames of reference conformers, so every
    (chain, residue) gets its own rotation; translations are N(0, translation_scale^2) Å.
    """
    uids, inverse = np.unique(space_uid, return_inverse=True)
    weights = ref_mask.astype(np.float64)
    counts = np.bincount(inverse, weights=weights, minlength=len(uids))
    centres = np.stack([np.bincount(inverse, weights=ref_pos[:, k] * weights, minlength=len(uids))
                        for k in range(3)], axis=1) / np.maximum(counts, 1.0)[:, None]
    rotations = random_rotations(len(uids), rng)
    shifts = rng.normal(scale=translation_scale, size=(len(uids), 3))
    centred = ref_pos - centres[inverse]
    out = np.einsum("nij,nj->ni", rotations[inverse], centred) + shifts[inverse]
    return np.where(ref_mask[:, None], out, 0.0).astype(np.float32)


def token_bond_matrix(tokens: TokenizedStructure) -> np.ndarray:
    """[N_token, N_token] 1.0 where an atom of token i bonds an atom of token j."""
    n = tokens.n_tokens
    matrix = np.zeros((n, n), np.float32)
    if len(tokens.bonds):
        ti = tokens.atom_to_token[tokens.bonds[:, 0]]
        tj = tokens.atom_to_token[tokens.bonds[:, 1]]
        matrix[ti, tj] = 1.0
        matrix[tj, ti] = 1.0
    return matrix


def empty_template_features(n_tokens: int) -> dict[str, np.ndarray]:
    """N_templ = 0 template features: the model's template embedder then adds nothing."""
    return {
        "template_restype": np.zeros((0, n_tokens), np.int8),
        "template_pseudo_beta_mask": np.zeros((0, n_tokens), np.float32),
        "template_backbone_frame_mask": np.zeros((0, n_tokens), np.float32),
        "template_distogram": np.zeros((0, n_tokens, n_tokens, DISTOGRAM_BINS), np.float32),
        "template_unit_vector": np.zeros((0, n_tokens, n_tokens, 3), np.float32),
    }


def featurize(tokens: TokenizedStructure, msa: MsaFeatures, msa_column: np.ndarray, *,
              rng: np.random.Generator,
              templates: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All Table 5 features of one (possibly cropped) structure.

    `msa_column[t]` is the column of `msa` that token t reads (a residue's column is shared
    by all atom-tokens of a modified residue).
    """
    n_tokens = tokens.n_tokens
    mol = tokens.mol_type
    features: dict[str, np.ndarray] = {
        "residue_index": tokens.residue_index.astype(np.int32),
        "token_index": tokens.token_index,
        "asym_id": tokens.asym_id.astype(np.int32),
        "entity_id": tokens.entity_id.astype(np.int32),
        "sym_id": tokens.sym_id.astype(np.int32),
        "restype": one_hot(tokens.restype, NUM_RESTYPES),
    }
    for index, name in enumerate(MOL_TYPES):
        features[f"is_{name}"] = (mol == index).astype(np.float32)

    features["ref_pos"] = augment_reference(tokens.atom_ref_pos, tokens.atom_ref_mask,
                                            tokens.atom_space_uid, rng)
    features["ref_mask"] = tokens.atom_ref_mask.astype(np.float32)
    features["ref_element"] = one_hot(np.clip(tokens.atom_element, 0, NUM_ELEMENTS - 1),
                                      NUM_ELEMENTS)
    features["ref_charge"] = tokens.atom_charge.astype(np.float32)
    features["ref_atom_name_chars"] = atom_name_chars(tokens.atom_name)
    # Renumber so a crop still counts uids from 0 in order of first appearance.
    _, first, inverse = np.unique(tokens.atom_space_uid, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    features["ref_space_uid"] = order[inverse].astype(np.int32)

    deletion = msa.deletion_count[:, msa_column]
    features["msa"] = msa.msa[:, msa_column].astype(np.int8)
    features["has_deletion"] = (deletion > 0).astype(np.float32)
    features["deletion_value"] = (2.0 / np.pi * np.arctan(deletion / 3.0)).astype(np.float32)
    features["profile"] = msa.profile[msa_column].astype(np.float32)
    features["deletion_mean"] = msa.deletion_mean[msa_column].astype(np.float32)

    features.update(templates if templates is not None else empty_template_features(n_tokens))
    features["token_bonds"] = token_bond_matrix(tokens)

    features["atom_to_token"] = tokens.atom_to_token.astype(np.int32)
    features["token_centre_atom"] = tokens.centre_atom.astype(np.int32)
    features["token_rep_atom"] = tokens.rep_atom.astype(np.int32)
    return features
