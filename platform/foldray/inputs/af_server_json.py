"""AlphaFold Server job JSON (dialect "alphafoldserver", version 1) -> validated `Job`s.

The format of `<job>_job_request.json` exported from alphafoldserver.com, which AlphaFold 3
also reads (`folding_input.Input.from_alphafoldserver_fold_job`): a list of jobs, each

    {"name": ..., "modelSeeds": [...], "dialect": "alphafoldserver", "version": 1,
     "sequences": [{"proteinChain": {"sequence", "count", "modifications", "glycans",
                                     "useStructureTemplate", "maxTemplateDate"}},
                   {"dnaSequence": {"sequence", "count", "modifications"}},
                   {"rnaSequence": {"sequence", "count", "modifications"}},
                   {"ligand": {"ligand": "CCD_ATP", "count"}},
                   {"ion": {"ion": "MG", "count"}}]}

Converted the way AlphaFold 3 converts it:
- one entity per `sequences` entry, `count` copies (default 1); chain ids are handed out in
  order over all copies, reverse spreadsheet style: A, B, ..., Z, AA, BA, ..., ZA, AB, ...
  (AF3 `mmcif.int_id_to_str_id`), so the copies of an entity get consecutive ids;
- "CCD_" is dropped from ligand, ion and modification codes; ions become ligands;
- `useStructureTemplate: false` means no templates (`templates=()`), otherwise templates and
  MSAs are left None for the search to fill in;
- dialect and version are both given or both absent (then "alphafoldserver" v1 is assumed);
- non-empty `glycans` and `maxTemplateDate` are refused, as AF3 refuses them.

Deviations from AF3, each stricter or more reproducible, never a different structure:
- `"modelSeeds": []` (or no modelSeeds) gives the fixed seed 1 (`DEFAULT_SEED`) where AF3
  and the server draw a random one: rerunning a file gives the same prediction, and batch
  reruns can tell a job is already done. Give seeds to choose them.
- seeds may be integers or decimal strings (the server writes strings); repeats are refused;
- `"glycans": []` is accepted as "no glycans"; `maxTemplateDate` is accepted, and ignored,
  when `useStructureTemplate` is false (no templates, so no date cutoff to apply);
- every object's keys, every count, position and CCD code is checked here, so a problem is
  reported with its path (``[0].sequences[2].proteinChain.count``) instead of a KeyError.
"""

from __future__ import annotations

import re
from typing import Any

from foldray.errors import InputError
from foldray.inputs.af3_json import MAX_NAME_CHARS, MAX_SEED, _Ctx, _parse_name, _parse_sequence, got, show
from foldray.inputs.job import Entity, Job, LigandChain, Modification, PolymerChain
from foldray.io import storage

DIALECT = "alphafoldserver"
VERSION = 1
DEFAULT_SEED = 1

_JOB_KEYS = ("name", "modelSeeds", "sequences", "dialect", "version")
# Entity key -> (foldray mol type, allowed keys of its body).
_ENTITY_KINDS = {
    "proteinChain": ("protein", ("sequence", "count", "modifications", "glycans",
                                 "useStructureTemplate", "maxTemplateDate")),
    "dnaSequence": ("dna", ("sequence", "count", "modifications")),
    "rnaSequence": ("rna", ("sequence", "count", "modifications")),
    "ligand": ("ligand", ("ligand", "count")),
    "ion": ("ion", ("ion", "count")),
}
_AF3_KINDS = ("protein", "rna", "dna")  # alphafold3-dialect keys, worth a hint
_MOD_KEYS = {"protein": ("ptmType", "ptmPosition"), "rna": ("modificationType", "basePosition"),
             "dna": ("modificationType", "basePosition")}
