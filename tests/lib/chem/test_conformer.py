"""Reference conformers (SI 2.8): chemically sane, stereo-correct, deterministic, fallbacks."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import gemmi
import numpy as np
import pytest
from biotite.structure.info.ccd import get_from_ccd
from rdkit import Chem

from foldray.chem import conformer
from foldray.chem.ccd import _bundled_entry, clear_caches, get_component, parse_user_ccd
from foldray.chem.component import Component

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
STANDARD = ("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
            "A C G U DA DC DG DT").split()
METALS = {3, 4, 11, 12, 13, *range(19, 32), *range(37, 51), *range(55, 84), *range(87, 119)}


def _structure_components() -> list[str]:
    """Every CCD code used in the real structures of shared/data (ligands, ions, PTMs)."""
    codes = set()
    for path in sorted((DATA / "structures").glob("*.cif")):
        block = gemmi.cif.read(str(path)).sole_block()
        codes.update(block.find_values("_chem_comp.id"))
    return sorted(codes - {"HOH"})


def _bond_lengths_ok(comp: Component) -> list[str]:
    """Bonded heavy-atom pairs outside 1.0-2.5 Å (up to 3.2 Å for bonds to metals)."""
    problems = []
    for (i, j) in comp.bonds.tolist():
        if not (comp.ref_mask[i] and comp.ref_mask[j]):
            continue
        d = float(np.linalg.norm(comp.ref_pos[i] - comp.ref_pos[j]))
        metal = bool({int(comp.elements[i]), int(comp.elements[j])} & METALS)
        low, high = (1.0, 3.2) if metal else (1.0, 2.5)
        if not low <= d <= high:
            problems.append(f"{comp.name} {comp.atom_names[i]}-{comp.atom_names[j]} {d:.2f}")
    return problems


def test_structure_components_found():
    codes = _structure_components()
    assert {"HEM", "FK5", "BTN", "NAG", "MSE", "ZN", "CA", "5IU"} <= set(codes)


@pytest.mark.parametrize("code", [*STANDARD, *_structure_components()])
def test_conformer_bond_lengths_are_sane(code):
    comp = get_component(code)
    assert comp.ref_mask.all(), comp.ref_pos_source
    assert np.isfinite(comp.ref_pos).all()
    assert _bond_lengths_ok(comp) == []
    if comp.n_atoms > 1:  # no two atoms on top of each other
        d = np.linalg.norm(comp.ref_pos[:, None] - comp.ref_pos[None], axis=-1)
        assert d[np.triu_indices(comp.n_atoms, 1)].min() > 0.9


def test_standard_residues_use_etkdg():
    assert {get_component(c).ref_pos_source for c in STANDARD} == {"etkdg"}


def test_heme_has_iron_and_ccd_charges():
    hem = get_component("HEM")
    ccd_atoms = get_from_ccd("chem_comp_atom", "HEM")
    symbols = ccd_atoms["type_symbol"].as_array()
    heavy = symbols != "H"
    assert hem.n_atoms == int(heavy.sum()) == 43
    fe = hem.index_of("FE")
    assert hem.elements[fe] == 26
    assert hem.charges.tolist() == ccd_atoms["charge"].as_array()[heavy].astype(float).tolist()
    assert hem.ref_pos_source in ("etkdg", "ideal") and hem.ref_mask.all()
    # Fe sits in the porphyrin plane, bonded to its four nitrogens
    fe_n = [np.linalg.norm(hem.ref_pos[fe] - hem.ref_pos[hem.index_of(n)])
            for n in ("NA", "NB", "NC", "ND")]
    assert all(1.7 < d < 2.4 for d in fe_n), fe_n


def test_large_ligand_fk506():
    fk5 = get_component("FK5")
    assert fk5.n_atoms == 57 and fk5.ref_pos_source == "etkdg"


@pytest.mark.parametrize(("code", "element", "charge"), [("ZN", 30, 2), ("MG", 12, 2), ("CA", 20, 2),
                                                         ("NA", 11, 1), ("CL", 17, -1)])
def test_ions_single_atom(code, element, charge):
    ion = get_component(code)
    assert ion.atom_names == (code,) and ion.elements.tolist() == [element]
    assert ion.charges.tolist() == [charge] and ion.ref_mask.tolist() == [True]
    assert ion.bonds.shape == (0, 2)


def _chiral_signs(comp: Component, pos: np.ndarray, code: str) -> dict[str, float]:
    """Sign of the chiral volume at each tagged stereocentre, by atom name."""
    mol = conformer.mol_from_entry(_bundled_entry(code))
    names = _bundled_entry(code).atom_names
    signs = {}
    for atom in mol.GetAtoms():
        if atom.GetChiralTag() not in (Chem.ChiralType.CHI_TETRAHEDRAL_CW,
                                       Chem.ChiralType.CHI_TETRAHEDRAL_CCW):
            continue
        heavy = [names[n.GetIdx()] for n in atom.GetNeighbors() if n.GetAtomicNum() > 1][:3]
        if len(heavy) < 3:
            continue
        centre = pos[comp.index_of(names[atom.GetIdx()])]
        vectors = [pos[comp.index_of(n)] - centre for n in heavy]
        signs[names[atom.GetIdx()]] = float(np.sign(np.linalg.det(np.array(vectors))))
    return signs


@pytest.mark.parametrize("code", ["ALA", "THR", "ILE", "DA", "U", "NAG", "FK5", "BTN"])
def test_etkdg_keeps_ccd_stereochemistry(code):
    """L-amino acids stay L, sugars keep their configuration (stereo read from ideal coords)."""
    comp = get_component(code)
    assert comp.ref_pos_source == "etkdg"
    entry = _bundled_entry(code)
    ideal = entry.ideal_pos[entry.heavy]
    expected = _chiral_signs(comp, ideal, code)
    assert expected, "no stereocentres found"
    assert _chiral_signs(comp, comp.ref_pos, code) == expected


def _fingerprint(codes) -> str:
    digest = hashlib.sha256()
    for code in codes:
        digest.update(get_component(code).ref_pos.tobytes())
    return digest.hexdigest()


def test_deterministic_with_caches_cleared():
    codes = ["TRP", "HEM", "FK5", "NAG"]
    clear_caches()
    first = [get_component(c).ref_pos.copy() for c in codes]
    clear_caches()
    second = [get_component(c) for c in codes]
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b.ref_pos)


def test_deterministic_across_processes():
    codes = ["TRP", "HEM", "FK5"]
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from test_conformer import _fingerprint; "
              f"print(_fingerprint({codes!r}))")
    platform = str(Path(__file__).resolve().parents[3] / "platform")
    out = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
        check=True, env={"PYTHONPATH": platform, "PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
        timeout=300)
    assert out.stdout.strip() == _fingerprint(codes)


# --- SI 2.8 fallbacks, on user CCD entries built to trigger each one ----------------------

_FALLBACK_CIF = """data_{code}
_chem_comp.id {code}
loop_
_chem_comp_atom.atom_id
_chem_comp_atom.type_symbol
_chem_comp_atom.pdbx_model_Cartn_x_ideal
_chem_comp_atom.pdbx_model_Cartn_y_ideal
_chem_comp_atom.pdbx_model_Cartn_z_ideal
_chem_comp_atom.model_Cartn_x
_chem_comp_atom.model_Cartn_y
_chem_comp_atom.model_Cartn_z
C1 C {c1}
C2 C {c2}
C3 C 0.0 1.5 0.0 10.0 11.5 10.0
C4 C 0.0 -1.5 0.0 10.0 8.5 10.0
C5 C 0.0 0.0 1.5 10.0 10.0 11.5
C6 C 0.0 0.0 -1.5 10.0 10.0 8.5
loop_
_chem_comp_bond.atom_id_1
_chem_comp_bond.atom_id_2
_chem_comp_bond.value_order
C1 C2 SING
C1 C3 SING
C1 C4 SING
C1 C5 SING
C1 C6 SING
"""  # pentavalent carbon: RDKit rejects it, so the CCD coordinates must be used


def _fallback_component(c1: str, c2: str) -> Component:
    return get_component("PV5", user_ccd=parse_user_ccd(_FALLBACK_CIF.format(code="PV5", c1=c1,
                                                                             c2=c2)))


def test_fallback_to_ideal_coordinates():
    comp = _fallback_component("0.0 0.0 0.0 10.0 10.0 10.0", "1.5 0.0 0.0 11.5 10.0 10.0")
    assert comp.ref_pos_source == "ideal" and comp.ref_mask.all()
    assert comp.ref_pos[1].tolist() == [1.5, 0.0, 0.0]


def test_fallback_to_model_coordinates_when_ideal_incomplete():
    comp = _fallback_component("0.0 0.0 0.0 10.0 10.0 10.0", "? ? ? 11.5 10.0 10.0")
    assert comp.ref_pos_source == "model" and comp.ref_mask.all()
    assert comp.ref_pos[1].tolist() == [11.5, 10.0, 10.0]


def test_fallback_partial_coordinates_are_masked():
    comp = _fallback_component("0.0 0.0 0.0 ? ? ?", "? ? ? ? ? ?")
    assert comp.ref_pos_source == "ideal"
    assert comp.ref_mask.tolist() == [True, False, True, True, True, True]
    assert comp.ref_pos[1].tolist() == [0.0, 0.0, 0.0]


def test_fallback_to_zeros():
    text = ("data_PV0\nloop_\n_chem_comp_atom.atom_id\n_chem_comp_atom.type_symbol\n"
            + "".join(f"C{k} C\n" for k in range(6))
            + "loop_\n_chem_comp_bond.atom_id_1\n_chem_comp_bond.atom_id_2\n"
            + "".join(f"C0 C{k}\n" for k in range(1, 6)))  # pentavalent C, no coordinates
    comp = get_component("PV0", user_ccd=parse_user_ccd(text))
    assert comp.ref_pos_source == "zeros" and not comp.ref_mask.any()
    assert not comp.ref_pos.any()


def test_bundled_model_coordinates_respect_training_cutoff():
    ala = _bundled_entry("ALA")  # modified 2024: its model coordinates may not be used
    assert not ala.model_pos_allowed
    assert conformer.fallback_positions(ala).source == "ideal"


# --- bounded embedding time (issue 17, item 4) -------------------------------------------

def test_a_pathological_embedding_is_killed_at_the_time_limit(monkeypatch):
    """RDKit's own timeout overran to 23-61 s on this molecule; the child process is killed."""
    import time

    monkeypatch.setenv(conformer.EMBED_TIME_LIMIT_ENV, "1.5")
    mol = Chem.AddHs(Chem.MolFromSmiles("C" * 200))
    start = time.perf_counter()
    assert conformer.embed(mol, seed=7) is None
    assert time.perf_counter() - start < 8   # 1.5 s limit + kill, with slack for a busy CPU


