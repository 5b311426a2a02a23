"""AF3 output layout (io/confidences.py) and the job written back as AF3 JSON
(inputs/af3_json_writer.py): keys, shapes, rounding, file names, write order, and round
trips through parse_af3_json, gemmi and biotite, on a local folder and on memory://."""

import csv
import dataclasses
import io
import json
import math
import uuid

import biotite.structure.io.pdbx as pdbx
import gemmi
import numpy as np
import pytest

from foldray.features.tokenize import TokenizedStructure, tokenize
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.af3_json_writer import job_to_af3_json, job_to_af3_json_text
from foldray.inputs.job import Job
from foldray.io import confidences, storage
from foldray.io.confidences import (
    SamplePrediction,
    full_confidences,
    full_confidences_json,
    is_complete,
    sample_full,
    sample_summary,
    summary_confidences,
    write_prediction,
)
from tests.data_paths import INPUTS

SUMMARY_KEYS = {"chain_ids", "chain_iptm", "chain_pair_iptm", "chain_pair_pae_min", "chain_ptm",
                "fraction_disordered", "has_clash", "iptm", "ptm", "ranking_score"}
FULL_KEYS = ["atom_chain_ids", "atom_plddts", "contact_probs", "pae", "token_chain_ids",
             "token_res_ids"]
INPUT_NAMES = ["102m", "2q2k", "4gxy", "1qgi", "tiny_protein_ligand_smiles"]


def load_job(name: str) -> Job:
    path = INPUTS / f"{name}.json"
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    return job


def make_sample(tokens: TokenizedStructure, seed: int, index: int, *, pad: int = 0,
                **overrides) -> SamplePrediction:
    rng = np.random.default_rng([seed, index])
    n_tok, n_atom, n_chain = tokens.n_tokens + pad, tokens.n_atoms + pad, len(tokens.chains)
    offsets = rng.uniform(-30, 30, size=(tokens.atom_space_uid.max() + 1, 3))
    coords = tokens.atom_ref_pos + offsets[tokens.atom_space_uid]
    fields = dict(
        seed=seed, sample_index=index,
        coords=np.concatenate([coords, np.zeros((pad, 3))]),
        atom_plddt=rng.uniform(0, 100, n_atom).astype(np.float32),
        pae=rng.uniform(0, 32, (n_tok, n_tok)).astype(np.float32),
        contact_probs=rng.uniform(0, 1, (n_tok, n_tok)).astype(np.float32),
        ptm=float(rng.uniform(0.3, 0.9)),
        iptm=float(rng.uniform(0.3, 0.9)) if n_chain > 1 else math.nan,
        chain_pair_iptm=rng.uniform(0, 1, (n_chain, n_chain)),
        fraction_disordered=float(rng.uniform(0, 0.2)))
    fields.update(overrides)
    return SamplePrediction(**fields)


# --------------------------------------------------------------------------- _data.json


@pytest.mark.parametrize("path", sorted(INPUTS.glob("*.json")), ids=lambda p: p.stem)
def test_job_round_trips_through_af3_json(path):
    for job in parse_af3_json(path.read_text(), source=str(path)):
        data = job_to_af3_json(job)
        assert data["dialect"] == "alphafold3" and data["version"] == 4
        (back,) = parse_af3_json(job_to_af3_json_text(job), source="data.json")
        assert dataclasses.replace(back, source=job.source) == job
        assert back.entities == job.entities
        assert back.seeds == job.seeds
        assert back.bonded_atom_pairs == job.bonded_atom_pairs


def test_af3_json_keys_follow_af3():
    job = load_job("2q2k")
    data = job_to_af3_json(job)
    assert list(data) == ["dialect", "version", "name", "sequences", "modelSeeds",
                          "bondedAtomPairs", "userCCD"]
    assert data["bondedAtomPairs"] is None and data["userCCD"] is None
    dna, protein = data["sequences"][0]["dna"], data["sequences"][1]["protein"]
    assert dna["modifications"] == [{"modificationType": "5IU", "basePosition": 7},
                                    {"modificationType": "5IU", "basePosition": 10}]
    assert "unpairedMsa" not in dna and "templates" not in dna
    assert protein["id"] == ["A", "B"]
    assert protein["unpairedMsa"].startswith(">")   # the MSA file's text, inline
    assert protein["pairedMsa"] == "" and protein["templates"] == []
    glycan = job_to_af3_json(load_job("1qgi"))
    assert glycan["sequences"][1] == {"ligand": {"id": "B", "ccdCodes": ["NAG", "GCS", "GCS"]}}
    assert glycan["bondedAtomPairs"][0] == [["B", 1, "O4"], ["B", 2, "C1"]]
    smiles = job_to_af3_json(load_job("tiny_protein_ligand_smiles"))
    assert set(smiles["sequences"][1]["ligand"]) == {"id", "smiles"}


