"""AlphaFold 3 input JSON (dialect "alphafold3", versions 1-4) -> validated `Job`s.

Field names, per-version keys and semantics follow AlphaFold 3's documented input format.
Every problem raises `InputError` naming the file, the job and the field path
(``sequences[1].ligand.smiles``), with the offending value in the message. Jobs in the
AlphaFold Server dialect are handed to `af_server_json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from foldray.errors import InputError
from foldray.inputs.job import (
    AtomRef,
    Entity,
    Job,
    LigandChain,
    Modification,
    PolymerChain,
    TemplateInput,
)
from foldray.io import storage
from foldray.residues import ONE_TO_CCD

DIALECT = "alphafold3"
SUPPORTED_VERSIONS = (1, 2, 3, 4)
MAX_SEED = 2**32 - 1

# Keys allowed per object, with the first version that knows them.
_JOB_KEYS = {"dialect": 1, "version": 1, "name": 1, "modelSeeds": 1, "sequences": 1,
             "bondedAtomPairs": 1, "userCCD": 1, "userCCDPath": 3}
_PROTEIN_KEYS = {"id": 1, "sequence": 1, "modifications": 1, "unpairedMsa": 1, "pairedMsa": 1,
                 "templates": 1, "unpairedMsaPath": 2, "pairedMsaPath": 2, "description": 4}
_RNA_KEYS = {"id": 1, "sequence": 1, "modifications": 1, "unpairedMsa": 1, "unpairedMsaPath": 2,
             "description": 4}
_DNA_KEYS = {"id": 1, "sequence": 1, "modifications": 1, "description": 4}
_LIGAND_KEYS = {"id": 1, "ccdCodes": 1, "smiles": 1, "description": 4}
_TEMPLATE_KEYS = {"mmcif": 1, "mmcifPath": 2, "queryIndices": 1, "templateIndices": 1}
_MOD_KEYS = {"protein": ("ptmType", "ptmPosition"), "rna": ("modificationType", "basePosition"),
             "dna": ("modificationType", "basePosition")}
_CHAIN_ID_MAX = 4


class _Ctx:
    """Where we are while parsing: builds located errors and resolves relative paths."""

    def __init__(self, source: str, job: str, version: int, allow_paths: bool,
                 read_text: Callable[[str], str]) -> None:
        self.source, self.job, self.version = source, job, version
        self.allow_paths, self.read_text = allow_paths, read_text

    def error(self, field: str, message: str) -> InputError:
        return InputError(message, source=self.source, job=self.job, field=field)

    def check_keys(self, obj: Mapping[str, Any], allowed: dict[str, int], field: str) -> None:
        for key in obj:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(f"{field}.{key}" if field else key,
                                 f"unknown key {key!r} (allowed: {known})")
            if allowed[key] > self.version:
                raise self.error(f"{field}.{key}" if field else key,
                                 f"{key!r} needs \"version\" >= {allowed[key]}, "
                                 f"but the job says version {self.version}")

    def load_path(self, path: Any, field: str) -> str:
        if not isinstance(path, str) or not path:
            raise self.error(field, f"expected a non-empty path string, got {path!r}")
        if not self.allow_paths:
            raise self.error(field, "file paths are not accepted here; send the contents inline")
        resolved = storage.resolve_relative(path, self.source)
        try:
            return self.read_text(resolved)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
            raise self.error(field, f"cannot read {resolved!r}: {err.__class__.__name__}") from None
        except UnicodeDecodeError:
            raise self.error(field, f"{resolved!r} is not UTF-8 text") from None


def parse_af3_json(text: str | bytes, *, source: str = "", allow_paths: bool = True,
                   read_text: Callable[[str], str] = storage.read_text) -> list[Job]:
    """Parse a file holding one job or a list of jobs; the first problem raises.

    `allow_paths=False` refuses `...Path` fields (for services that take untrusted input).
    """
    results = parse_af3_json_lenient(text, source=source, allow_paths=allow_paths,
                                     read_text=read_text)
    for result in results:
        if isinstance(result, InputError):
            raise result
    return results  # type: ignore[return-value]


def parse_af3_json_lenient(text: str | bytes, *, source: str = "", allow_paths: bool = True,
                           read_text: Callable[[str], str] = storage.read_text,
                           ) -> list[Job | InputError]:
    """One result per job: a bad job in a list does not hide the good ones.

    AlphaFold Server jobs (`af_server_json.is_server_job`) go to their own parser.
    """
    from foldray.inputs.af_server_json import is_server_job, parse_server_job  # uses our helpers

    try:
        data = _load_json(text, source)
    except InputError as err:
        return [err]
    if isinstance(data, dict):
        items, indexed = [data], False
    elif isinstance(data, list) and data:
        items, indexed = data, True
    else:
        what = "an empty list" if isinstance(data, list) else type(data).__name__
        return [InputError(f"expected a job object or a list of jobs, got {what}", source=source)]
    results: list[Job | InputError] = []
    for i, item in enumerate(items):
        index = i if indexed else None
        try:
            if is_server_job(item, in_list=indexed):
                results.append(parse_server_job(item, source=source, index=index))
            else:
                results.append(parse_job(item, source=source, allow_paths=allow_paths,
                                         read_text=read_text, index=index))
        except InputError as err:
            results.append(err)
    return results


def _load_json(text: str | bytes, source: str) -> Any:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                             source=source) from None
    if "\x00" in text:
        raise InputError(f"contains a NUL byte at offset {text.index(chr(0))}", source=source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON: {err.msg}", source=source,
                         field=f"line {err.lineno} column {err.colno}") from None


def parse_job(data: Any, *, source: str = "", allow_paths: bool = True,
              read_text: Callable[[str], str] = storage.read_text, index: int | None = None) -> Job:
    """Validate one AF3 job object."""
    prefix = f"[{index}]" if index is not None else ""
    if not isinstance(data, dict):
        raise InputError(f"expected a job object, got {type(data).__name__}", source=source,
                         field=prefix)
    name = data.get("name")
    job_label = name if isinstance(name, str) else ""
    try:
        return _parse_job(data, source, job_label, allow_paths, read_text)
    except InputError as err:
        if prefix and not err.job:
            raise err.located(field_prefix=prefix) from None
        raise


def _parse_job(data: dict, source: str, job: str, allow_paths: bool,
               read_text: Callable[[str], str]) -> Job:
    base = _Ctx(source, job, max(SUPPORTED_VERSIONS), allow_paths, read_text)
    dialect = data.get("dialect")
    if dialect != DIALECT:
        raise base.error("dialect", f"expected \"{DIALECT}\", got {dialect!r}")
    version = data.get("version")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise base.error("version", f"unsupported version {version!r} "
                                    f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    ctx = _Ctx(source, job, version, allow_paths, read_text)
    ctx.check_keys(data, _JOB_KEYS, "")
    name = _parse_name(ctx, data.get("name"))
    seeds = _parse_seeds(ctx, data.get("modelSeeds"))

    sequences = data.get("sequences")
    if not isinstance(sequences, list) or not sequences:
        raise ctx.error("sequences", "expected a non-empty list of chains")
    entities = tuple(_parse_entity(ctx, item, f"sequences[{i}]") for i, item in enumerate(sequences))
    _check_unique_ids(ctx, entities)

    bonds = _parse_bonds(ctx, data.get("bondedAtomPairs"), entities)
    if "userCCD" in data and "userCCDPath" in data:
        raise ctx.error("userCCDPath", "give either userCCD or userCCDPath, not both")
    user_ccd = data.get("userCCD")
    if "userCCDPath" in data:
        user_ccd = ctx.load_path(data["userCCDPath"], "userCCDPath")
    elif user_ccd is not None and not isinstance(user_ccd, str):
        raise ctx.error("userCCD", f"expected CCD mmCIF text, got {type(user_ccd).__name__}")
    return Job(name=name, seeds=seeds, entities=entities, bonded_atom_pairs=bonds,
               user_ccd=user_ccd or None, source=source)


def _parse_name(ctx: _Ctx, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ctx.error("name", f"expected a non-empty string, got {name!r}")
    if "/" in name or "\\" in name:
        raise ctx.error("name", f"name {name!r} contains a path separator; job names become "
                                "output folder names")
    if any(ord(c) < 32 for c in name):
        raise ctx.error("name", f"name {name!r} contains control characters")
    return name


def _parse_seeds(ctx: _Ctx, seeds: Any) -> tuple[int, ...]:
    if not isinstance(seeds, list) or not seeds:
        raise ctx.error("modelSeeds", f"expected a non-empty list of integers, got {seeds!r}")
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ctx.error(f"modelSeeds[{i}]", f"expected an integer in [0, 2^32), got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ctx.error("modelSeeds", f"seeds repeat: {seeds}")
    return tuple(seeds)


def _parse_ids(ctx: _Ctx, ids: Any, field: str) -> tuple[str, ...]:
    values = [ids] if isinstance(ids, str) else ids
    if not isinstance(values, list) or not values:
        raise ctx.error(field, f"expected a chain id or a non-empty list of ids, got {ids!r}")
    for i, chain_id in enumerate(values):
        where = field if isinstance(ids, str) else f"{field}[{i}]"
        if not isinstance(chain_id, str) or not chain_id.isascii() or not chain_id.isalnum() \
                or len(chain_id) > _CHAIN_ID_MAX:
            raise ctx.error(where, f"invalid chain id {chain_id!r}: use 1-{_CHAIN_ID_MAX} "
                                   "letters or digits")
    return tuple(values)


def _check_unique_ids(ctx: _Ctx, entities: tuple[Entity, ...]) -> None:
    seen: dict[str, int] = {}
    for i, entity in enumerate(entities):
        for chain_id in entity.ids:
            if chain_id in seen:
                kind = entity.mol_type
                raise ctx.error(f"sequences[{i}].{kind}.id",
                                f"chain id {chain_id!r} is already used by sequences[{seen[chain_id]}]")
            seen[chain_id] = i


def _parse_entity(ctx: _Ctx, item: Any, field: str) -> Entity:
    if not isinstance(item, dict) or len(item) != 1:
        raise ctx.error(field, "expected an object with exactly one of "
                               "'protein', 'rna', 'dna', 'ligand'")
    (kind, body), = item.items()
    if kind not in ("protein", "rna", "dna", "ligand"):
        raise ctx.error(f"{field}.{kind}", f"unknown chain type {kind!r} "
                                           "(expected protein, rna, dna or ligand)")
    field = f"{field}.{kind}"
    if not isinstance(body, dict):
        raise ctx.error(field, f"expected an object, got {type(body).__name__}")
    if kind == "ligand":
        return _parse_ligand(ctx, body, field)
    return _parse_polymer(ctx, kind, body, field)


def _parse_polymer(ctx: _Ctx, kind: str, body: dict, field: str) -> PolymerChain:
    ctx.check_keys(body, {"protein": _PROTEIN_KEYS, "rna": _RNA_KEYS, "dna": _DNA_KEYS}[kind], field)
    ids = _parse_ids(ctx, body.get("id"), f"{field}.id")
    sequence = _parse_sequence(ctx, kind, body.get("sequence"), f"{field}.sequence")
    mods = _parse_modifications(ctx, kind, body.get("modifications", []), len(sequence),
                                f"{field}.modifications")
    unpaired = _msa_field(ctx, body, "unpairedMsa", field)
    paired = _msa_field(ctx, body, "pairedMsa", field)
    templates = None
    if "templates" in body and body["templates"] is not None:
        templates = _parse_templates(ctx, body["templates"], len(sequence), f"{field}.templates")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise ctx.error(f"{field}.description", "expected a string")
    return PolymerChain(mol_type=kind, ids=ids, sequence=sequence, modifications=mods,
                        unpaired_msa=unpaired, paired_msa=paired, templates=templates,
                        description=description)


def _parse_sequence(ctx: _Ctx, kind: str, sequence: Any, field: str) -> str:
    if not isinstance(sequence, str):
        raise ctx.error(field, f"expected a string, got {type(sequence).__name__}")
    if not sequence:
        raise ctx.error(field, "the sequence is empty")
    allowed = ONE_TO_CCD[kind]
    bad = [(i + 1, c) for i, c in enumerate(sequence) if c not in allowed]
    if bad:
        shown = ", ".join(f"{c!r} at {pos}" for pos, c in bad[:8]) + (" ..." if len(bad) > 8 else "")
        hint = ""
        if any(c.isspace() for _, c in bad):
            hint = "; remove whitespace and line breaks"
        elif any(c.islower() for _, c in bad):
            hint = "; use upper-case one-letter codes"
        letters = "".join(sorted(allowed))
        raise ctx.error(field, f"invalid {kind} residue letters {shown} (allowed: {letters}; "
                               f"use 'modifications' for non-standard residues{hint})")
    return sequence


def _parse_modifications(ctx: _Ctx, kind: str, mods: Any, length: int,
                         field: str) -> tuple[Modification, ...]:
    if not isinstance(mods, list):
        raise ctx.error(field, f"expected a list, got {type(mods).__name__}")
    type_key, pos_key = _MOD_KEYS[kind]
    parsed: list[Modification] = []
    for i, mod in enumerate(mods):
        where = f"{field}[{i}]"
        if not isinstance(mod, dict):
            raise ctx.error(where, "expected an object")
        ctx.check_keys(mod, {type_key: 1, pos_key: 1}, where)
        code, pos = mod.get(type_key), mod.get(pos_key)
        if not isinstance(code, str) or not code:
            raise ctx.error(f"{where}.{type_key}", f"expected a CCD code, got {code!r}")
        code = code.removeprefix("CCD_")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 1 <= pos <= length:
            raise ctx.error(f"{where}.{pos_key}",
                            f"position {pos!r} is outside the sequence (1..{length})")
        if any(m.position == pos for m in parsed):
            raise ctx.error(f"{where}.{pos_key}", f"position {pos} is modified twice")
        parsed.append(Modification(ccd_code=code, position=pos))
    return tuple(parsed)


def _msa_field(ctx: _Ctx, body: dict, key: str, field: str) -> str | None:
    path_key = f"{key}Path"
    if key in body and body[key] is not None and path_key in body:
        raise ctx.error(f"{field}.{path_key}", f"give either {key} or {path_key}, not both")
    if path_key in body:
        return ctx.load_path(body[path_key], f"{field}.{path_key}")
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ctx.error(f"{field}.{key}", f"expected a3m text, got {type(value).__name__}")
    return value


def _parse_templates(ctx: _Ctx, templates: Any, length: int,
                     field: str) -> tuple[TemplateInput, ...]:
    if not isinstance(templates, list):
        raise ctx.error(field, f"expected a list, got {type(templates).__name__}")
    parsed = []
    for i, tmpl in enumerate(templates):
        where = f"{field}[{i}]"
        if not isinstance(tmpl, dict):
            raise ctx.error(where, "expected an object")
        ctx.check_keys(tmpl, _TEMPLATE_KEYS, where)
        if ("mmcif" in tmpl) == ("mmcifPath" in tmpl):
            raise ctx.error(where, "give exactly one of mmcif or mmcifPath")
        mmcif = tmpl["mmcif"] if "mmcif" in tmpl else ctx.load_path(tmpl["mmcifPath"],
                                                                    f"{where}.mmcifPath")
        query = _index_list(ctx, tmpl.get("queryIndices"), length, f"{where}.queryIndices")
        target = _index_list(ctx, tmpl.get("templateIndices"), None, f"{where}.templateIndices")
        if len(query) != len(target):
            raise ctx.error(where, f"queryIndices ({len(query)}) and templateIndices "
                                   f"({len(target)}) differ in length")
        parsed.append(TemplateInput(mmcif=mmcif, query_indices=query, template_indices=target))
    return tuple(parsed)


def _index_list(ctx: _Ctx, values: Any, upper: int | None, field: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise ctx.error(field, "expected a list of 0-based residue indices")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or \
                (upper is not None and value >= upper):
            bound = f" below {upper}" if upper is not None else ""
            raise ctx.error(f"{field}[{i}]", f"expected an index >= 0{bound}, got {value!r}")
    return tuple(values)


def _parse_ligand(ctx: _Ctx, body: dict, field: str) -> LigandChain:
    ctx.check_keys(body, _LIGAND_KEYS, field)
    ids = _parse_ids(ctx, body.get("id"), f"{field}.id")
    if ("ccdCodes" in body) == ("smiles" in body):
        raise ctx.error(field, "give exactly one of ccdCodes or smiles")
    description = body.get("description")
    if "smiles" in body:
        smiles = body["smiles"]
        if not isinstance(smiles, str) or not smiles.strip():
            raise ctx.error(f"{field}.smiles", f"expected a SMILES string, got {smiles!r}")
        return LigandChain(ids=ids, smiles=smiles.strip(), description=description)
    codes = body["ccdCodes"]
    if isinstance(codes, str) or not isinstance(codes, list) or not codes:
        raise ctx.error(f"{field}.ccdCodes", f"expected a non-empty list of CCD codes, got {codes!r}")
    for i, code in enumerate(codes):
        if not isinstance(code, str) or not code or not code.replace("_", "").isalnum():
            raise ctx.error(f"{field}.ccdCodes[{i}]", f"invalid CCD code {code!r}")
    return LigandChain(ids=ids, ccd_codes=tuple(c.removeprefix("CCD_") for c in codes),
                       description=description)


def _parse_bonds(ctx: _Ctx, bonds: Any, entities: tuple[Entity, ...],
                 ) -> tuple[tuple[AtomRef, AtomRef], ...]:
    if bonds is None:
        return ()
    if not isinstance(bonds, list):
        raise ctx.error("bondedAtomPairs", "expected a list of atom pairs")
    lengths: dict[str, int] = {}
    for entity in entities:
        n = len(entity.sequence) if isinstance(entity, PolymerChain) else \
            len(entity.ccd_codes) if entity.ccd_codes else 1
        lengths.update({chain_id: n for chain_id in entity.ids})
    parsed = []
    for i, pair in enumerate(bonds):
        where = f"bondedAtomPairs[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ctx.error(where, "expected [[chain, residue, atom], [chain, residue, atom]]")
        atoms = []
        for j, atom in enumerate(pair):
            at = f"{where}[{j}]"
            if not isinstance(atom, list) or len(atom) != 3:
                raise ctx.error(at, f"expected [chain id, residue number, atom name], got {atom!r}")
            chain_id, residue, atom_name = atom
            if chain_id not in lengths:
                raise ctx.error(at, f"chain {chain_id!r} is not in sequences")
            if isinstance(residue, bool) or not isinstance(residue, int) or \
                    not 1 <= residue <= lengths[chain_id]:
                raise ctx.error(at, f"residue {residue!r} is outside chain {chain_id!r} "
                                    f"(1..{lengths[chain_id]})")
            if not isinstance(atom_name, str) or not atom_name:
                raise ctx.error(at, f"invalid atom name {atom_name!r}")
            atoms.append(AtomRef(chain_id=chain_id, residue=residue, atom_name=atom_name))
        if atoms[0] == atoms[1]:
            raise ctx.error(where, "an atom cannot be bonded to itself")
        parsed.append((atoms[0], atoms[1]))
    return tuple(parsed)
