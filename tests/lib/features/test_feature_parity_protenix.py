"""Feature parity with Protenix's own inference featurizer, replayed from committed fixtures.

The fixtures (tests/fixtures/feature_parity/protenix/<input>.npz) are Protenix 2.0.0's
normalised features of shared/data/inputs/<input>.json, written by
`benchmarks/equivalence/feature_parity.py --reference protenix --fixtures tests/fixtures/feature_parity`
(its `InferenceDataset.process_one` with the inference defaults; CCD files built offline from
biotite's CCD by benchmarks/equivalence/protenix_ccd.py; MSA rows capped at 64, msa_rows_total,
profile and deletion_mean are of the full MSA). The test featurizes the same inputs with foldray
under `FeaturizationConfig.protenix()` (what an imported Protenix checkpoint carries) and
compares with the shared code (foldray.features.parity). Every identity feature is equal except
the differences listed in DIFFERENCES / KNOWN below, each with its evidence; the set of differing
features must match KNOWN exactly, so a new difference fails, and so does a fixed one (remove it
from KNOWN when a switch accounts for it).

Evidence paths: `ptx:` = protenix 2.0.0 (site-packages/protenix/), `af3:` = AlphaFold 3's released
code (github.com/google-deepmind/alphafold3 src/alphafold3/), SI = AF3 supplementary information.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from foldray.features.config import FeaturizationConfig
from foldray.features.parity import compare, differing, normalise_foldray
from foldray.features.pipeline import featurize_job
from foldray.inputs.load import read_jobs
from tests.data_paths import INPUTS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "feature_parity" / "protenix"
SEED = 1
PROTENIX = FeaturizationConfig.protenix()

# Each open difference: what differs, where Protenix decides it, what AF3 (SI / released code)
# does. None is open: every one became a switch (RESOLVED).
DIFFERENCES: dict[str, dict[str, str]] = {}

# Differences a Protenix switch of FeaturizationConfig.protenix() now accounts for (evidence kept;
# SWITCHED below proves each switch is needed).
RESOLVED: dict[str, dict[str, str]] = {
    "mse_as_met": {
        "what": "MSE: Protenix renames the residue MET, atom SE -> SD, element Se -> S: one standard "
                "token (restype MET); foldray atomizes MSE (one token per atom)",
        "protenix": "ptx:data/inference/json_to_feature.py:315-333 (mse_to_met), called at :344",
        "af3": "af3:model/features.py:236-245 tokenizer keeps MSE as one standard-like token with its "
               "own atoms (SE); SI 2.1 converts MSE to MET when parsing training structures "
               "(af3:common/folding_input.py:1319). Supports: AF3 one token (foldray's atomization "
               "is wrong for AF3 too); SE->SD renaming is Protenix-only.",
    },
    "bonded_leaving_atoms": {
        "what": "bondedAtomPairs: Protenix removes one CCD leaving group of each bonded atom "
                "(glycan C1 -> O1); foldray kept every O1",
        "protenix": "ptx:data/inference/json_to_feature.py:210-284 -> "
                    "ptx:data/inference/json_parser.py:181-234 (remove_leaving_atoms), "
                    "ptx:data/core/ccd.py:50-72",
        "af3": "af3:model/pipeline/structure_cleaning.py:134-180 with pipeline.py:151,159,195-200: "
               "drops O1 of every glycan residue (bonded or not) as trained "
               "(fix_standalone_glycans=False); only bonded ones with fix_standalone_glycans=True. "
               "Supports: dropping (neither reference keeps the bonded O1).",
    },
    "non_polymer_ccd_restype": {
        "what": "a polymer residue whose CCD _chem_comp.type is not polymer-linking (GTP, "
                "NON-POLYMER, at the RNA 5' end) gets restype UNK in Protenix, its parent (G) in foldray",
        "protenix": "ptx:data/core/ccd.py:150-179 (get_mol_type), ptx:data/core/parser.py:2789-2830 "
                    "(add_cano_seq_resname: residue mol_type ligand -> UNK)",
        "af3": "af3:model/features.py:943-958 (mmcif_names.fix_non_standard_polymer_res by chain "
               "type). Supports: parent (foldray).",
    },
    "msa_query_from_input_letters": {
        "what": "MSA query row of a polymer chain: Protenix takes the letters of the input's "
                "`sequence` string as written ('N' at 4gxy's GTP@1, so its columns and profile are "
                "RNA unknown); foldray takes the residue's CCD one-letter code (GTP -> G)",
        "protenix": "ptx:data/msa/msa_featurizer.py:633-635 (rnaSequence: seq = c['sequence'], "
                    "proteinChain :604-607, dnaSequence :641-643) -> :200-211 RawMsa.from_a3m(seq, ...) "
                    "query row, profile :239-249",
        "af3": "af3:model/features.py:462 (query = substruct.chain_single_letter_sequence(): residue "
               "names through CCD_NAME_TO_ONE_LETTER, structure.py), :466-475 (non-nucleic letters "
               "-> N). Supports: CCD one-letter code (foldray).",
    },
}

ATOMS = {"n_atoms", "atom_set", "atom_name"}
SHIFTED_TOKENS = {"n_tokens", "restype", "residue_index", "asym_id", "entity_id", "sym_id", "mol_type",
                  "is_atomized", "token_bonds", "atom_to_token", "msa", "has_deletion", "deletion_value",
                  "profile", "deletion_mean"}
MSA_ROWS = {"msa", "msa_rows_total", "has_deletion", "deletion_value", "deletion_mean", "profile"}
LIGAND_MSA = {"msa", "profile"}

# input -> (identity features that differ, the DIFFERENCES that cause them). Checked by hand that
# each job's differences are those causes alone: with 1igy's 18 and 1qgi's 2 glycan O1 tokens
# removed from foldray's features, and 4zey's 3 atomized MSE merged into one token each with
# SE -> SD, Se -> S, every feature is equal; 4gxy differs only at the 32 GTP tokens.
KNOWN: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "102m": (set(), ()),
    "1bna": (set(), ()),
    "1igy": (set(), ()),
    "1k6p": (set(), ()),
    "1l2y": (set(), ()),
    "1qgi": (set(), ()),
    "2q2k": (set(), ()),
    "4gxy": (set(), ()),
    "4zey": (set(), ()),
    "5ugo": (set(), ()),
    "5zyh": (set(), ()),
    "tiny_protein_dna": (set(), ()),
    "tiny_protein_ligand_smiles": (set(), ()),
}

# The Protenix switches of FeaturizationConfig.protenix() that made these jobs equal: turning one
# off brings its difference back (so each switch is needed, and KNOWN is not empty by accident).
# fill_non_protein_msa_rows: ligand columns UNK in every row and UNK profile, DNA columns of
#   all-gap rows <- the DNA query (ptx:data/msa/msa_featurizer.py:335-347, :644-649; AF3 gap,
#   af3:model/features.py:519-528). paired_msa_as_unpaired: pairedMsa rows joined to the main MSA
#   (ptx:data/msa/msa_featurizer.py:654-657, configs/configs_inference.py:35; AF3 ignores them
#   for one distinct protein sequence, af3:model/features.py:447-448, 498-505). Unpaired-row
#   deduplication (ptx:data/msa/msa_featurizer.py:205-213) needs no switch: foldray dedups too.
# modified_residue_restype "ccd_type" and msa_query_letters "input": RESOLVED above (4gxy's GTP);
# ligand_leaving_atoms "bonded": RESOLVED (1igy, 1qgi glycans); selenomethionine "as_met" (4zey).
# (input, switch, foldray's default value, the differences it brings back)
SWITCHED: list[tuple[str, str, object, set[str]]] = [
    ("1k6p", "fill_non_protein_msa_rows", False, LIGAND_MSA),
    ("2q2k", "fill_non_protein_msa_rows", False, {"msa"}),
    ("102m", "paired_msa_as_unpaired", False, MSA_ROWS),
    ("5zyh", "paired_msa_as_unpaired", False, MSA_ROWS),
    ("4gxy", "modified_residue_restype", "parent", {"restype"}),
    ("4gxy", "msa_query_letters", "ccd", {"msa", "profile"}),
    ("1qgi", "ligand_leaving_atoms", "glycan_o1", ATOMS | SHIFTED_TOKENS),   # AF3 drops NAG 1's O1 too
    ("4zey", "selenomethionine", "atomize", (ATOMS | SHIFTED_TOKENS) - {"n_atoms"}),
]


def _foldray(name: str, max_msa_rows: int,
             featurization: FeaturizationConfig = PROTENIX) -> dict[str, np.ndarray]:
    (job,) = read_jobs(str(INPUTS / f"{name}.json"))
    assert not isinstance(job, Exception), job
    featurized = featurize_job(job, seed=SEED, with_targets=False, featurization=featurization)
    return normalise_foldray(featurized.features, featurized.tokens.is_standard, max_msa_rows)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_feature_parity_protenix(name: str) -> None:
    ref = dict(np.load(FIXTURES / f"{name}.npz"))
    report = compare(ref, _foldray(name, ref["msa"].shape[0]))
    known, _ = KNOWN[name]
    assert differing(report) == known, {k: report[k] for k in differing(report) ^ known}
    # CCD conformers come out identical (ETKDG, seed 0, on both sides); SMILES conformers are
    # random draws in Protenix, so the bound only catches a broken frame or a misassigned atom.
    assert report["ref_pos"]["atoms_compared"] > 0
    assert report["ref_pos"]["max_intra_residue_distance_diff_A"] < 15.0


def test_every_fixture_replayed_and_every_difference_explained() -> None:
    assert {p.stem for p in FIXTURES.glob("*.npz")} == set(KNOWN)
    causes = {cause for _, names in KNOWN.values() for cause in names}
    assert causes == set(DIFFERENCES)
    for name, (features, names) in KNOWN.items():
        assert bool(features) == bool(names), name
    for entry in (*DIFFERENCES.values(), *RESOLVED.values()):
        assert entry["protenix"].startswith("ptx:") and entry["af3"].startswith("af3:")


@pytest.mark.parametrize(("name", "switch", "default", "features"), SWITCHED)
def test_each_protenix_switch_is_needed(name: str, switch: str, default: object, features: set[str]) -> None:
    assert getattr(PROTENIX, switch) != default and getattr(FeaturizationConfig(), switch) == default
    ref = dict(np.load(FIXTURES / f"{name}.npz"))
    ours = _foldray(name, ref["msa"].shape[0], dataclasses.replace(PROTENIX, **{switch: default}))
    assert differing(compare(ref, ours)) == KNOWN[name][0] | features


def test_fixtures_are_small() -> None:
    assert sum(p.stat().st_size for p in FIXTURES.glob("*.npz")) < 3 * 1024 * 1024


def test_a_new_difference_fails_the_replay() -> None:
    """The replay is not vacuous: a changed charge or a dropped token bond in foldray's features
    shows up as a difference outside KNOWN."""
    ref = dict(np.load(FIXTURES / "1k6p.npz"))
    ours = _foldray("1k6p", ref["msa"].shape[0])
    assert differing(compare(ref, ours)) == KNOWN["1k6p"][0]
    ours["charge"] = ours["charge"].copy()
    ours["charge"][0] += 1.0
    ours["token_bonds"] = ours["token_bonds"][1:]
    assert differing(compare(ref, ours)) == KNOWN["1k6p"][0] | {"charge", "token_bonds"}
