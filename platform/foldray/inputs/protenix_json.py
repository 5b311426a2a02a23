"""Protenix input JSON -> AlphaFold 3 job objects, then validated by `af3_json.parse_job`.

Protenix (2.0) reads a list of jobs shaped like AlphaFold Server's, with additions:

    {"name": ..., "modelSeeds": [...],            # seeds optional (Protenix takes them on its CLI)
     "sequences": [{"proteinChain": {"sequence", "count", "modifications": [{"ptmType": "CCD_SEP",
                                                                         "ptmPosition": 5}],
                                     "unpairedMsa" | "unpairedMsaPath", "pairedMsa" | "pairedMsaPath",
                                     "msa": {"precomputed_msa_dir", "pairing_db"}}},
                   {"dnaSequence" | "rnaSequence": {"sequence", "count", "modifications",
                                                    "unpairedMsa" | "unpairedMsaPath" (RNA)}},
                   {"ligand": {"ligand": "CCD_ATP" | "CCD_NAG_NAG" | SMILES, "count"}},
                   {"ion": {"ion": "MG", "count"}}],
     "covalent_bonds": [{"entity1", "copy1", "position1", "atom1", "entity2", ...}]}

(keys as Protenix's `json_parser.build_polymer` / `build_ligand`, `msa_featurizer` and
`json_to_feature.add_bonds` read them). A file is read as Protenix's when a job uses one of
these additions (`is_protenix_job`); the rest of the list format is AlphaFold Server's and
keeps that parser. Chain ids go A, B, ... over all copies in order, as both tools hand them out.
`covalent_bonds` without copies bond every copy pair (Protenix requires equal counts then).

Refused by name, never guessed: ligands from files ("FILE_..."), SMILES atom-map numbers as
bond atoms, glycans, and the old `precomputed_msa_dir` layout when it holds no a3m file.
"""

from __future__ import annotations

import posixpath
from typing import Any

from foldray.errors import InputError
from foldray.inputs.af3_json import (
    DIALECT,
    MAX_SEED,
    _inside,
    any_path_allowed,
    got,
    input_path_roots,
    parse_job,
    show,
)
from foldray.inputs.af_server_json import chain_id
from foldray.inputs.job import Job
from foldray.io import storage

_JOB_KEYS = ("name", "modelSeeds", "sequences", "covalent_bonds", "constraint")
_POLYMERS = {"proteinChain": "protein", "dnaSequence": "dna", "rnaSequence": "rna"}
_POLYMER_KEYS = {
    "proteinChain": ("sequence", "count", "modifications", "glycans", "unpairedMsa", "pairedMsa",
                     "unpairedMsaPath", "pairedMsaPath", "msa"),
    "dnaSequence": ("sequence", "count", "modifications"),
    "rnaSequence": ("sequence", "count", "modifications", "unpairedMsa", "unpairedMsaPath"),
}
_MOD_KEYS = {"protein": ("ptmType", "ptmPosition"), "dna": ("modificationType", "basePosition"),
             "rna": ("modificationType", "basePosition")}
_MSA_KEYS = ("unpairedMsa", "pairedMsa", "unpairedMsaPath", "pairedMsaPath", "msa")
_BOND_SIDES = (("entity1", "copy1", "position1", "atom1"), ("entity2", "copy2", "position2", "atom2"))
_BOND_SIDES_OLD = (("left_entity", "left_copy", "left_position", "left_atom"),
                   ("right_entity", "right_copy", "right_position", "right_atom"))
MAX_COUNT = 1000


def is_protenix_job(data: Any) -> bool:
    """Whether a dialect-less list job uses something only Protenix's format has."""
    if not isinstance(data, dict) or "dialect" in data or "version" in data:
        return False
    if "covalent_bonds" in data:
        return True
    for item in data.get("sequences") or ():
        if not isinstance(item, dict) or len(item) != 1:
            continue
        kind, body = next(iter(item.items()))
        if not isinstance(body, dict):
            continue
        if kind in _POLYMERS and any(key in body for key in _MSA_KEYS):
            return True
        ligand = body.get("ligand") if kind == "ligand" else None
        if isinstance(ligand, str) and (not ligand.startswith("CCD_") or ligand.count("_") > 1):
            return True
    return False


