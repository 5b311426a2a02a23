"""foldray.chem.ccd against the real CCD (biotite's bundled copy) and user CCD blocks."""

from __future__ import annotations

import json
from pathlib import Path

import biotite.structure.info as info
import biotite.structure.io.pdbx as pdbx
import numpy as np
import pytest
from biotite.structure.info.ccd import get_from_ccd

from foldray.chem.ccd import clear_caches, get_component, is_known_ccd, parse_user_ccd
from foldray.chem.component import BOND_DOUBLE, BOND_SINGLE
from foldray.errors import InputError

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
AMINO_ACIDS = ("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR "
               "VAL").split()
ELEMENTS = {"C": 6, "N": 7, "O": 8, "P": 15, "S": 16, "SE": 34, "FE": 26}


@pytest.mark.parametrize("code", ["ALA", "GLY", "TRP", "DA", "U", "MSE", "HEM"])
def test_heavy_atoms_match_biotite_residue(code):
    reference = info.residue(code)  # independent reader of the same CCD
    reference = reference[~np.isin(reference.element, ["H", "D"])]
    comp = get_component(code)
    assert comp.name == code
    assert comp.atom_names == tuple(reference.atom_name.tolist())
    assert comp.n_atoms == len(reference)
    assert comp.elements.tolist() == [ELEMENTS[e] for e in reference.element]
    assert comp.charges.tolist() == reference.charge.tolist()
    assert comp.elements.dtype == np.int16 and comp.charges.dtype == np.float32
    assert comp.ref_pos.shape == (comp.n_atoms, 3) and comp.ref_pos.dtype == np.float32
    assert comp.ref_mask.all()


@pytest.mark.parametrize(("code", "n_heavy"), [("ALA", 6), ("GLY", 5), ("TRP", 15), ("DA", 22),
                                               ("U", 21)])
def test_standard_residue_heavy_atom_counts(code, n_heavy):
    assert get_component(code).n_atoms == n_heavy


@pytest.mark.parametrize(("code", "leaving"), [("ALA", ["OXT"]), ("GLY", ["OXT"]),
                                               ("DA", ["OP3"]), ("U", ["OP3"]), ("HEM", [])])
def test_leaving_atoms_flagged(code, leaving):
    comp = get_component(code)
    assert [comp.atom_names[i] for i in np.flatnonzero(comp.leaving)] == leaving


def test_bonds_are_heavy_atom_bonds_of_the_ccd():
    comp = get_component("TRP")
    bonds = info.bonds_in_residue("TRP")  # {(a, b): BondType}
    heavy = set(comp.atom_names)
    expected = {tuple(sorted((comp.index_of(a), comp.index_of(b))))
                for a, b in bonds if a in heavy and b in heavy}
    assert {tuple(b) for b in comp.bonds.tolist()} == expected
    assert (comp.bonds[:, 0] < comp.bonds[:, 1]).all()
    assert comp.bonds.dtype == np.int32 and comp.bond_orders.dtype == np.int8
    ala = get_component("ALA")
    orders = {(ala.atom_names[i], ala.atom_names[j]): o
              for (i, j), o in zip(ala.bonds.tolist(), ala.bond_orders.tolist(), strict=True)}
    assert orders[("C", "O")] == BOND_DOUBLE and orders[("N", "CA")] == BOND_SINGLE


def test_component_metadata():
    ala, mse, da, u, hem = (get_component(c) for c in ("ALA", "MSE", "DA", "U", "HEM"))
    assert (ala.chem_type, ala.parent, ala.one_letter) == ("L-PEPTIDE LINKING", None, "A")
    assert (mse.chem_type, mse.parent, mse.one_letter) == ("L-PEPTIDE LINKING", "MET", "M")
    assert da.chem_type == "DNA LINKING" and u.chem_type == "RNA LINKING"
    assert hem.chem_type == "NON-POLYMER" and hem.parent is None


def test_index_of_and_read_only_arrays():
    comp = get_component("ALA")
    assert comp.index_of("CA") == 1
    with pytest.raises(InputError, match="'XYZ' is not a heavy atom of component 'ALA'"):
        comp.index_of("XYZ")
    with pytest.raises(ValueError):
        comp.ref_pos[0, 0] = 1.0  # shared through the cache: must not be mutable


def test_unknown_code_raises_input_error():
    job = json.loads((DATA / "bad_inputs" / "unknown_ccd_code_ZZZQ.json").read_text())
    code = job["sequences"][-1]["ligand"]["ccdCodes"][0]
    assert not is_known_ccd(code)
    with pytest.raises(InputError, match="unknown CCD code 'ZZZQ'") as err:
        get_component(code)
    assert err.value.field == ""  # the caller adds the job and field location
    with pytest.raises(InputError, match="did you mean 'ALA'"):
        get_component("ala")
    with pytest.raises(InputError, match="empty CCD code"):
        get_component("")


def test_is_known_ccd():
    assert all(is_known_ccd(c) for c in ("ALA", "DA", "U", "HEM", "ZN", "FK5"))
    assert not is_known_ccd("ZZZQ")


