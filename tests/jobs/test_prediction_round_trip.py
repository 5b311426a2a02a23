"""Predict -> read the written mmCIF back -> the same molecule: for every shared input that
predicts in seconds with the tiny config, the model file read as an input (validate, training
data, templates all read it this way) tokenizes to the same tokens and atoms: chains, residue
names, atom names, elements, charges, and the bonds of ligands. SMILES ligands used to come
back as the real CCD component LIG (18 atoms instead of ibuprofen's 15)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from foldray.chem.ccd import is_known_ccd
from foldray.features.tokenize import tokenize
from foldray.inputs.job import PolymerChain
from foldray.inputs.load import iter_jobs
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.jobs.cli import main
from tests.data_paths import INPUTS

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1", "--quiet"]
# Shared inputs small enough for CPU in seconds (the others are 300-1300 tokens).
QUICK = ["tiny_protein_ligand_smiles", "tiny_protein_dna", "1l2y", "1bna", "4zey", "102m",
         "1qgi"]


def _same_tokens(before, after) -> None:
    assert [(c.chain_id, c.mol_type, c.residue_names) for c in before.chains] == \
        [(c.chain_id, c.mol_type, c.residue_names) for c in after.chains]
    for field in ("atom_name", "atom_element", "atom_charge", "atom_res_name", "atom_residue",
                  "atom_chain", "atom_to_token", "restype", "mol_type", "residue_index",
                  "is_standard", "bonds"):
        assert np.array_equal(getattr(before, field), getattr(after, field)), field


@pytest.mark.parametrize("stem", QUICK)
def test_a_prediction_reads_back_as_the_same_molecule(stem, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOLDRAY_ALLOW_ANY_INPUT_PATH", "1")   # ../msas paths of the inputs
    source = INPUTS / f"{stem}.json"
    assert main(["predict", str(source), "--out", str(tmp_path), *FAST]) == 0
    (job,) = list(iter_jobs([str(source)]))
    (model,) = (tmp_path / job.safe_name).glob("*_model.cif")
    assert main(["validate", str(model)]) == 0
    assert "ok:" in capsys.readouterr().out
    back = job_from_structure_file(model.read_text(), source=str(model))
    _same_tokens(tokenize(_as_read_back(job)), tokenize(back))


def _as_read_back(job):
    """The job as any structure file reads: selenomethionine becomes methionine (SI 2.1; the
    4zey input declares MSE as modifications, the written model keeps them)."""
    entities = tuple(replace(e, modifications=tuple(m for m in e.modifications
                                                    if m.ccd_code != "MSE"))
                     if isinstance(e, PolymerChain) else e for e in job.entities)
    return replace(job, entities=entities)


def test_smiles_ligands_get_names_no_ccd_component_has(tmp_path):
    (job,) = list(iter_jobs([str(INPUTS / "tiny_protein_ligand_smiles.json")]))
    tokens = tokenize(job)
    ligand = tokens.atom_res_name[tokens.atom_chain == 1]
    assert set(ligand.tolist()) == {"LIG_B"} and not is_known_ccd("LIG_B") and is_known_ccd("LIG")
    assert len(ligand) == 15      # ibuprofen's heavy atoms
