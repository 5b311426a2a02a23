"""Training targets of one featurized structure: ground truth plus what the losses need
to match it fairly (SI 4.1-4.3).

Beyond the coordinates (gt_coords, gt_mask) a training sample carries:
- gt_resolution []: the experiment's resolution in Å (0 when unknown, e.g. NMR); the
  confidence losses only train on 0.1-4 Å structures (SI 4.3).
- gt_bonds [N_bond, 2]: atom pairs of bonds between a bonded ligand and its parent
  polymer chain, the set B of the bond loss (SI eq. 5).
- Chain copies for the chain permutation of SI 4.2: identical chains (same entity_id)
  can be named either way, so for every atom the truth of the same residue and atom name
  in each copy of its entity is stored: gt_copy_coords [N_copy, N_atom, 3] and
  gt_copy_mask [N_copy, N_atom], copy slot k being the k-th chain of that entity in the
  full structure (chains outside the crop included). copy_self [N_token] is the slot of
  the token's own chain, copy_allowed [N_token, N_copy] the slots it may take. Chains with
  a covalent link to another chain (glycans and their proteins, bonded ligands) keep their
  own naming: SI 4.2 permutes them together with their partner, which this leaves for later.
- atom_perm_offset [N_perm, N_atom]: atom-naming symmetries (foldray.features.symmetry),
  stored as offsets so that padding with 0 is the identity.
"""

from __future__ import annotations

import numpy as np

from foldray.features.pipeline import FeaturizedJob
from foldray.features.symmetry import atom_permutations
from foldray.features.tokenize import entity_keys

MAX_COPIES = 24   # copy slots per entity: its chains in the crop, then others in file order


def polymer_ligand_bonds(featurized: FeaturizedJob) -> np.ndarray:
    """[N_bond, 2] int32 atom pairs where one atom is in a ligand chain and the other in a
    polymer chain (SI eq. 5's bonded ligand - parent chain bonds)."""
    tokens = featurized.tokens
    if not len(tokens.bonds):
        return np.zeros((0, 2), np.int32)
    is_ligand = np.array([c.mol_type == "ligand" for c in tokens.chains])[tokens.atom_chain]
    a, b = tokens.bonds[:, 0], tokens.bonds[:, 1]
    keep = is_ligand[a] != is_ligand[b]
    return tokens.bonds[keep].astype(np.int32).reshape(-1, 2)


def _linked_chains(featurized: FeaturizedJob) -> set[str]:
    """Chain ids with a covalent bond to another chain (bondedAtomPairs across chains)."""
    linked = set()
    for left, right in featurized.job.bonded_atom_pairs:
        if left.chain_id != right.chain_id:
            linked.update((left.chain_id, right.chain_id))
    return linked


def chain_copies(featurized: FeaturizedJob) -> dict[str, np.ndarray]:
    """gt_copy_coords, gt_copy_mask, copy_self and copy_allowed (see the module doc)."""
    job, tokens, truth = featurized.job, featurized.tokens, featurized.job.ground_truth
    if truth is None:
        raise ValueError(f"chain_copies: job {job.name!r} has no ground truth")
    keys = entity_keys(job.entities)
    copies: dict[int, list[str]] = {}
    for entity, key in zip(job.entities, keys, strict=True):
        copies.setdefault(key, []).extend(entity.ids)
    linked = _linked_chains(featurized)
    # one slot order per entity (so slot k names the same chain for every copy): the
    # entity's chains in the crop first, then its other chains, up to MAX_COPIES
    in_crop = [c.chain_id for c in tokens.chains]
    order_of: dict[int, list[str]] = {}
    for key, ids in copies.items():
        inside = [c for c in ids if c in in_crop]
        order_of[key] = inside + [c for c in ids if c not in inside][:max(0, MAX_COPIES - len(inside))]
    n_copy = max(len(order_of[c.entity_id]) for c in tokens.chains)

    n_atom, n_token = tokens.n_atoms, tokens.n_tokens
    coords = np.zeros((n_copy, n_atom, 3), np.float32)
    mask = np.zeros((n_copy, n_atom), bool)
    copy_self = np.zeros(n_token, np.int32)
    allowed = np.zeros((n_token, n_copy), bool)
    names, residues = tokens.atom_name.tolist(), tokens.atom_residue.tolist()
    for chain_index, chain in enumerate(tokens.chains):
        order = order_of[chain.entity_id]
        atoms = np.flatnonzero(tokens.atom_chain == chain_index)
        for slot, copy_id in enumerate(order):
            for i in atoms.tolist():
                xyz = truth.coords.get((copy_id, residues[i], names[i]))
                if xyz is not None:
                    coords[slot, i] = xyz
                    mask[slot, i] = True
        own = order.index(chain.chain_id)
        chain_tokens = np.arange(chain.token_start, chain.token_end)
        copy_self[chain_tokens] = own
        if chain.chain_id in linked:
            allowed[chain_tokens, own] = True
        else:
            free = [k for k, c in enumerate(order) if c not in linked]
            allowed[np.ix_(chain_tokens, free)] = True
    return {"gt_copy_coords": coords, "gt_copy_mask": mask, "copy_self": copy_self,
            "copy_allowed": allowed}


def training_targets(featurized: FeaturizedJob) -> dict[str, np.ndarray]:
    """Every target array of one training sample (module doc), numpy, unpadded."""
    targets, job = featurized.targets, featurized.job
    if targets is None or job.ground_truth is None:
        raise ValueError(f"training_targets: job {job.name!r} has no ground truth "
                         f"(featurize a structure file, e.g. job_from_structure_file)")
    resolution = job.ground_truth.resolution
    perms = atom_permutations(job, featurized.tokens)
    return {
        "gt_coords": np.asarray(targets.coords, np.float32),
        "gt_mask": np.asarray(targets.mask, bool),
        "gt_resolution": np.asarray(resolution or 0.0, np.float32),
        "gt_bonds": polymer_ligand_bonds(featurized),
        **chain_copies(featurized),
        "atom_perm_offset": (perms - np.arange(featurized.tokens.n_atoms)).astype(np.int32),
    }


__all__ = ["MAX_COPIES", "chain_copies", "polymer_ligand_bonds", "training_targets"]
