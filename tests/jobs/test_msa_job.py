"""`foldray msa` and its Ray stage: sharded search on real Ray equals the unsharded one, dead
shard workers are restarted, reruns come from the cache, and `foldray predict` runs on the
rewritten jobs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from foldray.actors.msa_stage import RayShards
from foldray.inputs.a3m import parse_a3m
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.cli import main
from foldray.msa.config import DatabaseConfig, MsaConfig
from foldray.msa.search import LocalShards, iterative_search
from tests.data_paths import INPUTS, SHARED_DATA
from tests.plugins.ray_s3 import child_env

PROTEIN_DB = SHARED_DATA / "seqdb" / "protein_db.fasta"
NO_HIT_SEQUENCE = "MFPCDVENWCTHCDQQDIDVQCWEIWCWWPCICVFLQFVEWLVGEWWHNEVDWCYHSVQM"


def _seq(name: str) -> str:
    job = json.loads((INPUTS / f"{name}.json").read_text())
    return next(e["protein"]["sequence"] for e in job["sequences"] if "protein" in e)


@pytest.fixture(scope="module")
def db() -> DatabaseConfig:
    return DatabaseConfig(name="uniref90", url=str(PROTEIN_DB))


@pytest.fixture
def ray_shards(ray_session, db):
    """3 shards held by 2 workers (worker 0: shards 0 and 2, worker 1: shard 1).

    Per test, not per module: the workers hold 1 of the session's 2 CPUs, and a later
    predict-batch test in this module needs both for its featurize and model actors."""
    shards = RayShards(MsaConfig(databases=(db,), shards=3), 2, num_cpus=0.5)
    yield shards
    shards.close()


def test_sharded_ray_search_equals_unsharded(ray_shards, db):
    seq = _seq("102m")
    unsharded = iterative_search(seq, db, LocalShards(1))
    sharded = iterative_search(seq, db, ray_shards)
    assert len(ray_shards.workers) == 2 and ray_shards.calls == 3
    assert ray_shards.database_size(db)[0] == 9674
    assert sharded.evalues.keys() == unsharded.evalues.keys()
    assert 700 <= len(sharded.evalues) <= 850
    for name, evalue in unsharded.evalues.items():
        assert sharded.evalues[name] == pytest.approx(evalue, rel=1e-6)
    assert sharded.a3m == unsharded.a3m


def test_dead_shard_worker_is_restarted_and_the_search_retried(ray_shards, db):
    seq = _seq("102m")
    before = iterative_search(seq, db, ray_shards)
    victim = ray_shards.owner[1]
    old_pid = ray.get(victim.pid.remote())
    ray.kill(victim, no_restart=False)  # the worker process dies; Ray restarts the actor
    after = iterative_search(seq, db, ray_shards)
    assert ray.get(victim.pid.remote()) != old_pid
    assert after.evalues == before.evalues


def _write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A myoglobin + heme job without MSAs, a no-hit job, and a config (2 databases, 3 shards)."""
    jobs = [{"dialect": "alphafold3", "version": 2, "name": "myoglobin", "modelSeeds": [1],
             "sequences": [{"protein": {"id": "A", "sequence": _seq("102m")}},
                           {"ligand": {"id": "B", "ccdCodes": ["HEM"]}}]},
            {"dialect": "alphafold3", "version": 2, "name": "orphan", "modelSeeds": [1],
             "sequences": [{"protein": {"id": "A", "sequence": NO_HIT_SEQUENCE}}]}]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for job in jobs:
        (inputs / f"{job['name']}.json").write_text(json.dumps(job))
    config = tmp_path / "msa.yaml"
    config.write_text(f"shards: 3\ndatabases:\n"
                      f"  - {{name: uniref90, url: {PROTEIN_DB}}}\n"
                      f"  - {{name: uniprot, url: {PROTEIN_DB}, role: paired}}\n")
    return inputs, config


def _counts(output: str) -> tuple[int, int]:
    match = re.search(r"(\d+) database searches run, (\d+) from the cache", output)
    assert match, output
    return int(match[1]), int(match[2])


def test_msa_command_fills_jobs_caches_and_feeds_predict(ray_session, tmp_path, capsys):
    inputs, config = _write_inputs(tmp_path)
    cache = tmp_path / "cache"
    args = [str(inputs), "--config", str(config), "--workers", "2", "--worker-cpus", "0.5",
            "--cache", str(cache)]
    assert main(["msa", *args, "--out", str(tmp_path / "run1")]) == 0
    out, err = capsys.readouterr()
    assert _counts(out) == (4, 0)  # 2 chains x 2 databases
    assert "warning:" in err and "no hits" in err  # the orphan chain
    (job,) = parse_af3_json((tmp_path / "run1" / "myoglobin_data.json").read_text())
    chain = job.entities[0]
    assert parse_a3m(chain.unpaired_msa, "protein").depth > 700
    assert parse_a3m(chain.paired_msa, "protein").depth > 700
    (orphan,) = parse_af3_json((tmp_path / "run1" / "orphan_data.json").read_text())
    assert parse_a3m(orphan.entities[0].unpaired_msa, "protein").depth == 1

    assert main(["msa", *args, "--out", str(tmp_path / "run2")]) == 0
    assert _counts(capsys.readouterr()[0]) == (0, 4)  # served from the cache: no search ran
    for name in ("myoglobin_data.json", "orphan_data.json"):
        assert (tmp_path / "run1" / name).read_text() == (tmp_path / "run2" / name).read_text()

    predicted = tmp_path / "predicted"
    assert main(["predict", str(tmp_path / "run1" / "orphan_data.json"), str(tmp_path / "run1" /
                 "myoglobin_data.json"), "--out", str(predicted), "--samples", "1", "--steps", "2",
                 "--recycles", "1", "--quiet"]) == 0
    assert sorted(p.name for p in predicted.iterdir() if p.is_dir()) == ["myoglobin", "orphan"]
    assert list((predicted / "myoglobin").glob("*_model.cif"))


