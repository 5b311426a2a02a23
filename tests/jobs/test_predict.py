"""`foldray predict` with the tiny config on real inputs: AF3 layout, readable mmCIF,
confidence JSONs with AF3 keys and ranges, resume, object storage, bad jobs reported."""

import csv
import json

import gemmi
import numpy as np
import pytest

from foldray.features.tokenize import tokenize
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.cli import main
from tests.data_paths import BAD_INPUTS, INPUTS

FAST = ["--samples", "2", "--steps", "4", "--recycles", "1", "--quiet"]
SUMMARY_KEYS = {"ptm", "iptm", "ranking_score", "fraction_disordered", "has_clash", "chain_ptm",
                "chain_iptm", "chain_pair_iptm", "chain_pair_pae_min"}
FULL_KEYS = {"pae", "atom_plddts", "contact_probs", "token_chain_ids", "token_res_ids",
             "atom_chain_ids"}


def rna_excerpt(tmp_path):
    """The 4gxy RNA job cut to its first 24 nt (with the 5' GTP) and its Mg ions: real
    chemistry at a size the CPU tests afford (the full job has ~370 tokens)."""
    job = json.loads((INPUTS / "4gxy.json").read_text())
    rna = job["sequences"][0]["rna"]
    rna["sequence"] = rna["sequence"][:24]
    rna["modifications"] = [m for m in rna["modifications"] if m["basePosition"] <= 24]
    rna.pop("unpairedMsa", None)
    job["sequences"] = [job["sequences"][0]] + [
        s for s in job["sequences"] if s.get("ligand", {}).get("ccdCodes") == ["MG"]]
    path = tmp_path / "4gxy_excerpt.json"
    path.write_text(json.dumps(job))
    return path


def expected_layout(path):
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    return job, tokenize(job)


@pytest.mark.parametrize("name", ["1l2y.json", "tiny_protein_ligand_smiles.json",
                                  "tiny_protein_dna.json", "4gxy_excerpt"])