_CCD_CODE = re.compile(r"[A-Z0-9]{1,5}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Every id of 1-4 letters, the longest chain id AF3 JSON (and `af3_json`) accepts.
MAX_CHAINS = sum(26**k for k in range(1, 5))


def is_server_job(data: Any, *, in_list: bool) -> bool:
    """Whether a job object is in the AlphaFold Server dialect.

    It is when it says so; a job in a top-level list that names neither dialect nor version
    is one too, as AlphaFold 3 reads every list as AlphaFold Server jobs.
    """
    if not isinstance(data, dict):
        return False
    if data.get("dialect") == DIALECT:
        return True
    return in_list and "dialect" not in data and "version" not in data


def parse_server_job(data: dict, *, source: str, index: int | None) -> Job:
    """Validate one AlphaFold Server job; `index` is its place in the file's list, if any.

    Errors name the field from the top of the file: ``[0].sequences[2].proteinChain.count``
    (the index stays even when the job has a name: server files may repeat names).
    """
    prefix = f"[{index}]" if index is not None else ""
    if not isinstance(data, dict):
        raise InputError(f"expected a job object, {got(data)}", source=source, field=prefix)
    name = data.get("name")
    label = name if isinstance(name, str) and len(name) <= MAX_NAME_CHARS else ""
    ctx = _Ctx(source, label, VERSION, False, storage.read_text)
    try:
        return _parse_job(ctx, data)
    except InputError as err:
        if prefix:
            raise err.located(field_prefix=prefix) from None
        raise


def chain_id(number: int) -> str:
    """The `number`-th chain id (1-based), reverse spreadsheet style: 1 A, 27 AA, 28 BA."""
    letters = []
    number -= 1
    while number >= 0:
        letters.append(chr(ord("A") + number % 26))
        number = number // 26 - 1
    return "".join(letters)


def _parse_job(ctx: _Ctx, data: dict) -> Job:
    _check_keys(ctx, data, _JOB_KEYS, "")
    if ("dialect" in data) != ("version" in data):
        missing = "version" if "dialect" in data else "dialect"
        raise ctx.error(missing, f"give both \"dialect\" and \"version\" or neither (then "
                                 f"\"{DIALECT}\" version {VERSION} is assumed)")
    if "dialect" in data and data["dialect"] != DIALECT:
        raise ctx.error("dialect", f"expected \"{DIALECT}\", {got(data['dialect'])}")
    version = data.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
        raise ctx.error("version", f"unsupported version {show(version)} (supported: {VERSION})")
    name = _parse_name(ctx, data.get("name"), "name" in data)
    seeds = _parse_seeds(ctx, data.get("modelSeeds"))

    sequences = data.get("sequences")
    if not isinstance(sequences, list) or not sequences:
        raise ctx.error("sequences", f"expected a non-empty list of entities, {got(sequences)}")
    entities: list[Entity] = []
    n_chains = 0
    for i, item in enumerate(sequences):
        kind, body, count = _entity_header(ctx, item, f"sequences[{i}]")
        field = f"sequences[{i}].{kind}"
        if n_chains + count > MAX_CHAINS:
            raise ctx.error(f"{field}.count", f"count {count} takes the job past {MAX_CHAINS} "
                                              "chains, the most 1-4 letter chain ids can name")
        ids = tuple(chain_id(n_chains + k) for k in range(1, count + 1))
        n_chains += count
        if kind in ("ligand", "ion"):
            code = _ccd_code(ctx, body.get(kind), f"{field}.{kind}")
            entities.append(LigandChain(ids=ids, ccd_codes=(code,)))
        else:
            entities.append(_parse_polymer(ctx, kind, body, ids, field))
    return Job(name=name, seeds=seeds, entities=tuple(entities), source=ctx.source)


def _check_keys(ctx: _Ctx, obj: dict, allowed: tuple[str, ...], field: str) -> None:
    ctx.check_keys(obj, dict.fromkeys(allowed, VERSION), field)


def _parse_seeds(ctx: _Ctx, seeds: Any) -> tuple[int, ...]:
    if seeds is None or seeds == []:
        return (DEFAULT_SEED,)
    if not isinstance(seeds, list):
        raise ctx.error("modelSeeds", f"expected a list of seeds (may be empty), {got(seeds)}")
    parsed = []
    for i, seed in enumerate(seeds):
        value = int(seed) if isinstance(seed, str) and seed.isascii() and seed.isdigit() \
            and len(seed) <= 10 else seed   # 2^32 has 10 digits; int() of 5,000 raises
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise ctx.error(f"modelSeeds[{i}]", "expected an integer (or a string of digits) "
                                                f"in [0, 2^32), {got(seed)}")
        parsed.append(value)
    if len(set(parsed)) != len(parsed):
        raise ctx.error("modelSeeds", f"seeds repeat: {show(seeds)}")
    return tuple(parsed)


def _entity_header(ctx: _Ctx, item: Any, field: str) -> tuple[str, dict, int]:
    """The entity key, its body (keys checked) and its copy count."""
    expected = ", ".join(_ENTITY_KINDS)
    if not isinstance(item, dict) or len(item) != 1:
        raise ctx.error(field, f"expected an object with exactly one of {expected}, {got(item)}")
    (kind, body), = item.items()
    if kind not in _ENTITY_KINDS:
        hint = ""
        if kind in _AF3_KINDS:
            hint = (f"; {kind!r} is an \"alphafold3\"-dialect key: give \"dialect\": "
                    "\"alphafold3\" and its \"version\" to use that format (a job in a list "
                    f"with no dialect is read as \"{DIALECT}\", as AlphaFold 3 does)")
        raise ctx.error(f"{field}.{kind[:60]}", f"unknown entity type {show(kind)} "
                                           f"(expected {expected}){hint}")
    field = f"{field}.{kind}"
    if not isinstance(body, dict):
        raise ctx.error(field, f"expected an object, {got(body)}")
    _check_keys(ctx, body, _ENTITY_KINDS[kind][1], field)
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ctx.error(f"{field}.count", f"expected a positive integer number of copies, "
                                          f"{got(count)}")
    return kind, body, count


def _ccd_code(ctx: _Ctx, value: Any, field: str) -> str:
    """A server CCD code, "CCD_ATP" (or bare "ATP", as AF3 also takes) -> "ATP"."""
    if value is None:
        raise ctx.error(field, "missing")
    code = value.removeprefix("CCD_") if isinstance(value, str) else None
    if code is None or not _CCD_CODE.fullmatch(code):
        hint = ""
        if isinstance(value, str) and value[:4].upper() == "CCD_" and value[:4] != "CCD_":
            hint = " (the prefix is upper-case 'CCD_')"
        elif isinstance(value, str) and code and _CCD_CODE.fullmatch(code.upper()):
            hint = " (CCD codes are upper-case)"
        raise ctx.error(field, f"expected a CCD code such as 'CCD_ATP' ('CCD_' followed by 1-5 "
                               f"upper-case letters or digits), {got(value)}{hint}")
    return code


def _parse_polymer(ctx: _Ctx, kind: str, body: dict, ids: tuple[str, ...],
                   field: str) -> PolymerChain:
    mol_type = _ENTITY_KINDS[kind][0]
    sequence = _parse_sequence(ctx, mol_type, body.get("sequence"), f"{field}.sequence")
    mods = _parse_modifications(ctx, mol_type, body.get("modifications"), len(sequence),
                                f"{field}.modifications")
    templates = None
    if kind == "proteinChain":
        templates = _parse_template_choice(ctx, body, field)
        glycans = body.get("glycans") or []
        if not isinstance(glycans, list):
            raise ctx.error(f"{field}.glycans", f"expected a list, {got(glycans)}")
        if glycans:
            raise ctx.error(f"{field}.glycans", "glycans in the alphafoldserver dialect are not "
                                                "supported yet (nor by AlphaFold 3); write the job "
                                                "in the alphafold3 dialect with the glycan as a "
                                                "ligand and its link in bondedAtomPairs")
    return PolymerChain(mol_type=mol_type, ids=ids, sequence=sequence, modifications=mods,
                        templates=templates)


def _parse_template_choice(ctx: _Ctx, body: dict, field: str) -> tuple[()] | None:
    """`useStructureTemplate: false` -> no templates (); otherwise None: search for them."""
    use = body.get("useStructureTemplate", True)
    if not isinstance(use, bool):
        raise ctx.error(f"{field}.useStructureTemplate", f"expected true or false, {got(use)}")
    if "maxTemplateDate" in body:
        date = body["maxTemplateDate"]
        if not isinstance(date, str) or not _DATE.fullmatch(date):
            raise ctx.error(f"{field}.maxTemplateDate",
                            f"expected a date as YYYY-MM-DD, {got(date)}")
        if use:
            raise ctx.error(f"{field}.maxTemplateDate",
                            f"a per-chain template date cutoff ({date}) is not supported (nor by "
                            "AlphaFold 3); remove it, or set useStructureTemplate to false")
    return None if use else ()


def _parse_modifications(ctx: _Ctx, mol_type: str, mods: Any, length: int,
                         field: str) -> tuple[Modification, ...]:
    if mods is None:
        return ()
    if not isinstance(mods, list):
        raise ctx.error(field, f"expected a list, {got(mods)}")
    type_key, pos_key = _MOD_KEYS[mol_type]
    parsed: list[Modification] = []
    for i, mod in enumerate(mods):
        where = f"{field}[{i}]"
        if not isinstance(mod, dict):
            raise ctx.error(where, f"expected an object, {got(mod)}")
        _check_keys(ctx, mod, (type_key, pos_key), where)
        code = _ccd_code(ctx, mod.get(type_key), f"{where}.{type_key}")
        pos = ctx.integer(ctx.required(mod, pos_key, f"{where}.{pos_key}"), f"{where}.{pos_key}",
                          1, length, "a position in the sequence")
        if any(m.position == pos for m in parsed):
            raise ctx.error(f"{where}.{pos_key}", f"position {pos} is modified twice")
        parsed.append(Modification(ccd_code=code, position=pos))
    return tuple(parsed)
