"""Screens at scale: complexes of similar size share one forward pass with exactly the
samples each gets alone, and `foldray screen --msa search` searches the target once.

Tiny config, few steps: the point is equality and wiring, not the model.
"""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

import foldray.predictor as predictor_module
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.cli import main
from foldray.predictor import Predictor, PredictSettings, group_by_size
from foldray.screening import LigandSpec, TargetCache, featurize_screen_job, ligand_job
from tests.data_paths import INPUTS, SHARED_DATA

LIGANDS = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC"]   # 3-11 heavy atoms


def _target():
    return parse_af3_json((INPUTS / "1l2y.json").read_text(), allow_paths=False)[0]


def test_batched_forward_equals_one_by_one(monkeypatch):
    """Four complexes of different sizes padded into one pass, each with its own seed:
    coordinates and confidences equal the one-by-one run within fp32 rounding."""
    target = _target()
    cache = TargetCache()
    featurized = [featurize_screen_job(ligand_job(target, LigandSpec(id=f"l{i}", smiles=smi)),
                                       cache.get(target), seed=3)
                  for i, smi in enumerate(LIGANDS)]
    assert cache.misses == 1 and cache.hits == 3            # the target prepared once
    assert len({f.tokens.n_tokens for f in featurized}) > 1  # real padding inside the batch
    items = [(f, 10 + i) for i, f in enumerate(featurized)]
    model = Predictor.load(None, config="tiny")
    settings = PredictSettings(n_sample=2, n_step=3, n_cycle=1)
    alone = [model.predict_batch([item], settings)[0] for item in items]
    monkeypatch.setattr(predictor_module, "TOKEN_STEP", 1024)   # all four in one group
    monkeypatch.setattr(predictor_module, "ATOM_STEP", 4096)
    assert group_by_size(featurized, max_group=8) == [[0, 1, 2, 3]]
    together = model.predict_batch(items, settings, max_group=8)
    for one, batched in zip(alone, together, strict=True):
        assert len(one) == len(batched) == 2
        for a, b in zip(one, batched, strict=True):
            assert a.coords.shape == b.coords.shape
            np.testing.assert_allclose(b.coords, a.coords, atol=1e-3, rtol=0)
            np.testing.assert_allclose(b.atom_plddt, a.atom_plddt, atol=1e-3)
            np.testing.assert_allclose(b.pae, a.pae, atol=1e-3)
            assert b.ranking_score == pytest.approx(a.ranking_score, abs=1e-4)
    # a job's samples do not depend on its batch-mates: another order, the same samples
    reordered = model.predict_batch(items[::-1], settings, max_group=8)[::-1]
    for one, batched in zip(alone, reordered, strict=True):
        np.testing.assert_allclose(batched[0].coords, one[0].coords, atol=1e-3, rtol=0)


def test_screen_msa_search_once_and_batched_rows_equal_one_by_one(ray_session, tmp_path, capsys):
    """`foldray screen --msa search`: the target's chains are searched once (a rerun: from
    the cache) and every ligand uses the searched MSA; the rows of ligands predicted in
    shared forward passes (--model-batch-size 4, separate stage pools as with GPUs) equal
    one-by-one predictions."""
    config = tmp_path / "msa.yaml"
    db = SHARED_DATA / "seqdb" / "protein_db.fasta"
    config.write_text(f"shards: 1\ndatabases:\n  - {{name: uniref90, url: {db}}}\n")
    (tmp_path / "lib.smi").write_text("".join(f"{smi} lig{i}\n" for i, smi in enumerate(LIGANDS)))
    out = tmp_path / "out"
    args = ["screen", "--target", str(INPUTS / "1l2y.json"), "--ligands", str(tmp_path / "lib.smi"),
            "--out", str(out), "--msa", "search", "--msa-config", str(config), "--msa-workers", "1",
            "--model-batch-size", "4", "--samples", "1", "--steps", "2", "--recycles", "1",
            "--actors", "1-1", "--num-cpus-per-actor", "0.5", "--num-cpus-per-worker", "0.5",
            "--cpu-workers", "1-1", "--stages", "separate"]   # the GPU layout: PredictBatchStage
    # (fused batched stages on CPU: tests/jobs/test_fused_stages.py)
    assert main(args) == 0
    err = capsys.readouterr().err
    found = re.search(r"msa: target: (\d+) chains: (\d+) database searches run, (\d+) from the cache", err)
    assert found and found.groups() == ("1", "1", "0"), err[-2000:]
    (searched,) = (out / "target").glob("*_data.json")
    target = parse_af3_json(searched.read_text(), allow_paths=False)[0]
    assert target.entities[0].unpaired_msa.startswith(">")    # the searched MSA (query first)
    rows = {r["ligand_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"}

    model = Predictor.load(None, config="tiny")
    settings = PredictSettings(n_sample=1, n_step=2, n_cycle=1)
    cache = TargetCache()
    for i, smi in enumerate(LIGANDS):
        job = ligand_job(target, LigandSpec(id=f"lig{i}", smiles=smi))
        by_seed = {seed: featurize_screen_job(job, cache.get(target), seed=seed,
                                              featurization=model.config.featurization)
                   for seed in job.seeds}
        _, samples = model.predict_featurized(by_seed, settings)
        assert rows[f"lig{i}"]["ranking_score"] == pytest.approx(samples[0].score(), abs=1e-4)
        top = json.loads((out / f"lig{i}" / f"lig{i}_confidences.json").read_text())
        np.testing.assert_allclose(top["atom_plddts"], samples[0].atom_plddt, atol=0.02)  # 2 decimals

    assert main(args) == 0     # a rerun: the search from the cache, every ligand skipped
    err = capsys.readouterr().err
    assert "0 database searches run, 1 from the cache" in err, err[-2000:]
