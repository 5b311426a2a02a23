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
    assert info.value.field == "bondedAtomPairs[0][1][1]" and "1..3" in info.value.message


# --- `...Path` fields stay inside the input's folder (issue 17, item 9) -------------------

def _job_with_msa_path(path_value: str) -> dict:
    job = json.loads((INPUTS / "1l2y.json").read_text())
    job["version"] = 2
    job["sequences"][0]["protein"]["unpairedMsaPath"] = path_value
    return job


@pytest.fixture
def strict_paths(monkeypatch):
    monkeypatch.delenv("FOLDRAY_ALLOW_ANY_INPUT_PATH", raising=False)
    monkeypatch.delenv("FOLDRAY_INPUT_PATH_ROOTS", raising=False)


def _write_job(folder, path_value):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.json"
    path.write_text(json.dumps(_job_with_msa_path(path_value)))
    return path


def test_relative_paths_inside_the_folder_are_read(tmp_path, strict_paths):
    (tmp_path / "in" / "msas").mkdir(parents=True)
    (tmp_path / "in" / "msas" / "a.a3m").write_text(">q\nNLYIQWLKDGGPSSGRPPPS\n")
    (job,) = parse_file(_write_job(tmp_path / "in", "msas/a.a3m"))
    assert job.entities[0].unpaired_msa.startswith(">q")


@pytest.mark.parametrize("value", ["../secret.a3m", "../../../../../../../../etc/hostname",
                                   "/etc/hostname", "msas/../../secret.a3m"])
def test_paths_leaving_the_folder_are_refused_without_reading(tmp_path, strict_paths, value):
    (tmp_path / "secret.a3m").write_text(">q\nsecret-token-123\n")
    path = _write_job(tmp_path / "in", value.replace("/etc/hostname", str(tmp_path / "secret.a3m")))
    reads = []
    with pytest.raises(InputError) as info:
        parse_af3_json(path.read_bytes(), source=str(path), read_text=reads.append)
    assert info.value.field == "sequences[0].protein.unpairedMsaPath"
    assert "outside the input's folder" in info.value.message
    assert "FOLDRAY_ALLOW_ANY_INPUT_PATH" in info.value.message
    assert reads == [] and "secret-token" not in str(info.value)


def test_symlinks_out_of_the_folder_are_refused(tmp_path, strict_paths):
    (tmp_path / "secret.a3m").write_text(">q\nNLYIQWLKDGGPSSGRPPPS\n")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "link.a3m").symlink_to(tmp_path / "secret.a3m")
    with pytest.raises(InputError, match="outside the input's folder"):
        parse_file(_write_job(folder, "link.a3m"))
    # a symlinked input folder itself is fine: both sides are resolved
    (tmp_path / "alias").symlink_to(folder, target_is_directory=True)
    (folder / "real.a3m").write_text(">q\nNLYIQWLKDGGPSSGRPPPS\n")
    (job,) = parse_file(_write_job(tmp_path / "alias", "real.a3m"))
    assert job.entities[0].unpaired_msa.startswith(">q")


def test_opt_outs_roots_and_any_path(tmp_path, strict_paths, monkeypatch):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "a.a3m").write_text(">q\nNLYIQWLKDGGPSSGRPPPS\n")
    path = _write_job(tmp_path / "in", str(tmp_path / "store" / "a.a3m"))
    with pytest.raises(InputError, match="outside"):
        parse_file(path)
    assert parse_file(path, any_path=True)[0].entities[0].unpaired_msa.startswith(">q")
    monkeypatch.setenv("FOLDRAY_INPUT_PATH_ROOTS", str(tmp_path / "store"))
    assert parse_file(path)[0].entities[0].unpaired_msa.startswith(">q")
    monkeypatch.delenv("FOLDRAY_INPUT_PATH_ROOTS")
    monkeypatch.setenv("FOLDRAY_ALLOW_ANY_INPUT_PATH", "1")
    assert parse_file(path)[0].entities[0].unpaired_msa.startswith(">q")


def test_url_paths_compare_prefixes(strict_paths):
    reads = []

    def read(url):
        reads.append(url)
        return ">q\nNLYIQWLKDGGPSSGRPPPS\n"

    def parse(value, source="s3://bucket/in/job.json"):
        return parse_af3_json(json.dumps(_job_with_msa_path(value)), source=source, read_text=read)

    parse("msas/a.a3m")
    assert reads == ["s3://bucket/in/msas/a.a3m"]
    for value in ("../other/a.a3m", "../../otherbucket/a.a3m", "s3://otherbucket/in/a.a3m",
                  "s3://bucket/inx/a.a3m", "/etc/hostname", "file:///etc/hostname"):
        with pytest.raises(InputError, match="outside"):
            parse(value)
    with pytest.raises(InputError, match="outside"):   # a local input cannot reach a bucket
        parse("s3://bucket/in/a.a3m", source="/data/in/job.json")
    assert len(reads) == 1


def test_wrong_types_read_as_json_types_and_missing_reads_missing():
    job = json.loads((INPUTS / "1l2y.json").read_text())
    cases = [(("name",), None, "name", "missing"),
             (("modelSeeds",), [True], "modelSeeds[0]", "got a boolean True"),
             (("modelSeeds",), [1.0], "modelSeeds[0]", "got a number 1.0"),
             (("version",), 2.0, "version", "unsupported version 2.0"),
             (("bondedAtomPairs",), [[[["A"], 1, "CA"], ["A", 2, "CA"]]], "bondedAtomPairs[0][0][0]",
              "got a list ['A']")]
    for path, value, field, words in cases:
        edited = json.loads(json.dumps(job))
        if value is None:
            del edited[path[0]]
        else:
            edited[path[0]] = value
        with pytest.raises(InputError) as info:
            parse_af3_json(json.dumps(edited), source="t.json")
        assert (info.value.field, words in info.value.message) == (field, True), str(info.value)


def test_deep_nesting_and_huge_integers_are_input_errors():
    for text, words in (("[" * 200_000 + "]" * 200_000, "nested too deeply"),
                        ('{"a": ' + "7" * 6000 + "}", "digits")):
        (err,) = parse_af3_json_lenient(text, source="deep.json")
        assert isinstance(err, InputError) and words in err.message
