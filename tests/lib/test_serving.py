"""Request parsing and limits of the Serve app, without a server (foldray.serving)."""

import json

import pytest

from foldray.errors import InputError, error_line
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.validate import format_error
from foldray.serving import Limits, RequestTooLarge, job_id, parse_predict_body, parse_screen_body
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
