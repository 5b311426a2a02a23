"""Protenix's CCD files, built offline from the CCD copy inside the biotite wheel.

Protenix reads `$PROTENIX_ROOT_DIR/common/components.cif` (mmCIF text, one data block per
component; protenix configs/configs_data.py `ccd_components_file`) and its RDKit cache
`components.cif.rdkit_mol.pkl` (`ccd_components_rdkit_mol_file`, loaded whole by
protenix/data/core/ccd.py get_component_rdkit_mol). Its own builder, scripts/gen_ccd_cache.py,
downloads the wwPDB CCD and reads each block with pdbeccdutils. Here nothing is downloaded:
the blocks come from biotite's `structure/info/components.bcif` (one "components" block holding
every component) and are written back as one text block per component. Only the components a
job names plus every standard residue are written (the whole CCD as text is ~400 MB and its
RDKit cache takes hours on two cores); the cache directory keeps the union of what was asked.

The RDKit molecule is built the way gen_ccd_cache.py + pdbeccdutils 0.8 build it (ccd_reader.
_parse_pdb_mmcif, mol_tools.sanitize/fix_molecule), re-written here:
  atoms in chem_comp_atom order (element capitalised, D -> H isotope 2, X -> *), prop "name",
  formal charge ("?" -> 0); conformer 0 = ideal coordinates, conformer 1 = model coordinates
  ("?" -> 0.0); bonds SING/DOUB/TRIP; atoms without an explicit H partner get NoImplicit;
  sanitize: SanitizeMol, on "Explicit valence ... X, n" errors bonds from a metal to X become
  single and X gets +1 / the metal -1 (10 attempts), then Kekulize and stereo from 3D;
  attributes atom_map (name -> index), name, sanitized, ref_conf_id 0 / ref_conf_type "idea",
  ref_mask = ideal coordinate present; if sanitized, one ETKDGv3 conformer is added
  (clearConfs=False) and becomes the reference (ref_conf_id = its id, ref_mask all True).
One deliberate difference: the ETKDG seed is fixed (ETKDG_SEED) so runs are reproducible;
Protenix's script leaves it random, so its own cache is one random draw.

Runs inside the Protenix reference venv (rdkit, biotite); no protenix import needed.
    python protenix_ccd.py [CODE ...]      # builds/extends the cache, prints its root
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
from io import StringIO
from pathlib import Path

import numpy as np

CCD_ROOT = Path(os.environ.get("FOLDRAY_PARITY_PROTENIX_ROOT", "/tmp/foldray-parity/protenix-root"))
STANDARD = ("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL UNK "
            "A C G U N DA DC DG DT DN").split()
ETKDG_SEED = 0
METALS = ("[Li,Na,K,Rb,Cs,Fr,Be,Mg,Ca,Sr,Ba,Ra,Sc,Ti,V,Cr,Mn,Fe,Co,Ni,Cu,Zn,Al,Ga,Y,Zr,Nb,Mo,"
          "Tc,Ru,Rh,Pd,Ag,Cd,In,Sn,Hf,Ta,W,Re,Os,Ir,Pt,Au,Hg,Tl,Pb,Bi]")
CATEGORIES = (("chem_comp", "id"), ("chem_comp_atom", "comp_id"), ("chem_comp_bond", "comp_id"))


def _text(column) -> np.ndarray:
    """A BinaryCIF column as mmCIF text values: "?" where missing, "." where inapplicable."""
    values = column.as_array(str).astype(object)
    if column.mask is not None:
        mask = column.mask.array
        values[mask == 1] = "."
        values[mask == 2] = "?"
    return values.astype(str)


def ccd_rows(codes: set[str]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """code -> category -> column -> text values, for the codes present in biotite's CCD."""
    import biotite.structure.info as info
    import biotite.structure.io.pdbx as pdbx

    path = Path(info.__file__).with_name("components.bcif")
    block = pdbx.BinaryCIFFile.read(str(path))["components"]
    out: dict = {code: {} for code in codes}
    for category, key in CATEGORIES:
        cat = block[category]
        ids = cat[key].as_array(str)
        keep = np.flatnonzero(np.isin(ids, list(codes)))
        columns = {name: _text(cat[name])[keep] for name in cat}
        kept_ids = ids[keep]
        for code in codes:
            rows = kept_ids == code
            out[code][category] = {name: col[rows] for name, col in columns.items()}
    return {code: cats for code, cats in out.items() if len(cats["chem_comp"]["id"])}


