"""Ligands given as SMILES (AF3 input `ligand.smiles`) -> `Component` (SI 2.8).

Follows AF3 (model/features.py get_reference, data/tools/rdkit_utils.py): RDKit parses and
sanitises the SMILES, hydrogens are added for an ETKDGv3 conformer, and atoms are named by
element and a per-element counter in atom order, upper case (C1, C2, O1, CL1). Unlike AF3,
the embedding seed is fixed (deterministic, cacheable), and input AF3 would accept but
cannot model is refused: empty SMILES, inner whitespace (RDKit would silently read
"CCO ethanol" as CCO), wildcard atoms '*', no heavy atoms, names over 4 characters.
Disconnected SMILES ("CCN.Cl", salts) are accepted as one ligand, as in AF3: RDKit embeds
the fragments side by side in one reference frame.
"""

from __future__ import annotations

import collections
import functools
import re

import numpy as np
from rdkit import Chem, rdBase

from foldray.chem.component import MAX_HEAVY_ATOMS, Component
from foldray.chem.conformer import CONFORMER_SEED, embed
from foldray.errors import InputError

MAX_NAME_LENGTH = 4  # Table 5 ref_atom_name_chars holds 4 characters
MAX_SMILES_CHARS = 2000  # checked before RDKit sees the string (the largest CCD ligands need ~600)
_SHOWN = 120         # longest SMILES quoted whole in an error message
_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
_POSITION = re.compile(r"check for mistakes around position (\d+)")
_RD_ORDER = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3,
             Chem.BondType.QUADRUPLE: 4, Chem.BondType.DATIVE: 1}  # AF3: dative -> single


def _quoted(smiles: str) -> str:
    return repr(smiles if len(smiles) <= _SHOWN else smiles[:_SHOWN] + "...")


def _rdkit_reason(smiles: str, log_text: str) -> str:
    """RDKit's captured error log as one line: timestamps, echoes and caret lines dropped."""
    reasons: list[str] = []
    for line in log_text.splitlines():
        line = _TIMESTAMP.sub("", line).strip()
        line = line.removeprefix("SMILES Parse Error:").strip()
        line = re.sub(r" while parsing: .*$", "", line)
        line = re.sub(r"\s+", " ", line).rstrip(":")
        if (not line or line == smiles or set(line) <= {"~", "^"}
                or line.startswith("Failed parsing SMILES")):
            continue
        match = _POSITION.search(line)
        if match and 0 < int(match.group(1)) <= len(smiles):
            line += f" (at {smiles[int(match.group(1)) - 1]!r})"
        if line not in reasons:
            reasons.append(line)
    return "; ".join(reasons) or "RDKit returned no molecule"


