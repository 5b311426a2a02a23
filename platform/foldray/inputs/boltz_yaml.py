"""Boltz input YAML -> an AlphaFold 3 job object, then validated by `af3_json.parse_job`.

Boltz's schema (its docs/prediction.md), one job per file, named after the file:

    version: 1
    sequences:
      - protein: {id: A | [A, B], sequence: ..., msa: path.a3m | empty,
                  modifications: [{position: 5, ccd: SEP}], cyclic: false}
      - dna / rna: {id, sequence, modifications, cyclic}
      - ligand: {id, smiles: '...'} or {id, ccd: SAH}
    constraints:
      - bond: {atom1: [A, 12, SG], atom2: [C, 1, C1]}

Mapping: `msa: empty` is single-sequence mode (unpairedMsa and pairedMsa ""), a path becomes
`unpairedMsaPath` (read relative to the YAML file and inside the input roots, like any AF3
path), no msa leaves it to the MSA search; `bond` constraints become `bondedAtomPairs`; a
ligand's `ccd` may be one code or a list. Seeds are not part of Boltz's file (its CLI gives
them): the job gets seed 1 unless the file has `modelSeeds`.

Refused by name, never dropped silently: `pocket` and `contact` constraints, `templates`,
`properties` (affinity), `cyclic: true` and MSAs given as Boltz CSV files.
"""

from __future__ import annotations

from typing import Any

import yaml

from foldray.errors import InputError
from foldray.inputs.af3_json import DIALECT, got, parse_job, show
from foldray.inputs.job import Job, sanitize_name

_TOP_KEYS = ("version", "sequences", "constraints", "templates", "properties", "modelSeeds", "name")
_KINDS = ("protein", "dna", "rna", "ligand")
_POLYMER_KEYS = ("id", "sequence", "msa", "modifications", "cyclic")
_LIGAND_KEYS = ("id", "smiles", "ccd")
_UNSUPPORTED = {
    "templates": "Boltz templates are not supported; give templates in AF3 JSON, with their "
                 "query/template residue indices",
    "properties": "Boltz properties (affinity) are not supported: foldray predicts structures "
                  "and confidences only",
}
_UNSUPPORTED_CONSTRAINTS = {
    "pocket": "pocket constraints are not supported yet; predict without them",
    "contact": "contact constraints are not supported yet; predict without them",
}
MAX_YAML_BYTES = 16 << 20


def parse_boltz_yaml(text: str | bytes, *, source: str, allow_paths: bool = True,
                     any_path: bool = False) -> Job:
    """The job of one Boltz YAML file; problems are InputErrors naming the YAML field."""
    name = sanitize_name(_stem(source)) or "boltz_job"
    af3 = boltz_to_af3(load_yaml(text, source), source=source, name=name)
    return parse_job(af3, source=source, allow_paths=allow_paths, any_path=any_path)


