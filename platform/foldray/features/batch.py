"""Padding, masks and collation of Table 5 features (SI 2.8) into model batches.

STYLE.md "Masks and padding": padding happens once, here; masks are bool, True = real.
Shapes: N_token, N_atom, N_msa, N_templ are one sample's sizes before padding; after
`pad_features` they are the requested sizes, and `collate` adds a leading batch axis B.
Added masks: token_mask [N_token], atom_mask [N_atom], msa_mask [N_msa, N_token] (real row
and real token), template_mask [N_templ], all bool.

Every feature name must have an entry in `FEATURE_AXES` (one label per axis, None for an
axis that is never padded, e.g. a one-hot width), so a new feature fails loudly here
instead of being mis-padded. Pad values keep the model correct: index features
(`atom_to_token`, `token_centre_atom`, `token_rep_atom`) point at index 0, which always
exists, so gathers stay in bounds (their results are masked); `msa` pads with the gap
class (`foldray.residues.GAP`); everything else pads with 0 (False for masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from foldray.features.constraints import fill_missing
from foldray.residues import GAP

TOKEN, ATOM, MSA, TEMPL = "N_token", "N_atom", "N_msa", "N_templ"
# axes of training targets only (foldray.features.targets): bonds of the bond loss, chain
# copy slots and atom-symmetry rows of the permutation alignment (SI 4.2)
BOND, COPY, PERM = "N_bond", "N_copy", "N_perm"
AXIS_NAMES = (TOKEN, ATOM, MSA, TEMPL, BOND, COPY, PERM)

Axes = tuple[str | None, ...]
_TOKEN_1D: Axes = (TOKEN,)
_ATOM_1D: Axes = (ATOM,)
_MSA_2D: Axes = (MSA, TOKEN)
_TEMPL_2D: Axes = (TEMPL, TOKEN)

FEATURE_AXES: dict[str, Axes] = {
    # token features
    "residue_index": _TOKEN_1D, "token_index": _TOKEN_1D, "asym_id": _TOKEN_1D,
    "entity_id": _TOKEN_1D, "sym_id": _TOKEN_1D, "restype": (TOKEN, None),
    "is_protein": _TOKEN_1D, "is_rna": _TOKEN_1D, "is_dna": _TOKEN_1D, "is_ligand": _TOKEN_1D,
    # reference conformer features
    "ref_pos": (ATOM, None), "ref_mask": _ATOM_1D, "ref_element": (ATOM, None),
    "ref_charge": _ATOM_1D, "ref_atom_name_chars": (ATOM, None, None), "ref_space_uid": _ATOM_1D,
    # MSA features
    "msa": _MSA_2D, "has_deletion": _MSA_2D, "deletion_value": _MSA_2D,
    "profile": (TOKEN, None), "deletion_mean": _TOKEN_1D,
    # template features
    "template_restype": _TEMPL_2D, "template_pseudo_beta_mask": _TEMPL_2D,
    "template_backbone_frame_mask": _TEMPL_2D,
    "template_distogram": (TEMPL, TOKEN, TOKEN, None),
    "template_unit_vector": (TEMPL, TOKEN, TOKEN, None),
    # bonds and indices
    "token_bonds": (TOKEN, TOKEN),
    # restraints (foldray.features.constraints), only in batches where a job has them
    "constraint_pocket": (TOKEN, TOKEN, None), "constraint_contact": (TOKEN, TOKEN, None),
    "constraint_contact_atom": (TOKEN, TOKEN, None),
    "atom_to_token": _ATOM_1D, "token_centre_atom": _TOKEN_1D, "token_rep_atom": _TOKEN_1D,
    # training targets (foldray.features.targets): experimental coordinates and which
    # atoms the experiment resolved (padding atoms get 0 / False), resolution, bonded-ligand
    # bonds, chain copies and atom symmetries (offsets: padding 0 is the identity)
    "gt_coords": (ATOM, None), "gt_mask": _ATOM_1D, "gt_resolution": (),
    "gt_bonds": (BOND, None), "gt_copy_coords": (COPY, ATOM, None),
    "gt_copy_mask": (COPY, ATOM), "copy_self": _TOKEN_1D, "copy_allowed": (TOKEN, COPY),
    "atom_perm_offset": (PERM, ATOM),
    # masks added by pad_features (re-padded with False if padded again)
    "token_mask": _TOKEN_1D, "atom_mask": _ATOM_1D, "msa_mask": _MSA_2D,
    "template_mask": (TEMPL,), "bond_mask": (BOND,),
}

# Pad values that are not 0. Index features pad with 0, a valid index, and are masked.
PAD_VALUES: dict[str, int | float] = {
    "msa": GAP, "atom_to_token": 0, "token_centre_atom": 0, "token_rep_atom": 0,
}

MASKS: dict[str, Axes] = {
    "token_mask": (TOKEN,), "atom_mask": (ATOM,), "msa_mask": (MSA, TOKEN), "template_mask": (TEMPL,),
}
# masks added only to samples that have a feature on their axis (training targets)
OPTIONAL_MASKS: dict[str, Axes] = {"bond_mask": (BOND,)}

# Bucket sizes: steps of at most 1.5x above 256, so for every n >= 0 the padding waste is
# bucket_size(n) - n <= max(128, n / 2): above 256, N grows by <= 1.5x and pair
# features [N, N] by <= 2.25x; below, by at most 127 tokens/atoms.
DEFAULT_BUCKETS: tuple[int, ...] = (128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


def bucket_size(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket >= n; beyond the largest, multiples of the last step (1024 by default).

    With DEFAULT_BUCKETS: monotone in n, >= n, and bucket_size(n) - n <= max(128, n / 2).
    """
    if n < 0:
        raise ValueError(f"bucket_size: n must be >= 0, got {n}")
    if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"bucket_size: buckets must be strictly increasing positive ints, "
                         f"got {tuple(buckets)}")
    for bucket in buckets:
        if n <= bucket:
            return bucket
    last = buckets[-1]
    step = last - buckets[-2] if len(buckets) > 1 else last
    return last + -(-(n - last) // step) * step


def _axes(name: str, array: np.ndarray) -> Axes:
    if name not in FEATURE_AXES:
        raise ValueError(f"feature {name!r} has no entry in foldray.features.batch.FEATURE_AXES; "
                         f"add its axes there so it is padded correctly")
    axes = FEATURE_AXES[name]
    if array.ndim != len(axes):
        raise ValueError(f"feature {name!r} has shape {array.shape}, but FEATURE_AXES gives "
                         f"{len(axes)} axes {axes}")
    return axes


def feature_sizes(features: Mapping[str, np.ndarray]) -> dict[str, int]:
    """N_token / N_atom / N_msa / N_templ of one sample, checked to agree across features.

    A sample padded before (one that holds masks) reports its padded sizes.
    """
    sizes: dict[str, int] = {}
    for name, array in features.items():
        for label, size in zip(_axes(name, array), array.shape, strict=True):
            if label is None:
                continue
            if sizes.setdefault(label, size) != size:
                raise ValueError(f"feature {name!r} has {label}={size}, other features have "
                                 f"{label}={sizes[label]}")
    return sizes


def _pad(name: str, array: np.ndarray, axes: Axes, target: Mapping[str, int]) -> np.ndarray:
    shape = tuple(size if label is None else target[label]
                  for label, size in zip(axes, array.shape, strict=True))
    out = np.full(shape, PAD_VALUES.get(name, 0), dtype=array.dtype)
    out[tuple(slice(0, size) for size in array.shape)] = array
    return out


def pad_features(features: Mapping[str, np.ndarray], *, n_token: int, n_atom: int,
                 n_msa: int | None = None, n_templ: int | None = None,
                 target_sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Pad every feature to the given sizes and add bool masks (True = real).

    n_msa / n_templ None keep the sample's own row / template count; `target_sizes` gives
    the training-target axes (N_bond, N_copy, N_perm; default: the sample's own). A size smaller than
    the sample's raises ValueError: cropping tokens and sampling MSA rows is featurization's
    job. Masks already present (a padded sample padded again) are padded with False, so
    they keep marking the originally real entries.
    """
    sizes = feature_sizes(features)
    present = set(sizes)
    for label in AXIS_NAMES:
        sizes.setdefault(label, 0)
    requested = {**dict(target_sizes or {}), TOKEN: n_token, ATOM: n_atom, MSA: n_msa,
                 TEMPL: n_templ}
    target: dict[str, int] = {}
    for label, size in sizes.items():
        want = requested.get(label)
        if want is None:
            want = size
        if want < size:
            raise ValueError(f"pad_features: cannot pad {label}={size} down to {want}")
        target[label] = want
    out = {name: _pad(name, array, FEATURE_AXES[name], target) for name, array in features.items()}
    optional = {k: v for k, v in OPTIONAL_MASKS.items() if set(v) <= present}
    for mask_name, axes in {**MASKS, **optional}.items():
        if mask_name not in out:
            real = np.ones(tuple(sizes[label] for label in axes), dtype=bool)
            out[mask_name] = _pad(mask_name, real, axes, target)
    return out


def collate(samples: Sequence[Mapping[str, np.ndarray]], *,
            token_buckets: Sequence[int] | None = DEFAULT_BUCKETS,
            atom_buckets: Sequence[int] | None = DEFAULT_BUCKETS,
            msa_buckets: Sequence[int] | None = None,
            templ_buckets: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Pad samples to common sizes and stack them: every tensor gets a leading axis B.

    Each size is the batch maximum rounded up by `bucket_size` with the given buckets;
    None uses the batch maximum as is. MSA rows and templates default to the batch
    maximum: bucketing 2 MSA rows up to 128 would multiply MSA-module work by 64.
    dtypes are preserved exactly (numpy -> torch): masks are torch.bool, `msa` stays int8
    class indices (the model one-hots it on device after `.long()`), index features stay
    int32 (cast with `.long()` where torch needs int64, e.g. `gather`).
    """
    if not samples:
        raise ValueError("collate: no samples")
    samples = fill_missing(samples)     # jobs without restraints beside jobs with them
    names = set(samples[0])
    for i, sample in enumerate(samples):
        if set(sample) != names:
            raise ValueError(f"collate: sample {i} has features {sorted(set(sample) ^ names)} "
                             f"that sample 0 has not (or the reverse)")
    sizes = [feature_sizes(sample) for sample in samples]
    buckets = {TOKEN: token_buckets, ATOM: atom_buckets, MSA: msa_buckets, TEMPL: templ_buckets}
    target: dict[str, int] = {}
    for label, label_buckets in buckets.items():
        largest = max(size.get(label, 0) for size in sizes)
        target[label] = largest if label_buckets is None else bucket_size(largest, label_buckets)
    for label in (BOND, COPY, PERM):
        target[label] = max(size.get(label, 0) for size in sizes)
    padded = [pad_features(sample, n_token=target[TOKEN], n_atom=target[ATOM],
                           n_msa=target[MSA], n_templ=target[TEMPL], target_sizes=target)
              for sample in samples]
    return {name: torch.from_numpy(np.stack([sample[name] for sample in padded]))
            for name in padded[0]}
