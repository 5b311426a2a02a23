"""AF3 JSON parsing on the real example inputs and the malformed ones in bad_inputs/."""

import json

import pytest

from foldray.errors import InputError
from foldray.inputs.af3_json import parse_af3_json, parse_af3_json_lenient
from foldray.inputs.job import LigandChain, PolymerChain, sanitize_name
from tests.data_paths import BAD_INPUTS, INPUTS


def parse_file(path, **kwargs):
    return parse_af3_json(path.read_bytes(), source=str(path), **kwargs)


@pytest.mark.parametrize("path", sorted(INPUTS.glob("*.json")), ids=lambda p: p.name)
def test_every_example_input_parses_with_its_chains(path):
    raw = json.loads(path.read_text())
    (job,) = parse_file(path)
    assert job.name == raw["name"]
    assert job.seeds == tuple(raw["modelSeeds"])
    expected_ids = []
    for entry in raw["sequences"]:
        (kind, body), = entry.items()
        ids = body["id"] if isinstance(body["id"], list) else [body["id"]]
        expected_ids += ids
    assert job.chain_ids == tuple(expected_ids)
    assert len(job.bonded_atom_pairs) == len(raw.get("bondedAtomPairs", []))


def test_msa_paths_are_read_relative_to_the_json_file():
    (job,) = parse_file(INPUTS / "102m.json")
    protein = job.entities[0]
    assert isinstance(protein, PolymerChain)
    expected = (INPUTS.parent / "msas" / "102m_A.a3m").read_text()
    assert protein.unpaired_msa == expected
    assert protein.paired_msa.startswith(">query")


def test_modifications_and_multi_ccd_ligands():
    (job,) = parse_file(INPUTS / "2q2k.json")
    dna = job.entities[0]
    assert [(m.ccd_code, m.position) for m in dna.modifications] == [("5IU", 7), ("5IU", 10)]
    assert dna.ccd_sequence()[6] == "5IU" and dna.ccd_sequence()[0] == "DA"
    (glycan_job,) = parse_file(INPUTS / "1qgi.json")
    ligand = glycan_job.entities[1]
    assert isinstance(ligand, LigandChain) and ligand.ccd_codes == ("NAG", "GCS", "GCS")
    first = glycan_job.bonded_atom_pairs[0]
    assert (first[0].chain_id, first[0].residue, first[0].atom_name) == ("B", 1, "O4")


def expect_error(path, field, *needles):
    with pytest.raises(InputError) as info:
        parse_file(path)
    err = info.value
    assert err.field == field, str(err)
    assert err.source == str(path)
    for needle in needles:
        assert needle in err.message, err.message
    return err


def test_wrong_dialect():
    err = expect_error(BAD_INPUTS / "wrong_dialect_version.json", "dialect", "alphafold2")
    assert err.job == "wrong_dialect"


def test_invalid_json_names_line():
    err = expect_error(BAD_INPUTS / "not_valid_json.json", "line 1 column 76", "invalid JSON")
    assert err.job == ""


def test_duplicate_chain_ids():
    expect_error(BAD_INPUTS / "duplicate_chain_ids.json", "sequences[1].dna.id", "'A'",
                 "sequences[0]")


def test_empty_sequence():
    expect_error(BAD_INPUTS / "empty_sequence.json", "sequences[0].protein.sequence", "empty")


def test_lowercase_and_whitespace_are_refused_with_positions():
    expect_error(BAD_INPUTS / "lowercase_whitespace_sequence.json",
                 "sequences[0].protein.sequence", "'n' at 1", "' ' at 7")


def test_unknown_residue_letters_name_each_letter():
    err = expect_error(BAD_INPUTS / "unknown_residue_letters_XZB.json",
                       "sequences[0].protein.sequence", "'Z' at 9", "'B' at 10")
    assert "'X'" not in err.message  # X is the standard unknown residue (UNK)


def test_path_separators_in_name_are_refused_and_sanitized():
    expect_error(BAD_INPUTS / "path_traversal_name.json", "name", "path separator")
    assert sanitize_name("../../etc/passwd") == "etc_passwd"
    assert "/" not in sanitize_name("a/b\\c") and sanitize_name("..") == "job"
    assert sanitize_name("My Job (1)") == "my_job_1"


def test_nul_bytes_are_refused():
    text = (INPUTS / "1l2y.json").read_text().replace("1l2y", "1l2y\x00evil")
    with pytest.raises(InputError, match="NUL byte"):
        parse_af3_json(text, source="nul.json")


def test_version_gates_newer_fields():
    job = json.loads((INPUTS / "1l2y.json").read_text())
    job["version"] = 1
    job["sequences"][0]["protein"]["unpairedMsaPath"] = "x.a3m"
    with pytest.raises(InputError) as info:
        parse_af3_json(json.dumps(job), source="v1.json")
    assert info.value.field == "sequences[0].protein.unpairedMsaPath"
    assert "version" in info.value.message


def test_unknown_keys_are_named():
    job = json.loads((INPUTS / "1l2y.json").read_text())
    job["sequences"][0]["protein"]["sequense"] = "AAA"
    with pytest.raises(InputError) as info:
        parse_af3_json(json.dumps(job), source="typo.json")
    assert info.value.field == "sequences[0].protein.sequense"


def test_missing_msa_file_is_located(tmp_path):
    job = json.loads((INPUTS / "1l2y.json").read_text())
    job["sequences"][0]["protein"]["unpairedMsaPath"] = "missing.a3m"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    with pytest.raises(InputError) as info:
        parse_file(path)
    assert info.value.field == "sequences[0].protein.unpairedMsaPath"
    assert "missing.a3m" in info.value.message


def test_paths_can_be_refused_for_untrusted_input():
    with pytest.raises(InputError, match="not accepted"):
        parse_file(INPUTS / "102m.json", allow_paths=False)


def test_a_list_of_jobs_keeps_good_jobs_beside_a_bad_one():
    good = json.loads((INPUTS / "1l2y.json").read_text())
    bad = json.loads((BAD_INPUTS / "empty_sequence.json").read_text())
    results = parse_af3_json_lenient(json.dumps([good, bad, good | {"name": "again"}]),
                                     source="list.json")
    assert [type(r).__name__ for r in results] == ["Job", "InputError", "Job"]
    assert results[1].job == "empty_seq" and results[1].field == "sequences[0].protein.sequence"


def test_bonds_must_point_into_the_job():
    job = json.loads((INPUTS / "1qgi.json").read_text())
    job["bondedAtomPairs"][0][1][1] = 7
    with pytest.raises(InputError) as info:
        parse_af3_json(json.dumps(job), source="bonds.json")
    assert info.value.field == "bondedAtomPairs[0][1]" and "1..3" in info.value.message
