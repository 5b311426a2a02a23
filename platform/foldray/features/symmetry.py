"""Atom-naming symmetries of chemical components (SI 4.2, last paragraph).

Ground truth names atoms that chemistry cannot tell apart (the two oxygens of a
carboxylate, the ring sides of Phe and Tyr, the four oxygens of sulfate), so a prediction
with the "other" naming is just as right. SI 4.2 generates up to 1,000 such permutations
per component with RDKit and keeps the one closest to the prediction; this module
produces them, the training step chooses (foldray.training.permutation).

The graph is the component's heavy atoms with element labels. Bond orders are kept
(Kekulé orders re-perceived as aromatic, so ring flips count), except bonds to terminal
heteroatoms, which count as single: resonance makes -COO-, -PO3, -SO3 and guanidinium
oxygens/nitrogens equivalent, and X-ray data cannot tell them apart. Chirality is
ignored, as in a plain RDKit substructure self-match.
"""

from __future__ import annotations

import functools

import numpy as np
from rdkit import Chem

from foldray.chem.ccd import parse_user_ccd
from foldray.chem.component import BOND_AROMATIC, BOND_DOUBLE, BOND_TRIPLE, Component
from foldray.features.tokenize import TokenizedStructure, entity_components
from foldray.inputs.job import Job

MAX_PERMUTATIONS = 1000   # per component, as SI 4.2
MAX_PERM_ROWS = 128       # rows kept per training sample (memory: rows x N_atom int32)

_RDKIT_BONDS = {BOND_DOUBLE: Chem.BondType.DOUBLE, BOND_TRIPLE: Chem.BondType.TRIPLE,
                BOND_AROMATIC: Chem.BondType.AROMATIC}


def _symmetry_graph(component: Component) -> Chem.Mol:
    mol = Chem.RWMol()
    for element in component.elements:
        mol.AddAtom(Chem.Atom(int(element)))
    degree = np.bincount(component.bonds.ravel(), minlength=component.n_atoms)
    for (i, j), order in zip(component.bonds.tolist(), component.bond_orders.tolist(), strict=True):
        terminal_hetero = any(degree[k] == 1 and component.elements[k] not in (1, 6) for k in (i, j))
        kind = Chem.BondType.SINGLE if terminal_hetero else _RDKIT_BONDS.get(order, Chem.BondType.SINGLE)
        mol.AddBond(i, j, kind)
    out = mol.GetMol()
    try:
        Chem.SanitizeMol(out)          # implicit hydrogens, rings, aromaticity
    except Exception:  # noqa: BLE001 - unusual valences (metals, charged N): Kekulé orders as given
        out.UpdatePropertyCache(strict=False)
        Chem.GetSymmSSSR(out)
    return out


@functools.lru_cache(maxsize=4096)
def component_automorphisms(component: Component) -> np.ndarray:
    """[P, n_atoms] int32: row p maps atom i to the atom whose truth it may take; row 0
    is the identity. At most MAX_PERMUTATIONS rows (RDKit stops there)."""
    n = component.n_atoms
    identity = np.arange(n, dtype=np.int32)[None]
    if n < 2 or not len(component.bonds):
        return identity
    mol = _symmetry_graph(component)
    matches = mol.GetSubstructMatches(mol, uniquify=False, useChirality=False,
                                      maxMatches=MAX_PERMUTATIONS)
    rows = [tuple(identity[0])] + [m for m in matches if m != tuple(identity[0])]
    return np.asarray(rows, dtype=np.int32)


def _restricted(perms: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Rows that map the kept atoms onto themselves, as permutations of positions in `kept`."""
    position = np.full(perms.shape[1], -1, np.int64)
    position[kept] = np.arange(len(kept))
    mapped = position[perms[:, kept]]                       # [P, n_kept]
    rows = mapped[(mapped >= 0).all(axis=1)]
    return np.unique(rows, axis=0) if len(rows) > 1 else rows


def atom_permutations(job: Job, tokens: TokenizedStructure,
                      max_rows: int = MAX_PERM_ROWS) -> np.ndarray:
    """[P, N_atom] int32 atom indices: row p renames every residue by its p-th symmetry
    (residues with fewer symmetries keep the identity). Row 0 is the identity; each
    residue's choice is independent (the training step picks per residue)."""
    user_ccd = parse_user_ccd(job.user_ccd, source=job.source) if job.user_ccd else None
    per_entity: dict[int, list[Component]] = {}
    residue_perms: list[tuple[np.ndarray, np.ndarray]] = []   # (atom indices, [P_r, n] positions)
    starts = np.flatnonzero(np.r_[True, np.diff(tokens.atom_space_uid) != 0])
    ends = np.r_[starts[1:], tokens.n_atoms]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        chain = tokens.chains[tokens.atom_chain[start]]
        if chain.entity_index not in per_entity:
            per_entity[chain.entity_index] = entity_components(job, chain.entity_index, user_ccd)
        component = per_entity[chain.entity_index][int(tokens.atom_residue[start]) - 1]
        perms = component_automorphisms(component)
        if len(perms) < 2:
            continue
        kept = np.array([component.index_of(str(name)) for name in tokens.atom_name[start:end]])
        rows = _restricted(perms, kept)
        if len(rows) > 1:
            identity = np.arange(len(kept))
            rows = np.concatenate([identity[None], rows[(rows != identity).any(axis=1)]])
            residue_perms.append((np.arange(start, end), rows[:max_rows]))
    n_rows = max((len(rows) for _, rows in residue_perms), default=1)
    out = np.tile(np.arange(tokens.n_atoms, dtype=np.int32), (n_rows, 1))
    for atoms, rows in residue_perms:
        out[:len(rows), atoms] = atoms[rows]
    return out