# --------------------------------------------------------------------------- JSON content


def test_summary_keys_types_and_rounding():
    summary = summary_confidences(
        ptm=0.123456, iptm=0.98765, chain_pair_iptm=np.array([[0.5, 0.333], [0.666, 0.25]]),
        chain_pair_pae_min=np.array([[0.76, 3.14159], [np.nan, 1.0]]), chain_ids=["A", "B"],
        fraction_disordered=0.0449, has_clash=True)
    assert set(summary) == SUMMARY_KEYS and list(summary) == sorted(SUMMARY_KEYS)
    assert summary["ptm"] == 0.12 and summary["iptm"] == 0.99
    assert summary["has_clash"] == 1.0 and isinstance(summary["has_clash"], float)
    assert summary["fraction_disordered"] == 0.04
    assert summary["ranking_score"] == round(0.8 * 0.98765 + 0.2 * 0.123456 + 0.5 * 0.0449 - 100,
                                             2)
    assert summary["chain_ptm"] == [0.5, 0.25]
    assert summary["chain_pair_iptm"] == [[0.5, 0.33], [0.67, 0.25]]
    assert summary["chain_pair_pae_min"] == [[0.76, 3.14], [None, 1.0]]
    assert summary["chain_iptm"] == [0.5, 0.5]
    assert summary["chain_ids"] == ["A", "B"]
    text = confidences.summary_confidences_json(summary)
    assert json.loads(text) == summary and "NaN" not in text
    single = summary_confidences(ptm=0.7, iptm=math.nan, chain_pair_iptm=np.array([[0.7]]),
                                 chain_pair_pae_min=np.array([[0.4]]), chain_ids=["A"])
    assert single["iptm"] is None and single["chain_iptm"] == [None]
    assert single["ranking_score"] == 0.7
    with pytest.raises(ValueError, match="chain-pair"):
        summary_confidences(ptm=0.7, iptm=0.5, chain_pair_iptm=np.zeros((2, 2)),
                            chain_pair_pae_min=np.zeros((2, 2)), chain_ids=["A"])


def test_full_rounding_matches_af3_serializer():
    full = full_confidences(
        pae=np.array([[0.04, 12.345], [150.0, np.nan]]),
        contact_probs=np.array([[0.005, 1.2], [-0.1, 0.999]]),
        atom_plddts=np.array([55.555, 100.0, -3.0]),
        token_chain_ids=["A", "B"], token_res_ids=[1, 1], atom_chain_ids=["A", "A", "B"])
    assert list(full) == FULL_KEYS
    assert full["pae"] == [[0.0, 12.3], [99.9, None]]          # 1 decimal, clamped to 99.9
    assert full["contact_probs"] == [[0.01, 1.0], [0.0, 1.0]]  # 2 decimals, clamped to [0, 1]
    assert full["atom_plddts"] == [55.56, 99.99, 0.0]          # 2 decimals, clamped to 99.99
    text = full_confidences_json(
        pae=np.array([[0.04, 12.345], [150.0, np.nan]]),
        contact_probs=np.array([[0.005, 1.2], [-0.1, 0.999]]),
        atom_plddts=np.array([55.555, 100.0, -3.0]),
        token_chain_ids=["A", "B"], token_res_ids=[1, 1], atom_chain_ids=["A", "A", "B"])
    assert json.loads(text) == full
    assert '"pae": [[0.0,12.3],[99.9,null]]' in text


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_sample_json_shapes(name):
    job = load_job(name)
    tokens = tokenize(job)
    sample = make_sample(tokens, 1, 0, pad=5)
    n_chain = len(tokens.chains)
    summary = sample_summary(tokens, sample)
    assert set(summary) == SUMMARY_KEYS
    assert summary["chain_ids"] == [c.chain_id for c in tokens.chains]
    for key in ("chain_iptm", "chain_ptm"):
        assert len(summary[key]) == n_chain
    for key in ("chain_pair_iptm", "chain_pair_pae_min"):
        assert np.shape(summary[key]) == (n_chain, n_chain)
    full = sample_full(tokens, sample)
    assert np.shape(full["pae"]) == np.shape(full["contact_probs"]) == (tokens.n_tokens,) * 2
    assert len(full["atom_plddts"]) == len(full["atom_chain_ids"]) == tokens.n_atoms
    assert full["token_res_ids"] == tokens.residue_index.tolist()
    chain_ids = [c.chain_id for c in tokens.chains]
    assert full["token_chain_ids"] == [chain_ids[a - 1] for a in tokens.asym_id]
    assert full["atom_chain_ids"] == [chain_ids[c] for c in tokens.atom_chain]
    np.testing.assert_allclose(full["atom_plddts"], sample.atom_plddt[:tokens.n_atoms], atol=0.006)


