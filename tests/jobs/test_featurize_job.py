"""`foldray featurize` end to end on a real Ray instance, local files and a real S3 server."""

import json

import numpy as np
import pyarrow.parquet as pq

from foldray.io.feature_store import load_features
from foldray.jobs.cli import main
from tests.data_paths import BAD_INPUTS, INPUTS


def test_local_batch_reports_bad_records_and_resumes(ray_session, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("1l2y.json", "tiny_protein_dna.json"):
        (inputs / name).write_text((INPUTS / name).read_text())
    (inputs / "bad.json").write_text((BAD_INPUTS / "invalid_smiles.json").read_text())
    out = tmp_path / "out"

    code = main(["featurize", "--inputs", str(inputs), "--out", str(out), "--quiet"])
    assert code == 2                                   # one bad record, reported
    table = pq.read_table(out / "results.parquet").to_pylist()
    by_name = {row["name"]: row for row in table}
    assert by_name["bad_smiles"]["status"] == "error"
    assert "sequences[1].ligand.smiles" in by_name["bad_smiles"]["error"]
    assert by_name["1l2y"]["status"] == "ok" and by_name["1l2y"]["n_tokens"] == 20
    features = load_features(by_name["tiny_protein_dna"]["output"])
    assert features["restype"].shape == (44, 32)
    assert json.loads((out / "tiny_protein_dna" / "features.json").read_text())["n_tokens"] == 44
    assert "bad_smiles" in capsys.readouterr().err

    # rerun: finished jobs are skipped, not recomputed; the bad one is reported again
    before = (out / "1l2y" / "features.npz").stat().st_mtime_ns
    assert main(["featurize", "--inputs", str(inputs), "--out", str(out), "--quiet"]) == 2
    rerun = {row["name"]: row["status"] for row in pq.read_table(out / "results.parquet").to_pylist()}
    assert rerun == {"1l2y": "skipped", "tiny_protein_dna": "skipped", "bad_smiles": "error"}
    assert (out / "1l2y" / "features.npz").stat().st_mtime_ns == before


def test_duplicate_output_names_are_reported_not_overwritten(ray_session, tmp_path):
    jobs = [json.loads((INPUTS / "1l2y.json").read_text()) for _ in range(2)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    out = tmp_path / "out"
    assert main(["featurize", "--inputs", str(tmp_path / "jobs.json"), "--out", str(out),
                 "--quiet"]) == 2
    statuses = [row["status"] for row in pq.read_table(out / "results.parquet").to_pylist()]
    assert statuses == ["error", "error"]
    assert not (out / "1l2y").exists()


def test_s3_inputs_to_s3_outputs(ray_session, s3_server, s3_bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    fs = s3_server.filesystem()
    for name in ("1l2y.json", "tiny_protein_ligand_smiles.json"):
        fs.pipe(f"{s3_bucket}/in/{name}", (INPUTS / name).read_bytes())
    out = f"s3://{s3_bucket}/out"
    assert main(["featurize", "--inputs", f"s3://{s3_bucket}/in", "--out", out, "--quiet"]) == 0
    assert fs.exists(f"{s3_bucket}/out/results.parquet")
    with fs.open(f"{s3_bucket}/out/results.parquet", "rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    with fs.open(f"{s3_bucket}/out/tiny_protein_ligand_smiles/features.npz", "rb") as handle:
        features = dict(np.load(handle, allow_pickle=False))
    assert features["is_ligand"].sum() == 15   # ibuprofen: 15 heavy atoms, one token each


def test_job_names_become_sanitized_folder_names(ray_session, tmp_path):
    job = json.loads((INPUTS / "1l2y.json").read_text()) | {"name": "Trp Cage #1"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / "out"
    assert main(["featurize", "--inputs", str(tmp_path / "job.json"), "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "trp_cage_1" / "features.npz").exists()
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["trp_cage_1"]
