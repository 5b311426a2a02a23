"""`foldray predict-batch` on a real Ray instance and a real S3 server (SeaweedFS).

Tiny config, 1 sample, few diffusion steps: the point is the pipeline (reading from a bucket,
statuses, AF3 outputs, resume, actor death, storage errors), not the model.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gemmi
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from foldray.features.tokenize import tokenize
from foldray.inputs.af3_json import parse_af3_json
from foldray.io.results import read_parts
from foldray.jobs import validate
from foldray.jobs.cli import main
from tests.data_paths import BAD_INPUTS, INPUTS

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.5",
        "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1",
        "--quiet"]
BASES = ("1l2y", "1bna", "tiny_protein_dna", "tiny_protein_ligand_smiles")
VARIANTS = Path(__file__).resolve().parents[1] / "fixtures" / "batch_jobs" / "variants.jsonl"
BAD_FILES = sorted(p.name for p in BAD_INPUTS.iterdir() if p.suffix in (".json", ".cif"))


def base_job(name: str) -> dict:
    return json.loads((INPUTS / f"{name}.json").read_text())


def variants(count: int, tag: str) -> list[dict]:
    """Renamed / reseeded / trimmed copies of the small shared inputs, plus CCD-ligand and
    RNA jobs, so token counts differ from job to job: the first `count` jobs of the fixture
    (written by benchmarks/batch_jobs.py, whose mix benchmarks/batch_overhead.py runs)."""
    lines = VARIANTS.read_text().splitlines()
    assert count <= len(lines), f"{VARIANTS} has {len(lines)} jobs; regenerate it with more"
    jobs = [json.loads(line) for line in lines[:count]]
    for job in jobs:
        job["name"] = f"{tag}_{job['name']}"
    return jobs


def put_dataset(fs, prefix: str) -> tuple[dict[str, dict], list[str]]:
    """30+ jobs in the bucket: single-job files, a multi-job JSON, a JSONL, and every bad input.

    Returns the good jobs by name and the URLs of the bad files.
    """
    good = {}
    for name in BASES:
        fs.pipe(f"{prefix}/single/{name}.json", (INPUTS / name).with_suffix(".json").read_bytes())
        good[name] = base_job(name)
    listed, lined = variants(10, "list"), variants(10, "line")
    fs.pipe(f"{prefix}/multi/listed.json", json.dumps(listed).encode())
    fs.pipe(f"{prefix}/multi/lined.jsonl", "\n".join(json.dumps(j) for j in lined).encode())
    good.update({j["name"]: j for j in listed + lined})
    for name in [*BAD_FILES, "a3m_query_mismatch.a3m"]:   # the .a3m is data, not an input
        fs.pipe(f"{prefix}/bad/{name}", (BAD_INPUTS / name).read_bytes())
    return good, [f"s3://{prefix}/bad/{name}" for name in BAD_FILES]


def read_results(fs, out: str) -> list[dict]:
    with fs.open(f"{out.removeprefix('s3://')}/results.parquet", "rb") as handle:
        return pq.read_table(handle).to_pylist()


def check_outputs(fs, job: dict, folder_url: str) -> None:
    """The top model reads back with gemmi with the job's chains, residues and atoms."""
    (parsed,) = parse_af3_json(json.dumps(job), source="expected")
    tokens = tokenize(parsed)
    stem = parsed.safe_name
    folder = folder_url.removeprefix("s3://")
    summary = json.loads(fs.cat(f"{folder}/{stem}_summary_confidences.json"))
    assert 0 <= summary["ptm"] <= 1
    block = gemmi.cif.read_string(fs.cat(f"{folder}/{stem}_model.cif").decode()).sole_block()
    st = gemmi.make_structure_from_block(block)
    assert [ch.name for ch in st[0]] == [c.chain_id for c in tokens.chains], stem
    for chain, info in zip(st[0], tokens.chains, strict=True):
        assert len(chain) == len(info.residue_names), (stem, chain.name)
    assert st[0].count_atom_sites() == tokens.n_atoms, stem


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