def test_sample_summary_uses_given_pae_min_and_frame_mask():
    job = load_job("4gxy")   # RNA, two B1Z ligands, two Mg ions (no frames)
    tokens = tokenize(job)
    frames = np.array([c.mol_type != "ligand" or c.chain_id in "BC" for c in tokens.chains])
    frame_mask = np.repeat(frames, [c.token_end - c.token_start for c in tokens.chains])
    summary = sample_summary(tokens, make_sample(tokens, 1, 0, token_frame_mask=frame_mask))
    assert summary["chain_pair_pae_min"][3] == [None] * 5        # Mg: no valid frame
    assert summary["chain_pair_pae_min"][0][3] is not None       # RNA frames see the ion
    given = np.full((5, 5), 2.5)
    summary = sample_summary(tokens, make_sample(tokens, 1, 0, chain_pair_pae_min=given))
    assert summary["chain_pair_pae_min"] == [[2.5] * 5] * 5


# --------------------------------------------------------------------------- files


def expected_files(name: str, keys: list[tuple[int, int]]) -> set[str]:
    files = {f"{name}_{suffix}" for suffix in ("model.cif", "confidences.json",
                                               "summary_confidences.json", "data.json",
                                               "ranking_scores.csv")} | {"foldray_job.json"}
    for seed, index in keys:
        sub = f"seed-{seed}_sample-{index}"
        files |= {f"{sub}/{name}_{sub}_{suffix}" for suffix in ("model.cif", "confidences.json",
                                                                "summary_confidences.json")}
    return files


def listing(folder: str) -> set[str]:
    fs, path = storage.filesystem(folder)
    return {found[len(path.rstrip("/")) + 1:] for found in fs.find(path)}


