"""Table 5 features of real inputs: names, shapes, dtypes, encodings, MSA wiring, crops."""

import numpy as np
import pytest

from foldray.features.featurize import atom_name_chars, one_hot_msa
from foldray.features.pipeline import CropSettings, featurize_job
from foldray.inputs.a3m import parse_a3m
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.residues import GAP
from tests.data_paths import INPUTS, MSAS, STRUCTURES


def load(name):
    path = INPUTS / name
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    return job


def table5_shapes(n_token, n_atom, n_msa):
    return {
        "residue_index": ((n_token,), np.int32), "token_index": ((n_token,), np.int32),
        "asym_id": ((n_token,), np.int32), "entity_id": ((n_token,), np.int32),
        "sym_id": ((n_token,), np.int32), "restype": ((n_token, 32), np.float32),
        "is_protein": ((n_token,), np.float32), "is_rna": ((n_token,), np.float32),
        "is_dna": ((n_token,), np.float32), "is_ligand": ((n_token,), np.float32),
        "ref_pos": ((n_atom, 3), np.float32), "ref_mask": ((n_atom,), np.float32),
        "ref_element": ((n_atom, 128), np.float32), "ref_charge": ((n_atom,), np.float32),
        "ref_atom_name_chars": ((n_atom, 4, 64), np.float32),
        "ref_space_uid": ((n_atom,), np.int32),
        "msa": ((n_msa, n_token), np.int8), "has_deletion": ((n_msa, n_token), np.float32),
        "deletion_value": ((n_msa, n_token), np.float32), "profile": ((n_token, 32), np.float32),
        "deletion_mean": ((n_token,), np.float32),
        "template_restype": ((0, n_token), np.int8),
        "template_pseudo_beta_mask": ((0, n_token), np.float32),
        "template_backbone_frame_mask": ((0, n_token), np.float32),
        "template_distogram": ((0, n_token, n_token, 39), np.float32),
        "template_unit_vector": ((0, n_token, n_token, 3), np.float32),
        "token_bonds": ((n_token, n_token), np.float32),
        "atom_to_token": ((n_atom,), np.int32),
    }


@pytest.mark.parametrize("name", ["102m.json", "2q2k.json", "1qgi.json", "4gxy.json",
                                  "tiny_protein_ligand_smiles.json"])
def test_table5_shapes_and_dtypes(name):
    featurized = featurize_job(load(name))
    f = featurized.features
    n_token, n_atom = featurized.tokens.n_tokens, featurized.tokens.n_atoms
    n_msa = f["msa"].shape[0]
    for key, (shape, dtype) in table5_shapes(n_token, n_atom, n_msa).items():
        assert f[key].shape == shape, key
        assert f[key].dtype == dtype, key
    assert np.allclose(f["restype"].sum(-1), 1) and np.allclose(f["ref_element"].sum(-1), 1)
    assert np.allclose(f["profile"].sum(-1), 1, atol=1e-5)
    mol_masks = f["is_protein"] + f["is_rna"] + f["is_dna"] + f["is_ligand"]
    assert np.all(mol_masks == 1)


def test_reference_features_encode_atoms():
    featurized = featurize_job(load("102m.json"))
    f, tokens = featurized.features, featurized.tokens
    fe = np.flatnonzero(tokens.atom_element == 26)
    assert len(fe) == 1 and f["ref_element"][fe[0], 26] == 1
    # ord(c) - 32, padded to 4 with spaces (class 0)
    chars = f["ref_atom_name_chars"][fe[0]].argmax(-1)
    assert chars.tolist() == [ord("F") - 32, ord("E") - 32, 0, 0]
    assert atom_name_chars(np.array(["C1'"]))[0].argmax(-1).tolist() == [35, 17, 7, 0]
    # ref_space_uid counts (chain, residue) pairs in order of first appearance
    uid = f["ref_space_uid"]
    assert uid[0] == 0 and np.all(np.diff(uid) >= 0) and uid.max() == 154  # 154 residues + heme
    # each conformer keeps its internal geometry under the random rotation + translation
    ca_n = tokens.atom_name == "N"
    first_res = tokens.atom_space_uid == 0
    a, b = np.flatnonzero(first_res & ca_n)[0], np.flatnonzero(first_res & (tokens.atom_name == "CA"))[0]
    assert np.isclose(np.linalg.norm(f["ref_pos"][a] - f["ref_pos"][b]),
                      np.linalg.norm(tokens.atom_ref_pos[a] - tokens.atom_ref_pos[b]), atol=1e-4)
    assert not np.allclose(f["ref_pos"][a], tokens.atom_ref_pos[a])


