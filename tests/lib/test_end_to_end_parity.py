"""End to end: imported reference weights predict what the reference predicted, same draws.

The fixtures (tests/fixtures/end_to_end/<reference>-<input>.npz, written by
`benchmarks/equivalence/end_to_end.py --fixtures` with openfold3 0.5.0 / protenix 2.0.0) hold,
for a real input, the reference's own model input (its featurizer's output), every random draw
of its sampler (initial positions, each step's rotation, translation and noise) and what its
full inference returned (1 cycle, 4 steps, 2 samples): coordinates, pLDDT, PAE, pTM, ipTM.
The weights are the module-equivalence fixtures' (tests/fixtures/equivalence: the same
config code and seed). foldray imports them as a user does (config read from the checkpoint),
gets the reference's features converted, and must land within 1e-3 Å RMS and 1e-4 relative.
No reference package needed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import pytest

from foldray.features.config import FeaturizationConfig
from foldray.features.reference_features import CONVERTERS
from foldray.io.import_weights import import_checkpoint
from foldray.io.weights import load_weights
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.end_to_end_parity import (
    TARGET_REL,
    TARGET_RMS,
    compare,
    foldray_features,
    foldray_features_case,
    noise_of,
    predict,
    reference_outputs,
)
from foldray.predictor import Predictor
from tests.data_paths import INPUTS, REPO, SHARED_DATA

FIXTURES = REPO / "tests" / "fixtures" / "end_to_end"
# The module-equivalence fixtures hold the very same random weights (same config code, seed).
WEIGHT_FIXTURES = {"openfold3": REPO / "tests/fixtures/equivalence/openfold3_weights.safetensors",
                   "protenix": REPO / "tests/fixtures/equivalence/protenix_weights.safetensors"}
ALL_CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))
# The 102m cases (197 tokens, 847 MSA rows) take minutes on a small CPU: they run when
# FOLDRAY_E2E_ALL=1 (and in benchmarks/equivalence/end_to_end.py); the rest stays under a minute.
CASES = ALL_CASES if os.environ.get("FOLDRAY_E2E_ALL") == "1" else [
    c for c in ALL_CASES if c.endswith("tiny_protein_dna")]


@functools.cache
def imported(reference: str, tmp: str) -> tuple[dict, object]:
    out = Path(tmp) / f"{reference}.safetensors"
    import_checkpoint(reference, str(WEIGHT_FIXTURES[reference]), str(out))   # config inferred
    return load_weights(str(out))


def imported_predictor(reference: str, tmp_path_factory, edit=None) -> Predictor:
    state, config = imported(reference, str(tmp_path_factory.getbasetemp()))
    if edit is not None:
        config = edit(config)
    model = AlphaFold3(config)
    model.load_state_dict(state)
    return Predictor(model)


def run_case(case: str, tmp_path_factory, edit=None) -> dict:
    reference = case.split("-", 1)[0]
    saved = dict(np.load(FIXTURES / f"{case}.npz"))
    ours = predict(imported_predictor(reference, tmp_path_factory, edit), CONVERTERS[reference](saved),
                   noise_of(saved))
    return compare(ours, reference_outputs(saved))


def test_fixtures_cover_both_references():
    assert {c.split("-", 1)[0] for c in CASES} == {"openfold3", "protenix"}
    assert len(ALL_CASES) >= 4
    assert sum(p.stat().st_size for p in FIXTURES.glob("*")) < 3 * 2 ** 20


@pytest.mark.parametrize("case", CASES)
def test_reference_features_reproduce_the_reference(case, tmp_path_factory):
    report = run_case(case, tmp_path_factory)
    assert report["coords_rms_A"] < TARGET_RMS, report
    for key in ("plddt", "pae", "ptm", "iptm"):
        assert report[f"{key}_rel"] < TARGET_REL, (key, report)


def _no_empty_template_restypes(config):
    t = dataclasses.replace(config.template, empty_slot_restype_first=None, empty_slot_restype_pad=None)
    return dataclasses.replace(config, template=t)


def _no_nucleotide_slot_shift(config):
    return dataclasses.replace(config, confidence=dataclasses.replace(config.confidence,
                                                                      nucleotide_slot_shift=0))


@pytest.mark.parametrize("edit, broken", [
    (_no_empty_template_restypes, "coords_rms_A"),   # Protenix's empty template slots carry restypes
    (_no_nucleotide_slot_shift, "plddt_rel"),        # its per-atom slots count the leaving OP3
])
def test_each_protenix_inference_switch_is_needed(edit, broken, tmp_path_factory):
    report = run_case("protenix-tiny_protein_dna", tmp_path_factory, edit)
    limit = TARGET_RMS if broken == "coords_rms_A" else TARGET_REL
    assert report[broken] > 10 * limit, report


# foldray's own featurizer on the same JSON, with the imported checkpoint's featurization switches;
# only the reference's random draws go in (its generated conformers, Protenix's MSA row draw).
# Equal model input (cheap, every case) plus the reference-features cases above prove the rest;
# the full prediction from foldray's features runs for one case (all with FOLDRAY_E2E_ALL=1).
FOLDRAY_FEATURES_CASES = CASES if os.environ.get("FOLDRAY_E2E_ALL") == "1" else [
    "protenix-tiny_protein_dna"]


@pytest.mark.parametrize("case", ALL_CASES)     # featurization only: cheap for 102m too
def test_foldray_features_are_the_reference_model_input(case, monkeypatch):
    monkeypatch.setenv("FOLDRAY_INPUT_PATH_ROOTS", str(SHARED_DATA))
    reference, input_name = case.split("-", 1)
    saved = dict(np.load(FIXTURES / f"{case}.npz"))
    *_, info = foldray_features(getattr(FeaturizationConfig, reference)(), str(INPUTS / f"{input_name}.json"),
                                CONVERTERS[reference](saved), saved)
    assert info["feature_differences"] == {}, info
    assert info["same_atom_order"] and info["same_token_order"], info


@pytest.mark.parametrize("case", FOLDRAY_FEATURES_CASES)
def test_foldray_features_reproduce_the_reference(case, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FOLDRAY_INPUT_PATH_ROOTS", str(SHARED_DATA))
    reference, input_name = case.split("-", 1)
    saved = dict(np.load(FIXTURES / f"{case}.npz"))
    predictor = imported_predictor(reference, tmp_path_factory)
    assert predictor.config.featurization == getattr(FeaturizationConfig, reference)()
    report = foldray_features_case(predictor, str(INPUTS / f"{input_name}.json"),
                                   CONVERTERS[reference](saved), saved)
    assert report["feature_differences"] == {}, report
    assert report["coords_rms_A"] < TARGET_RMS, report
    for key in ("plddt", "pae", "ptm", "iptm"):
        assert report[f"{key}_rel"] < TARGET_REL, (key, report)


@pytest.mark.parametrize("case", ["openfold3-tiny_protein_dna", "protenix-102m"])
def test_the_imported_switches_are_what_makes_the_features_equal(case, monkeypatch):
    """AlphaFold 3's switches (foldray's default) give neither OpenFold3's model input (it drops
    the chain ends' leaving atoms, its MSA has no query row) nor Protenix's (its MSA joins the
    pairedMsa rows: 837 rows where AF3 has 99, so the rows Protenix drew do not exist); the
    family's switches do."""
    monkeypatch.setenv("FOLDRAY_INPUT_PATH_ROOTS", str(SHARED_DATA))
    reference, input_name = case.split("-", 1)
    saved = dict(np.load(FIXTURES / f"{case}.npz"))
    ref = CONVERTERS[reference](saved)
    path = str(INPUTS / f"{input_name}.json")
    if reference == "openfold3":
        *_, info = foldray_features(FeaturizationConfig(), path, ref, saved)
        assert info["atoms"]["foldray_only"] == 3 and info["feature_differences"], info
    else:
        with pytest.raises(ValueError, match="the reference drew MSA row"):
            foldray_features(FeaturizationConfig(), path, ref, saved)
    *_, info = foldray_features(getattr(FeaturizationConfig, reference)(), path, ref, saved)
    assert info["feature_differences"] == {}, info
