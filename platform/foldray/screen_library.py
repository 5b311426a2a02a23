"""Ligand libraries of `foldray screen`: which files, and what one record of each means.

A library is a .smi / .csv / .parquet / .sdf file, or a folder / prefix holding such files
(local or any fsspec URL). Records become `{"ligand_id", "smiles", "ccd", "source"}` dicts;
the Ray side (`foldray.actors.screen_stage`) streams the files, this module only parses.
.smi lines are `SMILES [ID]` (RDKit's SmilesWriter layout, whitespace separated); tables
need a SMILES (or CCD) column and take the id from the first id-like column; SDF records
are converted to SMILES by RDKit (bond orders and charges as drawn), named by their title.
A record without an id is named after its SMILES' hash, so reruns find the same folder.
"""

from __future__ import annotations

import hashlib
from typing import Any

from foldray.errors import InputError
from foldray.io import storage

LIBRARY_SUFFIXES = (".smi", ".smiles", ".csv", ".parquet", ".sdf")
ID_COLUMNS = ("ligand_id", "id", "name", "title", "compound_id", "chembl_id")
SMILES_COLUMNS = ("smiles", "canonical_smiles", "SMILES")
CCD_COLUMNS = ("ccd", "ccd_code")


def list_library(location: str) -> dict[str, list[str]]:
    """Library files by suffix (".smi" also stands for ".smiles"); an InputError when none."""
    if location.lower().endswith(LIBRARY_SUFFIXES):
        if not storage.exists(location):
            raise InputError("library file not found", source=location)
        files = [location]
    else:
        try:
            files = list(storage.list_files(location, LIBRARY_SUFFIXES))
        except FileNotFoundError:
            files = []
        if not files:
            raise InputError(f"no library files ({', '.join(LIBRARY_SUFFIXES)}) found",
                             source=location)
    by_suffix: dict[str, list[str]] = {}
    for url in files:
        suffix = "." + url.rsplit(".", 1)[-1].lower()
        by_suffix.setdefault(".smi" if suffix == ".smiles" else suffix, []).append(url)
    return by_suffix


def default_id(smiles: str | None, ccd: str | None) -> str:
    return "lig_" + hashlib.sha256(f"{smiles}|{ccd}".encode()).hexdigest()[:12]


def record(ligand_id: Any, smiles: Any, ccd: Any = None, source: str = "") -> dict[str, Any]:
    """One library record; blank values are None, ids are strings."""
    smiles = str(smiles).strip() if smiles not in (None, "") else None
    ccd = str(ccd).strip() if ccd not in (None, "") else None
    text = "" if ligand_id is None else str(ligand_id).strip()
    return {"ligand_id": text or default_id(smiles, ccd), "smiles": smiles, "ccd": ccd,
            "source": source}


def smi_record(line: str, source: str = "") -> dict[str, Any] | None:
    """`SMILES [ID ...]` -> a record; blank lines, comments and a `smiles` header -> None."""
    parts = line.split(None, 1)
    if not parts or parts[0].startswith("#") or parts[0].lower() == "smiles":
        return None
    return record(parts[1].strip() if len(parts) > 1 else None, parts[0], source=source)


def table_columns(names: list[str], source: str = "") -> tuple[str | None, str | None, str | None]:
    """(id, smiles, ccd) column names of a CSV / Parquet library (case-insensitive)."""
    lower = {name.lower(): name for name in names}

    def pick(options: tuple[str, ...]) -> str | None:
        return next((lower[o.lower()] for o in options if o.lower() in lower), None)

    smiles, ccd = pick(SMILES_COLUMNS), pick(CCD_COLUMNS)
    if smiles is None and ccd is None:
        raise InputError(f"no SMILES column (one of {', '.join(SMILES_COLUMNS[:2])}) or CCD column "
                         f"(ccd); columns: {', '.join(names[:20])}", source=source)
    return pick(ID_COLUMNS), smiles, ccd


def sdf_records(data: bytes, source: str = "") -> list[dict[str, Any]]:
    """Every record of an SDF file; a record RDKit cannot read gets smiles None and its
    reason in `error`, so it becomes that ligand's error row."""
    import io

    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    rows = []
    for index, mol in enumerate(Chem.ForwardSDMolSupplier(io.BytesIO(data), removeHs=False)):
        if mol is None:
            rows.append(record(f"{stem}_{index + 1}", None, source=source)
                        | {"error": f"SDF record {index + 1}: RDKit cannot read it"})
            continue
        name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        rows.append(record(name or f"{stem}_{index + 1}", Chem.MolToSmiles(Chem.RemoveHs(mol)),
                           source=source))
    return rows