def test_bucket_batch_with_bad_records(ray_session, s3_server, s3_bucket, s3_env, capsys):
    fs = s3_server.filesystem()
    good, bad_urls = put_dataset(fs, f"{s3_bucket}/in")
    assert len(good) + len(bad_urls) >= 30
    out = f"s3://{s3_bucket}/out"

    code = main(["predict-batch", "--inputs", f"s3://{s3_bucket}/in", "--out", out,
                 "--actors", "2-2", *FAST])
    captured = capsys.readouterr()
    assert code == 2, captured.err                      # bad records: reported, exit 2
    rows = read_results(fs, out)
    assert len(rows) == len(good) + len(bad_urls)       # exactly one row per job
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "error", "skipped")}
    assert sorted(r["name"] for r in by_status["ok"]) == sorted(good)
    assert len(by_status["error"]) == len(bad_urls) and not by_status["skipped"]
    assert f"ok {len(good)}, error {len(bad_urls)}, skipped 0" in captured.out

    # each bad record carries exactly the message `foldray validate` prints for it
    assert validate.main(bad_urls) == 2
    expected = sorted(capsys.readouterr().err.splitlines())
    assert sorted(f"error: {r['error']}" for r in by_status["error"]) == expected
    assert any("above the limit of 8192" in line for line in expected)

    # two actors shared the work; metrics and sizes are filled in; outputs read back
    assert len({r["actor_id"] for r in by_status["ok"]}) == 2
    for row in by_status["ok"]:
        assert row["n_tokens"] > 0 and row["model_seconds"] > 0 and row["featurize_seconds"] > 0
        assert 0 <= row["mean_plddt"] <= 100 and row["ranking_score"] is not None
        check_outputs(fs, good[row["name"]], row["output"])


def test_kill_driver_then_resume(ray_session, s3_server, s3_bucket, s3_env, tmp_path):
    """SIGKILL a running batch (driver on the shared cluster), rerun: done jobs are skipped."""
    fs = s3_server.filesystem()
    jobs = variants(12, "resume")
    fs.pipe(f"{s3_bucket}/in/jobs.jsonl", "\n".join(json.dumps(j) for j in jobs).encode())
    out = f"s3://{s3_bucket}/out"
    args = ["--inputs", f"s3://{s3_bucket}/in", "--out", out, "--actors", "1-1",
            "--samples", "1", "--steps", "4", "--recycles", "1", "--num-cpus-per-actor", "0.5",
            "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1", "--quiet"]
    # The session Ray binds loopback only (tests/plugins/ray_s3.py); Ray's single-machine mode keeps the
    # second driver from rewriting 127.0.0.1 to the machine's LAN address.
    env = {**ray_session.env, **s3_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    gcs = "127.0.0.1:" + ray_session.address.rsplit(":", 1)[1]
    log = tmp_path / "driver.log"
    with open(log, "wb") as handle:   # a file, not a pipe: a full pipe would stall the driver
        proc = subprocess.Popen([sys.executable, "-m", "foldray.jobs.predict_batch", *args,
                                 "--address", gcs], env=env,
                                stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400   # generous: the 2 shared cores may be busy
        while (len(fs.glob(f"{s3_bucket}/out/*/*_summary_confidences.json")) < 2
               or not any(r["status"] == "ok" for r in read_parts(out))):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no job finished in time: " + log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(2)   # Ray reaps the dead driver's workers
    done_before = {p.split("/")[-2] for p in
                   fs.glob(f"{s3_bucket}/out/*/*_summary_confidences.json")}
    assert 2 <= len(done_before) < len(jobs)
    assert not fs.exists(f"{s3_bucket}/out/results.parquet")
    # rows finished before the kill survive in the part files
    parted = {r["safe_name"] for r in read_parts(out) if r["status"] == "ok"}
    assert parted and parted <= done_before

    assert main(["predict-batch", *args]) == 0
    rows = read_results(fs, out)
    statuses = {r["name"]: r["status"] for r in rows}
    assert len(rows) == len(jobs) and set(statuses) == {j["name"] for j in jobs}
    skipped = {name for name, status in statuses.items() if status == "skipped"}
    assert done_before <= skipped
    assert set(statuses.values()) == {"ok", "skipped"}
    for row in rows:   # skipped jobs carry the scores of their outputs
        assert row["ranking_score"] is not None and row["mean_plddt"] is not None, row
    fs.invalidate_cache()
    assert read_parts(out) == []      # merged into results.parquet, part files removed
    for job in jobs:
        check_outputs(fs, job, f"{out}/{job['name']}")


def _alive_inference_actors(job_id: str) -> dict[str, int]:
    """Actor id -> PID of this driver's alive Ray Data map actors (only PredictStage here)."""
    from ray._private import state

    return {actor_id: info["Pid"] for actor_id, info in state.actors().items()
            if info["JobID"] == job_id and "MapWorker" in info["ActorClassName"]
            and info["State"] == "ALIVE" and info["Pid"]}


def test_killed_inference_actor_is_replaced_and_records_retried(ray_session, tmp_path):
    import ray

    jobs = variants(12, "actor")
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    out = tmp_path / "out"
    job_id = ray.get_runtime_context().get_job_id()
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.update(code=main([
        "predict-batch", "--inputs", str(tmp_path / "jobs.json"), "--out", str(out),
        "--actors", "1-1", "--samples", "1", "--steps", "4", "--recycles", "1",
        "--num-cpus-per-actor", "0.5", "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1",
        "--quiet"])))
    runner.start()
    killed = None
    deadline = time.monotonic() + 400
    while runner.is_alive() and killed is None and time.monotonic() < deadline:
        actors = _alive_inference_actors(job_id)
        if actors and len(list(out.glob("*/*_summary_confidences.json"))) >= 2:
            killed = next(iter(actors.items()))
            os.kill(killed[1], signal.SIGKILL)
        time.sleep(0.05)
    runner.join(timeout=400)
    assert killed is not None, "the batch finished before an actor could be killed"
    assert result.get("code") == 0
    from ray._private import state

    assert state.actors()[killed[0]]["NumRestarts"] >= 1     # replaced, not abandoned
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["name"] for r in rows) == sorted(j["name"] for j in jobs)   # none lost/twice
    assert {r["status"] for r in rows} == {"ok"}
    for job in jobs:
        folder = out / job["name"]
        assert (folder / f"{job['name']}_summary_confidences.json").exists()
        st = gemmi.read_structure(str(folder / f"{job['name']}_model.cif"))
        (parsed,) = parse_af3_json(json.dumps(job), source="expected")
        assert st[0].count_atom_sites() == tokenize(parsed).n_atoms