def write_components_cif(rows: dict, path: Path) -> None:
    import biotite.structure.io.pdbx as pdbx

    cif = pdbx.CIFFile()
    for code in sorted(rows):
        block = pdbx.CIFBlock()
        for category, _ in CATEGORIES:
            columns = rows[code][category]
            if len(next(iter(columns.values()))):
                block[category] = pdbx.CIFCategory(
                    {k: pdbx.CIFColumn(pdbx.CIFData(v)) for k, v in columns.items()})
        cif[code] = block
    cif.write(str(path))


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def _fix_valence(mol) -> bool:
    """pdbeccdutils mol_tools.fix_molecule: retry sanitization, making metal bonds to an atom
    with a valence error single and moving one charge from the metal to that atom."""
    from rdkit import Chem, rdBase

    saved = sys.stderr
    rdBase.LogToPythonStderr()
    try:
        for _ in range(11):
            log = sys.stderr = StringIO()
            if Chem.SanitizeMol(mol, catchErrors=True) == Chem.SanitizeFlags.SANITIZE_NONE:
                return True
            failures = re.findall("[a-zA-Z]{1,2}, \\d+", log.getvalue())
            if not failures:
                return False
            for failure in failures:
                element, valency = failure.split(",")[0], int(failure.split(",")[1].strip())
                pattern = Chem.MolFromSmarts(METALS + f"~[{element}]")
                matches = mol.GetSubstructMatches(pattern)
                Chem.SanitizeMol(mol, sanitizeOps=Chem.SanitizeFlags.SANITIZE_CLEANUP)
                for metal_index, atom_index in matches:
                    metal, atom = mol.GetAtomWithIdx(metal_index), mol.GetAtomWithIdx(atom_index)
                    mol.GetBondBetweenAtoms(metal_index, atom_index).SetBondType(Chem.BondType.SINGLE)
                    if atom.GetExplicitValence() == valency:
                        atom.SetFormalCharge(atom.GetFormalCharge() + 1)
                        metal.SetFormalCharge(metal.GetFormalCharge() - 1)
        return False
    finally:
        sys.stderr = saved


def _degenerate(conformer) -> bool:
    positions = conformer.GetPositions()
    return int((np.linalg.norm(positions, axis=-1) == 0.0).sum()) > 1


def _sanitize(mol) -> bool:
    from rdkit import Chem

    try:
        if not _fix_valence(mol):
            return False
        Chem.Kekulize(mol)
        conf_id = -1
        for conformer in mol.GetConformers():   # ideal first, then model: the last usable wins
            if not _degenerate(conformer):
                conf_id = conformer.GetId()
        Chem.AssignStereochemistryFrom3D(mol, conf_id)
    except Exception:  # noqa: BLE001 - as pdbeccdutils: any failure means "not sanitized"
        return False
    return True


