"""Screen jobs, the target cache and batched prediction (foldray.screening, Predictor.predict_batch)."""

import json
import re

import numpy as np
import pytest

from foldray.errors import InputError
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.predictor import Predictor, PredictSettings, group_by_size
from foldray.screening import (
    LigandSpec,
    TargetCache,
    check_ligand,
    featurize_screen_job,
    ligand_job,
    screen_metrics,
    target_key,
)
from tests.data_paths import INPUTS

SETTINGS = PredictSettings(n_sample=2, n_step=3, n_cycle=1)


def _target(name: str = "102m.json", keep: int = 1):
    data = json.loads((INPUTS / name).read_text())
    data["sequences"] = data["sequences"][:keep]            # protein (+MSA) only
    return parse_af3_json(json.dumps(data), source=str(INPUTS / name))[0]


def test_screen_featurization_equals_featurize_job_and_parses_msa_once(monkeypatch):
    target = _target()                                       # 154 aa myoglobin with a 98-row MSA
    assert target.entities[0].unpaired_msa
    cache = TargetCache()
    for ligand in (LigandSpec(id="Ibu", smiles="CC(C)Cc1ccc(cc1)C(C)C(=O)O"),
                   LigandSpec(id="heme", ccd="HEM")):
        job = ligand_job(target, ligand)
        assert job.name == ligand.id.lower() and job.entities[-1].ids == ("B",)
        cached = featurize_screen_job(job, cache.get(target), seed=3)
        direct = featurize_job(job, seed=3, with_targets=False)
        assert cached.features.keys() == direct.features.keys()
        for name, value in direct.features.items():
            np.testing.assert_array_equal(cached.features[name], value, err_msg=name)
    assert (cache.hits, cache.misses) == (1, 1)
    # a different target (another MSA) is another entry
    assert target_key(_target("5zyh.json")) != target_key(target)


def test_screen_featurization_keeps_the_targets_restraints():
    """A target's restraints (here: a heme pocket) reach every ligand complex's features, as
    featurize_job gives them; dropping them would silently ignore the user's restraints."""
    data = json.loads((INPUTS / "102m.json").read_text())
    data["restraints"] = [{"type": "pocket", "binder": "B", "residues": [["A", 94], ["A", 98]],
                           "maxDistance": 6.0}]
    target = parse_af3_json(json.dumps(data), source=str(INPUTS / "102m.json"))[0]
    job = ligand_job(target, LigandSpec(id="ethanol", smiles="CCO"))
    cached = featurize_screen_job(job, TargetCache().get(target), seed=3)
    direct = featurize_job(job, seed=3, with_targets=False)
    assert cached.features["constraint_pocket"].sum() > 0
    for name, value in direct.features.items():
        if name.startswith("constraint_"):
            np.testing.assert_array_equal(cached.features[name], value, err_msg=name)


def test_check_ligand_reports_rdkit_reason_and_field():
    with pytest.raises(InputError) as err:
        check_ligand(LigandSpec(id="bad", smiles="C1CC(N"), field="sequences[1].ligand")
    assert err.value.field == "sequences[1].ligand.smiles" and err.value.job == "bad"
    assert "RDKit could not parse" in err.value.message
    with pytest.raises(InputError, match="unknown CCD code 'ZZZQ'"):
        check_ligand(LigandSpec(id="x", ccd="ZZZQ"))
    check_ligand(LigandSpec(id="atp", ccd="ATP"))


def test_batched_prediction_matches_single_and_pads_mixed_sizes():
    predictor = Predictor.load(None, config="tiny")
    target = _target("1l2y.json")
    small = featurize_job(ligand_job(target, LigandSpec(id="a", smiles="CCO")), seed=1,
                          with_targets=False)
    large = featurize_job(ligand_job(target, LigandSpec(id="b", smiles="c1ccccc1CCCCCCCCCCCCCC")),
                          seed=1, with_targets=False)
    # one job alone: exactly Predictor's own result
    (alone,) = predictor.predict_batch([(small, 1)], SETTINGS)
    _, reference = predictor.predict_job(small.job, PredictSettings(seeds=(1,), n_sample=2, n_step=3,
                                                                    n_cycle=1))
    for got, want in zip(alone, reference, strict=True):
        np.testing.assert_allclose(got.coords, want.coords, atol=1e-5)
        assert got.ranking_score == pytest.approx(want.ranking_score, abs=1e-6)
    # two sizes in one forward (their sizes round to the same group): each job's outputs cut
    # to its own size, finite
    near = featurize_job(ligand_job(target, LigandSpec(id="c", smiles="CCCCO")), seed=1,
                         with_targets=False)
    assert near.tokens.n_tokens != small.tokens.n_tokens
    assert group_by_size([small, near], max_group=8) == [[0, 1]]
    both = predictor.predict_batch([(small, 1), (near, 1)], SETTINGS)
    for featurized, samples in zip((small, near), both, strict=True):
        assert len(samples) == 2
        assert samples[0].coords.shape == (featurized.tokens.n_atoms, 3)
        assert samples[0].pae.shape == (featurized.tokens.n_tokens,) * 2
        assert np.isfinite(samples[0].coords).all() and np.isfinite(samples[0].score())
        metrics = screen_metrics(featurized.tokens, samples[0])
        assert all(np.isfinite(v) for v in metrics.values())
    # grouping: different sizes are separate groups, order is kept
    assert group_by_size([small, large, small], max_group=8) == [[0, 2], [1]]
    assert len(predictor.predict_batch([(small, 1), (large, 1), (small, 1)], SETTINGS)) == 3


def test_a_screen_pocket_binds_each_ligand_near_the_target_residues():
    """`foldray screen --pocket A:64,68`: every ligand complex carries a pocket restraint with
    the ligand as the binder, featurized on the ligand's tokens; bad pockets are located."""
    from foldray.features.constraints import constraint_features
    from foldray.screening import parse_pocket

    target = _target()
    pocket = parse_pocket(["A:64,68", "A:68"], target, distance=7.0)
    assert [(r.chain_id, r.residue) for r in pocket] == [("A", 64), ("A", 68)]
    job = ligand_job(target, LigandSpec(id="ethanol", smiles="CCO", pocket=pocket, pocket_distance=7.0))
    (restraint,) = job.restraints
    assert restraint.binder == "B" and restraint.max_distance == 7.0
    featurized = featurize_job(job, with_targets=False)
    values = constraint_features(job, featurized.tokens)["constraint_pocket"][..., 0]
    assert (values[154:, [63, 67]] == 7.0).all() and values.sum() == 7.0 * 3 * 2   # 3 ligand atoms
    for specs, distance, words in ((["B:1"], 6.0, "chain of the target"), (["A:0"], 6.0, "1..154"),
                                   (["A:x"], 6.0, "1..154"), (["A:5"], 0.0, "(0, 100]")):
        with pytest.raises(InputError, match=re.escape(words)) as err:
            parse_pocket(specs, target, distance=distance)
        assert err.value.field.startswith("--pocket")