def test_standard_residues_are_cached():
    clear_caches()
    first = [get_component(c) for c in AMINO_ACIDS]
    again = [get_component(c) for c in AMINO_ACIDS]
    assert all(a is b for a, b in zip(first, again, strict=True))


# --- user CCD ---------------------------------------------------------------------------

def _ccd_block(code: str, new_code: str, edit=None) -> pdbx.CIFBlock:
    """A real CCD entry as a CIF data block, renamed; `edit(category, columns)` may change it."""
    categories = {}
    for name in ("chem_comp", "chem_comp_atom", "chem_comp_bond"):
        columns = {key: column.as_array() for key, column in get_from_ccd(name, code).items()}
        columns["id" if name == "chem_comp" else "comp_id"] = np.full(
            len(next(iter(columns.values()))), new_code)
        if edit:
            edit(name, columns)
        categories[name] = pdbx.CIFCategory(columns)
    return pdbx.CIFBlock(categories)


def _user_ccd_text(*blocks: tuple[str, pdbx.CIFBlock]) -> str:
    return pdbx.CIFFile(dict(blocks)).serialize()


def test_user_ccd_extends_dictionary():
    text = _user_ccd_text(("BTNX", _ccd_block("BTN", "BTNX")))
    user = parse_user_ccd(text, source="job.json")
    assert set(user) == {"BTNX"}
    assert not is_known_ccd("BTNX") and is_known_ccd("BTNX", user_ccd=user)
    btx, btn = get_component("BTNX", user_ccd=user), get_component("BTN")
    assert btx.name == "BTNX" and btx.atom_names == btn.atom_names
    assert np.array_equal(btx.bonds, btn.bonds) and np.array_equal(btx.elements, btn.elements)
    assert btx.ref_pos_source == "etkdg"
    # codes the user CCD does not define still come from the bundled CCD
    assert get_component("ALA", user_ccd=user) is get_component("ALA")
    with pytest.raises(InputError, match="or the user CCD"):
        get_component("ZZZQ", user_ccd=user)


def test_user_ccd_overrides_bundled_component():
    def charge_n(name, columns):
        if name == "chem_comp_atom":
            columns["charge"] = np.where(columns["atom_id"] == "N", 1, 0)
    text = _user_ccd_text(("ALA", _ccd_block("ALA", "ALA", charge_n)),
                          ("BTNX", _ccd_block("BTN", "BTNX")))
    user = parse_user_ccd(text)
    assert set(user) == {"ALA", "BTNX"}
    override = get_component("ALA", user_ccd=user)
    assert override.charges[override.index_of("N")] == 1.0
    assert get_component("ALA").charges[0] == 0.0  # the bundled entry is untouched
    assert parse_user_ccd(text) is user  # parsed once per text: conformers are shared


def test_minimal_user_ccd_block():
    text = """data_LG1
_chem_comp.id LG1
_chem_comp.type non-polymer
loop_
_chem_comp_atom.comp_id
_chem_comp_atom.atom_id
_chem_comp_atom.type_symbol
_chem_comp_atom.charge
LG1 C1 C 0
LG1 O1 O 0
LG1 H11 H 0
LG1 H12 H 0
LG1 H13 H 0
LG1 HO1 H 0
loop_
_chem_comp_bond.atom_id_1
_chem_comp_bond.atom_id_2
_chem_comp_bond.value_order
C1 O1 SING
C1 H11 SING
C1 H12 SING
C1 H13 SING
O1 HO1 SING
"""
    comp = get_component("LG1", user_ccd=parse_user_ccd(text))
    assert comp.atom_names == ("C1", "O1") and comp.chem_type == "NON-POLYMER"
    assert comp.ref_pos_source == "etkdg"
    assert 1.3 < np.linalg.norm(comp.ref_pos[0] - comp.ref_pos[1]) < 1.5


@pytest.mark.parametrize(("text", "message"), [
    ("", "the user CCD is empty"),
    ("data_X\nloop_\n_chem_comp_atom.atom_id\n_chem_comp_atom.type_symbol\nC1\n",
     "not valid mmCIF"),
    ("data_X\n_chem_comp.id X\n_chem_comp_atom.atom_id C1\n", "missing _chem_comp_atom.type_symbol"),
    ("data_X\n_chem_comp.id X\n_chem_comp_atom.atom_id C1\n_chem_comp_atom.type_symbol Qq\n",
     "atom 'C1' has unknown element 'QQ'"),
    ("data_X\n_chem_comp.id Y\n_chem_comp_atom.atom_id C1\n_chem_comp_atom.type_symbol C\n",
     "_chem_comp.id 'Y' differs from the block name 'X'"),
    ("data_X\n_chem_comp_atom.atom_id C1\n_chem_comp_atom.type_symbol C\n"
     "_chem_comp_bond.atom_id_1 C1\n_chem_comp_bond.atom_id_2 C9\n", "bond to atom 'C9'"),
    ("data_X\n_chem_comp_atom.atom_id C1\n_chem_comp_atom.type_symbol C\n"
     "_chem_comp_atom.charge plus\n", "charge 'plus', not a number"),
])
def test_bad_user_ccd_raises_input_error(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_user_ccd(text, source="user.cif")
    assert err.value.source == "user.cif"
