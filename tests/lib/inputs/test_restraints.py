"""Pocket and contact restraints (docs/restraints.md): validation located like every other
input error, the Boltz mapping, the AF3 JSON round trip, and Protenix's feature encoding."""

import json

import numpy as np
import pytest

from foldray.errors import InputError
from foldray.features.batch import collate
from foldray.features.constraints import constraint_features
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.af3_json_writer import job_to_af3_json_text
from foldray.inputs.boltz_yaml import parse_boltz_yaml
from foldray.inputs.load import read_jobs
from foldray.inputs.restraints import ContactRestraint, PocketRestraint, ResidueRef
from tests.data_paths import INPUTS, REPO

POCKET = {"type": "pocket", "binder": "B", "residues": [["A", 5], ["A", 6]], "maxDistance": 6}
CONTACT = {"type": "contact", "residues": [["A", 2], ["B", 1, "C1"]], "maxDistance": 8.5}


def job(restraints, **extra) -> dict:
    data = json.loads((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
    data["restraints"] = restraints
    data.update(extra)
    return data


def parse(data) -> object:
    return parse_af3_json(json.dumps(data), source="r.json")[0]


def test_restraints_parse_and_round_trip():
    parsed = parse(job([POCKET, CONTACT]))
    assert parsed.restraints == (
        PocketRestraint(binder="B", residues=(ResidueRef(chain_id="A", residue=5),
                                              ResidueRef(chain_id="A", residue=6)), max_distance=6.0),
        ContactRestraint(first=ResidueRef(chain_id="A", residue=2),
                         second=ResidueRef(chain_id="B", residue=1, atom_name="C1"), max_distance=8.5))
    again = parse_af3_json(job_to_af3_json_text(parsed), source="again.json")[0]
    assert again.restraints == parsed.restraints
    assert "restraints" not in json.loads(job_to_af3_json_text(parse(job(None))))


@pytest.mark.parametrize(("restraints", "field", "words"), [
    ({"type": "pocket"}, "restraints", "expected a list"),
    ([3], "restraints[0]", "expected a restraint object"),
    ([{**POCKET, "type": "dock"}], "restraints[0].type", "pocket"),
    ([{**POCKET, "force": True}], "restraints[0].force", "unknown key"),
    ([{**POCKET, "binder": "Z"}], "restraints[0].binder", "not in sequences"),
    ([{**POCKET, "binder": 7}], "restraints[0].binder", "chain id string"),
    ([{**POCKET, "residues": [["A", 5], ["Q", 1]]}], "restraints[0].residues[1][0]", "not in sequences"),
    ([{**POCKET, "residues": [["A", 5], ["A", 21]]}], "restraints[0].residues[1][1]", "out of range"),
    ([{**POCKET, "residues": [["A", 0]]}], "restraints[0].residues[0][1]", "out of range"),
    ([{**POCKET, "residues": [["A", "5"]]}], "restraints[0].residues[0][1]", "residue number"),
    ([{**POCKET, "residues": [["A", 5.0]]}], "restraints[0].residues[0][1]", "residue number"),
    ([{**POCKET, "residues": [["A", True]]}], "restraints[0].residues[0][1]", "residue number"),
    ([{**POCKET, "residues": [["B", 1]]}], "restraints[0].residues[0]", "binder chain"),
    ([{**POCKET, "residues": [["A", 5], ["A", 5]]}], "restraints[0].residues", "twice"),
    ([{**POCKET, "residues": []}], "restraints[0].residues", "non-empty"),
    ([{**POCKET, "residues": "A5"}], "restraints[0].residues", "non-empty list"),
    ([{**POCKET, "residues": [["A", 5, "CA", "x"]]}], "restraints[0].residues[0]", "atom name"),
    ([{**POCKET, "residues": [["A", 5, "C" * 40]]}], "restraints[0].residues[0][2]", "at most 4"),
    ([{**POCKET, "residues": [["A", 5, ""]]}], "restraints[0].residues[0][2]", "empty"),
    ([{**POCKET, "maxDistance": 0}], "restraints[0].maxDistance", "not a distance"),
    ([{**POCKET, "maxDistance": -3.5}], "restraints[0].maxDistance", "not a distance"),
    ([{**POCKET, "maxDistance": 1e308}], "restraints[0].maxDistance", "not a distance"),
    ([{**POCKET, "maxDistance": "6"}], "restraints[0].maxDistance", "a number"),
    ([{**POCKET, "maxDistance": True}], "restraints[0].maxDistance", "a number"),
    ([{k: v for k, v in POCKET.items() if k != "maxDistance"}], "restraints[0].maxDistance", "missing"),
    ([CONTACT, {**CONTACT, "residues": [["A", 2]]}], "restraints[1].residues", "exactly 2"),
    ([{**CONTACT, "residues": [["A", 2], ["A", 9]]}], "restraints[0].residues", "different chains"),
    ([{**CONTACT, "residues": [["A", 2], [None, 1]]}], "restraints[0].residues[1][0]", "chain id string"),
    ([POCKET] * 1025, "restraints", "at most 1024"),
])
def test_bad_restraints_are_located(restraints, field, words):
    with pytest.raises(InputError) as err:
        parse(job(restraints))
    errors = getattr(err.value, "errors", None) or [err.value]
    hit = [e for e in errors if e.field == field]
    assert hit, [(e.field, str(e)) for e in errors]
    assert words in str(hit[0]) and hit[0].job == "tiny_protein_ligand_smiles"
    assert len(str(hit[0])) < 400


def test_nan_and_infinity_are_refused():
    """Python's json reads NaN and Infinity: they are not distances."""
    for bad in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps(job([POCKET])).replace('"maxDistance": 6', f'"maxDistance": {bad}')
        with pytest.raises(InputError, match="not a distance") as err:
            parse_af3_json(text, source="r.json")
        assert err.value.field == "restraints[0].maxDistance"


def test_every_bad_restraint_is_reported():
    with pytest.raises(InputError) as err:
        parse(job([{**POCKET, "maxDistance": -1}, CONTACT, {**CONTACT, "maxDistance": "x"}]))
    fields = {e.field for e in err.value.errors}
    assert fields == {"restraints[0].maxDistance", "restraints[2].maxDistance"}


def test_boltz_pocket_and_contact_map_to_restraints(tmp_path):
    text = ("sequences:\n  - protein: {id: A, sequence: NLYIQWLKDG, msa: empty}\n"
            "  - ligand: {id: L, smiles: CCO}\nconstraints:\n"
            "  - pocket: {binder: L, contacts: [[A, 3], [A, 7]], max_distance: 7}\n"
            "  - contact: {token1: [A, 1], token2: [L, C1]}\n")
    parsed = parse_boltz_yaml(text, source="b.yaml")
    assert parsed.restraints == (
        PocketRestraint(binder="L", residues=(ResidueRef(chain_id="A", residue=3),
                                              ResidueRef(chain_id="A", residue=7)), max_distance=7.0),
        ContactRestraint(first=ResidueRef(chain_id="A", residue=1),
                         second=ResidueRef(chain_id="L", residue=1, atom_name="C1"), max_distance=6.0))
    for bad, field in (
            ("  - pocket: {binder: L, contacts: [[A, 3]], force: true}\n", "constraints[0].pocket.force"),
            ("  - pocket: {binder: L, contacts: [[A, 30]]}\n", "restraints[0].residues[0][1]"),
            ("  - contact: {token1: [A, 1], token2: L}\n", "constraints[0].contact.token2")):
        with pytest.raises(InputError) as err:
            parse_boltz_yaml(text.split("constraints:")[0] + "constraints:\n" + bad, source="b.yaml")
        assert err.value.field == field, str(err.value)


def test_features_follow_protenix_encoding():
    parsed = parse(job([POCKET, CONTACT]))
    featurized = featurize_job(parsed)
    f, tokens = featurized.features, featurized.tokens
    n = tokens.n_tokens
    assert f["constraint_pocket"].shape == (n, n, 1) and f["constraint_contact"].shape == (n, n, 2)
    ligand = np.flatnonzero(tokens.asym_id == 2)
    pocket = np.argwhere(f["constraint_pocket"][..., 0])
    # every binder token to residues 5 and 6 of chain A (tokens 4 and 5), not symmetric
    assert {tuple(p) for p in pocket} == {(int(t), r) for t in ligand for r in (4, 5)}
    assert (f["constraint_pocket"][ligand][:, [4, 5]] == 6.0).all()
    c1 = int(tokens.atom_to_token[tokens.atom_lookup()[("B", 1, "C1")]])
    contact = f["constraint_contact"]
    assert contact[1, c1, 1] == contact[c1, 1, 1] == 8.5 and contact[..., 0].sum() == 0
    assert np.count_nonzero(contact) == 2 and not f["constraint_contact_atom"].any()
    plain = featurize_job(parse(job(None))).features
    assert not any(k.startswith("constraint_") for k in plain)
    # a job with restraints batches with one without (zeros for it)
    batch = collate([f, plain], token_buckets=None, atom_buckets=None)
    assert batch["constraint_pocket"].shape[0] == 2 and not batch["constraint_pocket"][1].any()


def test_atom_contacts_need_per_atom_tokens():
    """Atom-atom contacts go to the atom-contact feature at the atoms' tokens (ligands, modified
    residues); an atom of a standard residue there is refused (Protenix would re-tokenize)."""
    ligands = job([{"type": "contact", "residues": [["B", 1, "C1"], ["C", 1, "O"]], "maxDistance": 4}])
    ligands["sequences"].append({"ligand": {"id": "C", "ccdCodes": ["HOH"]}})
    featurized = featurize_job(parse(ligands))
    assert np.count_nonzero(featurized.features["constraint_contact_atom"]) == 2
    assert not featurized.features["constraint_contact"].any()
    tokens = featurize_job(parse(job(None))).tokens
    for bad, field, words in (
            ([["A", 2, "CA"], ["B", 1, "C1"]], "restraints[0].residues[0]", "standard residue"),
            ([["A", 2, "XX"], ["B", 1]], "restraints[0].residues[0]", "has no atom"),
            ([["A", 2], ["B", 1, "C99"]], "restraints[0].residues[1]", "has no atom")):
        odd = parse(job([{"type": "contact", "residues": bad, "maxDistance": 4}]))
        with pytest.raises(InputError, match=words) as err:
            constraint_features(odd, tokens)
        assert err.value.field == field and err.value.job == odd.name


def test_features_equal_protenix_featurizer():
    """Protenix 2.0.0's own featurizer on the same job, restraints given as its `constraint`
    field (benchmarks/equivalence/reference_constraint.py --features): equal features."""
    path = REPO / "tests" / "fixtures" / "restraints" / "tiny_pocket_contact.json"
    reference = np.load(path.parent / "protenix_features.npz")
    ours = featurize_job(parse_af3_json(path.read_text(), source=str(path))[0]).features
    for name in ("constraint_pocket", "constraint_contact", "constraint_contact_atom"):
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    assert all(np.count_nonzero(reference[name]) for name in reference)


def test_protenix_constraint_field_maps_to_the_same_restraints_and_features():
    """Protenix's own JSON form of the fixture job (its `constraint` field, written from its
    documented format) converts to the restraints of the AF3 JSON form, and featurizes to the
    features Protenix's featurizer gave for them."""
    folder = REPO / "tests" / "fixtures" / "restraints"
    af3 = parse_af3_json((folder / "tiny_pocket_contact.json").read_text(), source="af3.json")[0]
    (converted,) = read_jobs(str(folder / "tiny_pocket_contact_protenix.json"))
    assert not isinstance(converted, InputError), converted
    assert sorted(map(repr, converted.restraints)) == sorted(map(repr, af3.restraints))   # unordered
    reference = np.load(folder / "protenix_features.npz")
    ours = featurize_job(converted).features
    for name in ("constraint_pocket", "constraint_contact", "constraint_contact_atom"):
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)


@pytest.mark.parametrize(("constraint", "field", "words"), [
    ({"substructure": {}}, "constraint.substructure", "not supported"),
    ({"distance": []}, "constraint.distance", "unknown key"),
    ({"contact": [{"entity1": 1, "copy1": 1, "position1": 2, "entity2": 2, "copy2": 1, "position2": 1,
                   "max_distance": 8, "min_distance": 2}]}, "constraint.contact[0].min_distance", "only 0"),
    ({"contact": [{"entity1": 1, "copy1": 2, "position1": 2, "entity2": 2, "copy2": 1, "position2": 1,
                   "max_distance": 8}]}, "constraint.contact[0].copy1", "copy number 1..1"),
    ({"contact": [{"entity1": 1, "copy1": 1, "position1": 2, "entity2": 2, "copy2": 1, "position2": 1,
                   "atom2": 3, "max_distance": 8}]}, "constraint.contact[0].atom2", "atom-map"),
    ({"pocket": {"binder_chain": {"entity": 9, "copy": 1}, "contact_residues": [], "max_distance": 6}},
     "constraint.pocket.binder_chain.entity", "entity number"),
    ({"pocket": {"binder_chain": {"entity": 2, "copy": 1}, "contact_residues": [
        {"entity": 1, "copy": 1, "position": 99}], "max_distance": 6}}, "restraints[0].residues[0][1]",
     "out of range"),
])
def test_bad_protenix_constraints_are_located(tmp_path, constraint, field, words):
    path = REPO / "tests" / "fixtures" / "restraints" / "tiny_pocket_contact_protenix.json"
    data = json.loads(path.read_text())
    data[0]["constraint"] = constraint
    (tmp_path / "p.json").write_text(json.dumps(data))
    (result,) = read_jobs(str(tmp_path / "p.json"))
    assert isinstance(result, InputError) and result.field.endswith(field), result
    assert words in str(result)
