"""Pocket and contact restraints: a foldray extension of the AlphaFold 3 input JSON.

Why: screens and docking-style runs know where a ligand binds or which residues touch; Protenix's
constraint model takes that as pair features (its `constraint` JSON: one `pocket` with a binder
chain and contact residues, and `contact` pairs), Boltz as `pocket` / `contact` constraints.
foldray names chains by id, as `bondedAtomPairs` does, in a top-level `restraints` list:

    "restraints": [
      {"type": "pocket", "binder": "L", "residues": [["A", 12], ["A", 45]], "maxDistance": 6.0},
      {"type": "contact", "residues": [["A", 30], ["B", 7, "NZ"]], "maxDistance": 8.0}
    ]

A residue is `[chain id, residue number]` (1-based, like bondedAtomPairs; a ligand is residue
1 unless given as several CCD codes) or `[chain id, residue number, atom name]`. See
docs/restraints.md for what each becomes in the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foldray.inputs.job import Entity

MAX_DISTANCE = 100.0      # Å; Protenix trained on 2-30 Å, far beyond that is a typo
MAX_RESTRAINTS = 1024     # per job: each writes pair features, thousands are a hostile input
MAX_POCKET_RESIDUES = 4096
_RESTRAINT_KEYS = {"pocket": ("type", "binder", "residues", "maxDistance"),
                   "contact": ("type", "residues", "maxDistance")}


@dataclass(frozen=True, kw_only=True, slots=True)
class ResidueRef:
    """A residue (chain id, 1-based number), or one of its atoms when `atom_name` is given."""

    chain_id: str
    residue: int
    atom_name: str | None = None

    def to_json(self) -> list:
        return [self.chain_id, self.residue] + ([self.atom_name] if self.atom_name else [])


@dataclass(frozen=True, kw_only=True, slots=True)
class PocketRestraint:
    """Chain `binder` (a ligand or a polymer) lies within `max_distance` Å of each residue."""

    binder: str
    residues: tuple[ResidueRef, ...]
    max_distance: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ContactRestraint:
    """Two residues (or atoms) of different chains within `max_distance` Å of each other."""

    first: ResidueRef
    second: ResidueRef
    max_distance: float


Restraint = PocketRestraint | ContactRestraint


def restraint_to_json(restraint: Restraint) -> dict[str, Any]:
    """The AF3 JSON object of a restraint (the input form; writers round-trip it)."""
    if isinstance(restraint, PocketRestraint):
        return {"type": "pocket", "binder": restraint.binder,
                "residues": [r.to_json() for r in restraint.residues],
                "maxDistance": restraint.max_distance}
    return {"type": "contact", "residues": [restraint.first.to_json(), restraint.second.to_json()],
            "maxDistance": restraint.max_distance}


def chain_lengths(entities: tuple[Entity, ...]) -> dict[str, int]:
    """Residues per chain id: polymer length; a ligand's CCD code count (1 for SMILES)."""
    lengths: dict[str, int] = {}
    for entity in entities:
        seq = getattr(entity, "sequence", None)
        codes = getattr(entity, "ccd_codes", None)
        n = len(seq) if seq is not None else len(codes) if codes else 1
        lengths.update(dict.fromkeys(entity.ids, n))
    return lengths


def parse_restraints(ctx: Any, value: Any, entities: tuple[Entity, ...],
                     unknown_chains: set[str]) -> tuple[Restraint, ...]:
    """Validate `restraints` (ctx: af3_json's parsing context). Every restraint is checked and
    all bad ones raise together; ones naming chains of entities that failed to parse are
    checked as far as possible and not kept."""
    from foldray.errors import InputError, combine_errors
    from foldray.inputs.af3_json import got

    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.error("restraints", f"expected a list of restraint objects, {got(value)}")
    if len(value) > MAX_RESTRAINTS:
        raise ctx.error("restraints", f"{len(value)} restraints; at most {MAX_RESTRAINTS} per job")
    lengths = chain_lengths(entities)
    parsed: list[Restraint] = []
    errors: list[InputError] = []
    for i, item in enumerate(value):
        try:
            restraint = _parse_one(ctx, item, f"restraints[{i}]", lengths, unknown_chains)
        except InputError as err:
            errors.append(err)
            continue
        if restraint is not None:
            parsed.append(restraint)
    if errors:
        raise combine_errors(errors)
    return tuple(parsed)


