"""Request parsing and limits of the Serve app, without a server (foldray.serving)."""

import json
import time
from pathlib import Path

import pytest

from foldray.errors import InputError, error_line
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.validate import format_error
from foldray.screening import LigandSpec
from foldray.serving import (
    Limits,
    RequestTooLarge,
    error_summary,
    job_id,
    ligand_error,
    output_names,
    parse_predict_body,
    parse_screen_body,
    parse_screen_request,
    request_error_line,
    request_hash,
    smiles_min_atoms,
)
from tests.data_paths import BAD_INPUTS, INPUTS


def test_bad_input_gives_the_validate_line():
    text = (BAD_INPUTS / "wrong_dialect_version.json").read_bytes()
    with pytest.raises(InputError) as err:
        parse_predict_body(text, Limits())
    with pytest.raises(InputError) as reference:
        parse_af3_json(text, source="request")
    assert format_error(err.value) == format_error(reference.value)
    assert "dialect" in error_line(err.value)


def test_limits():
    huge = (BAD_INPUTS / "huge_token_count_20000aa.json").read_bytes()
    with pytest.raises(InputError) as err:
        parse_predict_body(huge, Limits(max_tokens=5120))
    assert (err.value.job, err.value.field) == ("huge_20000", "sequences")
    assert "20000 tokens" in err.value.message and "5120" in err.value.message
    with pytest.raises(RequestTooLarge, match="above the limit of 1000 bytes"):
        parse_predict_body(huge, Limits(max_body_bytes=1000))
    one = json.loads((INPUTS / "1l2y.json").read_text())
    with pytest.raises(RequestTooLarge, match="3 jobs"):
        parse_predict_body(json.dumps([one] * 3).encode(), Limits(max_jobs=2))
    with pytest.raises(InputError, match="Path"):         # untrusted requests read no files
        parse_predict_body((INPUTS / "102m.json").read_bytes(), Limits())


def test_screen_body():
    target = json.loads((INPUTS / "1l2y.json").read_text())
    body = {"target": target, "ligands": [{"id": "a", "smiles": "CCO", "key": "k1"},
                                          {"id": "b", "ccd": "ATP"}], "samples": 2}
    screen = parse_screen_body(json.dumps(body).encode(), Limits())
    assert [lig.id for lig in screen.ligands] == ["a", "b"] and screen.keys == ("k1", "")
    assert screen.samples == 2 and screen.target.name == "1l2y"
    with pytest.raises(InputError) as err:
        parse_screen_body(json.dumps({**body, "samples": 0}).encode(), Limits())
    assert err.value.field == "samples"
    with pytest.raises(InputError) as err:
        parse_screen_body(json.dumps({**body, "ligands": [{"smiles": "C"}]}).encode(), Limits())
    assert err.value.field == "ligands[0]"
    assert job_id("screen", "k") == job_id("screen", "k") != job_id("screen", "k2")


def test_screen_pocket_uses_the_clis_syntax_with_per_ligand_overrides_and_located_errors():
    from foldray.screening import ligand_job, parse_pocket

    target = json.loads((INPUTS / "1l2y.json").read_text())
    ligands = [{"id": "a", "smiles": "CCO"}, {"id": "b", "smiles": "CCN", "pocket": []},
               {"id": "c", "smiles": "CC", "pocket": "A:3", "pocket_distance": 9}]
    screen = parse_screen_body(json.dumps({"target": target, "ligands": ligands, "pocket": ["A:2,6"],
                                           "pocket_distance": 8}).encode(), Limits())
    cli = parse_pocket(["A:2,6"], screen.target, distance=8.0)       # what `--pocket A:2,6` gives
    assert screen.pocket == cli and screen.ligands[0].pocket == cli
    assert screen.ligands[0].pocket_distance == 8.0 and screen.ligands[1].pocket == ()
    assert [(r.chain_id, r.residue) for r in screen.ligands[2].pocket] == [("A", 3)]
    (restraint,) = ligand_job(screen.target, screen.ligands[2]).restraints   # the ligand is the binder
    assert (restraint.binder, restraint.max_distance) == ("B", 9.0)
    for extra, field, words in (
            ({"pocket": "A:2,99"}, "pocket", "residue '99' of chain A is not in 1..20"),
            ({"pocket": "Z:2"}, "pocket", "with a chain of the target (A)"),
            ({"pocket": "A:2", "pocket_distance": 0}, "pocket_distance", "must be in (0, 100]"),
            ({"pocket": [2]}, "pocket", "CHAIN:RES"),
            ({"ligands": [{"id": "a", "smiles": "C", "pocket": "A:0"}]}, "ligands[0].pocket", "not in 1..20"),
            ({"ligands": [{"id": "a", "smiles": "C", "pocket_distance": 5}]}, "ligands[0].pocket_distance",
             "without a pocket")):
        with pytest.raises(InputError) as err:
            parse_screen_body(json.dumps({"target": target, "ligands": ligands[:1], **extra}).encode(),
                              Limits())
        assert err.value.field == field and words in err.value.message, error_line(err.value)


