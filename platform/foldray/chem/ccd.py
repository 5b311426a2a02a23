"""Chemical Component Dictionary lookups (SI 2.8 reference features).

The bundled CCD is biotite's offline copy (~49k components, no download). Only the columns
we use are decoded (~2 s; ~100 MB of arrays kept, ~360 MB peak RSS), once per machine: later
processes load the decoded arrays from the local cache in ~0.1 s (`foldray.chem.ccd_cache`;
`warm_up()` does either ahead of the first job). Then each component is
built and conformed once and cached, so a 1,000-residue protein costs 20 component builds.
A user CCD (AF3 `userCCD` / `userCCDPath`: one or more CCD-format data blocks) overrides
or extends the bundled one, component by component.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from foldray.chem import conformer
from foldray.chem.component import (
    BOND_SINGLE,
    CCD_BOND_ORDERS,
    MAX_HEAVY_ATOMS,
    CcdEntry,
    Component,
)
from foldray.errors import InputError

# SI 2.8: CCD model ("representative") coordinates only if modified before the cut-off.
MODEL_COORDS_CUTOFF = "2021-09-30"


@dataclass(frozen=True, eq=False)
class _BundledCcd:
    """The decoded columns of biotite's CCD, sliced per component through the spans."""

    comp_row: dict[str, int]
    atom_span: dict[str, tuple[int, int]]
    bond_span: dict[str, tuple[int, int]]
    comp_cols: dict[str, np.ndarray]     # chem_comp: type, parent, one_letter, modified
    comp_missing: dict[str, np.ndarray]  # same keys: True where '?' or '.'
    atom_name: np.ndarray                # [N_atom] bytes
    type_symbol: np.ndarray
    charge: np.ndarray
    leaving: np.ndarray
    ideal: np.ndarray                    # [N_atom, 3] float32, NaN = missing
    model: np.ndarray
    bond_atoms: np.ndarray               # [N_bond, 2] bytes atom names
    bond_order: np.ndarray               # [N_bond] int8