def test_featurization_is_deterministic_per_seed():
    job = load("tiny_protein_ligand_smiles.json")
    a, b, c = (featurize_job(job, seed=s).features for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["ref_pos"], c["ref_pos"])


def test_msa_features_follow_the_a3m_and_cover_ligand_tokens():
    featurized = featurize_job(load("102m.json"))
    f, tokens = featurized.features, featurized.tokens
    a3m = parse_a3m((MSAS / "102m_A.a3m").read_text(), "protein")
    protein = tokens.mol_type == 0
    # row 0 is the query; the MSA holds the unpaired rows (single protein chain: no pairing)
    assert np.array_equal(f["msa"][0, protein], a3m.rows[0])
    assert f["msa"].shape[0] >= a3m.rows.shape[0] - 1
    # ligand columns are gap in every row, the query row included, as AF3 writes them
    ligand = tokens.mol_type == 3
    assert np.all(f["msa"][:, ligand] == GAP)
    assert np.all(f["profile"][ligand, GAP] == 1.0)
    # (row 1 repeats the query, as AF3 does when nothing is paired)
    assert np.array_equal(f["msa"][1, protein], a3m.rows[0])
    assert one_hot_msa(f["msa"][:2]).shape == (2, tokens.n_tokens, 32)
    # deletions: has_deletion and deletion_value agree
    assert np.array_equal(f["has_deletion"] > 0, f["deletion_value"] > 0)


def test_single_sequence_features_without_msa():
    f = featurize_job(load("tiny_protein_dna.json")).features
    assert f["msa"].shape[0] <= 2
    assert np.all(f["msa"] == f["restype"].argmax(-1)[None])
    assert np.array_equal(f["profile"], f["restype"])
    assert np.all(f["deletion_mean"] == 0)


def test_token_bonds_cover_polymer_ligand_and_ligand_ligand_only():
    featurized = featurize_job(load("1qgi.json"))
    f, tokens = featurized.features, featurized.tokens
    bonded = np.argwhere(f["token_bonds"] > 0)
    assert len(bonded) > 0 and np.array_equal(f["token_bonds"], f["token_bonds"].T)
    # every bonded pair has a ligand token on at least one side
    assert np.all((tokens.mol_type[bonded] == 3).any(axis=1))


def test_crop_of_a_structure_keeps_features_and_targets_aligned():
    path = STRUCTURES / "1f2n.cif"
    job = job_from_structure_file(path.read_text(), source=str(path))
    full = featurize_job(job)
    assert full.targets is not None and full.targets.mask.sum() > 0.8 * full.tokens.n_atoms
    for seed in range(3):
        cropped = featurize_job(job, seed=seed, crop=CropSettings(size=128))
        assert cropped.crop_strategy in ("contiguous", "spatial", "spatial_interface")
        assert cropped.n_tokens <= 128
        assert cropped.targets.coords.shape == (cropped.tokens.n_atoms, 3)
        assert cropped.features["msa"].shape[1] == cropped.n_tokens
        # the cropped targets are the full targets of the same atoms
        lookup = full.tokens.atom_lookup()
        chain_ids = [c.chain_id for c in cropped.tokens.chains]
        for i in range(0, cropped.tokens.n_atoms, 17):
            key = (chain_ids[cropped.tokens.atom_chain[i]], int(cropped.tokens.atom_residue[i]),
                   str(cropped.tokens.atom_name[i]))
            assert np.array_equal(cropped.targets.coords[i], full.targets.coords[lookup[key]])