def _job(**extra) -> dict:
    return {"name": "x", "modelSeeds": [1], "dialect": "alphafold3", "version": 2,
            "sequences": [{"protein": {"id": "A", "sequence": "NLYIQWLKDGGPSSGRPPPS"}}], **extra}


def test_a_huge_smiles_is_refused_by_its_token_count_in_microseconds():
    body = _job(sequences=[{"protein": {"id": "A", "sequence": "NLYIQW"}},
                           {"ligand": {"id": "B", "smiles": "C" * 5000}}])
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        parse_predict_body(json.dumps(body).encode(), Limits(max_tokens=512))
    assert time.monotonic() - start < 1.0
    assert "at least 5006 tokens" in err.value.message and err.value.field == "sequences"
    assert smiles_min_atoms("C" * 5000) == 5000
    assert smiles_min_atoms("[H]OC(=O)c1ccccc1Cl.[Na+]") == 10      # bracket atoms not counted
    assert smiles_min_atoms("BrCC") == 3
    target = parse_af3_json(json.dumps(_job()).encode(), source="t")[0]
    line = ligand_error(LigandSpec(id="big", smiles="C" * 5000), target, limits=Limits(max_tokens=512))
    assert line.startswith("screen: big: sequences[1].ligand.smiles: the job has at least 5020 tokens")


def test_screen_fields_are_type_checked():
    target = json.loads((INPUTS / "1l2y.json").read_text())
    for ligand, field in (({"id": "a", "smiles": 123}, "ligands[0].smiles"),
                          ({"id": "a", "ccd": ["ATP"]}, "ligands[0].ccd"),
                          ({"id": "a", "smiles": "C", "key": {"k": 1}}, "ligands[0].key"),
                          ({"id": "a", "smiles": "C", "key": "k" * 300}, "ligands[0].key"),
                          ({"id": "a" * 300, "smiles": "C"}, "ligands[0].id")):
        with pytest.raises(InputError) as err:
            parse_screen_body(json.dumps({"target": target, "ligands": [ligand]}).encode(), Limits())
        assert err.value.field == field, ligand
    with pytest.raises(InputError) as err:
        parse_screen_body(json.dumps({"target": target, "ligands": [{"id": "a", "smiles": "C"}],
                                      "out": {"url": 1}}).encode(), Limits())
    assert err.value.field == "out" and "got dict" in err.value.message
    screen, problems = parse_screen_request(json.dumps({"target": target, "ligands": [
        {"id": "ok", "smiles": "CCO"}, {"id": "bad", "smiles": "C1CC(N"}]}).encode(), Limits())
    assert problems[0] is None and "RDKit could not parse" in problems[1]


def test_hostile_bodies_become_located_lines_not_tracebacks():
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = [deep, b'{"name": ' + deep + b"}", json.dumps(_job(modelSeeds="abc")).encode(),
              json.dumps(_job(name={"a": 1})).encode(),
              json.dumps(_job(sequences=[{"protein": {"id": "A", "sequence": 123}}])).encode(),
              json.dumps(_job(sequences=[{"protein": {"id": "A", "sequence": "AAA",
                                                      "unpairedMsaPath": "../../../../etc/hostname"}}])
                         ).encode()]
    hostname = Path("/etc/hostname").read_text().strip()
    for body in bodies:
        start = time.monotonic()
        try:
            parse_predict_body(body, Limits())
        except Exception as err:   # noqa: BLE001  (what the ingress does with any exception)
            line = request_error_line(err)
        else:
            raise AssertionError(f"accepted {body[:60]!r}")
        assert time.monotonic() - start < 5
        assert line.startswith("request: ") and "Traceback" not in line and len(line) < 600, line
        assert hostname not in line


def test_output_names_are_unique_within_a_screen():
    ligands = [LigandSpec(id=i, smiles="C") for i in ("Lig", "lig", "LIG", "a b", "a_b", "lig_2")]
    assert output_names(ligands) == ["lig", "lig_2", "lig_3", "a_b", "a_b_2", "lig_2_2"]
    names = output_names([LigandSpec(id="X" * 200, smiles="C")] * 3)
    assert len(set(names)) == 3 and all(len(n) <= 128 for n in names)


def test_keys_are_scoped_per_caller_and_requests_hashed_with_boundaries():
    assert job_id("predict", "k", "token-a") != job_id("predict", "k", "token-b")
    assert job_id("predict", "k", "a") == job_id("predict", "k", "a")
    assert request_hash("ab", "c") != request_hash("a", "bc")
    assert request_hash(b"body", "s3://b/p") == request_hash("body", "s3://b/p")


def test_error_summary_gives_class_and_short_first_line():
    long = ValueError("first line " + "x" * 1000 + "\n  File \"/srv/secret.py\", line 3\nmore")
    text = error_summary(long)
    assert text.startswith("ValueError: first line x") and text.endswith("...")
    assert "secret.py" not in text and len(text) < 400
    assert error_summary(RecursionError()) == "RecursionError"

    class Wrapped(Exception):           # the shape of Ray's task errors: the cause is kept
        cause = KeyError("mmcif")

    assert error_summary(Wrapped("Traceback (most recent call last): ...")) == "KeyError: 'mmcif'"
    assert error_summary(InputError("bad", source="request", field="out")) == "request: -: out: bad"
