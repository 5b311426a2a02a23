"""Tokenization (SI 2.6) of every real structure and input, checked against an independent
count made here from gemmi (residues) and the raw CCD tables (atoms, leaving flags)."""

import json
from collections import Counter

import biotite.structure.info as ccd_info
import gemmi
import numpy as np
import pytest

from foldray.errors import InputError
from foldray.features.tokenize import select_tokens, tokenize
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.residues import RESTYPE_INDEX
from tests.data_paths import BAD_INPUTS, INPUTS, STRUCTURES

STANDARD = {
    "protein": set("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR "
                   "VAL UNK".split()),
    "rna": {"A", "G", "C", "U", "N"}, "dna": {"DA", "DG", "DC", "DT", "DN"},
}
AIDS = set("SO4 GOL EDO PO4 ACT PEG DMS TRS PGE PG4 FMT EPE MPD MES CD IOD".split())


@pytest.fixture(scope="module")
def ccd_atoms():
    """code -> list of (atom name, is heavy, is leaving), straight from the CCD tables."""
    table = ccd_info.get_ccd()["chem_comp_atom"]
    codes = table["comp_id"].as_array()
    names = table["atom_id"].as_array()
    elements = table["type_symbol"].as_array()
    leaving = table["pdbx_leaving_atom_flag"].as_array()
    out: dict[str, list] = {}
    for code, name, element, flag in zip(codes, names, elements, leaving, strict=True):
        out.setdefault(code, []).append((name, element not in ("H", "D"), flag == "Y"))
    return out


def glycans(ccd_atoms) -> frozenset[str]:
    """CCD codes whose _chem_comp.type names a saccharide (AF3's glycan sets)."""
    table = ccd_info.get_ccd()["chem_comp"]
    return frozenset(code for code, kind in zip(table["id"].as_array(), table["type"].as_array(), strict=True)
                     if "SACCHARIDE" in str(kind).upper())


def independent_counts(path, ccd_atoms):
    """(n_tokens, n_atoms) by the SI 2.6 rule, from gemmi's view of the file."""
    st = gemmi.read_structure(str(path))
    st.remove_hydrogens()
    st.remove_waters()
    crystal = "DIFFRACTION" in dict(st.info).get("_exptl.method", "").upper()
    kinds = {gemmi.PolymerType.PeptideL: "protein", gemmi.PolymerType.Dna: "dna",
             gemmi.PolymerType.Rna: "rna"}
    tokens = atoms = 0
    for span in st[0].subchains():
        entity = st.get_entity_of(span)
        if entity.entity_type == gemmi.EntityType.Polymer:
            kind = kinds[entity.polymer_type]
            codes = [gemmi.Entity.first_mon(m) for m in entity.full_sequence]
            codes = ["MET" if c == "MSE" else c for c in codes]
            for i, code in enumerate(codes):
                # chain ends keep their leaving atom (AF3): OXT of the last amino acid, OP3
                # of the first nucleotide
                end = ("OXT" if kind == "protein" and i == len(codes) - 1 else
                       "OP3" if kind != "protein" and i == 0 else None)
                kept = [n for n, heavy, leave in ccd_atoms[code]
                        if heavy and (not leave or n == end)]
                atoms += len(kept)
                tokens += 1 if code in STANDARD[kind] else len(kept)
        else:
            for residue in span:
                if crystal and residue.name in AIDS:
                    continue
                n = sum(heavy for _, heavy, _ in ccd_atoms[residue.name])
                if residue.name in glycans(ccd_atoms) and any(a[0] == "O1" for a in ccd_atoms[residue.name]):
                    n -= 1      # AF3 drops a glycan's O1 (FeaturizationConfig.ligand_leaving_atoms)
                atoms += n
                tokens += n
    return tokens, atoms


