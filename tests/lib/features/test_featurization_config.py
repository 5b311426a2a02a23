"""Featurization switches (foldray.features.config): AlphaFold 3's behaviour by default, each
reference's behaviour carried in its imported checkpoint and used wherever a job is featurized
for that model. Real shared inputs; parity with OpenFold3 itself is tests/lib/features/
test_feature_parity.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from foldray.chem.ccd import get_component
from foldray.features.config import FeaturizationConfig
from foldray.features.model_featurization import model_featurization
from foldray.features.pipeline import FeaturizedJob, featurize_job, parse_entity_msas
from foldray.features.tokenize import tokenize
from foldray.inputs.load import read_jobs
from foldray.io.import_weights import import_checkpoint
from foldray.io.weights import WeightsError, load_weights
from foldray.model.config import ModelConfig
from foldray.predictor import Predictor, PredictSettings
from foldray.residues import GAP, RESTYPE_INDEX
from tests.data_paths import INPUTS, REPO

OPENFOLD3 = FeaturizationConfig.openfold3()
OF3_WEIGHTS = REPO / "tests" / "fixtures" / "equivalence" / "openfold3_weights.safetensors"


def job(name: str):
    (parsed,) = read_jobs(str(INPUTS / f"{name}.json"))
    assert not isinstance(parsed, Exception), parsed
    return parsed


def featurized(name: str, featurization: FeaturizationConfig | None = None) -> FeaturizedJob:
    return featurize_job(job(name), seed=1, with_targets=False, featurization=featurization)


def test_chain_ends_keep_their_leaving_atoms_unless_openfold3():
    """AF3 keeps the C-terminal OXT and the 5' OP3 (atom_layout.get_link_drop_atoms);
    OpenFold3 drops every polymer leaving atom."""
    af3 = tokenize(job("tiny_protein_dna"))
    names = af3.atom_name.tolist()
    oxt, op3 = names.index("OXT"), names.index("OP3")
    assert af3.chains[af3.atom_chain[oxt]].mol_type == "protein" and af3.atom_residue[oxt] == 20
    assert af3.chains[af3.atom_chain[op3]].mol_type == "dna" and af3.atom_residue[op3] == 1
    assert names.count("OXT") == 1 and names.count("OP3") == sum(c.mol_type == "dna" for c in af3.chains)
    of3 = tokenize(job("tiny_protein_dna"), featurization=OPENFOLD3)
    assert not {"OXT", "OP3"} & set(of3.atom_name.tolist())
    assert af3.n_atoms - of3.n_atoms == 1 + names.count("OP3")


def test_modified_residue_restype_is_the_parent_unless_openfold3():
    """4zey's MSE: MET in AF3 (fix_non_standard_polymer_res), UNK in OpenFold3; 2q2k's 5IU
    in a DNA chain: the DNA unknown (no standard DNA parent), OpenFold3's protein UNK."""
    for name, code, parent in (("4zey", "MSE", "MET"), ("2q2k", "5IU", "DN")):
        for featurization, want in ((None, parent), (OPENFOLD3, "UNK")):
            tokens = tokenize(job(name), featurization=featurization or FeaturizationConfig())
            mod = np.unique(tokens.atom_to_token[tokens.atom_res_name == code])
            assert len(mod) > 1 and not tokens.is_standard[mod].any()
            assert set(tokens.restype[mod].tolist()) == {RESTYPE_INDEX[want]}, (name, featurization)


def test_atomized_modified_residues_put_their_bonds_in_token_bonds():
    """AF3 adds every non-standard residue's CCD bond graph to the ligand-ligand bonds
    (model/features.py RefStructure): an atomized MSE's tokens are bonded like a ligand's."""
    f = featurized("4zey")
    tokens, bonds = f.tokens, f.features["token_bonds"]
    component = get_component("MSE")
    heavy = {n for n, e in zip(component.atom_names, component.elements, strict=True) if e != 1}
    expected_pairs = sum(1 for i, j in component.bonds
                         if {component.atom_names[i], component.atom_names[j]} <= heavy - {"OXT"})
    first = int(np.flatnonzero(tokens.atom_res_name == "MSE")[0])
    residue = (tokens.atom_chain == tokens.atom_chain[first]) & \
        (tokens.atom_residue == tokens.atom_residue[first])
    mse_tokens = np.unique(tokens.atom_to_token[residue])
    block = bonds[np.ix_(mse_tokens, mse_tokens)]
    assert np.allclose(block, block.T) and int(np.triu(block, 1).sum()) == expected_pairs > 0
    # and nothing bonds a standard residue to its neighbour (polymer-polymer bonds stay out)
    standard = np.flatnonzero(tokens.is_standard)
    assert bonds[np.ix_(standard, standard)].sum() == 0


