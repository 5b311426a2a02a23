"""Find and read job inputs: AF3 JSON (one job or a list), JSONL, mmCIF/PDB; files or folders,
local paths or fsspec URLs. Bad records come back as `InputError`s beside the good jobs, so
one broken file never hides the rest of a batch.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

from foldray.errors import InputError
from foldray.inputs.af3_json import parse_af3_json_lenient, parse_job
from foldray.inputs.af_server_json import is_server_job, parse_server_job
from foldray.inputs.job import Job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.io import storage

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl",)
STRUCTURE_SUFFIXES = (".cif", ".mmcif", ".pdb", ".ent", ".cif.gz", ".mmcif.gz", ".pdb.gz")
INPUT_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + STRUCTURE_SUFFIXES


def find_inputs(location: str) -> list[str]:
    """A file as itself; a folder/prefix as the input files under it, sorted."""
    fs, path = storage.filesystem(location)
    if fs.isdir(path):
        return list(storage.list_files(location, INPUT_SUFFIXES))
    if not fs.exists(path):
        raise InputError("no such file or folder", source=location)
    return [location]


def read_jobs(source: str, *, allow_paths: bool = True) -> list[Job | InputError]:
    """Every job in one input file (or the errors that stand in for bad ones)."""
    try:
        data = storage.read_bytes(source)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        return [InputError(f"cannot read the file ({err.__class__.__name__})", source=source)]
    lower = source.lower()
    if lower.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            return [InputError(f"not a valid gzip file: {err}", source=source)]
        lower = lower[:-3]
    if lower.endswith(JSONL_SUFFIXES):
        return _read_jsonl(data, source, allow_paths)
    if lower.endswith(tuple(s for s in STRUCTURE_SUFFIXES if not s.endswith(".gz"))):
        try:
            return [job_from_structure_file(data, source=source)]
        except InputError as err:
            return [err]
    return parse_af3_json_lenient(data, source=source, allow_paths=allow_paths)


def _read_jsonl(data: bytes, source: str, allow_paths: bool) -> list[Job | InputError]:
    results: list[Job | InputError] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if is_server_job(record, in_list=False):
                results.append(parse_server_job(record, source=source, index=None))
            else:
                results.append(parse_job(record, source=source, allow_paths=allow_paths))
        except json.JSONDecodeError as err:
            results.append(InputError(f"invalid JSON: {err.msg}", source=source,
                                      field=f"line {number}"))
        except InputError as err:
            results.append(err if err.job else err.located(field_prefix=f"line {number}"))
    return results


def iter_jobs(locations: list[str], *, allow_paths: bool = True) -> Iterator[Job | InputError]:
    """Jobs from many files or folders, in a stable order."""
    for location in locations:
        try:
            files = find_inputs(location)
        except InputError as err:
            yield err
            continue
        if not files:
            yield InputError(f"no input files ({', '.join(INPUT_SUFFIXES)}) found", source=location)
        for path in files:
            yield from read_jobs(path, allow_paths=allow_paths)
