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
      - pocket: {binder: L, contacts: [[A, 12], [A, 45]], max_distance: 6, force: false}
      - contact: {token1: [A, 30], token2: [L, C5], max_distance: 8}

Mapping: `msa: empty` is single-sequence mode (unpairedMsa and pairedMsa ""), a path becomes
`unpairedMsaPath` (read relative to the YAML file and inside the input roots, like any AF3
path), no msa leaves it to the MSA search; `bond` constraints become `bondedAtomPairs`,
`pocket` and `contact` ones foldray `restraints` (docs/restraints.md: a token is [chain,
residue number] or, on a ligand, [chain, atom name] = residue 1's atom; max_distance defaults
to Boltz's 6 Å; `force: true`, Boltz's steering potentials, is refused); a
ligand's `ccd` may be one code or a list. Seeds are not part of Boltz's file (its CLI gives
them): the job gets seed 1 unless the file has `modelSeeds`.

Refused by name, never dropped silently: `templates`,
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
BOLTZ_DEFAULT_DISTANCE = 6.0   # Å, Boltz's max_distance when a pocket / contact gives none
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
    bonds, restraints = _constraints(data.get("constraints"), error)
    if bonds:
        job["bondedAtomPairs"] = bonds
    if restraints:
        job["restraints"] = restraints
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


def _constraints(constraints: Any, error) -> tuple[list, list]:
    """(bondedAtomPairs, restraints) of Boltz `constraints`."""
    if constraints is None:
        return [], []
    if not isinstance(constraints, list):
        raise error("constraints", f"expected a list, {got(constraints)}")
    bonds: list = []
    restraints: list = []
    for i, item in enumerate(constraints):
        field = f"constraints[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise error(field, f"expected one of {{bond, pocket, contact}}: {{...}}, {got(item)}")
        kind, body = next(iter(item.items()))
        if kind in ("pocket", "contact"):
            restraints.append(_restraint(kind, body, f"{field}.{kind}", error))
            continue
        if kind != "bond":
            raise error(field, f"unknown constraint {show(kind)} (expected bond, pocket or contact)")
        if not isinstance(body, dict) or set(body) != {"atom1", "atom2"}:
            raise error(f"{field}.bond",
                        f"expected {{atom1: [chain, residue, atom], atom2: [...]}}, {got(body)}")
        bonds.append([body["atom1"], body["atom2"]])
    return bonds, restraints


def _restraint(kind: str, body: Any, field: str, error) -> dict[str, Any]:
    """A Boltz pocket / contact as a foldray restraint (ranges are checked by af3_json)."""
    keys = ("binder", "contacts", "max_distance", "force") if kind == "pocket" else \
        ("token1", "token2", "max_distance", "force")
    if not isinstance(body, dict):
        raise error(field, f"expected a mapping, {got(body)}")
    for key in body:
        if key not in keys:
            raise error(f"{field}.{str(key)[:60]}", f"unknown key {show(key)} (allowed: {', '.join(keys)})")
    if body.get("force"):
        raise error(f"{field}.force", "force: true (Boltz's steering potentials) is not supported; "
                                      "foldray conditions the model on the restraint only")
    distance = body.get("max_distance", BOLTZ_DEFAULT_DISTANCE)
    if kind == "pocket":
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            raise error(f"{field}.contacts",
                        f"expected a non-empty list of [chain, residue], {got(contacts)}")
        residues = [_token(c, f"{field}.contacts[{j}]", error) for j, c in enumerate(contacts)]
        return {"type": "pocket", "binder": body.get("binder"), "residues": residues,
                "maxDistance": distance}
    residues = [_token(body.get(k), f"{field}.{k}", error) for k in ("token1", "token2")]
    return {"type": "contact", "residues": residues, "maxDistance": distance}


def _token(token: Any, field: str, error) -> list:
    """Boltz [chain, residue number] or, on a ligand, [chain, atom name] -> [chain, n(, atom)]."""
    if not isinstance(token, list) or len(token) != 2:
        raise error(field, f"expected [chain, residue number or atom name], {got(token)}")
    chain, where = token
    return [chain, 1, where] if isinstance(where, str) else [chain, where]


def _stem(source: str) -> str:
    base = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".yaml", ".yml"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base
