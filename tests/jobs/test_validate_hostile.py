"""`foldray validate` on the hostile-input corpus (tests/fixtures/hostile/corpus.py): every
record gives one located `error:` line, never an internal error, a Python exception name or
a traceback, no file content is echoed, and the good job in the same call is still reported."""

import json
import shutil
import socket
import time

from foldray.jobs.cli import main
from tests.data_paths import INPUTS
from tests.fixtures.hostile.corpus import AF3_CASES, write_corpus

PYTHON_ERRORS = ("Traceback", "internal error", "TypeError", "KeyError", "AttributeError",
                 "RecursionError", "IndexError", "unhashable", "NoneType")


def test_every_hostile_record_is_a_located_error_and_good_jobs_survive(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("FOLDRAY_MAX_DECOMPRESSED_BYTES", str(8 * 2**20))
    monkeypatch.delenv("FOLDRAY_ALLOW_ANY_INPUT_PATH", raising=False)
    monkeypatch.delenv("FOLDRAY_INPUT_PATH_ROOTS", raising=False)
    corpus = tmp_path / "hostile"
    expected = write_corpus(corpus)
    good = tmp_path / "good" / "1l2y.json"
    good.parent.mkdir()
    shutil.copy(INPUTS / "1l2y.json", good)
    paths = [str(corpus / name) for name in sorted(expected)]
    start = time.perf_counter()
    code = main(["validate", "--json", paths[0], str(good), *paths[1:]])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 2
    assert [r["name"] for r in json.loads(captured.out)] == ["1l2y"]
    lines = captured.err.strip().splitlines()
    for word in PYTHON_ERRORS:
        assert word not in captured.err, [line for line in lines if word in line]
    by_file: dict[str, list[str]] = {}
    for line in lines:
        assert line.startswith("error: "), line
        by_file.setdefault(line.removeprefix("error: ").split(": ", 1)[0], []).append(line)
    problems = []
    for name, (job, field, words) in sorted(expected.items()):
        path = str(corpus / name)
        found = by_file.get(path, [])
        prefix = f"error: {path}: {job}: {field}: "
        if len(found) != 1 or not found[0].startswith(prefix) or \
                not all(word in found[0] for word in words):
            problems.append((name, prefix, words, found))
        elif len(found[0]) > 1000:
            problems.append((name, "line too long", len(found[0])))
    assert not problems, "\n".join(map(str, problems))
    assert len(lines) == len(expected)
    assert "secret-token-123" not in captured.err           # file/MSA text is never echoed
    hostname = socket.gethostname()
    if len(hostname) > 3:
        assert hostname not in captured.err
    assert seconds < 120, seconds   # no conformer of an oversized ligand was attempted


def test_the_corpus_covers_every_field_of_the_af3_dialect():
    fields = {field.split("[")[0].split(".")[0] for _, field, _ in AF3_CASES.values()}
    assert {"dialect", "version", "modelSeeds", "sequences", "bondedAtomPairs", "userCCD",
            "userCCDPath"} <= fields
    paths = " ".join(field for _, field, _ in AF3_CASES.values())
    for key in ("id", "sequence", "modifications", "ptmType", "ptmPosition", "unpairedMsa",
                "unpairedMsaPath", "pairedMsaPath", "templates", "mmcif", "mmcifPath",
                "queryIndices", "templateIndices", "description", "smiles", "ccdCodes"):
        assert f".{key}" in paths, key