def parse_smiles(smiles: str) -> Chem.Mol:
    """Sanitised RDKit molecule; InputError with RDKit's reason instead of stderr noise."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise InputError(f"empty SMILES {smiles!r}")
    smiles = smiles.strip()
    if len(smiles) > MAX_SMILES_CHARS:
        raise InputError(f"SMILES is {len(smiles)} characters long, over the limit of "
                         f"{MAX_SMILES_CHARS} ({_quoted(smiles)})")
    if any(ch.isspace() for ch in smiles):
        raise InputError(f"SMILES {_quoted(smiles)} contains whitespace; give only the SMILES")
    with rdBase.CaptureErrorLog() as capture:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InputError(f"RDKit could not parse SMILES {_quoted(smiles)}: "
                         f"{_rdkit_reason(smiles, capture.messages)}")
    if any(atom.GetAtomicNum() == 0 for atom in mol.GetAtoms()):
        raise InputError(f"SMILES {_quoted(smiles)} has a wildcard atom '*'; "
                         "give a concrete element")
    if mol.GetNumHeavyAtoms() > MAX_HEAVY_ATOMS:
        raise InputError(f"SMILES ligand has {mol.GetNumHeavyAtoms()} heavy atoms, over the limit "
                         f"of {MAX_HEAVY_ATOMS} per ligand (one token each); {_quoted(smiles)}")
    return mol


@functools.lru_cache(maxsize=4096)
def smiles_heavy_atoms(smiles: str) -> int:
    """Heavy atoms (= tokens) of a SMILES ligand, without embedding it: for token budgets
    checked before conformers are made. Raises InputError as `parse_smiles` does."""
    return parse_smiles(smiles).GetNumHeavyAtoms()


def atom_names(mol: Chem.Mol) -> list[str]:
    """AF3 names: upper-case element + per-element counter in atom order (C1, C2, CL1)."""
    counts: collections.Counter[str] = collections.Counter()
    names = []
    for atom in mol.GetAtoms():
        element = atom.GetSymbol().upper()
        counts[element] += 1
        names.append(f"{element}{counts[element]}")
    return names


def smiles_component_name(chain_id: str) -> str:
    """The residue name of a SMILES ligand in chain `chain_id`: `LIG_<chain>`, as AlphaFold 3
    names them. CCD codes are 1-5 letters and digits, so the underscore keeps it from ever
    naming a real component (plain `LIG` is one) when the structure is read back."""
    return f"LIG_{chain_id}"


@functools.lru_cache(maxsize=1024)
def component_from_smiles(smiles: str, *, name: str = "LIG",
                          seed: int = CONFORMER_SEED) -> Component:
    """Heavy atoms, bonds and an ETKDGv3 reference conformer of a SMILES ligand.

    Cached per (smiles, name, seed). If ETKDG finds no conformer, the positions are zeros
    with ref_mask False (AF3 has no CCD coordinates to fall back to for SMILES).
    """
    mol = Chem.AddHs(parse_smiles(smiles))
    heavy = np.array([atom.GetAtomicNum() > 1 for atom in mol.GetAtoms()], dtype=bool)
    if not heavy.any():
        raise InputError(f"SMILES {_quoted(smiles)} has no heavy atoms")
    names = [n for n, h in zip(atom_names(mol), heavy, strict=True) if h]
    too_long = [n for n in names if len(n) > MAX_NAME_LENGTH]
    if too_long:
        raise InputError(f"SMILES ligand is too large for {MAX_NAME_LENGTH}-character atom "
                         f"names ({too_long[0]}); split it or define it in userCCD")
    pos = embed(mol, seed=seed)
    n = int(heavy.sum())
    if pos is None:
        ref_pos, ref_mask, source = np.zeros((n, 3), np.float32), np.zeros(n, bool), "zeros"
    else:
        ref_pos, ref_mask, source = pos[heavy], np.ones(n, bool), "etkdg"
    kekule = Chem.Mol(mol)
    Chem.Kekulize(kekule, clearAromaticFlags=True)  # CCD-style orders: 1/2/3, no aromatic
    new_index = np.cumsum(heavy) - 1
    bonds, orders = [], []
    for bond in kekule.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if heavy[i] and heavy[j]:
            bonds.append(sorted((int(new_index[i]), int(new_index[j]))))
            orders.append(_RD_ORDER.get(bond.GetBondType(), 0))
    bond_array = np.array(bonds, np.int32).reshape(-1, 2)
    order = np.lexsort((bond_array[:, 1], bond_array[:, 0])) if bonds else np.zeros(0, int)
    heavy_atoms = [atom for atom, h in zip(mol.GetAtoms(), heavy, strict=True) if h]
    return Component(
        name=name, atom_names=tuple(names),
        elements=np.array([a.GetAtomicNum() for a in heavy_atoms], np.int16),
        charges=np.array([a.GetFormalCharge() for a in heavy_atoms], np.float32),
        ref_pos=ref_pos, ref_pos_source=source, ref_mask=ref_mask,
        leaving=np.zeros(n, bool), bonds=bond_array[order],
        bond_orders=np.array(orders, np.int8)[order] if bonds else np.zeros(0, np.int8),
        chem_type="NON-POLYMER",
    )
