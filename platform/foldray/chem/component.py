"""One chemical component, as the reference features of SI 2.8 / Table 5 need it.

`CcdEntry` is a component record as read from a CCD data block (hydrogens included, the
input to conformer generation); `Component` is what featurization uses: heavy atoms only,
with a reference conformer. Both are immutable and shared through caches, so their arrays
are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from foldray.errors import InputError

RefPosSource = Literal["etkdg", "ideal", "model", "zeros"]

# Bond order codes (CCD _chem_comp_bond.value_order, Kekulé form). AROMATIC only appears
# when a user CCD gives an aromatic bond without a Kekulé order.
BOND_SINGLE, BOND_DOUBLE, BOND_TRIPLE, BOND_QUADRUPLE, BOND_AROMATIC = 1, 2, 3, 4, 5
CCD_BOND_ORDERS: dict[str, int] = {
    "SING": BOND_SINGLE, "DOUB": BOND_DOUBLE, "TRIP": BOND_TRIPLE, "QUAD": BOND_QUADRUPLE,
    "AROM": BOND_AROMATIC,
}
HYDROGEN_SYMBOLS = frozenset({"H", "D", "T"})  # dropped: AF3 models heavy atoms only
# Largest component (SMILES or user CCD) we build: the bundled CCD's largest has 240 heavy
# atoms, and a ligand costs one token per heavy atom. Checked before any embedding.
MAX_HEAVY_ATOMS = 512


def _frozen(array: np.ndarray, dtype: type | str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A read-only copy of `array` with the given dtype, shape checked (None = any)."""
    out = np.array(array, dtype=dtype)
    if out.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, out.shape,
                                                                               strict=True)):
        raise ValueError(f"expected shape {shape}, got {out.shape}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class CcdEntry:
    """A CCD `_chem_comp` record (bundled or user-given), hydrogens included.

    Positions are NaN where the CCD has '?'. `model_pos_allowed` is False for bundled
    entries modified after the training cut-off (SI 2.8: representative coordinates are
    used only if they are from before 2021-09-30). Identity-hashed: caches key on it.
    """

    name: str
    atom_names: tuple[str, ...]
    type_symbols: tuple[str, ...]       # upper case, as in the CCD ('CL', 'FE', 'X')
    charges: np.ndarray                 # [n] int16 formal charges
    leaving: np.ndarray                 # [n] bool pdbx_leaving_atom_flag
    ideal_pos: np.ndarray               # [n, 3] float64, NaN = missing
    model_pos: np.ndarray               # [n, 3] float64, NaN = missing
    model_pos_allowed: bool
    bonds: np.ndarray                   # [n_bond, 2] int32 atom indices
    bond_orders: np.ndarray             # [n_bond] int8 BOND_* codes
    chem_type: str                      # _chem_comp.type, upper case
    parent: str | None = None
    one_letter: str | None = None

    def __post_init__(self) -> None:
        n = len(self.atom_names)
        if len(self.type_symbols) != n:
            raise ValueError(f"{self.name}: {len(self.type_symbols)} type symbols for {n} atoms")
        object.__setattr__(self, "charges", _frozen(self.charges, np.int16, (n,)))
        object.__setattr__(self, "leaving", _frozen(self.leaving, bool, (n,)))
        object.__setattr__(self, "ideal_pos", _frozen(self.ideal_pos, np.float64, (n, 3)))
        object.__setattr__(self, "model_pos", _frozen(self.model_pos, np.float64, (n, 3)))
        bonds = np.asarray(self.bonds, dtype=np.int32).reshape(-1, 2)
        object.__setattr__(self, "bonds", _frozen(bonds, np.int32, (None, 2)))
        object.__setattr__(self, "bond_orders",
                           _frozen(self.bond_orders, np.int8, (bonds.shape[0],)))

    @cached_property
    def heavy(self) -> np.ndarray:
        """[n] bool: True for atoms that are not hydrogen or deuterium."""
        return np.array([s not in HYDROGEN_SYMBOLS for s in self.type_symbols], dtype=bool)


@dataclass(frozen=True, kw_only=True, eq=False)
class Component:
    """Heavy atoms of one chemical component with its reference conformer (SI 2.8).

    `ref_pos` comes from `ref_pos_source`: an RDKit ETKDGv3 conformer, else CCD ideal
    coordinates, else CCD model coordinates, else zeros; atoms without any coordinate have
    ref_pos 0 and ref_mask False. `bonds` are heavy-atom bonds with i < j, `bond_orders`
    their BOND_* codes. Identity-hashed and shared through caches: arrays are read-only.
    """

    name: str
    atom_names: tuple[str, ...]
    elements: np.ndarray                # [n] int16 atomic numbers (0 = unknown 'X')
    charges: np.ndarray                 # [n] float32 formal charges
    ref_pos: np.ndarray                 # [n, 3] float32, Å
    ref_pos_source: RefPosSource
    ref_mask: np.ndarray                # [n] bool
    leaving: np.ndarray                 # [n] bool
    bonds: np.ndarray                   # [n_bond, 2] int32, i < j
    bond_orders: np.ndarray             # [n_bond] int8
    chem_type: str
    parent: str | None = None
    one_letter: str | None = None
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.atom_names)
        object.__setattr__(self, "atom_names", tuple(self.atom_names))
        object.__setattr__(self, "elements", _frozen(self.elements, np.int16, (n,)))
        object.__setattr__(self, "charges", _frozen(self.charges, np.float32, (n,)))
        object.__setattr__(self, "ref_pos", _frozen(self.ref_pos, np.float32, (n, 3)))
        object.__setattr__(self, "ref_mask", _frozen(self.ref_mask, bool, (n,)))
        object.__setattr__(self, "leaving", _frozen(self.leaving, bool, (n,)))
        bonds = np.asarray(self.bonds, dtype=np.int32).reshape(-1, 2)
        if bonds.size and not (bonds[:, 0] < bonds[:, 1]).all():
            raise ValueError(f"{self.name}: bonds must be stored with i < j")
        object.__setattr__(self, "bonds", _frozen(bonds, np.int32, (None, 2)))
        object.__setattr__(self, "bond_orders",
                           _frozen(self.bond_orders, np.int8, (bonds.shape[0],)))
        index = {atom: i for i, atom in enumerate(self.atom_names)}
        if len(index) != n:
            raise ValueError(f"{self.name}: atom names are not unique")
        object.__setattr__(self, "_index", index)

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)

    def index_of(self, atom_name: str) -> int:
        """Position of a heavy atom by name; InputError names the atoms that do exist."""
        try:
            return self._index[atom_name]
        except KeyError:
            raise InputError(f"atom {atom_name!r} is not a heavy atom of component {self.name!r} "
                             f"(atoms: {', '.join(self.atom_names)})") from None
