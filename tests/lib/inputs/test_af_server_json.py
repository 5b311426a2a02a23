"""AlphaFold Server job JSON (dialect "alphafoldserver"): conversion, tokenization, errors."""

import copy
import json

import biotite.structure.info as struc_info
import pytest

from foldray.errors import InputError
from foldray.features.tokenize import tokenize
from foldray.inputs.af3_json import parse_af3_json, parse_af3_json_lenient
from foldray.inputs.af_server_json import DEFAULT_SEED, chain_id, parse_server_job
from foldray.inputs.job import LigandChain, PolymerChain
from foldray.jobs.cli import main
from tests.fixtures.hostile.corpus import edited

TRP_CAGE = "NLYIQWLKDGGPSSGRPPPS"

# As exported by alphafoldserver.com (`<job>_job_request.json`): a list, seeds as strings or [].
TRP_CAGE_ATP_JOB = {
    "name": "trp_cage dimer + ATP",
    "modelSeeds": [],
    "sequences": [
        {"proteinChain": {"sequence": TRP_CAGE, "count": 2,
                          "modifications": [{"ptmType": "CCD_SEP", "ptmPosition": 13}],
                          "useStructureTemplate": True}},
        {"ligand": {"ligand": "CCD_ATP", "count": 1}},
        {"ion": {"ion": "MG", "count": 2}},
    ],
    "dialect": "alphafoldserver",
    "version": 1,
}
NUCLEIC_JOB = {
    "name": "Methylated DNA duplex + guide RNA",
    "modelSeeds": ["1593933729", "4273"],
    "sequences": [
        {"dnaSequence": {"sequence": "GACGTTAC", "count": 1,
                         "modifications": [{"modificationType": "CCD_5CM", "basePosition": 3}]}},
        {"dnaSequence": {"sequence": "GTAACGTC", "count": 1}},
        {"rnaSequence": {"sequence": "GUACGU", "count": 1,
                         "modifications": [{"modificationType": "CCD_PSU", "basePosition": 2}]}},
        {"proteinChain": {"sequence": "MKTAYIAKQR", "count": 1, "useStructureTemplate": False}},
    ],
    "dialect": "alphafoldserver",
    "version": 1,
}


def parse(jobs, source="job_request.json"):
    return parse_af3_json(json.dumps(jobs), source=source)


def heavy_atoms(ccd_code, leaving=()):
    """Heavy atoms of a CCD component (biotite's copy of the CCD), minus the named ones."""
    residue = struc_info.residue(ccd_code)
    return sum(1 for name, element in zip(residue.atom_name, residue.element, strict=True)
               if element != "H" and name not in leaving)


def test_trp_cage_dimer_with_atp_and_magnesium():
    (job,) = parse([TRP_CAGE_ATP_JOB])
    assert job.name == "trp_cage dimer + ATP" and job.source == "job_request.json"
    assert job.seeds == (DEFAULT_SEED,) == (1,)
    protein, atp, mg = job.entities
    assert isinstance(protein, PolymerChain) and protein.mol_type == "protein"
    assert protein.ids == ("A", "B") and protein.sequence == TRP_CAGE
    assert protein.ccd_sequence()[12] == "SEP" and protein.ccd_sequence()[13] == "SER"
    assert protein.unpaired_msa is None and protein.paired_msa is None   # searched later
    assert protein.templates is None                                     # search templates
    assert isinstance(atp, LigandChain) and atp.ids == ("C",) and atp.ccd_codes == ("ATP",)
    assert isinstance(mg, LigandChain) and mg.ids == ("D", "E") and mg.ccd_codes == ("MG",)
    assert job.chain_ids == ("A", "B", "C", "D", "E") and job.bonded_atom_pairs == ()

    tokens = tokenize(job)
    # Standard residues are one token each; a modified residue, a ligand and an ion are one
    # token per heavy atom (SEP inside the chain loses its leaving OXT).
    per_chain = (len(TRP_CAGE) - 1) + heavy_atoms("SEP", leaving={"OXT"})
    assert tokens.n_tokens == 2 * per_chain + heavy_atoms("ATP") + 2 * heavy_atoms("MG")
    assert tokens.n_tokens == 2 * (19 + 10) + 31 + 2
    assert [c.chain_id for c in tokens.chains] == ["A", "B", "C", "D", "E"]