def component_mol(code: str, cats: dict):
    """One entry of Protenix's RDKit cache (see module docstring)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    atoms, bonds = cats["chem_comp_atom"], cats["chem_comp_bond"]
    mol = Chem.RWMol()
    for name, element, charge in zip(atoms["atom_id"], atoms["type_symbol"], atoms["charge"], strict=True):
        element = element if len(element) == 1 else element[0] + element[1].lower()
        isotope = None
        if element == "D":
            element, isotope = "H", 2
        elif element == "X":
            element = "*"
        atom = Chem.Atom(element)
        atom.SetProp("name", str(name))
        try:
            atom.SetFormalCharge(int(charge))
        except ValueError:
            atom.SetFormalCharge(0)
        if isotope is not None:
            atom.SetIsotope(isotope)
        mol.AddAtom(atom)
    for label in ("pdbx_model_Cartn_{}_ideal", "model_Cartn_{}"):
        conformer = Chem.Conformer(len(atoms["atom_id"]))
        for i, xyz in enumerate(zip(*(atoms[label.format(axis)] for axis in "xyz"), strict=True)):
            conformer.SetAtomPosition(i, [_float(v) for v in xyz])
        mol.AddConformer(conformer, assignId=True)
    index = {str(n): i for i, n in enumerate(atoms["atom_id"])}
    orders = {"SING": Chem.BondType.SINGLE, "DOUB": Chem.BondType.DOUBLE, "TRIP": Chem.BondType.TRIPLE}
    for a, b, order in zip(bonds.get("atom_id_1", []), bonds.get("atom_id_2", []),
                           bonds.get("value_order", []), strict=True):
        if order in orders and str(a) in index and str(b) in index:
            mol.AddBond(index[str(a)], index[str(b)], orders[order])
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() != 1:
            atom.SetNoImplicit(all(n.GetAtomicNum() != 1 for n in atom.GetNeighbors()))
    sanitized = _sanitize(mol)
    mol = mol.GetMol()
    mol.atom_map = {atom.GetProp("name"): atom.GetIdx() for atom in mol.GetAtoms()}
    mol.name = code
    mol.sanitized = sanitized
    mol.ref_conf_id, mol.ref_conf_type = 0, "idea"
    if mol.GetNumAtoms() == 0:
        return mol
    mol.ref_mask = np.array([x != "?" for x in atoms["pdbx_model_Cartn_x_ideal"]], dtype=bool)
    if not sanitized:
        return mol
    options = AllChem.ETKDGv3()
    options.clearConfs = False
    options.randomSeed = ETKDG_SEED
    try:
        mol.ref_conf_id = AllChem.EmbedMolecule(mol, options)
        mol.ref_conf_type = "rdkit"
        mol.ref_mask[:] = True
    except Exception:  # noqa: BLE001 - gen_ccd_cache.py keeps the ideal conformer on failure
        pass
    return mol


def ensure_ccd(codes: set[str], root: Path = CCD_ROOT) -> Path:
    """Build (or extend) root/common/{components.cif, components.cif.rdkit_mol.pkl} so that they
    hold `codes` and every standard residue; returns root (Protenix's PROTENIX_ROOT_DIR)."""
    common = root / "common"
    listed = common / "codes.json"
    wanted = set(STANDARD) | set(codes)
    have = set(json.loads(listed.read_text())) if listed.exists() else set()
    absent_path = common / "absent.json"
    absent = set(json.loads(absent_path.read_text())) if absent_path.exists() else set()
    if wanted <= have | absent:
        return root
    common.mkdir(parents=True, exist_ok=True)
    rows = ccd_rows(wanted | have)
    mols_path = common / "components.cif.rdkit_mol.pkl"
    old = {}
    if mols_path.exists():
        with open(mols_path, "rb") as f:
            old = pickle.load(f)
    mols = {code: old[code] if code in old else component_mol(code, cats) for code, cats in rows.items()}
    tmp = common / "components.cif.tmp"
    write_components_cif(rows, tmp)
    tmp.replace(common / "components.cif")
    with open(mols_path.with_suffix(".tmp"), "wb") as f:
        pickle.dump(mols, f)
    mols_path.with_suffix(".tmp").replace(mols_path)
    listed.write_text(json.dumps(sorted(rows)))
    absent_path.write_text(json.dumps(sorted(wanted - set(rows))))
    return root


if __name__ == "__main__":
    print(ensure_ccd(set(sys.argv[1:])))