def _parse_one(ctx: Any, item: Any, where: str, lengths: dict[str, int],
               unknown: set[str]) -> Restraint | None:
    from foldray.inputs.af3_json import got, show

    if not isinstance(item, dict):
        raise ctx.error(where, f"expected a restraint object, {got(item)}")
    kind = item.get("type")
    if kind not in _RESTRAINT_KEYS:
        raise ctx.error(f"{where}.type", f"expected \"pocket\" or \"contact\", {got(kind)}")
    ctx.check_keys(item, dict.fromkeys(_RESTRAINT_KEYS[kind], 1), where)
    distance = _distance(ctx, item, f"{where}.maxDistance")
    residues = item.get("residues")
    if residues is None:
        raise ctx.error(f"{where}.residues", "missing")
    if not isinstance(residues, list) or not residues:
        raise ctx.error(f"{where}.residues", f"expected a non-empty list of residues, {got(residues)}")
    if kind == "contact" and len(residues) != 2:
        raise ctx.error(f"{where}.residues", f"a contact names exactly 2 residues, got {len(residues)}")
    if len(residues) > MAX_POCKET_RESIDUES:
        raise ctx.error(f"{where}.residues", f"{len(residues)} residues; at most {MAX_POCKET_RESIDUES}")
    refs = [_residue(ctx, r, f"{where}.residues[{j}]", lengths, unknown) for j, r in enumerate(residues)]
    if kind == "contact":
        first, second = refs
        if first.chain_id == second.chain_id:
            raise ctx.error(f"{where}.residues", f"both residues are on chain {first.chain_id!r}; a "
                                                 "contact joins two different chains")
        if not all(r.chain_id in lengths for r in refs):
            return None
        return ContactRestraint(first=first, second=second, max_distance=distance)
    binder = item.get("binder")
    if not isinstance(binder, str):
        raise ctx.error(f"{where}.binder", "missing" if binder is None else
                        f"expected a chain id string, {got(binder)}")
    if binder not in lengths and binder not in unknown:
        raise ctx.error(f"{where}.binder", f"chain {show(binder)} is not in sequences")
    for j, ref in enumerate(refs):
        if ref.chain_id == binder:
            raise ctx.error(f"{where}.residues[{j}]", f"residue on the binder chain {binder!r}; pocket "
                                                      "residues lie on other chains")
    if len(set(refs)) != len(refs):
        raise ctx.error(f"{where}.residues", "a residue is named twice")
    if binder not in lengths or not all(r.chain_id in lengths for r in refs):
        return None
    return PocketRestraint(binder=binder, residues=tuple(refs), max_distance=distance)


def _distance(ctx: Any, item: dict, field: str) -> float:
    from foldray.inputs.af3_json import got, show

    value = item.get("maxDistance")
    if value is None:
        raise ctx.error(field, "missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(field, f"expected a distance in Å (a number), {got(value)}")
    if not math.isfinite(value) or value <= 0 or value > MAX_DISTANCE:
        raise ctx.error(field, f"{show(value)} is not a distance in (0, {MAX_DISTANCE:g}] Å")
    return float(value)


def _residue(ctx: Any, ref: Any, where: str, lengths: dict[str, int], unknown: set[str]) -> ResidueRef:
    from foldray.inputs.af3_json import got, show

    if not isinstance(ref, list) or len(ref) not in (2, 3):
        raise ctx.error(where, f"expected [chain id, residue number] or [chain id, residue number, "
                               f"atom name], {got(ref)}")
    chain_id, residue = ref[0], ref[1]
    if not isinstance(chain_id, str):
        raise ctx.error(f"{where}[0]", f"expected a chain id string, {got(chain_id)}")
    known = chain_id in lengths
    if not known and chain_id not in unknown:
        raise ctx.error(f"{where}[0]", f"chain {show(chain_id)} is not in sequences")
    ctx.integer(residue, f"{where}[1]", 1, lengths[chain_id] if known else None,
                f"a residue number in chain {chain_id!r}")
    atom = None
    if len(ref) == 3:
        atom = ctx.string(ref[2], f"{where}[2]", "an atom name")
        if len(atom) > 4 or not atom.isascii() or not atom.isprintable() or " " in atom:
            raise ctx.error(f"{where}[2]", f"invalid atom name {show(atom)}: at most 4 characters")
    return ResidueRef(chain_id=chain_id, residue=residue, atom_name=atom)
