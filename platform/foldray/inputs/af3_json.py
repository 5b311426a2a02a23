"""AlphaFold 3 input JSON (dialect "alphafold3", versions 1-4) -> validated `Job`s.

Field names, per-version keys and semantics follow AlphaFold 3's documented input format.
Every field is type-checked here, so a problem raises `InputError` naming the file, the job
and the field path (``sequences[1].ligand.smiles``), with the offending value (shortened) in
the message; never a TypeError from deeper code. Jobs in the AlphaFold Server dialect are
handed to `af_server_json`.

`...Path` fields (unpairedMsaPath, pairedMsaPath, templates[].mmcifPath, userCCDPath) may
only name files inside the input file's own folder (or URL prefix), symlinks resolved, or
inside a folder listed in FOLDRAY_INPUT_PATH_ROOTS; FOLDRAY_ALLOW_ANY_INPUT_PATH=1 (or
`any_path=True`) lifts the rule for trusted inputs.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from foldray.errors import InputError, combine_errors
from foldray.inputs.job import (
    AtomRef,
    Entity,
    Job,
    LigandChain,
    Modification,
    PolymerChain,
    TemplateInput,
)
from foldray.inputs.restraints import parse_restraints
from foldray.io import storage
from foldray.residues import ONE_TO_CCD

DIALECT = "alphafold3"
SUPPORTED_VERSIONS = (1, 2, 3, 4)
MAX_SEED = 2**32 - 1
MAX_NAME_CHARS = 256    # job names become folder names (and appear in every error line)
ANY_PATH_ENV = "FOLDRAY_ALLOW_ANY_INPUT_PATH"
PATH_ROOTS_ENV = "FOLDRAY_INPUT_PATH_ROOTS"

# Keys allowed per object, with the first version that knows them.
_JOB_KEYS = {"dialect": 1, "version": 1, "name": 1, "modelSeeds": 1, "sequences": 1,
             "bondedAtomPairs": 1, "userCCD": 1, "userCCDPath": 3, "restraints": 1,
             "maxTemplateDate": 1}   # foldray extension: the job's template search cutoff
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
_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
               str: "a string", list: "a list", dict: "an object"}

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlevel = 60, 60, 3
_repr.maxlist = _repr.maxdict = 6


def show(value: Any) -> str:
    """A short repr for messages: long strings and deep or long lists are cut."""
    return _repr.repr(value)


def got(value: Any) -> str:
    """'got a list [1, 2]': the JSON type and a short repr of a wrong value."""
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    return "got null" if value is None else f"got {kind} {show(value)}"


def any_path_allowed(any_path: bool = False) -> bool:
    """Whether `...Path` fields may name any readable file (the explicit opt-out)."""
    return any_path or os.environ.get(ANY_PATH_ENV, "").strip().lower() in ("1", "true", "yes")


def _local(location: str) -> str | None:
    """The local path of a plain path or file:// URL; None for other URLs."""
    if location.startswith("file://"):
        return location[len("file://"):]
    return None if storage.is_url(location) else location


def _inside(location: str, root: str) -> bool:
    """Whether `location` lies in folder/prefix `root`, symlinks resolved for local paths."""
    local, local_root = _local(location), _local(root)
    if local is not None and local_root is not None:
        real, base = os.path.realpath(local), os.path.realpath(local_root)
        return real == base or real.startswith(base.rstrip(os.sep) + os.sep)
    if local is None and local_root is None:
        scheme, _, rest = location.partition("://")
        root_scheme, _, root_rest = root.partition("://")
        rest, root_rest = posixpath.normpath(rest), posixpath.normpath(root_rest).rstrip("/")
        return scheme == root_scheme and "/../" not in f"/{rest}/" and \
            rest.startswith(root_rest + "/")
    return False