def test_child_embedding_equals_in_process_embedding():
    # 156 atoms, so embedded in a child; 12 fragments, each quick to embed even on a busy CPU
    mol = Chem.AddHs(Chem.MolFromSmiles(".".join(["c1ccccc1O"] * 12)))
    assert mol.GetNumAtoms() > conformer.IN_PROCESS_MAX_ATOMS
    in_process = conformer._embed_rounds(mol, conformer.CONFORMER_SEED)
    child = conformer.embed(mol)
    assert in_process is not None and child is not None
    np.testing.assert_array_equal(child, in_process)


def test_featurization_deadline_stops_conformer_work_and_caches_nothing():
    import time

    from foldray.chem.deadline import featurization_deadline
    from foldray.chem.smiles import component_from_smiles
    from foldray.errors import InputError

    before = component_from_smiles.cache_info().currsize
    start = time.perf_counter()
    with featurization_deadline(1.0), pytest.raises(InputError, match="featurization exceeded 1 s"):
        component_from_smiles("C" * 200, seed=4242)
    assert time.perf_counter() - start < 8
    assert component_from_smiles.cache_info().currsize == before
    with featurization_deadline(0.01):   # past the deadline nothing new is embedded
        time.sleep(0.05)
        with pytest.raises(InputError, match="exceeded"):
            conformer.embed(Chem.AddHs(Chem.MolFromSmiles("CCO")), seed=4243)
    assert conformer.embed(Chem.AddHs(Chem.MolFromSmiles("CCO")), seed=4243) is not None