@pytest.mark.parametrize("path", sorted(STRUCTURES.glob("*.cif")), ids=lambda p: p.stem)
def test_structure_counts_match_independent_count(path, ccd_atoms):
    job = job_from_structure_file(path.read_text(), source=str(path))
    tokens = tokenize(job, max_tokens=None)
    assert (tokens.n_tokens, tokens.n_atoms) == independent_counts(path, ccd_atoms)
    # every atom belongs to a token, token order follows atom order
    assert np.all(np.diff(tokens.atom_to_token) >= 0)
    assert set(tokens.atom_to_token.tolist()) == set(range(tokens.n_tokens))
    assert not np.isin(tokens.atom_element, [1]).any()  # hydrogens dropped


def test_token_features_of_a_protein_dna_complex():
    (job,) = parse_af3_json((INPUTS / "tiny_protein_dna.json").read_text())
    tokens = tokenize(job)
    assert tokens.n_tokens == 20 + 12 + 12
    assert tokens.asym_id.tolist() == [1] * 20 + [2] * 12 + [3] * 12
    # the two DNA strands share a sequence: same entity, sym_id 0 and 1
    assert tokens.entity_id.tolist() == [1] * 20 + [2] * 24
    assert tokens.sym_id.tolist() == [0] * 20 + [0] * 12 + [1] * 12
    assert tokens.residue_index.tolist() == list(range(1, 21)) + list(range(1, 13)) * 2
    assert tokens.restype[0] == RESTYPE_INDEX["ASN"] and tokens.restype[20] == RESTYPE_INDEX["DC"]
    centre_names = tokens.atom_name[tokens.centre_atom]
    assert set(centre_names[:20]) == {"CA"} and set(centre_names[20:]) == {"C1'"}
    rep = tokens.atom_name[tokens.rep_atom]
    assert rep[9] == "CA" and rep[0] == "CB"     # G10 is glycine: CA; N1: CB
    assert rep[20] == "C2" and rep[21] == "C4"   # DC pyrimidine C2, DG purine C4
    # leaving atoms only at chain ends (AF3): OXT on the last protein residue, OP3 on the
    # first nucleotide of each DNA strand
    oxt = np.flatnonzero(tokens.atom_name == "OXT")
    assert len(oxt) == 1 and tokens.atom_residue[oxt[0]] == 20
    op3 = np.flatnonzero(tokens.atom_name == "OP3")
    assert tokens.atom_chain[op3].tolist() == [1, 2] and tokens.atom_residue[op3].tolist() == [1, 1]


def test_modified_residues_and_ligands_are_tokenized_per_atom():
    (job,) = parse_af3_json((INPUTS / "4zey.json").read_text())
    tokens = tokenize(job)
    mse = tokens.atom_res_name == "MSE"
    assert Counter(tokens.atom_residue[mse].tolist()) == {2: 8, 43: 8, 63: 8}
    mse_tokens = np.unique(tokens.atom_to_token[mse])
    assert len(mse_tokens) == 24                     # one token per heavy atom
    assert set(tokens.restype[mse_tokens]) == {RESTYPE_INDEX["MET"]}   # parent residue type
    assert set(tokens.residue_index[mse_tokens]) == {2, 43, 63}
    assert tokens.n_tokens == 84 - 3 + 24

    (job,) = parse_af3_json((INPUTS / "102m.json").read_text(), source=str(INPUTS / "102m.json"))
    tokens = tokenize(job)
    heme = tokens.mol_type == 3
    assert heme.sum() == 43 and set(tokens.restype[heme]) == {RESTYPE_INDEX["UNK"]}
    # intra-ligand bonds enter token_bonds: every heavy-atom bond of the CCD entry
    hem = ccd_info.residue("HEM")
    heavy = hem.element != "H"
    n_heavy_bonds = sum(heavy[i] and heavy[j] for i, j, _ in hem.bonds.as_array())
    assert len(tokens.bonds) == n_heavy_bonds > 40
    assert (tokens.atom_chain[tokens.bonds] == 1).all()