def test_dna_rna_modifications_string_seeds_and_no_templates():
    (job,) = parse([NUCLEIC_JOB])
    assert job.seeds == (1593933729, 4273)
    dna, dna_rev, rna, protein = job.entities
    assert (dna.mol_type, dna.ids, dna_rev.ids, rna.mol_type, rna.ids, protein.ids) == \
        ("dna", ("A",), ("B",), "rna", ("C",), ("D",))
    assert dna.ccd_sequence()[:4] == ("DG", "DA", "5CM", "DG")
    assert rna.ccd_sequence()[:3] == ("G", "PSU", "A")
    assert protein.templates == ()          # useStructureTemplate: false

    tokens = tokenize(job)
    # Modified nucleotides inside a chain lose the leaving 5'-phosphate oxygen OP3.
    expected = (7 + heavy_atoms("5CM", leaving={"OP3"})) + 8 \
        + (5 + heavy_atoms("PSU", leaving={"OP3"})) + 10
    assert tokens.n_tokens == expected


def test_chain_ids_are_reverse_spreadsheet_style_like_af3():
    assert [chain_id(n) for n in (1, 2, 26, 27, 28, 52, 53, 702, 703)] == \
        ["A", "B", "Z", "AA", "BA", "ZA", "AB", "ZZ", "AAA"]
    job = copy.deepcopy(TRP_CAGE_ATP_JOB)
    job["sequences"][2]["ion"]["count"] = 30
    (parsed,) = parse([job])
    mg_ids = parsed.entities[2].ids
    assert len(mg_ids) == 30 and mg_ids[:2] == ("D", "E") and mg_ids[-8:] == \
        ("Z", "AA", "BA", "CA", "DA", "EA", "FA", "GA")


def test_count_defaults_to_one_and_seeds_may_be_omitted():
    job = {"name": "bare", "sequences": [{"proteinChain": {"sequence": TRP_CAGE}},
                                         {"ion": {"ion": "ZN"}}],
           "dialect": "alphafoldserver", "version": 1}
    (parsed,) = parse([job])
    assert parsed.chain_ids == ("A", "B") and parsed.seeds == (1,)


def test_dispatch_list_without_dialect_single_object_and_mixed_lists():
    legacy = {k: v for k, v in TRP_CAGE_ATP_JOB.items() if k not in ("dialect", "version")}
    (job,) = parse([legacy])          # AF3 reads every list as server jobs, dialect or not
    assert job.chain_ids == ("A", "B", "C", "D", "E")

    (single,) = parse(TRP_CAGE_ATP_JOB)   # one object that names the server dialect
    assert single.chain_ids == job.chain_ids

    af3 = {"dialect": "alphafold3", "version": 2, "name": "af3 job", "modelSeeds": [7],
           "sequences": [{"protein": {"id": "P", "sequence": TRP_CAGE}}]}
    server, native = parse([TRP_CAGE_ATP_JOB, af3])
    assert server.chain_ids[0] == "A" and native.chain_ids == ("P",) and native.seeds == (7,)


def test_a_single_object_error_has_no_list_index():
    bad = copy.deepcopy(TRP_CAGE_ATP_JOB)
    bad["sequences"][0]["proteinChain"]["count"] = 0
    with pytest.raises(InputError) as info:
        parse_server_job(bad, source="one.json", index=None)
    assert info.value.field == "sequences[0].proteinChain.count"


def test_a_bad_job_in_a_list_keeps_its_index_and_name_and_spares_the_others():
    bad = copy.deepcopy(NUCLEIC_JOB)
    bad["sequences"][2]["rnaSequence"]["count"] = -1
    results = parse_af3_json_lenient(json.dumps([TRP_CAGE_ATP_JOB, bad, NUCLEIC_JOB]),
                                     source="batch.json")
    assert [type(r).__name__ for r in results] == ["Job", "InputError", "Job"]
    err = results[1]
    assert err.field == "[1].sequences[2].rnaSequence.count" and "-1" in err.message
    assert err.job == "Methylated DNA duplex + guide RNA" and err.source == "batch.json"
    assert str(err).startswith("batch.json: job 'Methylated DNA duplex + guide RNA': [1].")


