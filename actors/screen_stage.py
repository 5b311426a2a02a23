"""`foldray screen` as a source of batch-engine rows: one target x a ligand library.

The library is streamed by Ray Data (its readers per file type; never held in the
driver), each record becomes one engine row: the ligand checked (RDKit's reason is its
error row), the complex sized and its finished outputs skipped, exactly as the read stage
does for JSON jobs. The row carries only the ligand (`ScreenLigand`); the featurize stage
builds the complex from the target it holds once per actor, with the target's parsed MSAs
cached (`foldray.screening.TargetCache`). Everything after that is the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foldray.actors.predict_rows import PENDING, ScreenLigand, failed_row, result_row
from foldray.errors import InputError
from foldray.inputs.job import Job

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True)
class ScreenSettings:
    """The screen part of `BatchSettings.screen`: the parsed target and the library."""

    target: Job
    library: str
    stage: int = 2                          # the results' `stage` column (funnel: 1 first)
    ligand_ids: frozenset[str] | None = None   # only these ligands (funnel stage two)
    pocket: tuple[Any, ...] = ()            # ResidueRefs of the target: each ligand's pocket
    pocket_distance: float = 6.0


def screen_row(record: dict[str, Any], *, target: Job, out_url: str, max_tokens: int | None,
               overwrite: bool, stage: int = 2, pocket: tuple[Any, ...] = (),
               pocket_distance: float = 6.0) -> dict[str, Any]:
    """One library record -> one engine row (pending, skipped or error)."""
    from foldray.actors.prepare_stage import _check_done
    from foldray.chem.ccd import parse_user_ccd
    from foldray.inputs.size import check_token_budget, count_tokens
    from foldray.io.confidences import input_sha256
    from foldray.screening import LigandSpec, check_ligand, ligand_job

    ligand_id, smiles, ccd = record["ligand_id"], record.get("smiles"), record.get("ccd")
    base = result_row(PENDING, source=record.get("source") or "", name=ligand_id,
                      ligand_id=ligand_id, smiles=smiles if smiles is not None else ccd,
                      ligand_plddt=None, min_target_ligand_pae=None, seconds=None, stage=stage)
    try:
        if record.get("error"):
            raise InputError(record["error"], job=ligand_id)
        spec = LigandSpec(id=ligand_id, smiles=smiles, ccd=ccd, pocket=pocket,
                          pocket_distance=pocket_distance)
        check_ligand(spec)
        job = ligand_job(target, spec)
        base.update(safe_name=job.safe_name, input_sha256=input_sha256(job),
                    payload=ScreenLigand(spec))
        user_ccd = parse_user_ccd(job.user_ccd, source=job.source) if job.user_ccd else None
        check_token_budget(job, max_tokens, user_ccd)
        base["n_tokens"] = count_tokens(job, user_ccd)
        row = _check_done(job, base, out_url=out_url, overwrite=overwrite, stop_after="predict")
    except Exception as err:
        return failed_row(base, err, "read")
    if row["status"] == "skipped":   # exact values from an earlier run's table replace these
        row.update(_metrics_from_outputs(row["output"], job))
    return row


def _metrics_from_outputs(folder: str, job: Job) -> dict[str, float | None]:
    """Ligand pLDDT and target-ligand PAE of a finished ligand, from its top sample's
    confidences.json (the ligand is the last chain); None where it cannot be read."""
    import json

    import numpy as np

    from foldray.io import storage

    try:
        found = json.loads(storage.retry_io(lambda: storage.read_text(
            storage.join(folder, f"{job.safe_name}_confidences.json"))))
        ligand = job.chain_ids[-1]
        atoms = np.asarray(found["atom_chain_ids"]) == ligand
        tokens = np.asarray(found["token_chain_ids"]) == ligand
        pae = np.asarray(found["pae"], dtype=float)
        cross = np.concatenate([pae[~tokens][:, tokens].ravel(), pae[tokens][:, ~tokens].ravel()])
        return {"ligand_plddt": float(np.mean(np.asarray(found["atom_plddts"])[atoms])),
                "min_target_ligand_pae": float(cross.min()) if cross.size else None}
    except Exception:   # an older or partial folder: the metrics stay unknown
        return {}


def _fs_paths(files: list[str]) -> tuple[list[str], Any]:
    """Paths and filesystem for Ray's readers: URLs through fsspec (our S3 endpoint and
    credentials from AWS_* on each worker, which pyarrow's own S3 would ignore)."""
    from foldray.io import storage

    if not storage.is_url(files[0]):
        return files, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = storage.filesystem(files[0])
    return [storage.filesystem(url)[1] for url in files], PyFileSystem(FSSpecHandler(fs))


def _smi_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    from foldray.screen_library import smi_record

    found = smi_record(row["text"], row.get("path") or "")
    return [found] if found else []


def _sdf_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    from foldray.screen_library import sdf_records

    return sdf_records(row["bytes"], row.get("path") or "")


def _table_row(row: dict[str, Any], *, columns: tuple[str | None, str | None, str | None]
               ) -> dict[str, Any]:
    from foldray.screen_library import record

    id_col, smiles_col, ccd_col = columns
    return record(row.get(id_col) if id_col else None, row.get(smiles_col) if smiles_col else None,
                  row.get(ccd_col) if ccd_col else None, source=row.get("path") or "")


_RECORD_KEYS = ("ligand_id", "smiles", "ccd", "source", "error")


def _uniform(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row.get(key) for key in _RECORD_KEYS}


def library_dataset(by_suffix: dict[str, list[str]], remote: dict[str, Any]) -> ray.data.Dataset:
    """Every library record as {ligand_id, smiles, ccd, source, error}, read by Ray tasks."""
    import ray

    from foldray.screen_library import table_columns

    parts = []
    for suffix, files in sorted(by_suffix.items()):
        paths, fs = _fs_paths(files)
        common = {"filesystem": fs, "include_paths": True, **remote}
        if suffix == ".smi":
            part = ray.data.read_text(paths, **common).flat_map(_smi_rows, **remote)
        elif suffix == ".sdf":
            part = ray.data.read_binary_files(paths, **common).flat_map(_sdf_rows, **remote)
        else:
            reader = ray.data.read_csv if suffix == ".csv" else ray.data.read_parquet
            part = reader(paths, **common)
            names = [n for n in part.schema().names if n != "path"]
            columns = table_columns(names, source=files[0])
            part = part.map(_table_row, fn_kwargs={"columns": columns}, **remote)
        parts.append(part.map(_uniform, **remote))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def screen_dataset(screen: ScreenSettings, by_suffix: dict[str, list[str]], *, out_url: str,
                   max_tokens: int | None, overwrite: bool,
                   remote: dict[str, Any]) -> ray.data.Dataset:
    """The engine's read stage for a screen: library records -> engine rows, materialized."""
    records = library_dataset(by_suffix, remote)
    if screen.ligand_ids is not None:
        from ray.data.expressions import col

        records = records.filter(expr=col("ligand_id").is_in(sorted(screen.ligand_ids)))
    return records.map(screen_row, fn_kwargs={
        "target": screen.target, "out_url": out_url, "max_tokens": max_tokens,
        "overwrite": overwrite, "stage": screen.stage, "pocket": screen.pocket,
        "pocket_distance": screen.pocket_distance}, **remote).materialize()