def test_manifests_csv_of_json_and_parquet_of_paths(ray_session, tmp_path, monkeypatch):
    """Both manifest forms: a CSV column of AF3 JSON texts, a Parquet column of input paths;
    given as paths relative to the driver's directory (Ray workers run elsewhere)."""
    jobs = variants(3, "manifest")
    pa_csv.write_csv(pa.table({"json": [json.dumps(j) for j in jobs], "note": ["a", "b", "c"]}),
                     str(tmp_path / "jobs.csv"))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "one.json").write_text(json.dumps(base_job("1bna")))
    pq.write_table(pa.table({"input": ["files/one.json", "files/missing.json"]}),
                   tmp_path / "paths.parquet")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    code = main(["predict-batch", "--inputs", "jobs.csv", "paths.parquet", "--out", "out", *FAST])
    assert code == 2                                    # the missing file is reported
    rows = {r["name"] or r["source"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert {name: r["status"] for name, r in rows.items()} == {
        **{j["name"]: "ok" for j in jobs}, "1bna": "ok",
        str(tmp_path / "files" / "missing.json"): "error"}
    assert rows[jobs[0]["name"]]["source"] == f"{tmp_path / 'jobs.csv'}#row=0"
    assert "no such file or folder" in rows[str(tmp_path / "files" / "missing.json")]["error"]
    assert (out / "1bna" / "1bna_model.cif").exists()  # beside results.parquet, not in a worker's cwd


def test_missing_bucket_fails_before_any_work(s3_server, s3_bucket, s3_env, capsys):
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/in/1l2y.json", (INPUTS / "1l2y.json").read_bytes())
    started = time.monotonic()
    code = main(["predict-batch", "--inputs", f"s3://{s3_bucket}/in",
                 "--out", "s3://no-such-bucket-fr5/out", *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket-fr5/out" in err and "does not exist" in err
    assert time.monotonic() - started < 10              # no Ray start, no model
    assert not fs.exists("no-such-bucket-fr5")          # and the bucket was not created


def test_wrong_credentials_fail_at_start(ray_session, s3_server, s3_bucket, s3_env):
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/in/1l2y.json", (INPUTS / "1l2y.json").read_bytes())
    env = {**ray_session.env, **s3_env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    done = subprocess.run([sys.executable, "-m", "foldray.jobs.predict_batch", "--inputs",
                           f"s3://{s3_bucket}/in", "--out", f"s3://{s3_bucket}/out", *FAST],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"s3://{s3_bucket}/out" in done.stderr and "access denied" in done.stderr
    assert "Started a local Ray" not in done.stderr + done.stdout
    with contextlib.suppress(FileNotFoundError):
        assert fs.ls(f"{s3_bucket}/out") == []
