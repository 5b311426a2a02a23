"""Predicted-structure mmCIF (io/mmcif.py): real inputs written, read back with gemmi and
biotite, and compared atom by atom with what was written."""

import io

import biotite.structure.io.pdbx as pdbx
import gemmi
import numpy as np
import pytest

from foldray.features.pipeline import featurize_job
from foldray.features.tokenize import TokenizedStructure, tokenize
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.job import Job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.io.mmcif import residue_starts, structure_to_mmcif
from tests.data_paths import INPUTS, STRUCTURES

# protein + heme; DNA with 5IU + protein homodimer; RNA with GTP/CCC + ligands + ions;
# protein + 3-residue glycan with bonds; protein + SMILES ligand
INPUT_NAMES = ["102m", "2q2k", "4gxy", "1qgi", "tiny_protein_ligand_smiles"]
POLYMER_TYPES = {"protein": gemmi.PolymerType.PeptideL, "dna": gemmi.PolymerType.Dna,
                 "rna": gemmi.PolymerType.Rna}


def load_job(name: str) -> Job:
    path = INPUTS / f"{name}.json"
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    return job


def fake_prediction(tokens: TokenizedStructure, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference conformers moved apart per residue, and pLDDTs spanning 0-100."""
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-40, 40, size=(tokens.atom_space_uid.max() + 1, 3))
    coords = tokens.atom_ref_pos.astype(np.float64) + offsets[tokens.atom_space_uid]
    plddt = rng.uniform(0, 100, size=tokens.n_atoms)
    plddt[:2] = [0.0, 100.0]
    return coords, plddt


def read_gemmi(text: str) -> gemmi.Structure:
    return gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())


def read_biotite(text: str):
    cif = pdbx.CIFFile.read(io.StringIO(text))
    return pdbx.get_structure(cif, model=1, extra_fields=["b_factor", "occupancy", "charge"])


def check_gemmi(text: str, tokens: TokenizedStructure, coords: np.ndarray, plddt: np.ndarray):
    st = read_gemmi(text)
    model = st[0]
    assert [chain.name for chain in model] == [c.chain_id for c in tokens.chains]
    starts = residue_starts(tokens)
    atoms = [(chain, residue, atom) for chain in model for residue in chain for atom in residue]
    assert len(atoms) == tokens.n_atoms
    residues = [(chain.name, residue) for chain in model for residue in chain]
    assert len(residues) == len(starts) - 1
    chain_ids = [c.chain_id for c in tokens.chains]
    for k, (chain_id, residue) in enumerate(residues):
        first = starts[k]
        assert chain_id == chain_ids[tokens.atom_chain[first]]
        assert residue.name == tokens.atom_res_name[first]
        assert residue.seqid.num == tokens.atom_residue[first]
        assert residue.subchain == chain_id
        is_ligand = tokens.chains[tokens.atom_chain[first]].mol_type == "ligand"
        assert residue.label_seq == (None if is_ligand else int(tokens.atom_residue[first]))
    names = [atom.name for _, _, atom in atoms]
    assert names == tokens.atom_name.tolist()
    assert [atom.element.atomic_number for _, _, atom in atoms] == tokens.atom_element.tolist()
    xyz = np.array([atom.pos.tolist() for _, _, atom in atoms])
    np.testing.assert_allclose(xyz, coords, atol=1e-3)
    b = np.array([atom.b_iso for _, _, atom in atoms])
    np.testing.assert_allclose(b, plddt, atol=0.005 + 1e-6)
    assert all(atom.occ == 1.0 for _, _, atom in atoms)
    # entities: full sequences and polymer types, copies share one entity
    by_id = {e.name: e for e in st.entities}
    for chain in tokens.chains:
        entity = by_id[str(chain.entity_id)]
        assert chain.chain_id in list(entity.subchains)
        if chain.mol_type == "ligand":
            assert entity.entity_type in (gemmi.EntityType.NonPolymer, gemmi.EntityType.Branched)
        else:
            assert entity.entity_type == gemmi.EntityType.Polymer
            assert entity.polymer_type == POLYMER_TYPES[chain.mol_type]
            assert list(entity.full_sequence) == list(chain.residue_names)
    return st


def check_biotite(text: str, tokens: TokenizedStructure, coords: np.ndarray, plddt: np.ndarray):
    atoms = read_biotite(text)
    chain_ids = np.array([c.chain_id for c in tokens.chains])
    assert len(atoms) == tokens.n_atoms
    assert atoms.chain_id.tolist() == chain_ids[tokens.atom_chain].tolist()
    assert atoms.res_id.tolist() == tokens.atom_residue.tolist()
    assert atoms.res_name.tolist() == tokens.atom_res_name.tolist()
    assert atoms.atom_name.tolist() == tokens.atom_name.tolist()
    elements = [gemmi.Element(int(z)).name.upper() for z in tokens.atom_element]
    assert atoms.element.tolist() == elements
    np.testing.assert_allclose(atoms.coord, coords, atol=1e-3)
    np.testing.assert_allclose(atoms.b_factor, plddt, atol=0.005 + 1e-6)
    np.testing.assert_array_equal(atoms.occupancy, 1.0)
    np.testing.assert_array_equal(atoms.charge, np.rint(tokens.atom_charge))


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_input_round_trip_gemmi_and_biotite(name):
    job = load_job(name)
    tokens = tokenize(job)
    coords, plddt = fake_prediction(tokens)
    text = structure_to_mmcif(tokens, job, coords, plddt, name=job.safe_name)
    st = check_gemmi(text, tokens, coords, plddt)
    check_biotite(text, tokens, coords, plddt)
    assert st.name == job.safe_name
    block = gemmi.cif.read_string(text).sole_block()
    assert block.name == job.safe_name
    assert gemmi.cif.as_string(block.find_value("_entry.id")) == job.safe_name
    assert len(st.connections) == len(job.bonded_atom_pairs)


def test_metadata_declares_plddt():
    job = load_job("1qgi")
    tokens = tokenize(job)
    coords, plddt = fake_prediction(tokens)
    text = structure_to_mmcif(tokens, job, coords, plddt, name="my_job", model_version="test 9")
    block = gemmi.cif.read_string(text).sole_block()
    assert block.name == "my_job"
    assert block.find_value("_software.name") == "foldray"
    assert gemmi.cif.as_string(block.find_value("_software.version")) == "test 9"
    assert list(block.find_values("_ma_qa_metric.name")) == ["pLDDT", "pLDDT"]
    assert list(block.find_values("_ma_qa_metric.mode")) == ["global", "local"]
    global_plddt = float(block.find_value("_ma_qa_metric_global.metric_value"))
    assert global_plddt == pytest.approx(np.round(plddt, 2).mean(), abs=0.006)
    local = block.find("_ma_qa_metric_local.", ["label_asym_id", "label_seq_id", "metric_value"])
    assert len(local) == len(residue_starts(tokens)) - 1
    first = local[0]
    lo, hi = residue_starts(tokens)[:2]
    assert float(first[2]) == pytest.approx(np.round(plddt[lo:hi], 2).mean(), abs=0.006)
    assert local[len(local) - 1][1] == "."    # ligand residue: no label_seq_id
    # the glycan's declared bonds are covalent struct_conn rows
    conn = block.find("_struct_conn.", ["conn_type_id", "ptnr1_label_atom_id",
                                        "ptnr2_label_atom_id"])
    assert [(r[0], r[1], r[2]) for r in conn] == [("covale", "O4", "C1"), ("covale", "O4", "C1")]


@pytest.mark.parametrize("pdb_id", ["1qgi", "2q2k"])
def test_ground_truth_coordinates(pdb_id):
    """Experimental coordinates (unresolved atoms at 0) through the writer and back."""
    path = STRUCTURES / f"{pdb_id}.cif"
    job = job_from_structure_file(path.read_text(), source=str(path))
    featurized = featurize_job(job)
    tokens, targets = featurized.tokens, featurized.targets
    plddt = np.where(targets.mask, 90.0, 10.0)
    text = structure_to_mmcif(tokens, job, targets.coords, plddt, name=job.safe_name)
    check_gemmi(text, tokens, targets.coords, plddt)
    check_biotite(text, tokens, targets.coords, plddt)


def test_padded_arrays_are_sliced_and_bad_shapes_refused():
    job = load_job("tiny_protein_ligand_smiles")
    tokens = tokenize(job)
    coords, plddt = fake_prediction(tokens)
    padded_coords = np.concatenate([coords, np.full((7, 3), 1e6)])
    padded_plddt = np.concatenate([plddt, np.zeros(7)])
    text = structure_to_mmcif(tokens, job, padded_coords, padded_plddt, name="x")
    assert text == structure_to_mmcif(tokens, job, coords, plddt, name="x")
    with pytest.raises(ValueError, match="coords"):
        structure_to_mmcif(tokens, job, coords[:-1], plddt, name="x")
    with pytest.raises(ValueError, match="b_factors"):
        structure_to_mmcif(tokens, job, coords, plddt[:-1], name="x")
    bad = coords.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="atom 5"):
        structure_to_mmcif(tokens, job, bad, plddt, name="x")
