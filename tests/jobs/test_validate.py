"""`foldray validate` on real inputs and on every file of bad_inputs/."""

import json
import subprocess
import sys

import pytest

from foldray.jobs.cli import main
from tests.data_paths import BAD_INPUTS, INPUTS, STRUCTURES

# file -> (job name, field path, words the message must contain)
BAD_CASES = {
    "a3m_query_mismatch.json": ("a3m_mismatch", "sequences[0].protein.unpairedMsa (line 1)",
                                ["query", "position"]),
    "duplicate_chain_ids.json": ("dup_ids", "sequences[1].dna.id", ["'A'"]),
    "empty_file.cif": ("-", "-", ["empty"]),
    "empty_sequence.json": ("empty_seq", "sequences[0].protein.sequence", ["empty"]),
    "huge_token_count_20000aa.json": ("huge_20000", "sequences", ["20000 tokens", "limit"]),
    "invalid_smiles.json": ("bad_smiles", "sequences[1].ligand.smiles", ["SMILES"]),
    "lowercase_whitespace_sequence.json": ("lower_ws", "sequences[0].protein.sequence",
                                           ["'n' at 1"]),
    "not_valid_json.json": ("-", "line 1 column 76", ["invalid JSON"]),
    "path_traversal_name.json": ("../../etc/passwd", "name", ["path separator"]),
    "truncated_mmcif_1aki.cif": ("-", "line 1957", ["truncated"]),
    "unknown_ccd_code_ZZZQ.json": ("unknown_ccd", "sequences[1].ligand.ccdCodes[0]", ["ZZZQ"]),
    "unknown_residue_letters_XZB.json": ("bad_letters", "sequences[0].protein.sequence",
                                         ["'Z' at 9", "'B' at 10"]),
    "wrong_dialect_version.json": ("wrong_dialect", "dialect", ["alphafold2"]),
}


def test_every_bad_input_has_a_case():
    files = {p.name for p in BAD_INPUTS.iterdir() if p.suffix in (".json", ".cif")}
    assert files == set(BAD_CASES)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_input_gives_one_located_error_line(name, capsys):
    path = BAD_INPUTS / name
    code = main(["validate", str(path), "--max-tokens", "8192"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    job, field, words = BAD_CASES[name]
    assert lines[0].startswith(f"error: {path}: {job}: {field}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in captured.err


def test_valid_jobs_are_reported_beside_invalid_ones(capsys):
    code = main(["validate", "--json", str(INPUTS / "102m.json"), str(BAD_INPUTS / "empty_file.cif"),
                 str(STRUCTURES / "1bna.cif")])
    captured = capsys.readouterr()
    assert code == 2
    records = json.loads(captured.out)
    assert [r["name"] for r in records] == ["102m", "1BNA"]
    first = records[0]
    assert first["chains"] == [{"id": "A", "type": "protein", "n_residues": 154},
                               {"id": "B", "type": "ligand", "n_residues": 1}]
    assert first["n_tokens"] == 154 + 43
    assert records[1]["chains"][0]["type"] == "dna"
    assert len(captured.err.strip().splitlines()) == 1


def test_a_folder_of_valid_inputs_exits_zero(capsys):
    assert main(["validate", "--json", str(INPUTS)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == len(list(INPUTS.glob("*.json")))
    by_name = {r["name"]: r for r in records}
    assert by_name["1igy"]["chains"][4] == {"id": "E", "type": "ligand", "n_residues": 9}


def test_console_script_exits_2_without_traceback():
    result = subprocess.run([sys.executable, "-m", "foldray.jobs.cli", "validate",
                             str(BAD_INPUTS / "wrong_dialect_version.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_time_limit_stops_a_slow_ligand_with_a_located_line(tmp_path, capsys):
    job = json.loads((INPUTS / "1l2y.json").read_text())
    job["name"] = "slow"
    job["sequences"].append({"ligand": {"id": "B", "smiles": "C" * 200 + "N"}})
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(job))
    # the good job first: its residues are then cached, so the slow job's second is the ligand's
    code = main(["validate", "--time-limit", "1", str(INPUTS / "1l2y.json"), str(path)])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: {path}: slow: sequences[1].ligand.smiles: featurization "
                           "exceeded 1 s"), line
    assert "ok: " in captured.out and "1l2y" in captured.out


MULTI_PROBLEM_JOB = {
    "dialect": "alphafold3", "version": 2, "name": "multi", "modelSeeds": [1],
    "sequences": [
        {"protein": {"id": "A", "sequence": "MKTAYJ"}},          # bad letter (parse)
        {"ligand": {"id": "B", "smiles": "C1CC(X"}},             # bad SMILES (featurize)
        {"ligand": {"id": "C", "ccdCodes": ["ZZZQ"]}},           # unknown CCD code (featurize)
        {"protein": {"id": "D", "sequence": "GGG"}},
    ],
    # to the bad chain A (still range-checked on D), then to a chain that does not exist
    "bondedAtomPairs": [[["A", 1, "CA"], ["D", 9, "CA"]], [["D", 1, "CA"], ["Q", 1, "CA"]]],
}


def test_every_problem_of_a_job_is_listed(tmp_path, capsys):
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(MULTI_PROBLEM_JOB))
    code = main(["validate", "--quiet", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    fields = sorted(line.split(": ")[3] for line in lines)
    assert fields == ["bondedAtomPairs[0][1][1]", "bondedAtomPairs[1][1]", "sequences[0].protein.sequence",
                      "sequences[1].ligand.smiles", "sequences[2].ligand.ccdCodes[0]"], captured.err
    assert all(line.startswith(f"error: {path}: multi: ") for line in lines)


def test_predict_still_reports_one_line_for_a_job_with_several_problems(tmp_path):
    import pickle

    from foldray.errors import InputError, InputErrors
    from foldray.inputs.af3_json import parse_af3_json

    with pytest.raises(InputError) as info:
        parse_af3_json(json.dumps(MULTI_PROBLEM_JOB), source="multi.json")
    err = info.value
    assert isinstance(err, InputErrors) and len(err.errors) == 3
    assert err.field == "sequences[0].protein.sequence" and "\n" not in str(err)
    assert err.message.endswith("(and 2 more problems: `foldray validate` lists them)")
    again = pickle.loads(pickle.dumps(err))      # Ray ships errors between processes
    assert isinstance(again, InputErrors) and str(again) == str(err)


def test_many_problems_are_cut_at_the_limit(tmp_path, capsys):
    from foldray.errors import MAX_ERRORS_PER_JOB

    job = {"dialect": "alphafold3", "version": 2, "name": "many", "modelSeeds": [1],
           "sequences": [{"protein": {"id": f"A{i}", "sequence": "MKJ"}} for i in range(30)]}
    path = tmp_path / "many.json"
    path.write_text(json.dumps(job))
    assert main(["validate", "--quiet", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == MAX_ERRORS_PER_JOB + 1
    assert lines[-1].endswith("... and 10 more problems (not listed)")


def test_structure_clean_up_is_noted_not_an_error(capsys):
    code = main(["validate", "--quiet", str(STRUCTURES / "102m.cif")])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    note, ok = captured.out.strip().splitlines()
    assert note == (f"note: {STRUCTURES / '102m.cif'}: 102M: structure clean-up dropped 155 waters, "
                    "1 crystallization aid (SO4)")
    assert ok.startswith("ok: ")
    main(["validate", "--json", str(STRUCTURES / "102m.cif")])
    record, = json.loads(capsys.readouterr().out)
    assert record["dropped"] == ["155 waters", "1 crystallization aid (SO4)"]
