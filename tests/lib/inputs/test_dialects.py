"""Boltz YAML, FASTA and Protenix JSON inputs: converted to the same Job as the AF3 JSON of
the same complex, checked like AF3 JSON (located errors), and `foldray convert` round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foldray.errors import InputError
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_job
from foldray.inputs.job import LigandChain, PolymerChain
from foldray.inputs.load import read_jobs
from foldray.jobs import convert
from tests.data_paths import INPUTS, MSAS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dialects"


def _only(results):
    (result,) = results
    if isinstance(result, InputError):
        raise result
    return result


def _reference(name: str):
    return _only(read_jobs(str(INPUTS / f"{name}.json")))


def _same_chemistry(got, expected, *, msa: bool = True) -> None:
    """Same entities (type, ids, sequence, modifications, ligands) and, when `msa`, the same
    unpaired MSA text (paired MSAs: Boltz and plain FASTA cannot express them)."""
    assert len(got.entities) == len(expected.entities)
    for a, b in zip(got.entities, expected.entities, strict=True):
        assert type(a) is type(b) and a.ids == b.ids
        if isinstance(a, PolymerChain):
            assert (a.mol_type, a.sequence, a.modifications) == (b.mol_type, b.sequence, b.modifications)
            if msa:
                assert a.unpaired_msa == b.unpaired_msa
        else:
            assert (a.ccd_codes, a.smiles) == (b.ccd_codes, b.smiles)
    assert got.bonded_atom_pairs == expected.bonded_atom_pairs


@pytest.mark.parametrize("name", ["102m", "1k6p", "1bna", "4zey"])
def test_boltz_yaml_of_a_shared_input_gives_the_af3_job(tmp_path, name):
    expected = _reference(name)
    lines = ["version: 1", "sequences:"]
    for entity in expected.entities:
        ids = json.dumps(list(entity.ids))
        if isinstance(entity, LigandChain):
            lines += ["  - ligand:", f"      id: {ids}", f"      ccd: {entity.ccd_codes[0]}"]
            continue
        lines += [f"  - {entity.mol_type}:", f"      id: {ids}", f"      sequence: {entity.sequence}"]
        msa = next(MSAS.glob(f"{name}_{entity.ids[0]}.a3m"), None)
        if msa is not None:
            lines.append(f"      msa: {msa}")
        if entity.modifications:
            lines.append("      modifications:")
            lines += [f"        - {{position: {m.position}, ccd: {m.ccd_code}}}"
                      for m in entity.modifications]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    job = _only(read_jobs(str(path)))
    assert job.name == name
    _same_chemistry(job, expected, msa=any(MSAS.glob(f"{name}_*.a3m")))


@pytest.mark.parametrize("name", ["102m", "1k6p", "1bna"])
def test_fasta_with_boltz_headers_of_a_shared_input_gives_the_af3_job(tmp_path, name):
    expected = _reference(name)
    records = []
    for entity in expected.entities:
        for chain in entity.ids:
            if isinstance(entity, LigandChain):
                records.append(f">{chain}|ccd\n{entity.ccd_codes[0]}")
                continue
            msa = next(MSAS.glob(f"{name}_{chain}.a3m"), None)
            header = f">{chain}|{entity.mol_type}" + (f"|{msa}" if msa else "")
            records.append(f"{header}\n{entity.sequence[:40]}\n{entity.sequence[40:]}")
    path = tmp_path / f"{name}.fasta"
    path.write_text("\n".join(records) + "\n")
    _same_chemistry(_only(read_jobs(str(path))), expected, msa=any(MSAS.glob(f"{name}_*.a3m")))


def test_protenix_json_of_a_shared_input_gives_the_af3_job(tmp_path):
    expected = _reference("102m")
    data = [{"name": "102m", "sequences": [
        {"proteinChain": {"sequence": expected.entities[0].sequence, "count": 1,
                          "unpairedMsaPath": str(MSAS / "102m_A.a3m"),
                          "pairedMsaPath": str(MSAS / "102m_A_paired.a3m")}},
        {"ligand": {"ligand": "CCD_HEM", "count": 1}}]}]
    path = tmp_path / "102m_protenix.json"
    path.write_text(json.dumps(data))
    job = _only(read_jobs(str(path)))
    _same_chemistry(job, expected)
    assert job.entities[0].paired_msa == expected.entities[0].paired_msa


def test_documented_examples_convert_as_each_tool_means_them():
    boltz = _only(read_jobs(str(FIXTURES / "boltz_protein_ligands.yaml")))
    protein, smiles, nag = boltz.entities
    assert protein.unpaired_msa == "" and protein.paired_msa == ""      # msa: empty
    assert [(m.ccd_code, m.position) for m in protein.modifications] == [("MLY", 8)]
    assert smiles.smiles.startswith("CC(C)Cc1ccc") and nag.ids == ("C", "D")
    assert [(a.chain_id, a.residue, a.atom_name) for pair in boltz.bonded_atom_pairs for a in pair] == \
        [("A", 3, "OH"), ("C", 1, "C1")]

    dimer = _only(read_jobs(str(FIXTURES / "colabfold_complex.fasta")))
    assert [e.ids for e in dimer.entities] == [("A", "B"), ("C",)]      # ':' splits, identical chains group

    mixed = _only(read_jobs(str(FIXTURES / "boltz_headers.fasta")))
    assert [type(e).__name__ for e in mixed.entities] == ["PolymerChain", "PolymerChain", "LigandChain",
                                                          "LigandChain"]
    assert mixed.entities[1].mol_type == "dna" and mixed.entities[3].ccd_codes == ("ATP",)

    protenix = _only(read_jobs(str(FIXTURES / "protenix_jobs.json")))
    assert protenix.seeds == (7,)
    assert [e.ids for e in protenix.entities] == [("A", "B"), ("C",), ("D", "E"), ("F",)]
    assert protenix.entities[2].ccd_codes == ("NAG", "NAG") and protenix.entities[3].ccd_codes == ("MG",)
    # no copy numbers: copy k of entity 1 bonds copy k of entity 3
    assert [[(a.chain_id, a.residue, a.atom_name) for a in pair] for pair in protenix.bonded_atom_pairs] == \
        [[("A", 3, "OH"), ("D", 1, "C1")], [("B", 3, "OH"), ("E", 1, "C1")]]


def test_a_converted_job_featurizes_like_the_af3_json_written_by_hand():
    job = _only(read_jobs(str(FIXTURES / "boltz_protein_ligands.yaml")))
    by_hand = parse_job({
        "dialect": "alphafold3", "version": 3, "name": "boltz_protein_ligands", "modelSeeds": [1],
        "sequences": [
            {"protein": {"id": "A", "sequence": "NLYIQWLKDGGPSSGRPPPS", "unpairedMsa": "", "pairedMsa": "",
                         "modifications": [{"ptmType": "MLY", "ptmPosition": 8}]}},
            {"ligand": {"id": "B", "smiles": "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O"}},
            {"ligand": {"id": ["C", "D"], "ccdCodes": ["NAG"]}}],
        "bondedAtomPairs": [[["A", 3, "OH"], ["C", 1, "C1"]]]}, source="by_hand.json")
    got, expected = featurize_job(job).features, featurize_job(by_hand).features
    assert got.keys() == expected.keys()
    for name in got:
        if name != "ref_pos":                    # conformers are generated
            assert (got[name] == expected[name]).all(), name
    # MLY atomized (11 heavy atoms mid-chain: its OXT leaves), ibuprofen 15 atoms, each NAG 14:
    # AF3 drops O1 of every glycan (the bonded one's O1 also leaves where the bond forms)
    assert got["restype"].shape[0] == 19 + 11 + 15 + 14 + 14


@pytest.mark.parametrize(("suffix", "text", "field", "words"), [
    (".yaml", "sequences:\n  - protein: {id: A, sequence: MKV}\nconstraints:\n"
              "  - pocket: {binder: A, contacts: [[A, 1]], force: true}\n", "constraints[0].pocket.force",
     "steering"),
    (".yaml", "sequences:\n  - protein: {id: A, sequence: MKV, cyclic: true}\n",
     "sequences[0].protein.cyclic", "cyclic"),
    (".yaml", "sequences:\n  - protein: {id: A, sequence: MKV, msa: x.csv}\n",
     "sequences[0].protein.msa", "CSV"),
    (".yaml", "sequences:\n  - protein: {id: A, sequence: MKV, msa: ../../../etc/passwd.a3m}\n",
     "sequences[0].protein.unpairedMsaPath", "outside"),
    (".yaml", "sequences:\n  - protein: {id: A, sequnce: MKV}\n", "sequences[0].protein.sequnce",
     "unknown key"),
    (".yaml", "!!python/object/apply:os.system ['true']\n", "line 1 column 1", "invalid YAML"),
    (".yaml", "templates:\n  - cif: x.cif\nsequences:\n  - protein: {id: A, sequence: MKV}\n",
     "templates", "templates"),
    (".fasta", "MKV\n>A\nMKV\n", "line 1", "before the first"),
    (".fasta", ">A|protein\n>B|protein\nMKV\n", "line 1", "no sequence"),
    (".json", json.dumps([{"name": "x", "sequences": [{"ligand": {"ligand": "FILE_/etc/passwd"}}],
                           "covalent_bonds": []}]), "[0].sequences[0].ligand.ligand", "files"),
    (".json", json.dumps([{"name": "x", "sequences": [
        {"proteinChain": {"sequence": "MKV", "count": 2}}, {"ligand": {"ligand": "CCO", "count": 1}}],
        "covalent_bonds": [{"entity1": 1, "position1": 1, "atom1": "N",
                            "entity2": 2, "position2": 1, "atom2": "1"}]}]),
     "[0].covalent_bonds[0].atom2", "atom-map"),
    (".json", json.dumps([{"name": "x", "sequences": [
        {"proteinChain": {"sequence": "MKV", "count": 2}}, {"ligand": {"ligand": "CCO", "count": 1}}],
        "covalent_bonds": [{"entity1": 1, "position1": 1, "atom1": "N",
                            "entity2": 2, "position2": 1, "atom2": "C1"}]}]),
     "[0].covalent_bonds[0]", "same count"),
    (".json", json.dumps([{"name": "x", "sequences": [
        {"proteinChain": {"sequence": "MKV", "count": True, "unpairedMsa": ""}}]}]),
     "[0].sequences[0].proteinChain.count", "count"),
])
def test_bad_dialect_inputs_are_located_errors(tmp_path, suffix, text, field, words):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    (result,) = read_jobs(str(path))
    assert isinstance(result, InputError), result
    assert result.field == field and words in result.message, (result.field, result.message)


def test_convert_prints_af3_json_that_parses_back_to_the_same_job(tmp_path, capsys):
    source = FIXTURES / "protenix_jobs.json"
    assert convert.main([str(source)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dialect"] == "alphafold3"
    again = parse_job(printed, source=str(tmp_path / "x.json"))
    original = _only(read_jobs(str(source)))
    assert again.entities == original.entities and again.bonded_atom_pairs == original.bonded_atom_pairs

    out = tmp_path / "converted"
    assert convert.main([str(FIXTURES), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["boltz_headers.json", "boltz_protein_ligands.json",
                                                     "colabfold_complex.json", "protenix_example.json"]
    bad = tmp_path / "bad.fasta"
    bad.write_text("no header\n")
    assert convert.main([str(bad)]) == 2
    assert "bad.fasta" in capsys.readouterr().err


def test_protenix_precomputed_msa_dir_is_read_inside_the_roots_and_refused_outside(tmp_path):
    msa_dir = tmp_path / "msa" / "0"
    msa_dir.mkdir(parents=True)
    (msa_dir / "non_pairing.a3m").write_text((MSAS / "102m_A.a3m").read_text())
    sequence = _reference("102m").entities[0].sequence

    def job(folder: str) -> list:
        return [{"name": "old_layout", "sequences": [
            {"proteinChain": {"sequence": sequence, "count": 1,
                              "msa": {"precomputed_msa_dir": folder, "pairing_db": "uniref100"}}}]}]

    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(job("msa/0")))
    parsed = _only(read_jobs(str(path)))
    assert parsed.entities[0].unpaired_msa == (MSAS / "102m_A.a3m").read_text()
    assert parsed.entities[0].paired_msa is None                      # no pairing.a3m there

    path.write_text(json.dumps(job("/etc")))
    (err,) = read_jobs(str(path))
    assert isinstance(err, InputError) and "outside" in err.message
    assert err.field == "[0].sequences[0].proteinChain.msa.precomputed_msa_dir"


def test_a_missing_string_field_is_reported_as_missing(tmp_path):
    """Issue 21: "missing" for a field that is not there, not "expected a string, got null"."""
    path = tmp_path / "no_sequence.json"
    path.write_text(json.dumps({"dialect": "alphafold3", "version": 3, "name": "x", "modelSeeds": [1],
                                "sequences": [{"protein": {"id": "A"}}]}))
    (err,) = read_jobs(str(path))
    assert isinstance(err, InputError)
    assert err.field == "sequences[0].protein.sequence" and err.message == "missing", (err.field, err.message)