def test_msa_columns_without_an_alignment():
    """AF3: a chain without an MSA shows its query (row 0 and the unpaired block), a one-hot
    profile; ligand columns are gap everywhere with a gap profile. OpenFold3: gap, zero profile."""
    af3 = featurized("tiny_protein_ligand_smiles")
    f, tokens = af3.features, af3.tokens
    protein, ligand = tokens.mol_type == 0, tokens.mol_type == 3
    assert f["msa"].shape[0] == 2 and np.array_equal(f["msa"][0], f["msa"][1])
    assert np.array_equal(f["msa"][0, protein], tokens.restype[protein])
    assert (f["msa"][:, ligand] == GAP).all() and (f["profile"][ligand, GAP] == 1).all()
    assert np.allclose(f["profile"][protein].sum(-1), 1.0)
    of3 = featurized("tiny_protein_ligand_smiles", OPENFOLD3).features
    assert of3["msa"].shape[0] == 1 and (of3["msa"] == GAP).all() and not of3["profile"].any()


def test_protenix_fills_non_protein_msa_rows_with_their_query():
    """2q2k: DNA chain F beside protein A/B with an MSA. AF3 leaves the DNA columns gap below
    row 0 (and row 1, the unpaired query), Protenix copies row 0 into every all-gap row;
    1k6p's ligand columns are gap (AF3) or UNK in every row with a UNK profile (Protenix)."""
    af3, ptx = featurized("2q2k"), featurized("2q2k", FeaturizationConfig.protenix())
    dna = af3.tokens.mol_type == 2
    assert af3.features["msa"].shape == ptx.features["msa"].shape
    assert (af3.features["msa"][2:][:, dna] == GAP).all()
    assert (ptx.features["msa"][:, dna] == ptx.features["msa"][0, dna]).all()
    assert np.array_equal(ptx.features["msa"][0, dna], af3.tokens.restype[dna])
    ligand_job = featurized("1k6p", FeaturizationConfig.protenix())
    ligand = ligand_job.tokens.mol_type == 3
    assert (ligand_job.features["msa"][:, ligand] == RESTYPE_INDEX["UNK"]).all()
    assert (ligand_job.features["profile"][ligand, RESTYPE_INDEX["UNK"]] == 1).all()


def test_protenix_adds_paired_rows_to_the_main_msa():
    """102m: Protenix (msa_pair_as_unpair) puts the pairedMsa rows, then the unpairedMsa rows,
    deduplicated, in the main MSA: 837 rows as Protenix 2.0 gives, against AF3's 99."""
    af3 = featurized("102m").features
    ptx = featurized("102m", dataclasses.replace(FeaturizationConfig(), paired_msa_as_unpaired=True)).features
    ((unpaired, paired), _) = parse_entity_msas(job("102m"))
    protein = slice(0, len(unpaired.rows[0]))
    assert af3["msa"].shape[0] == 99 and ptx["msa"].shape[0] == 837
    assert np.array_equal(ptx["msa"][1:1 + 5, protein], paired.rows[:5])
    assert not np.allclose(af3["profile"][protein], ptx["profile"][protein])


def test_paired_msa_of_a_single_chain_is_used_as_given_only_by_openfold3():
    """102m has one protein chain with a pairedMsa: AF3 pairs only complexes of two or more
    distinct protein sequences (model/features.py need_msa_pairing); OpenFold3 stacks the
    precomputed paired rows after the query and drops main rows they repeat."""
    af3, of3 = featurized("102m").features, featurized("102m", OPENFOLD3).features
    ((unpaired, paired), _) = parse_entity_msas(job("102m"))
    protein = slice(0, len(unpaired.rows[0]))
    assert af3["msa"].shape[0] < of3["msa"].shape[0]
    assert np.array_equal(of3["msa"][1:1 + len(paired.rows), protein], paired.rows)
    seen = {r.tobytes() for r in paired.rows}
    main = of3["msa"][1 + len(paired.rows):, protein]
    assert not any(r.tobytes() in seen for r in main)