def check_outputs(out_url: str, job: Job, tokens: TokenizedStructure,
                  samples: list[SamplePrediction]) -> None:
    name = job.safe_name
    folder = storage.join(out_url, name)
    keys = [(s.seed, s.sample_index) for s in samples]
    assert listing(folder) == expected_files(name, keys)
    assert is_complete(out_url, job)

    rows = list(csv.reader(io.StringIO(storage.read_text(
        storage.join(folder, f"{name}_ranking_scores.csv")))))
    assert rows[0] == ["seed", "sample", "ranking_score"]
    assert [(int(r[0]), int(r[1])) for r in rows[1:]] == keys
    scores = [float(r[2]) for r in rows[1:]]
    np.testing.assert_allclose(scores, [s.score() for s in samples])

    best = samples[int(np.argmax(scores))]
    sub = f"seed-{best.seed}_sample-{best.sample_index}"
    for suffix in ("model.cif", "confidences.json", "summary_confidences.json"):
        top = storage.read_text(storage.join(folder, f"{name}_{suffix}"))
        assert top == storage.read_text(storage.join(folder, sub, f"{name}_{sub}_{suffix}"))

    summary = json.loads(storage.read_text(storage.join(folder,
                                                        f"{name}_summary_confidences.json")))
    assert summary == sample_summary(tokens, best)
    full = json.loads(storage.read_text(storage.join(folder, f"{name}_confidences.json")))
    assert full == sample_full(tokens, best)
    assert list(full) == FULL_KEYS

    cif = storage.read_text(storage.join(folder, f"{name}_model.cif"))
    st = gemmi.make_structure_from_block(gemmi.cif.read_string(cif).sole_block())
    assert [c.name for c in st[0]] == [c.chain_id for c in tokens.chains]
    atoms = pdbx.get_structure(pdbx.CIFFile.read(io.StringIO(cif)), model=1,
                               extra_fields=["b_factor"])
    assert len(atoms) == tokens.n_atoms
    np.testing.assert_allclose(atoms.coord, best.coords[:tokens.n_atoms], atol=1e-3)
    np.testing.assert_allclose(atoms.b_factor, best.atom_plddt[:tokens.n_atoms], atol=0.006)

    (back,) = parse_af3_json(storage.read_text(storage.join(folder, f"{name}_data.json")),
                             source="data.json")
    # the seeds predicted (here 1 and 42; a --seeds override too), as AF3 records its modelSeeds
    predicted = tuple(dict.fromkeys(s.seed for s in samples))
    assert dataclasses.replace(back, source=job.source) == dataclasses.replace(job, seeds=predicted)


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_write_prediction_local(tmp_path, name):
    job = load_job(name)
    tokens = tokenize(job)
    samples = [make_sample(tokens, seed, i, pad=3) for seed in (1, 42) for i in range(2)]
    folder = write_prediction(str(tmp_path), job, tokens, samples)
    assert folder == str(tmp_path / job.safe_name)
    check_outputs(str(tmp_path), job, tokens, samples)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_write_prediction_memory_url():
    job = load_job("1qgi")
    tokens = tokenize(job)
    samples = [make_sample(tokens, 7, i) for i in range(3)]
    out = f"memory://foldray-test-{uuid.uuid4().hex}/out"
    fs, root = storage.filesystem(out)
    try:
        assert not is_complete(out, job)
        folder = write_prediction(out, job, tokens, samples)
        assert folder == f"{out}/{job.safe_name}"
        check_outputs(out, job, tokens, samples)
    finally:
        fs.rm(root, recursive=True)


def test_summary_written_last_and_ranking_picks_best(tmp_path, monkeypatch):
    job = load_job("tiny_protein_ligand_smiles")
    tokens = tokenize(job)
    samples = [make_sample(tokens, 3, 0, ranking_score=0.2),
               make_sample(tokens, 3, 1, ranking_score=0.9),
               make_sample(tokens, 3, 2, ranking_score=math.nan)]
    written: list[str] = []
    real_write = storage.write_text_atomic

    def record(url, text, **kwargs):
        written.append(url)
        real_write(url, text, **kwargs)

    monkeypatch.setattr(storage, "write_text_atomic", record)
    write_prediction(str(tmp_path), job, tokens, samples)
    name = job.safe_name
    assert written[-1].endswith(f"{name}/{name}_summary_confidences.json")
    assert len(written) == len(set(written)) == 3 * 3 + 5 + 1
    for i in range(3):   # each sample's summary after its model and confidences
        sub = [w for w in written if f"sample-{i}/" in w]
        assert sub[-1].endswith("summary_confidences.json")
    top = json.loads((tmp_path / name / f"{name}_summary_confidences.json").read_text())
    assert top["ranking_score"] == 0.9

    # a rerun removes the old completion marker first, then writes it again
    written.clear()
    seen_complete = []
    monkeypatch.setattr(storage, "write_text_atomic", lambda url, text, **kw: (
        seen_complete.append(is_complete(str(tmp_path), job)), real_write(url, text, **kw)))
    write_prediction(str(tmp_path), job, tokens, samples[:1])
    assert not any(seen_complete) and is_complete(str(tmp_path), job)


def test_write_prediction_refuses_bad_sample_sets(tmp_path):
    job = load_job("tiny_protein_ligand_smiles")
    tokens = tokenize(job)
    with pytest.raises(ValueError, match="no samples"):
        write_prediction(str(tmp_path), job, tokens, [])
    twice = [make_sample(tokens, 1, 0), make_sample(tokens, 1, 0)]
    with pytest.raises(ValueError, match="repeated"):
        write_prediction(str(tmp_path), job, tokens, twice)
    with pytest.raises(ValueError, match="chain_pair_iptm"):
        write_prediction(str(tmp_path), job, tokens,
                         [make_sample(tokens, 1, 0, chain_pair_iptm=np.zeros((3, 3)))])