def test_glycan_bonds_from_bonded_atom_pairs():
    (job,) = parse_af3_json((INPUTS / "1qgi.json").read_text())
    tokens = tokenize(job)
    lookup = tokens.atom_lookup()
    bond = sorted([lookup[("B", 1, "O4")], lookup[("B", 2, "C1")]])
    assert bond in np.sort(tokens.bonds, axis=1).tolist()
    # three ligand residues -> three reference conformers (ref_space_uid) in chain B
    ligand_uids = np.unique(tokens.atom_space_uid[tokens.atom_chain == 1])
    assert len(ligand_uids) == 3


def test_unknown_ccd_code_is_located():
    (job,) = parse_af3_json((BAD_INPUTS / "unknown_ccd_code_ZZZQ.json").read_text(), source="x.json")
    with pytest.raises(InputError) as info:
        tokenize(job)
    assert info.value.field == "sequences[1].ligand.ccdCodes[0]"
    assert "ZZZQ" in info.value.message and info.value.job == "unknown_ccd"


def test_invalid_smiles_is_located():
    (job,) = parse_af3_json((BAD_INPUTS / "invalid_smiles.json").read_text(), source="x.json")
    with pytest.raises(InputError) as info:
        tokenize(job)
    assert info.value.field == "sequences[1].ligand.smiles"


def test_token_budget():
    path = BAD_INPUTS / "huge_token_count_20000aa.json"
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    with pytest.raises(InputError) as info:
        tokenize(job, max_tokens=5000)
    assert "20000 tokens" in info.value.message and info.value.field == "sequences"


def test_select_tokens_keeps_atoms_ids_and_bonds_consistent():
    (job,) = parse_af3_json((INPUTS / "102m.json").read_text(), source=str(INPUTS / "102m.json"))
    tokens = tokenize(job)
    keep = np.r_[100:154, 154:170]           # protein tail + part of the heme
    crop = select_tokens(tokens, keep)
    assert crop.n_tokens == len(keep)
    assert crop.residue_index[0] == 101 and crop.asym_id.tolist() == tokens.asym_id[keep].tolist()
    assert np.array_equal(crop.atom_name[crop.centre_atom], tokens.atom_name[tokens.centre_atom[keep]])
    # only bonds with both heme atoms inside the crop survive
    assert 0 < len(crop.bonds) < len(tokens.bonds)
    assert (crop.bonds < crop.n_atoms).all()


def test_user_ccd_defines_a_new_ligand(tmp_path):
    from biotite.structure.io import pdbx

    categories = {}
    for name in ("chem_comp", "chem_comp_atom", "chem_comp_bond"):
        columns = {k: c.as_array() for k, c in ccd_info.get_from_ccd(name, "BTN").items()}
        columns["id" if name == "chem_comp" else "comp_id"] = np.full(
            len(next(iter(columns.values()))), "MYLIG")
        categories[name] = pdbx.CIFCategory(columns)
    user_ccd = pdbx.CIFFile({"MYLIG": pdbx.CIFBlock(categories)}).serialize()
    (tmp_path / "my.cif").write_text(user_ccd)
    base = {"dialect": "alphafold3", "name": "custom", "modelSeeds": [1], "sequences": [
        {"protein": {"id": "A", "sequence": "NLYIQWLKDGGPSSGRPPPS"}},
        {"ligand": {"id": "B", "ccdCodes": ["MYLIG"]}}]}
    inline = base | {"version": 1, "userCCD": user_ccd}
    by_path = base | {"version": 3, "userCCDPath": "my.cif"}
    n_btn = int((ccd_info.residue("BTN").element != "H").sum())
    for job_json in (inline, by_path):
        (job,) = parse_af3_json(json.dumps(job_json), source=str(tmp_path / "job.json"))
        tokens = tokenize(job)
        assert tokens.n_tokens == 20 + n_btn
        assert set(tokens.atom_res_name[tokens.mol_type[tokens.atom_to_token] == 3]) == {"MYLIG"}
    # without the user CCD the code is unknown, and the error says where
    (job,) = parse_af3_json(json.dumps(base | {"version": 1}), source="job.json")
    with pytest.raises(InputError, match="MYLIG"):
        tokenize(job)