def test_model_config_carries_the_featurization():
    assert ModelConfig.full().featurization == FeaturizationConfig()
    assert ModelConfig.full_openfold3().featurization == OPENFOLD3
    assert ModelConfig.tiny_openfold3().featurization == OPENFOLD3
    assert ModelConfig.full_protenix().featurization == FeaturizationConfig.protenix()
    config = ModelConfig.tiny_openfold3()
    assert ModelConfig.from_dict(config.to_dict()) == config
    # a checkpoint saved before the section existed: its family's module switches decide
    for preset in (ModelConfig.tiny(), ModelConfig.tiny_openfold3(), ModelConfig.tiny_protenix()):
        old = preset.to_dict()
        del old["featurization"]
        assert ModelConfig.from_dict(old) == preset
    with pytest.raises(ValueError, match="paired_msa"):
        FeaturizationConfig.from_dict({"paired_msa": "bogus"})
    with pytest.raises(ValueError, match="featurization.keep_oxt: unknown key"):
        ModelConfig.from_dict({"featurization": {"keep_oxt": True}})


def test_import_writes_the_family_featurization_and_predict_uses_it(tmp_path):
    """Whatever config an OpenFold3 checkpoint is imported with, the written checkpoint asks
    for OpenFold3's featurization, and the predictor featurizes with it (1l2y: no OXT)."""
    custom = dataclasses.replace(ModelConfig.tiny_openfold3(), featurization=FeaturizationConfig())
    out = tmp_path / "of3.safetensors"
    result = import_checkpoint("openfold3", str(OF3_WEIGHTS), str(out), custom)
    assert result["featurization"] == OPENFOLD3.to_dict()
    assert load_weights(str(out))[1].featurization == OPENFOLD3
    # batch / Serve featurizers read it from the header alone; random weights: the named config's
    assert model_featurization(str(out)) == OPENFOLD3
    assert model_featurization(None, "tiny-openfold3") == OPENFOLD3
    assert model_featurization(None, "tiny") == FeaturizationConfig()
    with pytest.raises(WeightsError, match="checkpoint not found"):
        model_featurization(str(tmp_path / "missing.safetensors"))
    predictor = Predictor.load(str(out))
    settings = PredictSettings(seeds=(1,), n_sample=1, n_cycle=1, n_step=2)
    tokens, _ = predictor.predict_job(job("1l2y"), settings)
    assert "OXT" not in tokens.atom_name.tolist()
    assert tokens.n_atoms == tokenize(job("1l2y"), featurization=OPENFOLD3).n_atoms


@pytest.mark.parametrize("mode, names, element", [("one_token", "SE", 34), ("as_met", "SD", 16)])
def test_selenomethionine_as_one_token(mode, names, element):
    """AF3's released tokenizer (one_token) and Protenix (as_met) keep 4zey's three MSE as one
    restype-MET token each; Protenix also renames SE -> SD with element S. SI 2.6 atomizes."""
    atomized = tokenize(job("4zey"))
    tokens = tokenize(job("4zey"), featurization=FeaturizationConfig(selenomethionine=mode))
    assert atomized.n_tokens - tokens.n_tokens == 3 * 7 and tokens.n_atoms == atomized.n_atoms
    mse = np.flatnonzero(np.isin(tokens.atom_residue, [2, 43, 63]) & (tokens.atom_chain == 0))
    tok = np.unique(tokens.atom_to_token[mse])
    assert len(tok) == 3 and tokens.is_standard[tok].all()
    assert set(tokens.restype[tok].tolist()) == {RESTYPE_INDEX["MET"]}
    chalcogen = mse[np.isin(tokens.atom_name[mse], ["SE", "SD"])]
    assert set(tokens.atom_name[chalcogen].tolist()) == {names}
    assert set(tokens.atom_element[chalcogen].tolist()) == {element}


def test_glycan_o1_leaves_as_in_alphafold3():
    """AF3 drops O1 of every ligand glycan residue (bonded or standalone); Protenix only where
    a bondedAtomPairs entry bonds C1 (1qgi: NAG 1's C1 is free, so its O1 stays); "keep" none."""
    counts = {mode: tokenize(job("1qgi"), featurization=FeaturizationConfig(ligand_leaving_atoms=mode))
              for mode in ("glycan_o1", "bonded", "keep")}
    o1 = {mode: int(((t.atom_name == "O1") & (t.mol_type[t.atom_to_token] == 3)).sum())
          for mode, t in counts.items()}
    assert o1["glycan_o1"] == 0 and o1["keep"] == o1["bonded"] + 2 > 2
    assert counts["keep"].n_atoms - counts["glycan_o1"].n_atoms == o1["keep"]