def input_path_roots(source: str) -> list[str]:
    """Folders/prefixes a `...Path` field of `source` may name: its own folder (the
    working directory for text without a file) and those in FOLDRAY_INPUT_PATH_ROOTS."""
    own = re.sub(r"#row=\d+$", "", source)   # a manifest row: the manifest's folder
    if storage.is_url(own) and not own.startswith("file://"):
        folder = posixpath.dirname(own)
    else:
        folder = os.path.dirname(os.path.abspath(_local(own) or ".")) if own else os.getcwd()
    extra = [r.strip() for r in os.environ.get(PATH_ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    return [folder, *extra]


class _Ctx:
    """Where we are while parsing: builds located errors and resolves relative paths."""

    def __init__(self, source: str, job: str, version: int, allow_paths: bool,
                 read_text: Callable[[str], str], any_path: bool = False) -> None:
        self.source, self.job, self.version = source, job, version
        self.allow_paths, self.read_text, self.any_path = allow_paths, read_text, any_path

    def error(self, field: str, message: str) -> InputError:
        return InputError(message, source=self.source, job=self.job, field=field)

    def check_keys(self, obj: Mapping[str, Any], allowed: dict[str, int], field: str) -> None:
        for key in obj:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(f"{field}.{key[:60]}" if field else key[:60],
                                 f"unknown key {show(key)} (allowed: {known})")
            if allowed[key] > self.version:
                raise self.error(f"{field}.{key}" if field else key,
                                 f"{key!r} needs \"version\" >= {allowed[key]}, "
                                 f"but the job says version {self.version}")

    def required(self, obj: Mapping[str, Any], key: str, field: str) -> Any:
        """obj[key]; "missing" names the field when the key is absent or null."""
        value = obj.get(key)
        if value is None:
            raise self.error(field, "missing" if key not in obj else "missing (null)")
        return value

    def string(self, value: Any, field: str, what: str = "a non-empty string") -> str:
        if value is None:       # an absent key reads as None: say so, as `required` does
            raise self.error(field, "missing")
        if not isinstance(value, str):
            raise self.error(field, f"expected {what}, {got(value)}")
        if not value.strip():
            raise self.error(field, f"expected {what}, got an empty string")
        return value

    def optional_string(self, obj: Mapping[str, Any], key: str, field: str,
                        what: str = "a string") -> str | None:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(field, f"expected {what} or null, {got(value)}")
        return value

    def integer(self, value: Any, field: str, lo: int, hi: int | None, what: str) -> int:
        """An int in [lo, hi]; bool (an int in Python) and floats (even 2.0) are refused."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(field, f"expected {what}, {got(value)}")
        if value < lo or (hi is not None and value > hi):
            bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.error(field, f"{show(value)} is out of range ({bounds})")
        return value

    def load_path(self, path: Any, field: str) -> str:
        path = self.string(path, field, "a non-empty path string")
        if not self.allow_paths:
            raise self.error(field, "file paths are not accepted here; send the contents inline")
        resolved = storage.resolve_relative(path, self.source)
        if not any_path_allowed(self.any_path):
            roots = input_path_roots(self.source)
            if not any(_inside(resolved, root) for root in roots):
                raise self.error(field, f"path {show(path)} is outside the input's folder "
                                        f"{roots[0]!r}; input paths must stay inside it (or a "
                                        f"folder in {PATH_ROOTS_ENV}); set {ANY_PATH_ENV}=1 to "
                                        "allow any path for trusted inputs")
        try:
            return self.read_text(resolved)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
            raise self.error(field, f"cannot read {show(path)}: {err.__class__.__name__}") from None
        except UnicodeDecodeError:
            raise self.error(field, f"{show(path)} is not UTF-8 text") from None
        except OSError as err:
            raise self.error(field, f"cannot read {show(path)}: {err.__class__.__name__}") from None


def parse_af3_json(text: str | bytes, *, source: str = "", allow_paths: bool = True,
                   read_text: Callable[[str], str] = storage.read_text,
                   any_path: bool = False) -> list[Job]:
    """Parse a file holding one job or a list of jobs; the first problem raises.

    `allow_paths=False` refuses `...Path` fields (for services that take untrusted input);
    `any_path=True` lets them name files outside the input's folder (trusted input only).
    """
    results = parse_af3_json_lenient(text, source=source, allow_paths=allow_paths,
                                     read_text=read_text, any_path=any_path)
    for result in results:
        if isinstance(result, InputError):
            raise result
    return results  # type: ignore[return-value]


def parse_af3_json_lenient(text: str | bytes, *, source: str = "", allow_paths: bool = True,
                           read_text: Callable[[str], str] = storage.read_text,
                           any_path: bool = False) -> list[Job | InputError]:
    """One result per job: a bad job in a list does not hide the good ones.

    AlphaFold Server jobs (`af_server_json.is_server_job`) and Protenix jobs
    (`protenix_json.is_protenix_job`) go to their own parsers.
    """
    from foldray.inputs.af_server_json import is_server_job, parse_server_job  # uses our helpers
    from foldray.inputs.protenix_json import is_protenix_job, parse_protenix_job

    try:
        data = load_json(text, source)
    except InputError as err:
        return [err]
    if isinstance(data, dict):
        items, indexed = [data], False
    elif isinstance(data, list) and data:
        items, indexed = data, True
    else:
        what = "an empty list" if isinstance(data, list) else got(data)
        return [InputError(f"expected a job object or a list of jobs, {what}", source=source)]
    results: list[Job | InputError] = []
    for i, item in enumerate(items):
        index = i if indexed else None
        try:
            if is_protenix_job(item):
                results.append(parse_protenix_job(item, source=source, index=index,
                                                  allow_paths=allow_paths, any_path=any_path))
            elif is_server_job(item, in_list=indexed):
                results.append(parse_server_job(item, source=source, index=index))
            else:
                results.append(parse_job(item, source=source, allow_paths=allow_paths,
                                         read_text=read_text, index=index, any_path=any_path))
        except InputError as err:
            results.append(err)
    return results


def load_json(text: str | bytes, source: str) -> Any:
    """json.loads with every failure as a located InputError: bad UTF-8, NUL bytes, syntax,
    nesting deeper than Python's recursion limit, integers longer than 4,300 digits."""
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
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", source=source) from None
    except ValueError as err:   # e.g. an integer literal over sys.get_int_max_str_digits()
        raise InputError(f"invalid JSON: {str(err)[:120]}", source=source) from None


def parse_job(data: Any, *, source: str = "", allow_paths: bool = True,
              read_text: Callable[[str], str] = storage.read_text, index: int | None = None,
              any_path: bool = False) -> Job:
    """Validate one AF3 job object."""
    prefix = f"[{index}]" if index is not None else ""
    if not isinstance(data, dict):
        raise InputError(f"expected a job object, {got(data)}", source=source, field=prefix)
    name = data.get("name")
    job_label = name if isinstance(name, str) and len(name) <= MAX_NAME_CHARS else ""
    try:
        return _parse_job(data, _Ctx(source, job_label, max(SUPPORTED_VERSIONS), allow_paths,
                                     read_text, any_path))
    except InputError as err:
        if prefix and not err.job:
            raise err.located(field_prefix=prefix) from None
        raise


def _parse_job(data: dict, base: _Ctx) -> Job:
    dialect = base.required(data, "dialect", "dialect")
    if dialect != DIALECT:
        raise base.error("dialect", f"expected \"{DIALECT}\", {got(dialect)}")
    version = base.required(data, "version", "version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or version not in SUPPORTED_VERSIONS:
        raise base.error("version", f"unsupported version {show(version)} "
                                    f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    ctx = _Ctx(base.source, base.job, version, base.allow_paths, base.read_text, base.any_path)
    # Past dialect/version, problems are collected (one per top-level field, entity and bond)
    # so validate can list them all; the job raises them together (InputErrors).
    errors: list[InputError] = []

    def attempt(check: Callable[..., Any], *args: Any) -> Any:
        try:
            return check(*args)
        except InputError as err:
            errors.append(err)
            return None

    attempt(ctx.check_keys, data, _JOB_KEYS, "")
    name = attempt(_parse_name, ctx, data.get("name"), "name" in data)
    seeds = attempt(_parse_seeds, ctx, data.get("modelSeeds"), "modelSeeds" in data)
    template_date = attempt(_parse_template_date, ctx, data.get("maxTemplateDate"))

    sequences = attempt(ctx.required, data, "sequences", "sequences")
    if sequences is not None and (not isinstance(sequences, list) or not sequences):
        errors.append(ctx.error("sequences", f"expected a non-empty list of chains, {got(sequences)}"))
        sequences = None
    parsed: list[tuple[int, Entity]] = []      # (position in sequences, entity) of the good ones
    unknown_chains: set[str] = set()           # chain ids of bad entities: bonds to them not checked
    for i, item in enumerate(sequences or ()):
        entity = attempt(_parse_entity, ctx, item, f"sequences[{i}]")
        if entity is not None:
            parsed.append((i, entity))
        else:
            unknown_chains.update(_raw_ids(item))
    entities = tuple(entity for _, entity in parsed)
    attempt(_check_unique_ids, ctx, entities, [i for i, _ in parsed])

    bonds: tuple[tuple[AtomRef, AtomRef], ...] = ()
    if sequences is not None:
        bonds = attempt(_parse_bonds, ctx, data.get("bondedAtomPairs"), entities, unknown_chains) or ()
    # foldray extension (docs/restraints.md); checked only when the chains parsed
    restraints = attempt(parse_restraints, ctx, data.get("restraints"), entities, unknown_chains) \
        if sequences is not None else ()
    user_ccd = None
    if data.get("userCCD") is not None and "userCCDPath" in data:
        errors.append(ctx.error("userCCDPath", "give either userCCD or userCCDPath, not both"))
    elif "userCCDPath" in data:
        user_ccd = attempt(ctx.load_path, data["userCCDPath"], "userCCDPath")
    else:
        user_ccd = attempt(ctx.optional_string, data, "userCCD", "userCCD", "CCD mmCIF text")
    if errors:
        partial = PartialJob(Job(name=name or ctx.job or "", seeds=seeds or (1,), entities=entities,
                                 user_ccd=user_ccd or None, source=ctx.source),
                             tuple(i for i, _ in parsed))
        raise combine_errors(errors, partial=partial)
    return Job(name=name, seeds=seeds, entities=entities, bonded_atom_pairs=bonds,
               restraints=restraints or (),
               user_ccd=user_ccd or None, source=ctx.source, max_template_date=template_date)


def _parse_template_date(ctx: _Ctx, value: Any) -> str | None:
    """foldray's "maxTemplateDate": templates released after it are not searched (AF3 has
    only the run flag --max_template_date); a real calendar date, YYYY-MM-DD."""
    import datetime as dt

    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.error("maxTemplateDate", f"expected a date string YYYY-MM-DD or null, {got(value)}")
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ctx.error("maxTemplateDate", f"expected a date YYYY-MM-DD, got {show(value)}") from None


class PartialJob(NamedTuple):
    """What parsed of a job with problems: its good entities, and where each sat in
    `sequences` (`positions[k]` for `job.entities[k]`), so they can still be checked."""

    job: Job
    positions: tuple[int, ...]


def _raw_ids(item: Any) -> list[str]:
    """The chain ids a (possibly bad) entity object names, for skipping checks that need it."""
    body = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else None
    ids = body.get("id") if isinstance(body, dict) else None
    values = [ids] if isinstance(ids, str) else ids if isinstance(ids, list) else []
    return [v for v in values if isinstance(v, str)]


def _parse_name(ctx: _Ctx, name: Any, present: bool = True) -> str:
    if name is None:
        raise ctx.error("name", "missing" if not present else "missing (null)")
    name = ctx.string(name, "name")
    if len(name) > MAX_NAME_CHARS:
        raise ctx.error("name", f"the name is {len(name)} characters long; at most "
                                f"{MAX_NAME_CHARS} ({show(name)})")
    if "/" in name or "\\" in name:
        raise ctx.error("name", f"name {name!r} contains a path separator; job names become "
                                "output folder names")
    if any(ord(c) < 32 for c in name):
        raise ctx.error("name", f"name {name!r} contains control characters")
    return name


def _parse_seeds(ctx: _Ctx, seeds: Any, present: bool = True) -> tuple[int, ...]:
    if seeds is None:
        raise ctx.error("modelSeeds", "missing" if not present else "missing (null)")
    if not isinstance(seeds, list) or not seeds:
        raise ctx.error("modelSeeds", f"expected a non-empty list of integers, {got(seeds)}")
    for i, seed in enumerate(seeds):
        ctx.integer(seed, f"modelSeeds[{i}]", 0, MAX_SEED, "a seed (an integer in [0, 2^32))")
    if len(set(seeds)) != len(seeds):
        raise ctx.error("modelSeeds", f"seeds repeat: {show(seeds)}")
    return tuple(seeds)


def _parse_ids(ctx: _Ctx, ids: Any, field: str) -> tuple[str, ...]:
    if ids is None:
        raise ctx.error(field, "missing")
    values = [ids] if isinstance(ids, str) else ids
    if not isinstance(values, list) or not values:
        raise ctx.error(field, f"expected a chain id or a non-empty list of ids, {got(ids)}")
    for i, chain_id in enumerate(values):
        where = field if isinstance(ids, str) else f"{field}[{i}]"
        if not isinstance(chain_id, str) or not chain_id.isascii() or not chain_id.isalnum() \
                or len(chain_id) > _CHAIN_ID_MAX:
            raise ctx.error(where, f"invalid chain id {show(chain_id)}: use 1-{_CHAIN_ID_MAX} "
                                   "letters or digits")
    return tuple(values)


def _check_unique_ids(ctx: _Ctx, entities: tuple[Entity, ...],
                      positions: list[int] | None = None) -> None:
    seen: dict[str, int] = {}
    for k, entity in enumerate(entities):
        i = positions[k] if positions is not None else k
        for chain_id in entity.ids:
            if chain_id in seen:
                kind = entity.mol_type
                raise ctx.error(f"sequences[{i}].{kind}.id",
                                f"chain id {chain_id!r} is already used by sequences[{seen[chain_id]}]")
            seen[chain_id] = i


def _parse_entity(ctx: _Ctx, item: Any, field: str) -> Entity:
    if not isinstance(item, dict) or len(item) != 1:
        raise ctx.error(field, "expected an object with exactly one of "
                               f"'protein', 'rna', 'dna', 'ligand', {got(item)}")
    (kind, body), = item.items()
    if kind not in ("protein", "rna", "dna", "ligand"):
        raise ctx.error(f"{field}.{kind[:60]}", f"unknown chain type {show(kind)} "
                                                 "(expected protein, rna, dna or ligand)")
    field = f"{field}.{kind}"
    if not isinstance(body, dict):
        raise ctx.error(field, f"expected an object, {got(body)}")
    if kind == "ligand":
        return _parse_ligand(ctx, body, field)
    return _parse_polymer(ctx, kind, body, field)


def _parse_polymer(ctx: _Ctx, kind: str, body: dict, field: str) -> PolymerChain:
    ctx.check_keys(body, {"protein": _PROTEIN_KEYS, "rna": _RNA_KEYS, "dna": _DNA_KEYS}[kind], field)
    ids = _parse_ids(ctx, body.get("id"), f"{field}.id")
    sequence = _parse_sequence(ctx, kind, body.get("sequence"), f"{field}.sequence")
    mods = _parse_modifications(ctx, kind, body.get("modifications"), len(sequence),
                                f"{field}.modifications")
    unpaired = _msa_field(ctx, body, "unpairedMsa", field)
    paired = _msa_field(ctx, body, "pairedMsa", field)
    templates = None
    if body.get("templates") is not None:
        templates = _parse_templates(ctx, body["templates"], len(sequence), f"{field}.templates")
    description = ctx.optional_string(body, "description", f"{field}.description")
    return PolymerChain(mol_type=kind, ids=ids, sequence=sequence, modifications=mods,
                        unpaired_msa=unpaired, paired_msa=paired, templates=templates,
                        description=description)


def _parse_sequence(ctx: _Ctx, kind: str, sequence: Any, field: str) -> str:
    if sequence is None:
        raise ctx.error(field, "missing")
    if not isinstance(sequence, str):
        raise ctx.error(field, f"expected a string, {got(sequence)}")
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
    if mods is None:
        return ()
    if not isinstance(mods, list):
        raise ctx.error(field, f"expected a list, {got(mods)}")
    type_key, pos_key = _MOD_KEYS[kind]
    parsed: list[Modification] = []
    for i, mod in enumerate(mods):
        where = f"{field}[{i}]"
        if not isinstance(mod, dict):
            raise ctx.error(where, f"expected an object, {got(mod)}")
        ctx.check_keys(mod, {type_key: 1, pos_key: 1}, where)
        code = ctx.string(ctx.required(mod, type_key, f"{where}.{type_key}"),
                          f"{where}.{type_key}", "a CCD code")
        code = code.removeprefix("CCD_")
        pos = ctx.integer(ctx.required(mod, pos_key, f"{where}.{pos_key}"), f"{where}.{pos_key}",
                          1, length, "a position in the sequence")
        if any(m.position == pos for m in parsed):
            raise ctx.error(f"{where}.{pos_key}", f"position {pos} is modified twice")
        parsed.append(Modification(ccd_code=code, position=pos))
    return tuple(parsed)


def _msa_field(ctx: _Ctx, body: dict, key: str, field: str) -> str | None:
    path_key = f"{key}Path"
    if body.get(key) is not None and path_key in body:
        raise ctx.error(f"{field}.{path_key}", f"give either {key} or {path_key}, not both")
    if path_key in body:
        return ctx.load_path(body[path_key], f"{field}.{path_key}")
    return ctx.optional_string(body, key, f"{field}.{key}", "a3m text")


def _parse_templates(ctx: _Ctx, templates: Any, length: int,
                     field: str) -> tuple[TemplateInput, ...]:
    if not isinstance(templates, list):
        raise ctx.error(field, f"expected a list, {got(templates)}")
    parsed = []
    for i, tmpl in enumerate(templates):
        where = f"{field}[{i}]"
        if not isinstance(tmpl, dict):
            raise ctx.error(where, f"expected an object, {got(tmpl)}")
        ctx.check_keys(tmpl, _TEMPLATE_KEYS, where)
        if ("mmcif" in tmpl) == ("mmcifPath" in tmpl):
            raise ctx.error(where, "give exactly one of mmcif or mmcifPath")
        if "mmcif" in tmpl:
            mmcif = ctx.string(tmpl["mmcif"], f"{where}.mmcif", "mmCIF text")
        else:
            mmcif = ctx.load_path(tmpl["mmcifPath"], f"{where}.mmcifPath")
        query = _index_list(ctx, tmpl.get("queryIndices"), length, f"{where}.queryIndices")
        target = _index_list(ctx, tmpl.get("templateIndices"), None, f"{where}.templateIndices")
        if len(query) != len(target):
            raise ctx.error(where, f"queryIndices ({len(query)}) and templateIndices "
                                   f"({len(target)}) differ in length")
        parsed.append(TemplateInput(mmcif=mmcif, query_indices=query, template_indices=target))
    return tuple(parsed)


def _index_list(ctx: _Ctx, values: Any, upper: int | None, field: str) -> tuple[int, ...]:
    if values is None:
        raise ctx.error(field, "missing")
    if not isinstance(values, list):
        raise ctx.error(field, f"expected a list of 0-based residue indices, {got(values)}")
    for i, value in enumerate(values):
        ctx.integer(value, f"{field}[{i}]", 0, None if upper is None else upper - 1,
                    "a 0-based residue index")
    return tuple(values)


def _parse_ligand(ctx: _Ctx, body: dict, field: str) -> LigandChain:
    ctx.check_keys(body, _LIGAND_KEYS, field)
    ids = _parse_ids(ctx, body.get("id"), f"{field}.id")
    if ("ccdCodes" in body) == ("smiles" in body):
        raise ctx.error(field, "give exactly one of ccdCodes or smiles")
    description = ctx.optional_string(body, "description", f"{field}.description")
    if "smiles" in body:
        smiles = ctx.string(body["smiles"], f"{field}.smiles", "a SMILES string")
        return LigandChain(ids=ids, smiles=smiles.strip(), description=description)
    codes = body["ccdCodes"]
    if isinstance(codes, str) or not isinstance(codes, list) or not codes:
        raise ctx.error(f"{field}.ccdCodes", f"expected a non-empty list of CCD codes, {got(codes)}")
    for i, code in enumerate(codes):
        if not isinstance(code, str) or not code or not code.replace("_", "").isalnum():
            raise ctx.error(f"{field}.ccdCodes[{i}]", f"invalid CCD code {show(code)}")
    return LigandChain(ids=ids, ccd_codes=tuple(c.removeprefix("CCD_") for c in codes),
                       description=description)


def _parse_bonds(ctx: _Ctx, bonds: Any, entities: tuple[Entity, ...],
                 unknown_chains: set[str] | None = None) -> tuple[tuple[AtomRef, AtomRef], ...]:
    """Every bond is checked; all bad ones raise together. Bonds to `unknown_chains`
    (chains of entities that failed to parse) are not checked and not kept."""
    if bonds is None:
        return ()
    if not isinstance(bonds, list):
        raise ctx.error("bondedAtomPairs", f"expected a list of atom pairs, {got(bonds)}")
    lengths: dict[str, int] = {}
    for entity in entities:
        n = len(entity.sequence) if isinstance(entity, PolymerChain) else \
            len(entity.ccd_codes) if entity.ccd_codes else 1
        lengths.update({chain_id: n for chain_id in entity.ids})
    parsed, errors = [], []
    for i, pair in enumerate(bonds):
        try:
            bond = _parse_bond(ctx, pair, f"bondedAtomPairs[{i}]", lengths, unknown_chains or set())
        except InputError as err:
            errors.append(err)
            continue
        if bond is not None:
            parsed.append(bond)
    if errors:
        raise combine_errors(errors)
    return tuple(parsed)


def _parse_bond(ctx: _Ctx, pair: Any, where: str, lengths: dict[str, int],
                unknown_chains: set[str]) -> tuple[AtomRef, AtomRef] | None:
    if not isinstance(pair, list) or len(pair) != 2:
        raise ctx.error(where, f"expected [[chain, residue, atom], [chain, residue, atom]], "
                               f"{got(pair)}")
    atoms = []
    for j, atom in enumerate(pair):
        at = f"{where}[{j}]"
        if not isinstance(atom, list) or len(atom) != 3:
            raise ctx.error(at, f"expected [chain id, residue number, atom name], {got(atom)}")
        chain_id, residue, atom_name = atom
        if not isinstance(chain_id, str):
            raise ctx.error(f"{at}[0]", f"expected a chain id string, {got(chain_id)}")
        known = chain_id in lengths
        if not known and chain_id not in unknown_chains:
            raise ctx.error(at, f"chain {show(chain_id)} is not in sequences")
        ctx.integer(residue, f"{at}[1]", 1, lengths[chain_id] if known else None,
                    f"a residue number in chain {chain_id!r}")
        atom_name = ctx.string(atom_name, f"{at}[2]", "an atom name")
        atoms.append(AtomRef(chain_id=chain_id, residue=residue, atom_name=atom_name))
    if atoms[0] == atoms[1]:
        raise ctx.error(where, "an atom cannot be bonded to itself")
    if not all(atom.chain_id in lengths for atom in atoms):
        return None     # to a chain that failed to parse: checked as far as possible, not kept
    return atoms[0], atoms[1]
