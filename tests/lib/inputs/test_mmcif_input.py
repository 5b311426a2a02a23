"""mmCIF/PDB files as jobs with ground truth: the SI 2.1 clean-up rules on real entries."""

import gemmi
import numpy as np
import pytest

from foldray.errors import InputError
from foldray.features.ground_truth import align_ground_truth
from foldray.features.tokenize import tokenize
from foldray.inputs.job import LigandChain, PolymerChain
from foldray.inputs.mmcif_input import job_from_structure_file
from tests.data_paths import BAD_INPUTS, STRUCTURES


def load(name):
    path = STRUCTURES / name
    return job_from_structure_file(path.read_text(), source=str(path))


def test_metadata_and_chains():
    job = load("2q2k.cif")
    assert job.name == "2Q2K"
    assert job.ground_truth.resolution == pytest.approx(3.0)
    assert job.ground_truth.release_date == "2008-02-05"
    assert "X-RAY" in job.ground_truth.method
    kinds = [(e.mol_type, e.ids) for e in job.entities]
    # label_asym_ids: DNA A, protein B+C (one entity, two copies); EPE (crystallization aid) gone
    assert kinds == [("dna", ("A",)), ("protein", ("B", "C"))]
    dna = job.entities[0]
    assert [(m.ccd_code, m.position) for m in dna.modifications] == [("5IU", 7), ("5IU", 10)]
    # 5IU's parent is DU, not one of the four DNA residues: unknown DNA letter N
    assert dna.sequence[6] == "N" and dna.sequence[:6] == "AGTATA"


def test_altlocs_resolve_to_one_conformer_per_residue():
    path = STRUCTURES / "3o5r.cif"
    job = load("3o5r.cif")
    st = gemmi.read_structure(str(path))
    checked = 0
    for residue in st[0]["A"]:
        altlocs = {a.altloc for a in residue if a.altloc != "\0"}
        if len(altlocs) < 2 or residue.name == "HOH":
            continue
        occupancy = {alt: sum(a.occ for a in residue if a.altloc == alt) for alt in altlocs}
        best = max(sorted(altlocs), key=lambda alt: occupancy[alt])
        for atom in residue:
            if atom.altloc == best and atom.element.name != "H":
                key = ("A", residue.label_seq, atom.name)
                assert np.allclose(job.ground_truth.coords[key], atom.pos.tolist(), atol=1e-3)
                checked += 1
    assert checked > 20


def test_selenomethionine_becomes_methionine():
    job = load("4zey.cif")
    protein = job.entities[0]
    assert isinstance(protein, PolymerChain) and not protein.modifications
    assert protein.sequence[1] == "M"
    se = gemmi.read_structure(str(STRUCTURES / "4zey.cif"))[0]["A"]
    mse = next(r for r in se if r.name == "MSE")
    sd = job.ground_truth.coords[("A", mse.label_seq, "SD")]
    assert np.allclose(sd, mse["SE"][0].pos.tolist(), atol=1e-3)


def test_arginine_nh1_is_closer_to_cd():
    job = load("1aki.cif")
    coords = job.ground_truth.coords
    arginines = {(c, r) for (c, r, name) in coords if name == "NH1"}
    assert len(arginines) == 11
    for chain, residue in arginines:
        cd = coords[(chain, residue, "CD")]
        d1 = np.linalg.norm(coords[(chain, residue, "NH1")] - cd)
        d2 = np.linalg.norm(coords[(chain, residue, "NH2")] - cd)
        assert d1 <= d2


def test_crystallization_aids_are_dropped_and_ligands_kept():
    job = load("102m.cif")
    ligands = [e.ccd_codes for e in job.entities if isinstance(e, LigandChain)]
    assert ligands == [("HEM",)]          # SO4 (Table 9) removed from the X-ray structure


def test_glycans_become_bonded_multi_residue_ligands():
    job = load("1qgi.cif")
    glycans = [e for e in job.entities if isinstance(e, LigandChain) and len(e.ccd_codes) > 1]
    assert glycans and glycans[0].ccd_codes == ("NAG", "GCS", "GCS")
    tokens = tokenize(job)
    lookup = tokens.atom_lookup()
    for a, b in job.bonded_atom_pairs:   # every struct_conn link resolves to model atoms
        assert (a.chain_id, a.residue, a.atom_name) in lookup
        assert (b.chain_id, b.residue, b.atom_name) in lookup


def test_ground_truth_aligns_to_model_atoms():
    job = load("1k1a.cif")
    tokens = tokenize(job)
    targets = align_ground_truth(tokens, job.ground_truth)
    st = gemmi.read_structure(str(STRUCTURES / "1k1a.cif"))
    st.remove_hydrogens()
    st.remove_waters()
    modelled = {(r.label_seq, a.name) for r in st[0]["A"] for a in r}
    expected = sum((int(res), str(name)) in modelled
                   for res, name in zip(tokens.atom_residue, tokens.atom_name, strict=True))
    assert targets.mask.sum() == expected
    # 13 residues are not modelled: their tokens have no resolved centre atom
    assert (~targets.token_resolved(tokens)).sum() == 13


def test_pdb_format_input(tmp_path):
    st = gemmi.read_structure(str(STRUCTURES / "1ubq.cif"))
    path = tmp_path / "1ubq.pdb"
    st.write_pdb(str(path))
    job = job_from_structure_file(path.read_text(), source=str(path))
    cif_job = load("1ubq.cif")
    assert job.entities[0].sequence == cif_job.entities[0].sequence
    assert tokenize(job).n_tokens == tokenize(cif_job).n_tokens == 76


@pytest.mark.parametrize("name,message", [("empty_file.cif", "empty"),
                                          ("truncated_mmcif_1aki.cif", "truncated")])
def test_broken_files(name, message):
    path = BAD_INPUTS / name
    with pytest.raises(InputError, match=message) as info:
        job_from_structure_file(path.read_bytes(), source=str(path))
    assert info.value.source == str(path)