def test_predict_writes_the_af3_layout(name, tmp_path, capsys):
    path = rna_excerpt(tmp_path) if name == "4gxy_excerpt" else INPUTS / name
    job, tokens = expected_layout(path)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), *FAST]) == 0
    assert "RANDOM" in capsys.readouterr().err          # no checkpoint: said clearly
    folder = out / job.safe_name
    stem = job.safe_name
    for suffix in ("_model.cif", "_summary_confidences.json", "_confidences.json", "_data.json",
                   "_ranking_scores.csv"):
        assert (folder / f"{stem}{suffix}").exists(), suffix
    samples = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert samples == ["seed-1_sample-0", "seed-1_sample-1"]

    # the model mmCIF reads back with the input's chains, residues and atoms
    st = gemmi.read_structure(str(folder / f"{stem}_model.cif"))
    assert [ch.name for ch in st[0]] == [c.chain_id for c in tokens.chains]
    assert st[0].count_atom_sites() == tokens.n_atoms
    for chain, info in zip(st[0], tokens.chains, strict=True):
        assert [r.name for r in chain] == list(info.residue_names)
    plddt = np.array([a.b_iso for r in st[0][0] for a in r])
    assert ((plddt >= 0) & (plddt <= 100)).all()

    summary = json.loads((folder / f"{stem}_summary_confidences.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert 0 <= summary["ptm"] <= 1 and summary["has_clash"] in (0.0, 1.0)
    n_chain = len(tokens.chains)
    assert np.array(summary["chain_pair_iptm"]).shape == (n_chain, n_chain)
    full = json.loads((folder / f"{stem}_confidences.json").read_text())
    assert full.keys() >= FULL_KEYS
    assert np.array(full["pae"]).shape == (tokens.n_tokens, tokens.n_tokens)
    assert len(full["atom_plddts"]) == len(full["atom_chain_ids"]) == tokens.n_atoms
    contacts = np.array(full["contact_probs"])
    assert ((contacts >= 0) & (contacts <= 1)).all()
    with open(folder / f"{stem}_ranking_scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["seed"], r["sample"]) for r in rows] == [("1", "0"), ("1", "1")]
    assert max(float(r["ranking_score"]) for r in rows) == pytest.approx(summary["ranking_score"],
                                                                         abs=0.01)
    # the resolved input round-trips
    (again,) = parse_af3_json((folder / f"{stem}_data.json").read_text())
    assert again.chain_ids == job.chain_ids


def test_rerun_skips_complete_jobs_and_bad_jobs_do_not_stop_others(tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(INPUTS / "1l2y.json"), str(BAD_INPUTS / "unknown_ccd_code_ZZZQ.json"),
            "--out", str(out), *FAST[:-1]]
    assert main(["predict", *args]) == 2
    captured = capsys.readouterr()
    assert "ccdCodes[0]" in captured.err and "ok: 1l2y" in captured.out
    model = out / "1l2y" / "1l2y_model.cif"
    before = model.stat().st_mtime_ns
    assert main(["predict", *args]) == 2
    assert "skip: 1l2y" in capsys.readouterr().out
    assert model.stat().st_mtime_ns == before


def test_multiple_seeds_and_object_storage(s3_server, s3_bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    out = f"s3://{s3_bucket}/preds"
    assert main(["predict", str(INPUTS / "1l2y.json"), "--out", out, "--seeds", "3,7",
                 *FAST]) == 0
    fs = s3_server.filesystem()
    names = {p.rsplit("/", 1)[1] for p in fs.ls(f"{s3_bucket}/preds/1l2y")}
    assert {"seed-3_sample-0", "seed-3_sample-1", "seed-7_sample-0", "seed-7_sample-1",
            "1l2y_model.cif"} <= names


def test_checkpoint_is_loaded_with_its_own_config(tmp_path, capsys):
    import dataclasses

    import torch

    from foldray.io.weights import save_weights
    from foldray.model.alphafold3 import AlphaFold3
    from foldray.model.config import ModelConfig
    from foldray.predictor import Predictor

    config = dataclasses.replace(ModelConfig.tiny(), c_s=56)      # not a named preset
    torch.manual_seed(5)
    model = AlphaFold3(config)
    ckpt = tmp_path / "model.safetensors"
    save_weights(str(ckpt), model.state_dict(), config)
    loaded = Predictor.load(str(ckpt))
    assert loaded.config == config and not loaded.random_weights
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    out = tmp_path / "out"
    assert main(["predict", str(INPUTS / "1l2y.json"), "--out", str(out), "--checkpoint",
                 str(ckpt), *FAST]) == 0
    assert "RANDOM" not in capsys.readouterr().err
    assert (out / "1l2y" / "1l2y_model.cif").exists()


def test_shared_trunk_runs_the_trunk_once_for_all_seeds(tmp_path):
    from foldray.features.pipeline import featurize_seeds
    from foldray.predictor import Predictor, PredictSettings

    (job,) = parse_af3_json((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
    predictor = Predictor.load(config="tiny")
    trunk_runs = []
    run_trunk = predictor.model.run_trunk
    predictor.model.run_trunk = lambda *a, **k: trunk_runs.append(1) or run_trunk(*a, **k)
    fast = dict(n_sample=2, n_cycle=1, n_step=4)
    _, separate = predictor.predict_job(job, PredictSettings(seeds=(3, 8), **fast))
    assert len(trunk_runs) == 2
    _, shared = predictor.predict_job(job, PredictSettings(seeds=(3, 8), share_trunk=True, **fast))
    assert len(trunk_runs) == 3                                    # one more run for both seeds
    assert [(s.seed, s.sample_index) for s in shared] == [(3, 0), (3, 1), (8, 0), (8, 1)]
    # the first seed is exactly what it is without sharing; the second has its own noise
    for a, b in zip(separate[:2], shared[:2], strict=True):
        np.testing.assert_allclose(a.coords, b.coords, atol=1e-5)
    assert not np.allclose(shared[0].coords, shared[2].coords, atol=1e-2)
    # ... on the first seed's features: one featurization for all seeds
    by_seed = featurize_seeds(job, (3, 8), share_trunk=True)
    assert by_seed[3] is by_seed[8]
    per_seed = featurize_seeds(job, (3, 8))
    assert per_seed[3] is not per_seed[8]
    out = tmp_path / "out"
    assert main(["predict", str(INPUTS / "1l2y.json"), "--out", str(out), "--seeds", "1,2",
                 "--share-trunk", *FAST]) == 0
    assert {p.name for p in (out / "1l2y").glob("seed-*")} == {
        "seed-1_sample-0", "seed-1_sample-1", "seed-2_sample-0", "seed-2_sample-1"}