def load_yaml(text: str | bytes, source: str) -> Any:
    """yaml.safe_load with every failure an InputError (no Python objects, no huge files)."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"larger than {MAX_YAML_BYTES >> 20} MiB", source=source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=source) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InputError(f"invalid YAML: {err.problem or err}", source=source, field=where) from None
    except (yaml.YAMLError, RecursionError) as err:
        raise InputError(f"invalid YAML: {type(err).__name__}", source=source) from None


def boltz_to_af3(data: Any, *, source: str, name: str) -> dict[str, Any]:
    """The AF3 JSON object of one Boltz job."""
    def error(field: str, message: str) -> InputError:
        return InputError(message, source=source, job=name, field=field)

    if not isinstance(data, dict):
        raise error("", f"expected a Boltz job (a mapping with 'sequences'), {got(data)}")
    for key in data:
        if key not in _TOP_KEYS:
            raise error(str(key)[:60], f"unknown key {show(key)} (allowed: {', '.join(_TOP_KEYS)})")
        if key in _UNSUPPORTED and data[key]:
            raise error(key, _UNSUPPORTED[key])
    version = data.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise error("version", f"unsupported Boltz schema version {show(version)} (supported: 1)")
    sequences = data.get("sequences")
    if not isinstance(sequences, list) or not sequences:
        raise error("sequences", f"expected a non-empty list of entities, {got(sequences)}")
    entities = [_entity(item, f"sequences[{i}]", error) for i, item in enumerate(sequences)]
    job: dict[str, Any] = {"dialect": DIALECT, "version": 3, "name": data.get("name", name),
                           "modelSeeds": data.get("modelSeeds", [1]), "sequences": entities}
    bonds = _constraints(data.get("constraints"), error)
    if bonds:
        job["bondedAtomPairs"] = bonds
    return job


def _entity(item: Any, field: str, error) -> dict[str, Any]:
    if not isinstance(item, dict) or len(item) != 1:
        raise error(field, f"expected one of {{{', '.join(_KINDS)}}}: {{...}}, {got(item)}")
    kind, body = next(iter(item.items()))
    if kind not in _KINDS:
        raise error(field, f"unknown entity type {show(kind)} (expected {', '.join(_KINDS)})")
    field = f"{field}.{kind}"
    if not isinstance(body, dict):
        raise error(field, f"expected a mapping, {got(body)}")
    allowed = _LIGAND_KEYS if kind == "ligand" else _POLYMER_KEYS
    for key in body:
        if key not in allowed:
            raise error(f"{field}.{str(key)[:60]}",
                        f"unknown key {show(key)} (allowed: {', '.join(allowed)})")
    ids = body.get("id")
    if ids is None:
        raise error(f"{field}.id", "missing")
    out: dict[str, Any] = {"id": ids}
    if kind == "ligand":
        if ("smiles" in body) == ("ccd" in body):
            raise error(field, "give exactly one of smiles or ccd")
        if "smiles" in body:
            out["smiles"] = body["smiles"]
        else:
            ccd = body["ccd"]
            out["ccdCodes"] = ccd if isinstance(ccd, list) else [ccd]
        return {"ligand": out}
    if body.get("cyclic") not in (None, False):
        raise error(f"{field}.cyclic", "cyclic polymers are not supported")
    out["sequence"] = body.get("sequence")
    mods = body.get("modifications")
    if mods is not None:
        if not isinstance(mods, list):
            raise error(f"{field}.modifications", f"expected a list, {got(mods)}")
        type_key, position_key = ("ptmType", "ptmPosition") if kind == "protein" else \
            ("modificationType", "basePosition")
        converted = []
        for j, mod in enumerate(mods):
            if not isinstance(mod, dict) or set(mod) != {"position", "ccd"}:
                raise error(f"{field}.modifications[{j}]", f"expected {{position: n, ccd: CODE}}, {got(mod)}")
            converted.append({type_key: mod["ccd"], position_key: mod["position"]})
        out["modifications"] = converted
    if "msa" in body:
        msa = body["msa"]
        if msa == "empty":
            out["unpairedMsa"], out["pairedMsa"] = "", ""
        elif not isinstance(msa, str) or not msa.strip():
            raise error(f"{field}.msa", f"expected an .a3m path or 'empty', {got(msa)}")
        elif msa.lower().endswith(".csv"):
            raise error(f"{field}.msa", "Boltz CSV MSAs are not supported; give an .a3m file")
        else:
            out["unpairedMsaPath"] = msa
            out["pairedMsa"] = ""
    return {kind: out}


def _constraints(constraints: Any, error) -> list:
    if constraints is None:
        return []
    if not isinstance(constraints, list):
        raise error("constraints", f"expected a list, {got(constraints)}")
    bonds = []
    for i, item in enumerate(constraints):
        field = f"constraints[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise error(field, f"expected one of {{bond, pocket, contact}}: {{...}}, {got(item)}")
        kind, body = next(iter(item.items()))
        if kind in _UNSUPPORTED_CONSTRAINTS:
            raise error(f"{field}.{kind}", _UNSUPPORTED_CONSTRAINTS[kind])
        if kind != "bond":
            raise error(field, f"unknown constraint {show(kind)} (expected bond, pocket or contact)")
        if not isinstance(body, dict) or set(body) != {"atom1", "atom2"}:
            raise error(f"{field}.bond",
                        f"expected {{atom1: [chain, residue, atom], atom2: [...]}}, {got(body)}")
        bonds.append([body["atom1"], body["atom2"]])
    return bonds


def _stem(source: str) -> str:
    base = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".yaml", ".yml"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base
