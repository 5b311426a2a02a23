"""Sequence databases for the genetic search: FASTA (optionally gzip) on disk or object storage.

A database is split into ``n_shard`` shards by sequence index (shard i: indices i mod n); a
worker streams the file once, keeps only its shards (`load_shards`) and reuses them for every
query. Shard sizes add up to the whole
database, which sets the E-value search space ``Z`` so sharded and unsharded searches agree.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import BinaryIO

from pyhmmer import easel

from foldray.errors import InputError
from foldray.io import storage
from foldray.msa.config import DatabaseConfig, MsaConfig


def alphabet(mol_type: str) -> easel.Alphabet:
    """Protein databases use the amino alphabet; RNA databases (nhmmer) the RNA one (T reads as U)."""
    return easel.Alphabet.amino() if mol_type == "protein" else easel.Alphabet.rna()


def check_databases(config: MsaConfig) -> None:
    """Fail at start, naming the database, when one is missing, unreadable or not FASTA (or
    its tool is not installed), and when the template search's database or mirror is missing."""
    if any(db.tool == "mmseqs2" for db in config.databases):
        from foldray.msa.mmseqs import MmseqsMissing, require_mmseqs

        for db in config.databases:
            if db.tool == "mmseqs2":
                try:
                    require_mmseqs(db.mmseqs.binary)
                except MmseqsMissing as err:
                    raise InputError(str(err), source=db.url, field=db.name) from None
    if config.templates is not None:
        from foldray.msa.template_search import check_sources

        try:
            check_sources(config.templates.settings())
        except FileNotFoundError as err:
            raise InputError(str(err), field="templates") from None
    for db in config.databases:
        where = f"database {db.name!r} ({db.url})"
        try:
            fs, path = storage.filesystem(db.url)
            if not fs.exists(path):
                raise InputError(f"{where} not found", source=db.url, field=db.name)
            with fs.open(path, "rb") as handle:
                head = handle.read(2)
                if head == b"\x1f\x8b":
                    handle.seek(0)
                    head = gzip.GzipFile(fileobj=handle).read(1)
        except InputError:
            raise
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise InputError(f"{where} cannot be read: {err.__class__.__name__}: {err}",
                             source=db.url, field=db.name) from None
        if not head.startswith(b">"):
            raise InputError(f"{where} is not FASTA (expected '>' first, got {head[:1]!r})",
                             source=db.url, field=db.name)


def database_identity(db: DatabaseConfig) -> str:
    """What names this database's content for the cache: its release tag, else URL + size + mtime."""
    if db.identity:
        return db.identity
    fs, path = storage.filesystem(db.url)
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{db.url}|{info.get('size')}|{stamp}"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of one database, loaded and digitised."""

    database: str
    index: int
    count: int
    sequences: easel.DigitalSequenceBlock

    @property
    def n_residues(self) -> int:
        return sum(len(seq) for seq in self.sequences)


def _open_fasta(url: str) -> BinaryIO:
    """A binary stream of the FASTA text, gunzipped on the fly when the file is gzip."""
    fs, path = storage.filesystem(url)
    handle = fs.open(path, "rb")
    if handle.read(2) == b"\x1f\x8b":
        handle.seek(0)
        return gzip.GzipFile(fileobj=handle)  # type: ignore[return-value]
    handle.seek(0)
    return handle


def load_shards(db: DatabaseConfig, indices: tuple[int, ...], count: int) -> dict[int, Shard]:
    """Shards ``indices`` of ``count``: shard i holds the sequences whose index is i mod count.

    One streaming pass over the file; only the wanted shards are kept in memory, so a worker
    needs 1/count of a large database, not all of it.
    """
    if not indices or not all(0 <= i < count for i in indices):
        raise ValueError(f"shards {indices} of {count}")
    abc = alphabet(db.mol_type)
    kept: dict[int, list[easel.DigitalSequence]] = {i: [] for i in indices}
    try:
        with _open_fasta(db.url) as stream, easel.SequenceFile(stream, format="fasta", digital=True,
                                                               alphabet=abc) as handle:
            for n, sequence in enumerate(handle):
                if (bucket := kept.get(n % count)) is not None:
                    bucket.append(sequence)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"database {db.name!r} cannot be read as FASTA: {err}", source=db.url,
                         field=db.name) from None
    return {i: Shard(database=db.name, index=i, count=count,
                     sequences=easel.DigitalSequenceBlock(abc, kept[i])) for i in indices}


def load_shard(db: DatabaseConfig, index: int, count: int) -> Shard:
    """One shard (sequences whose index is ``index`` mod ``count``)."""
    return load_shards(db, (index,), count)[index]
