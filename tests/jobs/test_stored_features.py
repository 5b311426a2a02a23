"""`foldray featurize` output as `foldray predict-batch` input, on a real Ray: the model runs
on the stored features and writes what predicting from the JSON with the same seed writes."""

import json

import pyarrow.parquet as pq

from foldray.jobs.cli import main
from tests.data_paths import INPUTS

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.5",
        "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1", "--actors", "1-1", "--quiet"]
NAMES = ("1l2y", "tiny_protein_ligand_smiles")


def rows(out) -> dict[str, dict]:
    return {r["name"] or r["source"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


def test_predict_batch_on_featurize_output_equals_predicting_from_json(ray_session, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in NAMES:
        (inputs / f"{name}.json").write_text((INPUTS / f"{name}.json").read_text())
    features, stored, direct = tmp_path / "features", tmp_path / "stored", tmp_path / "direct"
    assert main(["featurize", "--inputs", str(inputs), "--out", str(features), "--seed", "7",
                 "--quiet"]) == 0
    # an old sidecar without the job is that job's error row, not the batch's
    (features / "old").mkdir()
    (features / "old" / "features.json").write_text(json.dumps({"name": "old", "n_tokens": 3}))

    assert main(["predict-batch", "--inputs", str(features), "--out", str(stored), "--seeds", "7",
                 *FAST]) == 2
    assert main(["predict-batch", "--inputs", str(inputs), "--out", str(direct), "--seeds", "7",
                 *FAST]) == 0
    from_store, from_json = rows(stored), rows(direct)
    old = from_store.pop(str(features / "old" / "features.json"))
    assert old["status"] == "error" and "run foldray featurize again" in old["error"]
    assert {n: r["status"] for n, r in from_store.items()} == dict.fromkeys(NAMES, "ok")
    for name in NAMES:
        assert from_store[name]["source"] == from_json[name]["source"]   # the original input
        assert from_store[name]["n_atoms"] == from_json[name]["n_atoms"]
        cif = f"{name}/{name}_model.cif"
        assert (stored / cif).read_text() == (direct / cif).read_text()

    # a rerun skips the jobs finished from stored features, like any finished job
    assert main(["predict-batch", "--inputs", str(features / NAMES[0]), "--out", str(stored),
                 "--seeds", "7", *FAST]) == 0
    assert rows(stored)[NAMES[0]]["status"] == "skipped"


def test_driver_read_and_ray_read_give_the_same_rows(ray_session, tmp_path):
    """A few input files are read in the driver (no Ray read tasks, no sort shuffle); more
    go through Ray tasks. Both give the same rows: statuses, sizes, errors, duplicates."""
    from foldray.actors.batch import BatchSettings, run_batch
    from tests.data_paths import BAD_INPUTS

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in NAMES:
        (inputs / f"{name}.json").write_text((INPUTS / f"{name}.json").read_text())
    (inputs / "again.json").write_text((INPUTS / "1l2y.json").read_text())   # a duplicate name
    (inputs / "bad.json").write_text((BAD_INPUTS / "invalid_smiles.json").read_text())
    keys = ("source", "name", "status", "error", "n_tokens", "n_atoms")
    found = []
    for limit in (8, 0):
        out = tmp_path / f"out{limit}"
        result = run_batch(BatchSettings(inputs=(str(inputs),), out=str(out), stop_after="featurize",
                                         driver_read_max_inputs=limit, quiet=True))
        found.append([{k: row[k] if k != "error" else row[k].replace(str(out), "")
                       for k in keys} for row in result.rows])
    assert found[0] == found[1]
    assert sorted(r["status"] for r in found[0]) == ["error", "error", "error", "ok"]