P = ("sequences", 0, "proteinChain")
BAD_CASES = {
    "count zero": (P + ("count",), 0, "[0].sequences[0].proteinChain.count", "0"),
    "count string": (P + ("count",), "2", "[0].sequences[0].proteinChain.count", "'2'"),
    "count bool": (P + ("count",), True, "[0].sequences[0].proteinChain.count", "True"),
    "count float": (("sequences", 2, "ion", "count"), 1.5, "[0].sequences[2].ion.count", "1.5"),
    "unknown entity": (("sequences", 1), {"smallMolecule": {"ligand": "CCD_ATP", "count": 1}},
                       "[0].sequences[1].smallMolecule", "unknown entity type 'smallMolecule'"),
    "af3 entity": (("sequences", 1), {"ligand": {"ccdCodes": ["ATP"], "id": "C"}},
                   "[0].sequences[1].ligand.ccdCodes", "unknown key 'ccdCodes'"),
    "af3 protein": (("sequences", 0), {"protein": {"id": "A", "sequence": TRP_CAGE}},
                    "[0].sequences[0].protein", "alphafold3"),
    "two entity keys": (("sequences", 1), {"ligand": {"ligand": "CCD_ATP"}, "ion": {"ion": "MG"}},
                        "[0].sequences[1]", "exactly one of"),
    "lower-case prefix": (("sequences", 1, "ligand", "ligand"), "ccd_ATP",
                          "[0].sequences[1].ligand.ligand", "upper-case 'CCD_'"),
    "dash prefix": (("sequences", 1, "ligand", "ligand"), "CCD-ATP",
                    "[0].sequences[1].ligand.ligand", "'CCD-ATP'"),
    "smiles as ligand": (("sequences", 1, "ligand", "ligand"), "SMILES_CCO",
                         "[0].sequences[1].ligand.ligand", "'SMILES_CCO'"),
    "empty code": (("sequences", 2, "ion", "ion"), "CCD_", "[0].sequences[2].ion.ion", "'CCD_'"),
    "lower-case ion": (("sequences", 2, "ion", "ion"), "mg", "[0].sequences[2].ion.ion",
                       "upper-case"),
    "bad ptm prefix": (P + ("modifications", 0, "ptmType"), "CCD:SEP",
                       "[0].sequences[0].proteinChain.modifications[0].ptmType", "'CCD:SEP'"),
    "ptm past the end": (P + ("modifications", 0, "ptmPosition"), 21,
                         "[0].sequences[0].proteinChain.modifications[0].ptmPosition", "1..20"),
    "af3 position key": (P + ("modifications", 0), {"ptmType": "CCD_SEP", "position": 13},
                         "[0].sequences[0].proteinChain.modifications[0].position",
                         "unknown key 'position'"),
    "bad residue": (P + ("sequence",), "NLYIQWLKDGGPSZGRPPPS", "[0].sequences[0].proteinChain.sequence",
                    "'Z' at 14"),
    "glycans": (P + ("glycans",), [{"residues": "NAG(NAG)(BMA)", "position": 1}],
                "[0].sequences[0].proteinChain.glycans", "not supported yet"),
    "template date": (P + ("maxTemplateDate",), "2021-09-30",
                      "[0].sequences[0].proteinChain.maxTemplateDate", "not supported"),
    "template flag": (P + ("useStructureTemplate",), "no",
                      "[0].sequences[0].proteinChain.useStructureTemplate", "'no'"),
    "unknown job key": (("bondedAtomPairs",), [], "[0].bondedAtomPairs", "unknown key"),
    "dialect only": (("version",), ..., "[0].version", "both"),
    "version 2": (("version",), 2, "[0].version", "unsupported version 2"),
    "bad seed": (("modelSeeds",), ["12", "x1"], "[0].modelSeeds[1]", "'x1'"),
    "repeated seed": (("modelSeeds",), [5, "5"], "[0].modelSeeds", "repeat"),
    "no name": (("name",), ..., "[0].name", "missing"),
    "no sequences": (("sequences",), [], "[0].sequences", "non-empty"),
}


@pytest.mark.parametrize("case", BAD_CASES, ids=str)
def test_errors_name_the_field(case):
    path, value, field, snippet = BAD_CASES[case]
    with pytest.raises(InputError) as info:
        parse([edited(TRP_CAGE_ATP_JOB, path, value)])
    assert info.value.field == field, str(info.value)
    assert snippet in info.value.message, str(info.value)
    assert info.value.source == "job_request.json"


def test_glycans_left_empty_and_template_date_without_templates_are_accepted():
    job = edited(TRP_CAGE_ATP_JOB, P + ("glycans",), [])
    job = edited(job, P + ("useStructureTemplate",), False)
    job = edited(job, P + ("maxTemplateDate",), "2021-09-30")
    (parsed,) = parse([job])
    assert parsed.entities[0].templates == ()


def test_foldray_validate_accepts_a_server_file(tmp_path, capsys):
    path = tmp_path / "fold_job_request.json"
    path.write_text(json.dumps([TRP_CAGE_ATP_JOB, NUCLEIC_JOB], indent=2))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "trp_cage dimer + ATP: 91 tokens" in out and "Methylated DNA duplex" in out


def test_foldray_validate_reports_a_bad_server_job_with_its_path(tmp_path, capsys):
    path = tmp_path / "bad_request.json"
    bad = edited(TRP_CAGE_ATP_JOB, ("sequences", 1, "ligand", "ligand"), "ATP-CCD")
    path.write_text(json.dumps([NUCLEIC_JOB, bad]))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[1].sequences[1].ligand.ligand" in err and "'ATP-CCD'" in err