def parse_protenix_job(data: dict, *, source: str, index: int | None, allow_paths: bool = True,
                       any_path: bool = False) -> Job:
    """One Protenix job as a validated `Job`; errors name the Protenix field
    (``[0].sequences[1].ligand.ligand``) until the converted job reaches the AF3 checks."""
    prefix = f"[{index}]" if index is not None else ""
    name = data.get("name") if isinstance(data, dict) else None
    label = name if isinstance(name, str) and len(name) <= 256 else ""

    def error(field: str, message: str) -> InputError:
        return InputError(message, source=source, job=label, field=f"{prefix}.{field}" if prefix else field)

    paths = _PathPolicy(allow=allow_paths, any_path=any_path)
    af3 = protenix_to_af3(data, source=source, error=error, paths=paths)
    return parse_job(af3, source=source, allow_paths=allow_paths, index=index, any_path=any_path)


class _PathPolicy:
    """What `parse_job` will allow of a `...Path` field, checked before any file is probed."""

    def __init__(self, *, allow: bool, any_path: bool) -> None:
        self.allow, self.any_path = allow, any_path


def protenix_to_af3(data: Any, *, source: str, error, paths: _PathPolicy | None = None) -> dict[str, Any]:
    """The AF3 JSON object for one Protenix job (`error(field, message)` builds InputErrors)."""
    if not isinstance(data, dict):
        raise error("", f"expected a job object, {got(data)}")
    for key in data:
        if key not in _JOB_KEYS:
            raise error(str(key)[:60], f"unknown key {show(key)} (allowed: {', '.join(_JOB_KEYS)})")
    sequences = data.get("sequences")
    if not isinstance(sequences, list) or not sequences:
        raise error("sequences", f"expected a non-empty list of entities, {got(sequences)}")
    entities, chains_of = [], []          # chains_of[entity number - 1] -> its chain ids
    n_chains = 0
    for i, item in enumerate(sequences):
        field = f"sequences[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise error(field, f"expected one of {{proteinChain, dnaSequence, rnaSequence, ligand, "
                               f"ion}}: {{...}}, {got(item)}")
        kind, body = next(iter(item.items()))
        field = f"{field}.{kind}"
        if not isinstance(body, dict):
            raise error(field, f"expected an object, {got(body)}")
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise error(f"{field}.count", f"expected a copy count 1..{MAX_COUNT}, {got(count)}")
        ids = [chain_id(n_chains + k) for k in range(1, count + 1)]
        n_chains += count
        chains_of.append(ids)
        if kind in _POLYMERS:
            entities.append(_polymer(kind, body, ids, field, source, error,
                                     paths or _PathPolicy(allow=True, any_path=False)))
        elif kind in ("ligand", "ion"):
            entities.append({"ligand": _ligand(kind, body, ids, field, error)})
        else:
            raise error(field, f"unknown entity type {show(kind)} (expected proteinChain, "
                               "dnaSequence, rnaSequence, ligand or ion)")
    seeds = data.get("modelSeeds")
    if seeds is None or seeds == []:
        seeds = [1]
    elif isinstance(seeds, list):
        seeds = [int(s) if isinstance(s, str) and s.isascii() and s.isdigit() and len(s) <= 10 else s
                 for s in seeds]
        for j, seed in enumerate(seeds):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise error(f"modelSeeds[{j}]", f"expected an integer seed, {got(seed)}")
    job: dict[str, Any] = {"dialect": DIALECT, "version": 3, "name": data.get("name"),
                           "modelSeeds": seeds, "sequences": entities}
    bonds = _bonds(data.get("covalent_bonds"), chains_of, error)
    if bonds:
        job["bondedAtomPairs"] = bonds
    restraints = _constraint(data.get("constraint"), chains_of, error)
    if restraints:
        job["restraints"] = restraints
    return job


def _polymer(kind: str, body: dict, ids: list[str], field: str, source: str, error,
             paths: _PathPolicy) -> dict:
    mol_type = _POLYMERS[kind]
    for key in body:
        if key not in _POLYMER_KEYS[kind]:
            raise error(f"{field}.{str(key)[:60]}", f"unknown key {show(key)} "
                                                    f"(allowed: {', '.join(_POLYMER_KEYS[kind])})")
    if body.get("glycans"):
        raise error(f"{field}.glycans", "glycans are not supported (Protenix ignores them too); "
                                        "give them as ligands with covalent_bonds")
    out: dict[str, Any] = {"id": ids if len(ids) > 1 else ids[0], "sequence": body.get("sequence")}
    mods = body.get("modifications")
    if mods is not None:
        if not isinstance(mods, list):
            raise error(f"{field}.modifications", f"expected a list, {got(mods)}")
        type_key, position_key = _MOD_KEYS[mol_type]
        converted = []
        for j, mod in enumerate(mods):
            where = f"{field}.modifications[{j}]"
            if not isinstance(mod, dict) or set(mod) != {type_key, position_key}:
                raise error(where, f"expected {{{type_key!r}: 'CCD_XXX', {position_key!r}: n}}, {got(mod)}")
            code = mod[type_key]
            if not isinstance(code, str) or not code.startswith("CCD_") or len(code) <= 4:
                raise error(f"{where}.{type_key}", f"expected a CCD code as 'CCD_XXX', {got(code)}")
            converted.append({type_key: code[4:], position_key: mod[position_key]})
        out["modifications"] = converted
    for key in ("unpairedMsa", "pairedMsa", "unpairedMsaPath", "pairedMsaPath"):
        if key in body:
            out[key] = body[key]
    old = body.get("msa")
    if old is not None and not any(k in body for k in _MSA_KEYS if k != "msa"):
        out.update(_precomputed_msa_dir(old, f"{field}.msa", source, error, paths))
    return {mol_type: out}


def _precomputed_msa_dir(msa: Any, field: str, source: str, error, paths: _PathPolicy) -> dict[str, str]:
    """Protenix's older layout: a folder with pairing.a3m and/or non_pairing.a3m. The folder
    is held to the input path rules before it is looked into, so a request cannot probe
    which files exist elsewhere."""
    if not isinstance(msa, dict):
        raise error(field, f"expected {{'precomputed_msa_dir': folder, 'pairing_db': ...}}, {got(msa)}")
    folder = msa.get("precomputed_msa_dir")
    where = f"{field}.precomputed_msa_dir"
    if not isinstance(folder, str) or not folder.strip():
        raise error(where, f"expected a folder path, {got(folder)}")
    if not paths.allow:
        raise error(where, "file paths are not accepted here; send the MSAs inline")
    resolved = storage.resolve_relative(folder, source)
    if not any_path_allowed(paths.any_path) and \
            not any(_inside(resolved, root) for root in input_path_roots(source)):
        raise error(where, f"path {show(folder)} is outside the input's folder; input paths must "
                           "stay inside it (see FOLDRAY_INPUT_PATH_ROOTS)")
    found = {}
    for name, key in (("non_pairing.a3m", "unpairedMsaPath"), ("pairing.a3m", "pairedMsaPath")):
        path = posixpath.join(folder, name)
        if storage.exists(posixpath.join(resolved, name)):
            found[key] = path
    if not found:
        raise error(where, f"{show(folder)} holds neither non_pairing.a3m nor pairing.a3m")
    return found


def _ligand(kind: str, body: dict, ids: list[str], field: str, error) -> dict:
    allowed = (kind, "count")
    for key in body:
        if key not in allowed:
            raise error(f"{field}.{str(key)[:60]}",
                        f"unknown key {show(key)} (allowed: {', '.join(allowed)})")
    value = body.get(kind)
    where = f"{field}.{kind}"
    if not isinstance(value, str) or not value.strip():
        raise error(where, "missing" if value is None else f"expected a string, {got(value)}")
    out: dict[str, Any] = {"id": ids if len(ids) > 1 else ids[0]}
    if kind == "ion" or value.startswith("CCD_"):
        codes = value.removeprefix("CCD_").split("_") if kind == "ligand" else [value.removeprefix("CCD_")]
        if not all(codes):
            raise error(where, f"expected CCD codes as 'CCD_ATP' or 'CCD_NAG_NAG', {got(value)}")
        out["ccdCodes"] = codes
    elif value.startswith("FILE_"):
        raise error(where, "ligands from files ('FILE_...') are not supported; give the ligand "
                           "as SMILES or CCD codes")
    else:
        out["smiles"] = value
    return out


def _bonds(bonds: Any, chains_of: list[list[str]], error) -> list:
    if bonds is None:
        return []
    if not isinstance(bonds, list):
        raise error("covalent_bonds", f"expected a list of bonds, {got(bonds)}")
    pairs = []
    for i, bond in enumerate(bonds):
        where = f"covalent_bonds[{i}]"
        if not isinstance(bond, dict):
            raise error(where, f"expected a bond object, {got(bond)}")
        sides = _BOND_SIDES if "entity1" in bond else _BOND_SIDES_OLD
        allowed = {key for side in sides for key in side}
        for key in bond:
            if key not in allowed:
                raise error(f"{where}.{str(key)[:60]}", f"unknown key {show(key)} "
                                                        f"(allowed: {', '.join(sorted(allowed))})")
        atoms = [_bond_atoms(bond, side, chains_of, where, error) for side in sides]
        if len(atoms[0]) != len(atoms[1]):
            raise error(where, "without copy1/copy2 both entities need the same count (each copy "
                               "is bonded to the same copy of the other)")
        pairs.extend([list(a), list(b)] for a, b in zip(atoms[0], atoms[1], strict=True))
    return pairs


def _bond_atoms(bond: dict, side: tuple[str, ...], chains_of: list[list[str]], where: str,
                error) -> list[tuple[str, Any, str]]:
    entity_key, copy_key, position_key, atom_key = side
    entity = _int_like(bond.get(entity_key))
    if entity is None or not 1 <= entity <= len(chains_of):
        raise error(f"{where}.{entity_key}", f"expected an entity number 1..{len(chains_of)}, "
                                             f"{got(bond.get(entity_key))}")
    chains = chains_of[entity - 1]
    copy = bond.get(copy_key)
    if copy is not None:
        number = _int_like(copy)
        if number is None or not 1 <= number <= len(chains):
            raise error(f"{where}.{copy_key}", f"expected a copy number 1..{len(chains)}, {got(copy)}")
        chains = [chains[number - 1]]
    position = _int_like(bond.get(position_key))
    if position is None:
        raise error(f"{where}.{position_key}", f"expected a residue number, {got(bond.get(position_key))}")
    atom = bond.get(atom_key)
    if isinstance(atom, int) or (isinstance(atom, str) and atom.isdigit()):
        raise error(f"{where}.{atom_key}", "SMILES atom-map numbers as bond atoms are not supported; "
                                           "name the atom (e.g. 'C1')")
    if not isinstance(atom, str) or not atom.strip():
        raise error(f"{where}.{atom_key}", f"expected an atom name, {got(atom)}")
    return [(chain, position, atom) for chain in chains]


_CONTACT_SIDES = (("entity1", "copy1", "position1", "atom1"), ("entity2", "copy2", "position2", "atom2"))


def _constraint(constraint: Any, chains_of: list[list[str]], error) -> list[dict[str, Any]]:
    """Protenix's `constraint` ({"contact": [...], "pocket": {...}}) as foldray restraints
    (docs/restraints.md); foldray's checks then run on them like on any AF3 JSON job."""
    if constraint is None or constraint == {}:
        return []
    if not isinstance(constraint, dict):
        raise error("constraint", f"expected an object with contact / pocket, {got(constraint)}")
    for key in constraint:
        if key == "substructure":
            raise error("constraint.substructure", "substructure constraints are not supported "
                                                   "(contact and pocket are)")
        if key not in ("contact", "pocket"):
            raise error(f"constraint.{str(key)[:60]}", f"unknown key {show(key)} (allowed: contact, pocket)")
    restraints = []
    contacts = constraint.get("contact") or []
    if not isinstance(contacts, list):
        raise error("constraint.contact", f"expected a list of contacts, {got(contacts)}")
    for i, contact in enumerate(contacts):
        where = f"constraint.contact[{i}]"
        if not isinstance(contact, dict):
            raise error(where, f"expected a contact object, {got(contact)}")
        allowed = {key for side in _CONTACT_SIDES for key in side} | {"max_distance", "min_distance"}
        for key in contact:
            if key not in allowed:
                raise error(f"{where}.{str(key)[:60]}", f"unknown key {show(key)} "
                                                        f"(allowed: {', '.join(sorted(allowed))})")
        minimum = contact.get("min_distance", 0)
        if minimum not in (0, 0.0) or isinstance(minimum, bool):
            raise error(f"{where}.min_distance", f"only 0 is supported (foldray's contacts have a maximum "
                                                 f"distance only), {got(minimum)}")
        sides = [_residue(contact, side, chains_of, where, error) for side in _CONTACT_SIDES]
        restraints.append({"type": "contact", "residues": sides, "maxDistance": contact.get("max_distance")})
    pocket = constraint.get("pocket")
    if pocket:
        where = "constraint.pocket"
        if not isinstance(pocket, dict):
            raise error(where, f"expected a pocket object, {got(pocket)}")
        for key in pocket:
            if key not in ("binder_chain", "contact_residues", "max_distance"):
                raise error(f"{where}.{str(key)[:60]}", f"unknown key {show(key)} (allowed: "
                                                        "binder_chain, contact_residues, max_distance)")
        binder = pocket.get("binder_chain")
        if not isinstance(binder, dict):
            raise error(f"{where}.binder_chain", f"expected {{entity, copy}}, {got(binder)}")
        binder_chain = _chain(binder, "entity", "copy", chains_of, f"{where}.binder_chain", error)
        residues = pocket.get("contact_residues")
        if not isinstance(residues, list) or not residues:
            raise error(f"{where}.contact_residues", f"expected a non-empty list, {got(residues)}")
        refs = []
        for j, residue in enumerate(residues):
            field = f"{where}.contact_residues[{j}]"
            if not isinstance(residue, dict):
                raise error(field, f"expected {{entity, copy, position}}, {got(residue)}")
            refs.append(_residue(residue, ("entity", "copy", "position", None), chains_of, field, error))
        restraints.append({"type": "pocket", "binder": binder_chain, "residues": refs,
                           "maxDistance": pocket.get("max_distance")})
    return restraints


def _chain(item: dict, entity_key: str, copy_key: str, chains_of: list[list[str]], where: str, error) -> str:
    """The chain id of Protenix's (entity, copy) numbers, both 1-based and required."""
    entity = _int_like(item.get(entity_key))
    if entity is None or not 1 <= entity <= len(chains_of):
        raise error(f"{where}.{entity_key}", f"expected an entity number 1..{len(chains_of)}, "
                                             f"{got(item.get(entity_key))}")
    chains = chains_of[entity - 1]
    copy = _int_like(item.get(copy_key))
    if copy is None or not 1 <= copy <= len(chains):
        raise error(f"{where}.{copy_key}",
                    f"expected a copy number 1..{len(chains)}, {got(item.get(copy_key))}")
    return chains[copy - 1]


def _residue(item: dict, keys: tuple[str, str, str, str | None], chains_of: list[list[str]], where: str,
             error) -> list[Any]:
    """[chain, residue number(, atom name)] of one Protenix residue / atom reference."""
    entity_key, copy_key, position_key, atom_key = keys
    ref: list[Any] = [_chain(item, entity_key, copy_key, chains_of, where, error)]
    position = _int_like(item.get(position_key))
    if position is None:
        raise error(f"{where}.{position_key}", f"expected a residue number, {got(item.get(position_key))}")
    ref.append(position)
    atom = item.get(atom_key) if atom_key else None
    if atom is not None:
        if isinstance(atom, int) or (isinstance(atom, str) and atom.isdigit()):
            raise error(f"{where}.{atom_key}", "SMILES atom-map numbers are not supported; name the atom "
                                               "(e.g. 'C1')")
        if not isinstance(atom, str) or not atom.strip():
            raise error(f"{where}.{atom_key}", f"expected an atom name, {got(atom)}")
        ref.append(atom)
    return ref


def _int_like(value: Any) -> int | None:
    """Protenix writes entity/position numbers as ints or digit strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    return None
