"""Experimental coordinates laid out like the model's atoms (training targets, SI 2.1/4).

Atoms the experiment did not resolve get mask False and coordinates 0. Bonds longer than
2.4 Å in the experimental structure are dropped from token_bonds in training (Table 5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.job import GroundTruth

MAX_BOND_LENGTH = 2.4


@dataclass(frozen=True, kw_only=True, slots=True)
class AtomTargets:
    """Ground truth aligned to TokenizedStructure atoms."""

    coords: np.ndarray      # [N_atom, 3] float32
    mask: np.ndarray        # [N_atom] bool, resolved in the experiment

    def token_resolved(self, tokens: TokenizedStructure) -> np.ndarray:
        """[N_token] bool: the token centre atom was resolved (used by cropping)."""
        return self.mask[tokens.centre_atom]

    def select_atoms(self, atom_indices: np.ndarray) -> AtomTargets:
        return AtomTargets(coords=self.coords[atom_indices], mask=self.mask[atom_indices])


def align_ground_truth(tokens: TokenizedStructure, truth: GroundTruth) -> AtomTargets:
    """Look every model atom up by (chain id, residue number, atom name)."""
    chain_ids = np.array([c.chain_id for c in tokens.chains])[tokens.atom_chain]
    coords = np.zeros((tokens.n_atoms, 3), np.float32)
    mask = np.zeros(tokens.n_atoms, bool)
    table = truth.coords
    for i, key in enumerate(zip(chain_ids.tolist(), tokens.atom_residue.tolist(),
                                tokens.atom_name.tolist(), strict=True)):
        xyz = table.get(key)
        if xyz is not None:
            coords[i] = xyz
            mask[i] = True
    return AtomTargets(coords=coords, mask=mask)


def drop_long_bonds(tokens: TokenizedStructure, targets: AtomTargets,
                    max_length: float = MAX_BOND_LENGTH) -> TokenizedStructure:
    """Training only: bonds the experiment shows longer than 2.4 Å do not enter token_bonds."""
    if not len(tokens.bonds):
        return tokens
    i, j = tokens.bonds[:, 0], tokens.bonds[:, 1]
    resolved = targets.mask[i] & targets.mask[j]
    length = np.linalg.norm(targets.coords[i] - targets.coords[j], axis=-1)
    keep = ~resolved | (length <= max_length)
    return replace(tokens, bonds=tokens.bonds[keep])
