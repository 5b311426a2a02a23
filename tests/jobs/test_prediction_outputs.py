"""The extra outputs of `foldray predict` on real tiny-config predictions: PDB beside or
instead of mmCIF, ligand SDF (RDKit reads back the input's bond orders and charges with the
model's coordinates and pLDDT), PDE in the confidences, trunk embeddings and distogram."""

from __future__ import annotations

import json

import gemmi
import numpy as np
import pytest
from rdkit import Chem

from foldray.chem.ccd import get_component
from foldray.io.load_prediction import load_prediction
from foldray.jobs.cli import main
from tests.data_paths import INPUTS

FAST = ["--samples", "2", "--steps", "2", "--recycles", "1", "--quiet"]
NAME = "tiny_protein_ligand_smiles"


@pytest.fixture(scope="module")
def every_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    assert main(["predict", str(INPUTS / f"{NAME}.json"), "--out", str(out), *FAST,
                 "--output-format", "both", "--save-pde", "--save-embeddings",
                 "--save-distogram", "--save-ligand-sdf"]) == 0
    return out / NAME


def _ligand_atoms(cif_path) -> tuple[np.ndarray, np.ndarray]:
    st = gemmi.read_structure(str(cif_path))
    atoms = [a for r in st[0]["B"] for a in r]
    return np.array([a.pos.tolist() for a in atoms]), np.array([a.b_iso for a in atoms])


def test_pdb_beside_mmcif_holds_the_same_atoms(every_output):
    for prefix in (every_output / NAME, every_output / "seed-1_sample-1" / f"{NAME}_seed-1_sample-1"):
        cif = gemmi.read_structure(f"{prefix}_model.cif")
        pdb = gemmi.read_structure(f"{prefix}_model.pdb")
        assert pdb[0].count_atom_sites() == cif[0].count_atom_sites() == 169
        assert [r.name for r in pdb[0]["B"]] == ["UNL"]           # LIG_B does not fit PDB
        assert np.allclose([a.pos.tolist() for a in pdb[0]["A"][0]],
                           [a.pos.tolist() for a in cif[0]["A"][0]], atol=1e-3)


def test_ligand_sdf_has_the_inputs_chemistry_and_the_models_pose(every_output):
    smiles = json.loads((INPUTS / f"{NAME}.json").read_text())["sequences"][1]["ligand"]["smiles"]
    for prefix in (every_output / NAME, every_output / "seed-1_sample-0" / f"{NAME}_seed-1_sample-0"):
        (mol,) = list(Chem.SDMolSupplier(f"{prefix}_ligands.sdf"))
        expected = Chem.MolFromSmiles(smiles)
        assert Chem.MolToSmiles(mol, isomericSmiles=False) == \
            Chem.MolToSmiles(expected, isomericSmiles=False)          # bond orders, charges
        xyz, plddt = _ligand_atoms(f"{prefix}_model.cif")
        assert np.allclose(mol.GetConformer().GetPositions(), xyz, atol=1e-3)
        assert mol.GetProp("chain_id") == "B"
        assert float(mol.GetProp("plddt")) == pytest.approx(plddt.mean(), abs=0.01)
        assert [float(v) for v in mol.GetProp("atom_plddts").split()] == pytest.approx(plddt, abs=0.01)


def test_pde_embeddings_and_distogram(every_output):
    full = json.loads((every_output / f"{NAME}_confidences.json").read_text())
    pde = np.array(full["pde"])
    assert pde.shape == (35, 35) and (pde >= 0).all() and (pde <= 32).all()
    embeddings = np.load(every_output / "seed-1_embeddings" / f"{NAME}_seed-1_embeddings.npz")
    assert embeddings["single_embeddings"].shape[0] == 35
    assert embeddings["pair_embeddings"].shape[:2] == (35, 35)
    assert np.isfinite(embeddings["pair_embeddings"]).all()
    distogram = np.load(every_output / "seed-1_distogram" / f"{NAME}_seed-1_distogram.npz")["distogram"]
    assert distogram.shape == (35, 35, 64)
    assert np.allclose(distogram.astype(np.float32).sum(-1), 1.0, atol=0.02)


def test_defaults_write_no_extras_and_pdb_alone_still_reports(tmp_path):
    assert main(["predict", str(INPUTS / f"{NAME}.json"), "--out", str(tmp_path / "a"), *FAST]) == 0
    folder = tmp_path / "a" / NAME
    assert "pde" not in json.loads((folder / f"{NAME}_confidences.json").read_text())
    assert not list(folder.rglob("*.pdb")) and not list(folder.rglob("*.sdf"))
    assert not list(folder.glob("seed-1_[ed]*"))                     # AF3's layout only

    assert main(["predict", str(INPUTS / f"{NAME}.json"), "--out", str(tmp_path / "b"), *FAST,
                 "--output-format", "pdb"]) == 0
    folder = tmp_path / "b" / NAME
    assert not list(folder.rglob("*.cif")) and not list(folder.rglob("*.sdf"))
    assert load_prediction(str(folder)).structure[0].count_atom_sites() == 169
    assert main(["report", str(folder)]) == 0
    assert main(["predict", str(INPUTS / f"{NAME}.json"), "--out", str(tmp_path / "b"), *FAST,
                 "--output-format", "pdb"]) == 0                      # complete: skipped


def test_a_ccd_ligand_sdf_keeps_the_ccd_bond_orders(tmp_path):
    job = {"dialect": "alphafold3", "version": 2, "name": "atp", "modelSeeds": [1],
           "sequences": [{"protein": {"id": "A", "sequence": "NLYIQWLKDGGPSSGRPPPS"}},
                         {"ligand": {"id": "B", "ccdCodes": ["ATP"]}}]}
    (tmp_path / "atp.json").write_text(json.dumps(job))
    assert main(["predict", str(tmp_path / "atp.json"), "--out", str(tmp_path), *FAST,
                 "--save-ligand-sdf"]) == 0
    (mol,) = list(Chem.SDMolSupplier(str(tmp_path / "atp" / "atp_ligands.sdf")))
    component = get_component("ATP")
    heavy = component.elements > 1
    assert mol.GetNumAtoms() == int(heavy.sum()) and mol.GetProp("_Name") == "B:1:ATP"
    doubles = sum(b.GetBondType() == Chem.BondType.DOUBLE for b in mol.GetBonds())
    aromatic = sum(b.GetIsAromatic() for b in mol.GetBonds())
    assert doubles + aromatic >= int((component.bond_orders == 2).sum()) > 0
    assert sum(a.GetFormalCharge() for a in mol.GetAtoms()) == int(component.charges[heavy].sum())
