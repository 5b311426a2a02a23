"""Finding and reading inputs: folders, JSONL, gzip, mixed formats, bad records in place."""

import gzip
import json

from foldray.errors import InputError
from foldray.inputs.job import Job
from foldray.inputs.load import find_inputs, iter_jobs, read_jobs
from tests.data_paths import BAD_INPUTS, INPUTS, STRUCTURES


def test_jsonl_keeps_good_lines_and_locates_bad_ones(tmp_path):
    good = json.loads((INPUTS / "1l2y.json").read_text())
    server = {"name": "server_job", "modelSeeds": [], "dialect": "alphafoldserver", "version": 1,
              "sequences": [{"proteinChain": {"sequence": "NLYIQWLKDGGPSSGRPPPS", "count": 2}}]}
    lines = [json.dumps(good), "{not json", "", json.dumps(server),
             json.dumps(good | {"name": "bad", "sequences": []})]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines))
    results = read_jobs(str(path))
    assert [type(r).__name__ for r in results] == ["Job", "InputError", "Job", "InputError"]
    assert results[1].field == "line 2"
    assert results[2].chain_ids == ("A", "B")
    assert results[3].job == "bad" and results[3].field == "sequences"


def test_folders_mix_formats_and_gzip(tmp_path):
    (tmp_path / "a.json").write_text((INPUTS / "1bna.json").read_text())
    (tmp_path / "b.cif.gz").write_bytes(gzip.compress((STRUCTURES / "1l2y.cif").read_bytes()))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "bad.cif").write_text("")
    assert [p.rsplit("/", 1)[1] for p in find_inputs(str(tmp_path))] == ["a.json", "b.cif.gz",
                                                                         "bad.cif"]
    results = list(iter_jobs([str(tmp_path), str(BAD_INPUTS / "wrong_dialect_version.json")]))
    kinds = [(type(r).__name__, r.name if isinstance(r, Job) else r.field) for r in results]
    assert kinds == [("Job", "1bna"), ("Job", "1L2Y"), ("InputError", ""), ("InputError", "dialect")]


def test_missing_inputs_are_errors_not_crashes(tmp_path):
    results = list(iter_jobs([str(tmp_path / "nope"), str(tmp_path)]))
    assert all(isinstance(r, InputError) for r in results)
    assert "no such file" in results[0].message and "no input files" in results[1].message
