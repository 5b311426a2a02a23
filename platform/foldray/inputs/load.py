"""Find and read job inputs: AF3 JSON (one job or a list; AlphaFold Server and Protenix
lists too), JSONL, Boltz YAML, FASTA, mmCIF/PDB; files or folders, local paths or fsspec
URLs. Bad records come back as `InputError`s beside the good jobs, so
one broken file never hides the rest of a batch.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterator

from foldray.errors import InputError
from foldray.inputs.af3_json import load_json, parse_af3_json_lenient, parse_job
from foldray.inputs.af_server_json import is_server_job, parse_server_job
from foldray.inputs.boltz_yaml import parse_boltz_yaml
from foldray.inputs.fasta_input import FASTA_SUFFIXES, fasta_to_af3
from foldray.inputs.job import Job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.inputs.protenix_json import is_protenix_job, parse_protenix_job
from foldray.io import storage

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl",)
STRUCTURE_SUFFIXES = (".cif", ".mmcif", ".pdb", ".ent", ".cif.gz", ".mmcif.gz", ".pdb.gz")
YAML_SUFFIXES = (".yaml", ".yml")          # Boltz input files
INPUT_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + YAML_SUFFIXES + FASTA_SUFFIXES + STRUCTURE_SUFFIXES
MAX_DECOMPRESSED_BYTES = 1 << 30   # a gzip input may not inflate past this (gzip bombs)
MAX_DECOMPRESSED_ENV = "FOLDRAY_MAX_DECOMPRESSED_BYTES"
_CHUNK = 1 << 20


def max_decompressed_bytes() -> int:
    """The gzip cap: FOLDRAY_MAX_DECOMPRESSED_BYTES if set, else 1 GiB."""
    value = os.environ.get(MAX_DECOMPRESSED_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else MAX_DECOMPRESSED_BYTES


def gunzip(data: bytes, *, source: str, limit: int | None = None) -> bytes:
    """Decompress gzip data (all members) without ever holding more than `limit` bytes
    (default `max_decompressed_bytes()`); a bigger or broken stream is an InputError."""
    limit = limit or max_decompressed_bytes()
    out = bytearray()
    rest = data
    while rest:
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)   # gzip header and trailer
        pending = rest
        try:
            while pending and not inflate.eof:
                out += inflate.decompress(pending, _CHUNK)
                if len(out) > limit:
                    raise InputError(f"decompresses to more than {limit} bytes (the limit, "
                                     f"{MAX_DECOMPRESSED_ENV}); a gzip bomb or an input too big",
                                     source=source)
                pending = inflate.unconsumed_tail
        except zlib.error as err:
            raise InputError(f"not a valid gzip file: {err}", source=source) from None
        if not inflate.eof:
            raise InputError("not a valid gzip file: the stream is truncated", source=source)
        rest = inflate.unused_data.lstrip(b"\0")   # next member; zero padding is allowed
    return bytes(out)


def find_inputs(location: str) -> list[str]:
    """A file as itself; a folder/prefix as the input files under it, sorted."""
    fs, path = storage.filesystem(location)
    if fs.isdir(path):
        return list(storage.list_files(location, INPUT_SUFFIXES))
    if not fs.exists(path):
        raise InputError("no such file or folder", source=location)
    return [location]


def read_jobs(source: str, *, allow_paths: bool = True,
              max_decompressed: int | None = None) -> list[Job | InputError]:
    """Every job in one input file (or the errors that stand in for bad ones).

    A `.gz` file may inflate to `max_decompressed` bytes (default `max_decompressed_bytes()`).
    """
    try:
        data = storage.read_bytes(source)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        return [InputError(f"cannot read the file ({err.__class__.__name__})", source=source)]
    lower = source.lower()
    if lower.endswith(".gz"):
        try:
            data = gunzip(data, source=source, limit=max_decompressed)
        except InputError as err:
            return [err]
        lower = lower[:-3]
    if lower.endswith(JSONL_SUFFIXES):
        return _read_jsonl(data, source, allow_paths)
    if lower.endswith(YAML_SUFFIXES):
        try:
            return [parse_boltz_yaml(data, source=source, allow_paths=allow_paths)]
        except InputError as err:
            return [err]
    if lower.endswith(FASTA_SUFFIXES):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            return [InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=source)]
        try:
            return [parse_job(fasta_to_af3(text, source=source), source=source, allow_paths=allow_paths)]
        except InputError as err:
            return [err]
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
            record = load_json(line, source)
        except InputError as err:   # the line number locates it; the column is in no file
            results.append(InputError(err.message, source=source, field=f"line {number}"))
            continue
        try:
            if is_protenix_job(record):
                results.append(parse_protenix_job(record, source=source, index=None,
                                                  allow_paths=allow_paths))
            elif is_server_job(record, in_list=False):
                results.append(parse_server_job(record, source=source, index=None))
            else:
                results.append(parse_job(record, source=source, allow_paths=allow_paths))
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
            try:
                yield from read_jobs(path, allow_paths=allow_paths)
            except Exception as err:   # a bug, not bad input: still only this file's loss
                log.exception("reading %s failed", path)
                yield InputError(f"internal error while reading: {err.__class__.__name__}: "
                                 f"{str(err)[:200]}", source=path)
