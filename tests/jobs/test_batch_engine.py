"""The batch engine's failure handling on a real Ray: fault isolation in every stage,
placement checks, output-name collisions (tests/jobs/test_predict_batch.py: the pipeline)."""

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq

from foldray.io.results import read_parts
from foldray.jobs.cli import main
from tests.data_paths import REPO
from tests.jobs.batch_faults import HOOK

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.5",
        "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1", "--actors", "1-1", "--quiet"]


def trp_cage(name: str, sequence: str = "NLYIQWLKDGGPSSGRPPPS") -> dict:
    return {"dialect": "alphafold3", "version": 2, "name": name, "modelSeeds": [1],
            "sequences": [{"protein": {"id": "A", "sequence": sequence}}]}


def results(out) -> dict[str, dict]:
    return {r["name"] or r["source"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


def test_one_bad_record_in_any_stage_is_its_own_error_row(ray_session, tmp_path):
    """Type-confused records (read, featurize), an OOM on the model actor, write failures
    (transient, disk full, a file where the job folder belongs) next to good jobs."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    bond = trp_cage("bad_bond") | {"bondedAtomPairs": [[[["A"], 1, "CA"], ["A", 2, "CA"]]]}
    template = trp_cage("bad_template")
    template["sequences"][0]["protein"]["templates"] = [
        {"mmcif": 123, "queryIndices": [0], "templateIndices": [0]}]
    files = {"good.jsonl": [trp_cage("good_a"), trp_cage("good_b", "GRPPPSNLYIQW")],
             "bond.json": bond, "template.json": template,
             "oom.json": trp_cage("fault_oom"), "flaky.json": trp_cage("fault_flaky"),
             "diskfull.json": trp_cage("fault_diskfull"), "occupied.json": trp_cage("occupied")}
    for name, content in files.items():
        text = "\n".join(json.dumps(j) for j in content) if name.endswith("l") else json.dumps(content)
        (inputs / name).write_text(text)
    out.mkdir()
    (out / "occupied").write_text("a file where the job folder belongs")
    # the faults: Ray's job-level worker setup hook, for this driver's workers only
    job_config = {"runtime_env": {"worker_process_setup_hook": HOOK,
                                  "env_vars": {"PYTHONPATH": str(REPO)}}}
    env = {**ray_session.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config)}
    gcs = "127.0.0.1:" + ray_session.address.rsplit(":", 1)[1]
    loud = [arg for arg in FAST if arg != "--quiet"]   # the default output, minus --quiet's
    done = subprocess.run([sys.executable, "-m", "foldray.jobs.predict_batch", "--inputs",
                           str(inputs), "--out", str(out), *loud, "--address", gcs],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 2, done.stderr[-4000:]
    # quiet by default (no --verbose), attached to a running cluster: none of Ray's own lines
    # (INFO, warnings, forwarded worker output, C++ core messages, progress bars, colours)
    terminal = done.stdout + done.stderr
    for noise in (" INFO ", "WARNING", "falling back to pickled", "core_worker", "\x1b[", "(MapWorker",
                  "Running Dataset", "Token authentication"):
        assert noise not in terminal, (noise, terminal[-4000:])
    driver_logs = list(ray_session.temp_dir.glob("session_*/logs/foldray-driver-*.log"))
    assert driver_logs, "Ray's driver lines should land in the session's log folder"
    rows = results(out)
    status = {name: row["status"] for name, row in rows.items()}
    assert {n: s for n, s in status.items() if s == "ok"} == dict.fromkeys(
        ["good_a", "good_b", "fault_flaky"], "ok"), rows     # flaky: retried, then written
    errors = {name: row["error"] for name, row in rows.items() if row["status"] == "error"}
    assert len(errors) == 5 and len(rows) == 8, rows
    bond_error = next(e for n, e in errors.items() if "bond" in n)
    assert bond_error.startswith(str(inputs / "bond.json")), bond_error
    assert "TypeError: unhashable" in bond_error or "bondedAtomPairs" in bond_error
    assert "bad_template" in errors["bad_template"] and (
        "TypeError: read_string()" in errors["bad_template"] or "mmcif" in errors["bad_template"])
    assert errors["fault_oom"] == (f"{inputs / 'oom.json'}: fault_oom: predict: "
                                   "OutOfMemoryError: CUDA out of memory. Tried to allocate "
                                   "20.00 GiB (GPU 0; 79.15 GiB total capacity)")
    assert "write: OSError: [Errno 28] No space left on device" in errors["fault_diskfull"]
    assert "write: NotADirectoryError" in errors["occupied"] or "FileExistsError" in errors["occupied"]
    assert not any("Traceback" in e or "\n" in e for e in errors.values())
    # the driver's own report lines; tracebacks go to the worker logs (Ray forwards those)
    report = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(report) == 5 and not any("Traceback" in line for line in report)
    assert "ok 3, error 5, skipped 0" in done.stdout
    others = [line for line in done.stderr.splitlines() if not line.startswith(("error: ", "jobs: "))]
    assert len(others) <= 1 and all(line.startswith("warning: no --checkpoint") for line in others), others
    for name in ("good_a", "good_b", "fault_flaky"):
        assert (out / name / f"{name}_summary_confidences.json").exists()
        assert rows[name]["ranking_score"] is not None
    assert (out / "occupied").read_text() == "a file where the job folder belongs"
    assert not list(out.rglob("*.tmp-*")) and not (out / ".results").exists()


def test_actor_that_fits_no_node_fails_at_once_naming_the_resource(ray_session, tmp_path, capsys):
    (tmp_path / "job.json").write_text(json.dumps(trp_cage("gpu_job")))
    started = time.monotonic()
    code = main(["predict-batch", "--inputs", str(tmp_path / "job.json"), "--out",
                 str(tmp_path / "out"), *FAST, "--num-gpus-per-actor", "1"])
    assert code == 2 and time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "cannot place the model actors" in err and "GPU 1 (the most any node has: 0)" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "results.parquet").exists()


def test_pools_that_cannot_start_stop_at_the_placement_deadline(ray_session, tmp_path, capsys,
                                                                 monkeypatch):
    """FOLDRAY_STAGE_RESOURCES=on trusts an autoscaler that this Ray does not have: the
    stage resources never appear, and the deadline stops the run with every job reported."""
    monkeypatch.setenv("FOLDRAY_STAGE_RESOURCES", "on")
    (tmp_path / "job.json").write_text(json.dumps(trp_cage("waits")))
    out = tmp_path / "out"
    started = time.monotonic()
    code = main(["predict-batch", "--inputs", str(tmp_path / "job.json"), "--out", str(out),
                 *FAST, "--placement-timeout", "5"])
    assert code == 2 and time.monotonic() - started < 120
    err = capsys.readouterr().err
    assert "could not be placed within 5 s" in err and "foldray_featurize" in err
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "error" and "not run: the actor pools could not be placed" in row["error"]


def test_name_collisions_across_runs_and_within_a_batch(ray_session, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "first.jsonl").write_text("\n".join(json.dumps(j) for j in [
        trp_cage("Lig"), trp_cage("keep", "GRPPPSNLYIQW")]))
    args = ["predict-batch", "--inputs", str(inputs), "--out", str(out), *FAST]
    assert main([*args, "--samples", "2"]) == 0
    first = results(out)
    assert sorted(p.name for p in (out / "lig").iterdir() if p.is_dir()) == [
        "seed-1_sample-0", "seed-1_sample-1"]

    # a different job named `lig`, and `Case` / `case` in one batch; `keep` again
    (inputs / "first.jsonl").unlink()
    (inputs / "second.jsonl").write_text("\n".join(json.dumps(j) for j in [
        trp_cage("lig", "NLYIQWLKDG"), trp_cage("keep", "GRPPPSNLYIQW"),
        trp_cage("Case"), trp_cage("case", "NLYIQWLKDG")]))
    assert main(args) == 2
    second = results(out)
    assert {n: r["status"] for n, r in second.items()} == {
        "lig": "error", "keep": "skipped", "Case": "error", "case": "error"}
    assert "holds another job with the output name 'lig'" in second["lig"]["error"]
    assert "another job in this batch has the output name 'case'" in second["Case"]["error"]
    for key in ("ranking_score", "ptm", "mean_plddt"):   # skipped: scores of its outputs
        assert second["keep"][key] == first["keep"][key] is not None
    assert not (out / "case").exists()

    # --overwrite replaces the other job's folder entirely: no sample of the 2-sample run left
    (inputs / "second.jsonl").write_text(json.dumps(trp_cage("lig", "NLYIQWLKDG")))
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "lig").iterdir() if p.is_dir()) == ["seed-1_sample-0"]
    data = json.loads((out / "lig" / "lig_data.json").read_text())
    assert data["sequences"][0]["protein"]["sequence"] == "NLYIQWLKDG"
    assert read_parts(str(out)) == []


def test_featurize_stage_ends_a_job_past_its_time_limit_as_its_error_row(ray_session, tmp_path):
    """`--featurize-time-limit`: a ligand whose conformer search outlives the per-job limit
    becomes that job's located error row quickly (the embedding child is killed)."""
    from foldray.actors.prepare_stage import FeaturizeStage, read_stage

    slow = trp_cage("slow_ligand")
    slow["sequences"].append({"ligand": {"id": "B", "smiles": "C" * 150}})
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    [row] = read_stage({"source": str(tmp_path / "slow.json"), "text": None},
                       out_url=str(tmp_path / "out"), max_tokens=None, overwrite=False)
    assert row["status"] == "pending", row["error"]
    stage = FeaturizeStage(seeds=(1,), max_tokens=None, time_limit_s=3.0)
    started = time.monotonic()
    out = stage(row)
    assert time.monotonic() - started < 30
    assert out["status"] == "error" and out["payload"] is None
    assert out["error"].startswith(f"{tmp_path / 'slow.json'}: slow_ligand: sequences[")
    assert "featurization exceeded 3 s" in out["error"]


def test_hostile_corpus_through_predict_batch_gives_error_rows_and_the_good_job(ray_session,
                                                                              tmp_path):
    """The validate corpus (tests/fixtures/hostile) in one batch beside a good job: every
    hostile file is error rows carrying validate's located line (never a Python exception
    name or traceback), and the good job is predicted."""
    import shutil

    from tests.data_paths import INPUTS
    from tests.fixtures.hostile.corpus import write_corpus
    from tests.jobs.test_validate_hostile import PYTHON_ERRORS

    inputs, out = tmp_path / "in", tmp_path / "out"
    expected = write_corpus(inputs / "hostile")
    (inputs / "good").mkdir()
    shutil.copy(INPUTS / "1l2y.json", inputs / "good" / "1l2y.json")
    assert main(["predict-batch", "--inputs", str(inputs), "--out", str(out), *FAST]) == 2
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["name"] for r in rows if r["status"] == "ok"] == ["1l2y"]
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    problems = []
    for name, (job, field, words) in sorted(expected.items()):
        found = by_source.get(str(inputs / "hostile" / name), [])
        prefix = f"{inputs / 'hostile' / name}: {job}: {field}: "
        if name == "gzip_bomb.cif.gz":          # workers inflate up to the default cap (1 GiB)
            words = []
        if not found or any(r["status"] != "error" for r in found) or \
                not any(r["error"].startswith(prefix) and all(w in r["error"] for w in words)
                        for r in found):
            problems.append((name, prefix, [r["error"] for r in found]))
        problems += [(name, word, r["error"]) for r in found for word in PYTHON_ERRORS
                     if word in r["error"]]
    assert not problems, "\n".join(map(str, problems))