def test_missing_database_fails_at_start_naming_it(tmp_path, capsys):
    inputs, _ = _write_inputs(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(f"databases:\n  - {{name: uniref90, url: {PROTEIN_DB}}}\n"
                      f"  - {{name: mgnify, url: {tmp_path}/mgy_clusters_2022_05.fa}}\n")
    assert main(["msa", str(inputs), "--config", str(config), "--out", str(tmp_path / "o"),
                 "--no-ray"]) == 2
    err = capsys.readouterr().err
    assert "database 'mgnify'" in err and "mgy_clusters_2022_05.fa" in err and "not found" in err
    assert not (tmp_path / "o").exists()


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "foldray.jobs.msa", "--help"], capture_output=True,
                            text=True, env=child_env(), timeout=120)
    assert result.returncode == 0 and "--shards" in result.stdout


def test_predict_batch_with_msa_search(ray_session, tmp_path, capsys):
    """`foldray predict-batch --msa search`: the search stage runs before featurization."""
    import pyarrow.parquet as pq

    _, config = _write_inputs(tmp_path)
    inputs = tmp_path / "batch"
    inputs.mkdir()
    (inputs / "trpcage.json").write_text(json.dumps(
        {"dialect": "alphafold3", "version": 2, "name": "trpcage", "modelSeeds": [1],
         "sequences": [{"protein": {"id": "A", "sequence": "NLYIQWLKDGGPSSGRPPPS"}}]}))
    out = tmp_path / "out"
    assert main(["predict-batch", "--inputs", str(inputs), "--out", str(out), "--msa", "search",
                 "--msa-config", str(config), "--msa-workers", "1", "--samples", "1", "--steps", "2",
                 "--recycles", "1", "--quiet"]) == 0
    assert "--msa-config" not in capsys.readouterr().err
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["name"], r["status"]) for r in table] == [("trpcage", "ok")]
    assert list((out / "msa_cache").rglob("*.a3m"))  # 2 databases searched and cached
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"databases:\n  - {{name: bfd, url: {tmp_path}/nope.fa}}\n")
    assert main(["predict-batch", "--inputs", str(inputs), "--out", str(out), "--msa", "search",
                 "--msa-config", str(bad), "--quiet"]) == 2
    assert "database 'bfd'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("mmseqs") is None,
                    reason="the mmseqs binary is not installed (apt-get install mmseqs2)")
def test_mmseqs2_searches_run_as_ray_tasks_and_equal_the_unsharded_search(ray_session, tmp_path):
    """The MSA stage sends a job's MMseqs2 searches (2 chains) to Ray CPU tasks at once, with
    3 shards (MMseqs2's own split); the MSAs equal an unsharded in-process search's."""
    from foldray.actors.msa_stage import MsaSearchStage
    from foldray.actors.predict_rows import PENDING, result_row
    from foldray.inputs.job import Job, PolymerChain
    from foldray.msa.fill import ChainSearcher, LocalMmseqs, fill_jobs

    records = PROTEIN_DB.read_text().split(">")[1:]
    small = tmp_path / "seqdb_tenth.fasta"        # every 10th sequence: ~80 homologs per chain
    small.write_text("".join(">" + record for record in records[::10]))
    db = DatabaseConfig(name="seqdb", url=str(small), tool="mmseqs2")
    chains = tuple(PolymerChain(ids=(cid,), mol_type="protein", sequence=_seq(name))
                   for cid, name in (("A", "102m"), ("B", "5zyh")))
    job = Job(name="pair", seeds=(1,), entities=chains)

    local = LocalMmseqs()
    (expected,) = fill_jobs([job], ChainSearcher(MsaConfig(databases=(db,)), LocalShards(1), None,
                                                 mmseqs=local))
    stage = MsaSearchStage(MsaConfig(databases=(db,), shards=3), None, None)
    row = stage(result_row(PENDING, name="pair", payload=job))
    assert not stage.shards.workers                      # no HMMER database: no shard actors
    assert stage.mmseqs.calls == 2 and local.calls == 2
    assert (row["msa_chains"], row["msa_searched"], row["msa_cached"]) == (2, 2, 0), row["error"]
    for got, want in zip(row["payload"].entities, expected.entities, strict=True):
        assert got.unpaired_msa == want.unpaired_msa and 50 < got.unpaired_msa.count(">") < 200
    again = stage(result_row(PENDING, name="pair again", payload=job))   # the stage's memo
    assert stage.mmseqs.calls == 2 and again["payload"].entities == row["payload"].entities
