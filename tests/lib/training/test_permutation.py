"""SI 4.2 permutation alignment on real complexes: swapped chain copies and swapped
symmetric atoms in a prediction rename the ground truth to match; linked chains keep
their names; an already matching prediction leaves the truth untouched."""

from __future__ import annotations

import functools

import torch

from foldray.features.batch import collate
from foldray.features.pipeline import featurize_job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.model.losses import weighted_rigid_align
from foldray.training import training_sample
from foldray.training.permutation import permute_ground_truth
from tests.data_paths import STRUCTURES
from tests.model_helpers import random_rotation


@functools.cache
def _featurized(name: str):
    path = STRUCTURES / f"{name}.cif"
    return featurize_job(job_from_structure_file(path.read_text(), source=str(path)), max_tokens=None)


@functools.cache
def _batch(name: str) -> dict[str, torch.Tensor]:
    return collate([training_sample(_featurized(name))], token_buckets=None, atom_buckets=None)


def _chain_index(name: str) -> dict[str, int]:
    """Chain id -> index in the tokenized structure (asym_id - 1)."""
    return {chain.chain_id: i for i, chain in enumerate(_featurized(name).tokens.chains)}


def _moved(x: torch.Tensor, seed: int) -> torch.Tensor:
    return x @ random_rotation(seed).T + torch.tensor([12.0, -7.0, 30.0])


def _chain_atoms(batch, chain_index: int) -> torch.Tensor:
    asym = batch["asym_id"][0][batch["atom_to_token"][0].long()]
    return asym == chain_index + 1


def _slot_coords(batch, swap: dict[int, int]) -> torch.Tensor:
    """The truth with chosen chains taking another copy slot (a renamed prediction)."""
    atom_token = batch["atom_to_token"][0].long()
    slot = batch["copy_self"][0].long()[atom_token].clone()
    asym = batch["asym_id"][0][atom_token]
    for chain, new_slot in swap.items():
        slot[asym == chain + 1] = new_slot
    atoms = torch.arange(slot.shape[0])
    return batch["gt_copy_coords"][0, slot, atoms], batch["gt_copy_mask"][0, slot, atoms]


def _rmsd_after_alignment(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    aligned = weighted_rigid_align(x.double(), y.double(), mask.double())
    return float((((aligned - y.double()) ** 2).sum(-1)[mask].mean()).sqrt())


def test_a_prediction_with_the_truths_naming_keeps_the_truth():
    batch = _batch("2rtg")
    pred = _moved(batch["gt_coords"], seed=1)
    gt, mask = permute_ground_truth(pred, batch)
    torch.testing.assert_close(gt, batch["gt_coords"], rtol=0, atol=0)
    assert torch.equal(mask, batch["gt_mask"] & batch["atom_mask"])


def test_swapped_homodimer_chains_and_ligand_copies_are_renamed():
    batch = _batch("2rtg")                       # streptavidin A/B, biotin x2
    copies = batch["copy_allowed"][0].sum(-1)
    chains = sorted({int(a) - 1 for a, n in zip(batch["asym_id"][0], copies, strict=True) if n == 2})
    assert len(chains) >= 4                      # two protein and two biotin copies at least
    own = batch["copy_self"][0]
    first_token = {c: int(torch.nonzero(batch["asym_id"][0] == c + 1)[0]) for c in chains}
    swap = {c: 1 - int(own[first_token[c]]) for c in chains}
    x_swapped, m_swapped = _slot_coords(batch, swap)
    pred = _moved(x_swapped, seed=2)
    # the crystal dimer is nearly, not exactly, two-fold symmetric: the old naming fits worse
    both = batch["gt_mask"][0] & m_swapped
    assert _rmsd_after_alignment(batch["gt_coords"][0], pred, both) > 0.5
    gt, mask = permute_ground_truth(pred[None], batch)
    torch.testing.assert_close(gt[0][mask[0]], x_swapped[mask[0]])
    assert _rmsd_after_alignment(gt[0], pred, mask[0]) < 1e-3


def test_symmetric_atoms_follow_the_prediction():
    batch = _batch("1l2y")
    offsets = batch["atom_perm_offset"][0]
    assert offsets.shape[0] >= 2
    n_atom = offsets.shape[1]
    renamed = torch.arange(n_atom) + offsets[1].long()          # row 1: every residue's swap
    x = batch["gt_coords"][0][renamed]
    pred = _moved(x, seed=3)[None]
    moved_atoms = renamed != torch.arange(n_atom)
    assert moved_atoms.sum() >= 6
    gt, mask = permute_ground_truth(pred, batch)
    torch.testing.assert_close(gt[0][mask[0]], x[mask[0]])
    assert not torch.equal(gt[0], batch["gt_coords"][0])


def test_chains_linked_to_glycans_keep_their_names_while_free_copies_swap():
    batch = _batch("1igy")       # light chains A/C free; heavy chains B/D carry glycans E/F
    ids = _chain_index("1igy")
    own = batch["copy_self"][0]
    first = {c: int(torch.nonzero(batch["asym_id"][0] == ids[c] + 1)[0]) for c in "AC"}
    swap = {ids[c]: 1 - int(own[first[c]]) for c in "AC"}
    x_swapped, _ = _slot_coords(batch, swap)
    gt, mask = permute_ground_truth(_moved(x_swapped, seed=4)[None], batch)
    torch.testing.assert_close(gt[0][mask[0]], x_swapped[mask[0]])
    for chain in "BDEF":
        atoms = _chain_atoms(batch, ids[chain])
        torch.testing.assert_close(gt[0][atoms & mask[0]], batch["gt_coords"][0][atoms & mask[0]])


def test_a_swapped_chain_takes_the_resolved_atoms_of_the_copy_it_now_names():
    batch = _batch("2rtg")      # the two streptavidin copies resolve different residues
    own = batch["copy_self"][0]
    ids = _chain_index("2rtg")
    first = {c: int(torch.nonzero(batch["asym_id"][0] == ids[c] + 1)[0]) for c in "AB"}
    swap = {ids[c]: 1 - int(own[first[c]]) for c in "AB"}
    x_swapped, m_swapped = _slot_coords(batch, swap)
    assert not torch.equal(m_swapped, batch["gt_mask"][0])
    gt, mask = permute_ground_truth(_moved(x_swapped, seed=5)[None], batch)
    a = _chain_atoms(batch, ids["A"])
    assert torch.equal(mask[0][a], m_swapped[a])
