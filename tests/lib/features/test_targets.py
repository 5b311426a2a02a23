"""Training targets (SI 4.1-4.3) and atom-naming symmetries, on real PDB entries."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from foldray.chem.ccd import get_component
from foldray.features.batch import collate
from foldray.features.pipeline import featurize_job
from foldray.features.symmetry import atom_permutations, component_automorphisms
from foldray.features.targets import training_targets
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.training import training_sample
from tests.data_paths import STRUCTURES


@functools.cache
def _featurized(name: str):
    path = STRUCTURES / f"{name}.cif"
    job = job_from_structure_file(path.read_text(), source=str(path))
    return featurize_job(job, max_tokens=None)


def _names(component, perm: np.ndarray) -> dict[str, str]:
    names = component.atom_names
    return {names[i]: names[j] for i, j in enumerate(perm) if i != j}


def test_component_symmetries_are_the_chemically_equivalent_atoms():
    phe = get_component("PHE")
    swaps = [_names(phe, row) for row in component_automorphisms(phe)]
    assert swaps[0] == {}                                   # identity first
    assert {"CD1": "CD2", "CD2": "CD1", "CE1": "CE2", "CE2": "CE1"} in swaps   # ring flip
    assert {"O": "OXT", "OXT": "O"} in swaps                # free carboxylate
    assert len(swaps) == 4
    asp = [_names(get_component("ASP"), row) for row in component_automorphisms(get_component("ASP"))]
    assert {"OD1": "OD2", "OD2": "OD1"} in asp              # resonance: bond orders ignored there
    assert len(component_automorphisms(get_component("SO4"))) == 24           # 4! oxygens
    assert len(component_automorphisms(get_component("NAG"))) == 1            # no symmetry
    for code in ("PHE", "SO4", "ATP", "HEM"):
        rows = component_automorphisms(get_component(code))
        assert (np.sort(rows, axis=1) == np.arange(rows.shape[1])).all()      # permutations
        assert len(np.unique(rows, axis=0)) == len(rows)


def test_residue_symmetries_in_a_chain_respect_the_atoms_kept():
    fj = _featurized("1l2y")                                # Trp-cage: 20 residues, no OXT inside
    tokens = fj.tokens
    perms = atom_permutations(fj.job, tokens)
    assert (perms[0] == np.arange(tokens.n_atoms)).all()
    # every row maps each residue onto itself
    assert (tokens.atom_space_uid[perms] == tokens.atom_space_uid[None]).all()
    moved = {(int(tokens.atom_residue[i]), str(tokens.atom_res_name[i]), str(tokens.atom_name[i]))
             for i in np.flatnonzero((perms != np.arange(tokens.n_atoms)).any(axis=0))}
    by_residue = {(r, n) for r, n, _ in moved}
    # Asp9 carboxylate, Tyr3 / Trp-free ring flips, the C-terminal Ser20 O/OXT
    assert (9, "ASP") in by_residue and (3, "TYR") in by_residue and (20, "SER") in by_residue
    assert {a for r, n, a in moved if r == 9} == {"OD1", "OD2"}
    assert {a for r, n, a in moved if r == 20} == {"O", "OXT"}
    assert not any(n == "GLY" for _, n in by_residue)


def test_chain_copies_hold_every_copy_of_the_entity_at_the_same_residues():
    fj = _featurized("2rtg")                                # streptavidin A/B + biotin x2
    t = training_targets(fj)
    tokens = fj.tokens
    atoms = np.arange(tokens.n_atoms)
    own = t["gt_copy_coords"][t["copy_self"][tokens.atom_to_token], atoms]
    np.testing.assert_array_equal(own, t["gt_coords"])
    chain_ids = [c.chain_id for c in tokens.chains]
    a, b = chain_ids.index("A"), chain_ids.index("B")
    lookup = tokens.atom_lookup()
    ca_a = lookup[("A", 50, "CA")]
    other_slot = 1 - t["copy_self"][tokens.atom_to_token[ca_a]]
    truth = fj.job.ground_truth.coords
    np.testing.assert_allclose(t["gt_copy_coords"][other_slot, ca_a], truth[("B", 50, "CA")])
    assert t["copy_allowed"][tokens.chains[a].token_start].tolist() == [True, True]
    assert t["copy_allowed"][tokens.chains[b].token_start].tolist() == [True, True]
    assert t["gt_resolution"] == pytest.approx(1.39, abs=1e-3)


def test_bonded_glycans_give_bond_loss_pairs_and_keep_their_naming():
    fj = _featurized("1igy")
    t = training_targets(fj)
    tokens = fj.tokens
    chain_of = [c.chain_id for c in tokens.chains]
    pairs = {(chain_of[tokens.atom_chain[i]], str(tokens.atom_name[i]),
              chain_of[tokens.atom_chain[j]], str(tokens.atom_name[j])) for i, j in t["gt_bonds"]}
    assert pairs == {("B", "ND2", "E", "C1"), ("D", "ND2", "F", "C1")}   # Asn-NAG links
    for chain in tokens.chains:
        n_allowed = int(t["copy_allowed"][chain.token_start].sum())
        # linked chains (heavy chains B/D, glycans E/F) keep their names; light chains swap
        assert n_allowed == (1 if chain.chain_id in "BDEF" else 2), chain.chain_id


def test_nmr_structures_have_no_resolution_and_targets_collate_with_padding():
    nmr = training_targets(_featurized("1l2y"))
    assert nmr["gt_resolution"] == 0.0                      # NMR: no confidence losses
    samples = [training_sample(_featurized("1l2y")), training_sample(_featurized("1igy"))]
    batch = collate(samples, token_buckets=None, atom_buckets=None)
    n_bond = batch["gt_bonds"].shape[1]
    assert batch["bond_mask"].shape == (2, n_bond) and batch["bond_mask"][0].sum() == 0
    assert int(batch["bond_mask"][1].sum()) == len(samples[1]["gt_bonds"]) >= 1
    # padded copy slots are not allowed, padded symmetry rows are the identity
    assert not batch["copy_allowed"][0, :, 1:].any()
    n_perm = batch["atom_perm_offset"].shape[1]
    assert n_perm == max(s["atom_perm_offset"].shape[0] for s in samples)
    assert (batch["atom_perm_offset"][0, len(samples[0]["atom_perm_offset"]):] == 0).all()
