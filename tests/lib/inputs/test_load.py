"""Finding and reading inputs: folders, JSONL, gzip, mixed formats, bad records in place."""

import gzip
import json

import pytest

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


def test_gzip_bomb_is_refused_at_the_cap(tmp_path):
    from foldray.inputs.load import gunzip

    bomb = gzip.compress(bytes(200 * 2**20), compresslevel=9)   # 200 MB of zeros, ~200 KB
    assert len(bomb) < 300_000
    path = tmp_path / "bomb.cif.gz"
    path.write_bytes(bomb)
    (err,) = read_jobs(str(path), max_decompressed=16 * 2**20)
    assert isinstance(err, InputError) and err.source == str(path)
    assert "more than 16777216 bytes" in err.message
    with pytest.raises(InputError, match="more than 1000 bytes"):
        gunzip(bomb, source="x.gz", limit=1000)
    # below the cap: every member of a multi-member file, and broken streams are located
    assert gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), source="x.gz") == b"abcd"
    with pytest.raises(InputError, match="truncated"):
        gunzip(gzip.compress(b"abc" * 1000)[:-20], source="x.gz")
    with pytest.raises(InputError, match="not a valid gzip"):
        gunzip(b"not gzip at all", source="x.gz")


def test_gzip_cap_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "big.cif.gz"
    path.write_bytes(gzip.compress((STRUCTURES / "1l2y.cif").read_bytes()))
    assert isinstance(read_jobs(str(path))[0], Job)
    monkeypatch.setenv("FOLDRAY_MAX_DECOMPRESSED_BYTES", "1000")
    assert "more than 1000 bytes" in read_jobs(str(path))[0].message


def test_jsonl_lines_that_break_json_itself_are_located(tmp_path):
    good = json.loads((INPUTS / "1l2y.json").read_text())
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(["[" * 100_000 + "]" * 100_000, '{"a": ' + "9" * 5000 + "}",
                               json.dumps(good)]))
    results = read_jobs(str(path))
    assert [type(r).__name__ for r in results] == ["InputError", "InputError", "Job"]
    assert [r.field for r in results[:2]] == ["line 1", "line 2"]
    assert "nested too deeply" in results[0].message


def test_manifest_errors_do_not_quote_its_rows(tmp_path):
    from foldray.inputs.manifest import read_manifest

    path = tmp_path / "m.csv"
    path.write_text("input\na.json\nb.json,secret-token-123\n")
    with pytest.raises(InputError) as info:
        read_manifest(str(path))
    assert "Expected 1 columns, got 2" in info.value.message
    assert "secret-token" not in str(info.value)
    with pytest.raises(InputError, match="FileNotFoundError"):
        read_manifest(str(tmp_path / "missing.csv"))
