"""Token counts known before conformers are made (inputs/size.py)."""

import json
import time

import pytest

from foldray.chem.ccd import parse_user_ccd
from foldray.chem.smiles import component_from_smiles
from foldray.errors import InputError
from foldray.features.tokenize import tokenize
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.size import check_token_budget, count_tokens
from tests.data_paths import INPUTS


@pytest.mark.parametrize("name", ["1l2y.json", "2q2k.json", "4gxy.json", "1qgi.json", "102m.json",
                                  "tiny_protein_ligand_smiles.json"])
def test_count_matches_the_tokenizer(name):
    (job,) = parse_af3_json((INPUTS / name).read_bytes(), source=str(INPUTS / name))
    user_ccd = parse_user_ccd(job.user_ccd) if job.user_ccd else None
    assert count_tokens(job, user_ccd) == tokenize(job, max_tokens=None).n_tokens


def test_over_budget_is_refused_before_any_embedding():
    job = json.loads((INPUTS / "1l2y.json").read_text())
    smiles = "C" * 400 + "O"
    job["sequences"].append({"ligand": {"id": "B", "smiles": smiles}})
    (parsed,) = parse_af3_json(json.dumps(job), source="big.json")
    cached = component_from_smiles.cache_info().currsize
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        tokenize(parsed, max_tokens=256)
    assert time.perf_counter() - start < 2
    assert info.value.field == "sequences" and "421 tokens" in info.value.message
    assert component_from_smiles.cache_info().currsize == cached   # no component was built
    with pytest.raises(InputError, match="421 tokens"):
        check_token_budget(parsed, 420)
    check_token_budget(parsed, 421)