def _span_arrays(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous runs of equal ids (the CCD is grouped by component): (id, start, stop)."""
    if ids.size == 0:
        return ids, np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate(([0], np.flatnonzero(ids[1:] != ids[:-1]) + 1))
    stops = np.concatenate((starts[1:], [ids.size]))
    return ids[starts], starts, stops


def _take(category, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Values and missing mask of a BinaryCIF column, dropped from the block once read so
    decoding peaks at one column, not all of them."""
    column = category[name]
    values = column.data.array
    missing = np.zeros(values.shape[0], bool) if column.mask is None else column.mask.array != 0
    del category[name]
    return values, missing


def _compact(strings: np.ndarray) -> np.ndarray:
    """ASCII bytes take a quarter of numpy's UCS-4 strings (vectorised; astype is ~1 s)."""
    width = strings.dtype.itemsize // 4
    codes = np.ascontiguousarray(strings).view(np.uint32).reshape(-1, width)
    if width == 0 or codes.max(initial=0) > 127:
        return strings
    return codes.astype(np.uint8).view(f"S{width}").reshape(strings.shape)


def _coords(category, prefix: str, suffix: str = "") -> np.ndarray:
    out = np.empty((0, 3), np.float32)
    for k, axis in enumerate("xyz"):
        values, missing = _take(category, f"{prefix}{axis}{suffix}")
        if k == 0:
            out = np.empty((values.shape[0], 3), np.float32)
        out[:, k] = np.where(missing, np.nan, values)
    return out


_COMP_KEYS = (("type", "type"), ("parent", "mon_nstd_parent_comp_id"),
              ("one_letter", "one_letter_code"), ("modified", "pdbx_modified_date"))


@functools.cache
def _bundled() -> _BundledCcd:
    """The decoded CCD: from the machine's cache (`foldray.chem.ccd_cache`), else decoded."""
    import importlib.metadata
    import importlib.util

    from foldray.chem.ccd_cache import cache_key, load_or_decode

    try:   # found without importing biotite (~0.3 s), which only decoding needs
        package = importlib.util.find_spec("biotite")
        folder = Path(next(iter(package.submodule_search_locations)))       # type: ignore[union-attr]
        key = cache_key(folder / "structure" / "info" / "components.bcif",
                        importlib.metadata.version("biotite"))
    except (AttributeError, OSError, StopIteration, TypeError, ValueError,
            importlib.metadata.PackageNotFoundError):   # another layout: decode every time
        arrays = _decode_arrays()
    else:
        arrays = load_or_decode(key, _decode_arrays)
    return _BundledCcd(
        comp_row={code: i for i, code in enumerate(arrays["comp_id"].tolist())},
        atom_span=_span_dict(arrays, "atom"), bond_span=_span_dict(arrays, "bond"),
        comp_cols={key: arrays[f"comp_{key}"] for key, _ in _COMP_KEYS},
        comp_missing={key: arrays[f"comp_{key}_missing"] for key, _ in _COMP_KEYS},
        atom_name=arrays["atom_name"], type_symbol=arrays["type_symbol"], charge=arrays["charge"],
        leaving=arrays["leaving"], ideal=arrays["ideal"], model=arrays["model"],
        bond_atoms=arrays["bond_atoms"], bond_order=arrays["bond_order"])


def _span_dict(arrays: dict[str, np.ndarray], kind: str) -> dict[str, tuple[int, int]]:
    return dict(zip(arrays[f"{kind}_span_id"].tolist(),
                    zip(arrays[f"{kind}_span_start"].tolist(), arrays[f"{kind}_span_stop"].tolist(),
                        strict=True), strict=True))


def _decode_arrays() -> dict[str, np.ndarray]:
    """The columns foldray uses, decoded from biotite's BinaryCIF CCD, as plain arrays."""
    import biotite.structure.info as info  # ~1 s import: only when the CCD is first needed

    # A private, uncached read: biotite's get_ccd() keeps every decoded column alive
    # (~0.5 GB as UCS-4 strings); we keep compact copies of the columns we use.
    block = getattr(info.get_ccd, "__wrapped__", info.get_ccd)()
    comp, atoms, bonds = block["chem_comp"], block["chem_comp_atom"], block["chem_comp_bond"]
    arrays: dict[str, np.ndarray] = {}
    for key, column in _COMP_KEYS:
        arrays[f"comp_{key}"], arrays[f"comp_{key}_missing"] = _take(comp, column)
    arrays["comp_id"] = _take(comp, "id")[0]
    value_order = _take(bonds, "value_order")[0]
    bond_order = np.full(value_order.shape, BOND_SINGLE, np.int8)
    for key, code in CCD_BOND_ORDERS.items():
        bond_order[value_order == key] = code
    del value_order
    charge, no_charge = _take(atoms, "charge")
    for kind, category in (("atom", atoms), ("bond", bonds)):
        ids, starts, stops = _span_arrays(_take(category, "comp_id")[0])
        arrays.update({f"{kind}_span_id": ids, f"{kind}_span_start": starts,
                       f"{kind}_span_stop": stops})
    arrays.update(
        atom_name=_compact(_take(atoms, "atom_id")[0]),
        type_symbol=_compact(_take(atoms, "type_symbol")[0]),
        charge=np.where(no_charge, 0, charge).astype(np.int8),
        leaving=_take(atoms, "pdbx_leaving_atom_flag")[0] == "Y",
        ideal=_coords(atoms, "pdbx_model_Cartn_", "_ideal"),
        model=_coords(atoms, "model_Cartn_"),
        bond_atoms=np.stack([_compact(_take(bonds, "atom_id_1")[0]),
                             _compact(_take(bonds, "atom_id_2")[0])], axis=1),
        bond_order=bond_order)
    return arrays


def _text(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _first_parent(value: str | None) -> str | None:
    """mon_nstd_parent_comp_id may list several parents ('DA, DG'): keep the first."""
    if not value:
        return None
    first = value.split(",")[0].strip()
    return first if first not in ("", "?", ".") else None


def _bond_indices(code: str, names: tuple[str, ...], pairs: list[tuple[str, str]]) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    try:
        return np.array([(index[a], index[b]) for a, b in pairs], np.int32).reshape(-1, 2)
    except KeyError as err:
        raise InputError(f"component {code!r} has a bond to atom {err.args[0]!r}, which is not "
                         "in its atom list") from None


@functools.lru_cache(maxsize=8192)
def _bundled_entry(code: str) -> CcdEntry | None:
    ccd = _bundled()
    atom_span = ccd.atom_span.get(code)
    if atom_span is None:
        return None
    a0, a1 = atom_span
    b0, b1 = ccd.bond_span.get(code, (0, 0))
    row = ccd.comp_row.get(code)

    def comp_value(key: str) -> str | None:
        if row is None or ccd.comp_missing[key][row]:
            return None
        return str(ccd.comp_cols[key][row]).strip() or None

    modified = comp_value("modified")
    names = tuple(_text(ccd.atom_name[a0:a1]))
    pairs = list(zip(_text(ccd.bond_atoms[b0:b1, 0]), _text(ccd.bond_atoms[b0:b1, 1]), strict=True))
    return CcdEntry(
        name=code, atom_names=names, type_symbols=tuple(_text(ccd.type_symbol[a0:a1])),
        charges=ccd.charge[a0:a1], leaving=ccd.leaving[a0:a1],
        ideal_pos=ccd.ideal[a0:a1], model_pos=ccd.model[a0:a1],
        model_pos_allowed=modified is not None and modified < MODEL_COORDS_CUTOFF,
        bonds=_bond_indices(code, names, pairs), bond_orders=ccd.bond_order[b0:b1],
        chem_type=(comp_value("type") or "NON-POLYMER").upper(),
        parent=_first_parent(comp_value("parent")), one_letter=comp_value("one_letter"),
    )


def component_heavy_atoms(code: str, *, user_ccd: Mapping[str, CcdEntry] | None = None,
                          ) -> tuple[int, int] | None:
    """(heavy atoms, heavy atoms that are not leaving atoms) of a CCD code, without building
    its conformer (for token budgets); None for an unknown code."""
    entry = user_ccd.get(code) if user_ccd is not None else None
    if entry is None and isinstance(code, str) and code.strip():
        entry = _bundled_entry(code)
    if entry is None:
        return None
    heavy = entry.heavy
    return int(heavy.sum()), int((heavy & ~entry.leaving).sum())


def is_glycan_type(chem_type: str) -> bool:
    """AF3's glycans: _chem_comp.type contains "saccharide" (its GLYCAN_LINKING_LIGANDS and
    GLYCAN_OTHER_LIGANDS, af3:src/alphafold3/constants/chemical_component_sets.py)."""
    return "SACCHARIDE" in chem_type.upper()


def glycan_with_o1(code: str, *, user_ccd: Mapping[str, CcdEntry] | None = None) -> bool:
    """Whether a CCD code is a glycan (_chem_comp.type contains "saccharide") with a heavy O1:
    the atom AF3 drops from ligand glycans (foldray.features.tokenize.bond_leaving_atoms)."""
    entry = user_ccd.get(code) if user_ccd is not None else None
    if entry is None and isinstance(code, str) and code.strip():
        entry = _bundled_entry(code)
    return entry is not None and is_glycan_type(entry.chem_type) and "O1" in entry.atom_names \
        and bool(entry.heavy[entry.atom_names.index("O1")])


def is_known_ccd(code: str, *, user_ccd: Mapping[str, CcdEntry] | None = None) -> bool:
    """True if `get_component(code, user_ccd=user_ccd)` finds a definition with atoms."""
    if user_ccd is not None and code in user_ccd:
        return True
    return isinstance(code, str) and code in _bundled().atom_span


def get_component(code: str, *, user_ccd: Mapping[str, CcdEntry] | None = None) -> Component:
    """Heavy atoms and reference conformer of a CCD code; user CCD entries win.

    Cached per definition (so per code and user CCD), so repeated residues are free.
    Raises InputError for unknown codes; the caller adds the job and field location.
    """
    entry = user_ccd.get(code) if user_ccd is not None else None
    if entry is None:
        if not isinstance(code, str) or not code.strip():
            raise InputError(f"empty CCD code {code!r}")
        entry = _bundled_entry(code)
    if entry is None:
        raise InputError(_unknown_message(code, user_ccd))
    return _component(entry)


def _unknown_message(code: str, user_ccd: Mapping[str, CcdEntry] | None) -> str:
    where = "the Chemical Component Dictionary" + (" or the user CCD" if user_ccd else "")
    message = f"unknown CCD code {code!r}: not in {where}"
    if code != code.upper() and is_known_ccd(code.upper(), user_ccd=user_ccd):
        message += f" (CCD codes are upper case: did you mean {code.upper()!r}?)"
    elif code in _bundled().comp_row:
        message += " with any atoms"
    return message + "; define it in userCCD or give the ligand as SMILES"


@functools.lru_cache(maxsize=8192)
def _component(entry: CcdEntry) -> Component:
    heavy = entry.heavy
    if not heavy.any():
        raise InputError(f"CCD component {entry.name!r} has no heavy atoms")
    if heavy.sum() > MAX_HEAVY_ATOMS:
        raise InputError(f"CCD component {entry.name!r} has {int(heavy.sum())} heavy atoms, over "
                         f"the limit of {MAX_HEAVY_ATOMS} per component")
    ref = conformer.ccd_conformer(entry)
    new_index = np.cumsum(heavy) - 1
    keep = heavy[entry.bonds].all(axis=1) if entry.bonds.size else np.zeros(0, bool)
    bonds = np.sort(new_index[entry.bonds[keep]], axis=1)
    order = np.lexsort((bonds[:, 1], bonds[:, 0])) if bonds.size else np.zeros(0, int)
    names = tuple(name for name, h in zip(entry.atom_names, heavy, strict=True) if h)
    return Component(
        name=entry.name, atom_names=names,
        elements=np.array([conformer.atomic_number(s) for s, h in
                           zip(entry.type_symbols, heavy, strict=True) if h], np.int16),
        charges=entry.charges[heavy], ref_pos=ref.pos, ref_pos_source=ref.source,
        ref_mask=ref.mask, leaving=entry.leaving[heavy], bonds=bonds[order],
        bond_orders=entry.bond_orders[keep][order], chem_type=entry.chem_type,
        parent=entry.parent, one_letter=entry.one_letter,
    )


def clear_caches() -> None:
    """Forget built components and conformers (not the decoded CCD): for tests."""
    _component.cache_clear()
    _bundled_entry.cache_clear()
    parse_user_ccd.cache_clear()
    conformer.clear_cache()


# ---------------------------------------------------------------------------------------
# User CCD (AF3 userCCD / userCCDPath)


@functools.lru_cache(maxsize=32)
def parse_user_ccd(text: str, *, source: str = "") -> Mapping[str, CcdEntry]:
    """Components of a user CCD mmCIF (one data block per component), by CCD code.

    Read-only and cached per text, so jobs sharing a user CCD share its conformers.
    Needs per block `_chem_comp_atom.atom_id` and `.type_symbol`; charges, leaving flags,
    ideal/model coordinates, bonds and `_chem_comp` fields are optional.
    """
    if not text or not text.strip():
        raise InputError("the user CCD is empty", source=source)
    try:
        doc = gemmi.cif.read_string(text)
    except (ValueError, RuntimeError) as err:
        reason = str(err).split("\n", 1)[0][:200]   # gemmi's position and reason, no file text
        raise InputError(f"the user CCD is not valid mmCIF: {reason}", source=source) from None
    entries: dict[str, CcdEntry] = {}
    for block in doc:
        try:
            entry = _user_entry(block)
        except InputError as err:
            raise err.located(source=source) from None
        if entry.name in entries:
            raise InputError(f"the user CCD defines component {entry.name!r} twice", source=source)
        entries[entry.name] = entry
    if not entries:
        raise InputError("the user CCD has no data blocks", source=source)
    return types.MappingProxyType(entries)


def _cif_value(value) -> str | None:
    """gemmi gives None for '?' and False for '.': both mean 'no value'."""
    return None if value is None or value is False else str(value)


def _user_entry(block: gemmi.cif.Block) -> CcdEntry:
    comp = block.get_mmcif_category("_chem_comp.")
    atoms = block.get_mmcif_category("_chem_comp_atom.")
    bonds = block.get_mmcif_category("_chem_comp_bond.")

    def comp_value(key: str) -> str | None:
        values = comp.get(key) or [None]
        return _cif_value(values[0])

    code = comp_value("id") or block.name
    where = f"user CCD block data_{block.name}"
    if code != block.name and block.name:
        raise InputError(f"{where}: _chem_comp.id {code!r} differs from the block name "
                         f"{block.name!r}")
    for key in ("atom_id", "type_symbol"):
        if key not in atoms:
            raise InputError(f"{where}: missing _chem_comp_atom.{key}")
    names = tuple(_cif_value(v) or "" for v in atoms["atom_id"])
    if len(set(names)) != len(names) or "" in names:
        raise InputError(f"{where}: atom names must be unique and non-empty, got {list(names)}")
    n = len(names)
    symbols = []
    for name, symbol in zip(names, atoms["type_symbol"], strict=True):
        symbol = (_cif_value(symbol) or "").upper()
        try:
            conformer.atomic_number(symbol)
        except ValueError:
            raise InputError(f"{where}: atom {name!r} has unknown element {symbol!r}") from None
        symbols.append(symbol)

    def numbers(key: str, default: float, kind: type) -> np.ndarray:
        values = atoms.get(key, [None] * n)
        out = []
        for name, value in zip(names, values, strict=True):
            value = _cif_value(value)
            try:
                out.append(default if value is None else kind(value))
            except ValueError:
                raise InputError(f"{where}: atom {name!r} has _chem_comp_atom.{key} {value!r}, "
                                 f"not a number") from None
        return np.array(out)

    def coords(prefix: str, suffix: str = "") -> np.ndarray:
        return np.stack([numbers(f"{prefix}{a}{suffix}", np.nan, float) for a in "xyz"], axis=1)

    pairs, orders = [], []
    if bonds:
        for key in ("atom_id_1", "atom_id_2"):
            if key not in bonds:
                raise InputError(f"{where}: missing _chem_comp_bond.{key}")
        value_orders = bonds.get("value_order", ["SING"] * len(bonds["atom_id_1"]))
        for a, b, value in zip(bonds["atom_id_1"], bonds["atom_id_2"], value_orders, strict=True):
            value = (_cif_value(value) or "SING").upper()
            if value not in CCD_BOND_ORDERS:
                raise InputError(f"{where}: bond {a}-{b} has value_order {value!r}; expected one "
                                 f"of {', '.join(CCD_BOND_ORDERS)}")
            pairs.append((_cif_value(a) or "", _cif_value(b) or ""))
            orders.append(CCD_BOND_ORDERS[value])
    leaving = [(_cif_value(v) or "N").upper() == "Y"
               for v in atoms.get("pdbx_leaving_atom_flag", [None] * n)]
    try:
        bond_index = _bond_indices(code, names, pairs)
    except InputError as err:
        raise InputError(f"{where}: {err.message}") from None
    return CcdEntry(
        name=code, atom_names=names, type_symbols=tuple(symbols),
        charges=numbers("charge", 0, int), leaving=np.array(leaving, bool),
        ideal_pos=coords("pdbx_model_Cartn_", "_ideal"), model_pos=coords("model_Cartn_"),
        model_pos_allowed=True,  # the user's own coordinates: no training cut-off applies
        bonds=bond_index, bond_orders=np.array(orders, np.int8),
        chem_type=(comp_value("type") or "NON-POLYMER").upper(),
        parent=_first_parent(comp_value("mon_nstd_parent_comp_id")),
        one_letter=comp_value("one_letter_code"),
    )


def warm_up() -> None:
    """Decode the CCD and build the standard residues now (~2.5 s), e.g. in an actor's
    __init__, so the first job does not pay for it."""
    from foldray.residues import STANDARD_RESIDUES

    for codes in STANDARD_RESIDUES.values():
        for code in sorted(codes):
            get_component(code)
