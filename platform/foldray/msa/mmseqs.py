"""MMseqs2 MSAs (the ColabFold route): many times faster than jackhmmer on large databases.

The `mmseqs` binary does the work (Debian/Ubuntu package `mmseqs2`, conda `mmseqs2`, or a
release from github.com/soedinglab/MMseqs2); `require_mmseqs` checks for it at start and
says how to install it. One search per database shard, ColabFold's settings for a plain
sequence database: `search` with 3 profile iterations (`--num-iterations 3`, sensitivity
`-s 8`, `-e 0.1`, `--max-seqs 10000`, alignment backtraces `-a`), then `result2msa` to
a3m (`--msa-format-mode 6`) with ColabFold's MSA filter (`--filter-msa 1 --filter-min-enable
1000 --diff 3000 --qid 0.0,0.2,0.4,0.6,0.8,1.0 --qsc 0 --max-seq-id 0.95`). Shards give one
a3m each; `merge_a3m` keeps the query once and every other row once (first shard first),
like the jackhmmer path's merge.

Note for users of released AF3-family weights: they were trained with jackhmmer/HMMER
MSAs (AF3 issue #329); MMseqs2 finds fewer remote homologs per chain on small databases,
so expect somewhat different (usually slightly lower) confidence on hard targets.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = ("install MMseqs2: `apt-get install mmseqs2` (Debian/Ubuntu), `conda install -c "
                "conda-forge -c bioconda mmseqs2`, or a static binary from "
                "https://github.com/soedinglab/MMseqs2/releases; or set the path with `binary:`")


class MmseqsMissing(RuntimeError):
    """The mmseqs binary is not installed (the message says how to get it)."""


@dataclass(frozen=True, kw_only=True)
class MmseqsSettings:
    """ColabFold's search settings for a sequence database (its `search.py` defaults)."""

    binary: str = "mmseqs"
    sensitivity: float = 8.0
    num_iterations: int = 3
    evalue: float = 0.1
    max_seqs: int = 10000
    qid: str = "0.0,0.2,0.4,0.6,0.8,1.0"
    max_seq_id: float = 0.95
    diff: int = 3000
    filter_min_enable: int = 1000     # filter only MSAs larger than this
    threads: int = 1
    split: int = 0                    # target database chunks searched in turn (0: MMseqs2 decides)


def require_mmseqs(binary: str = "mmseqs") -> str:
    """The binary's resolved path, or MmseqsMissing naming how to install it."""
    found = shutil.which(binary)
    if found is None:
        raise MmseqsMissing(f"the MMseqs2 binary {binary!r} was not found on PATH; {INSTALL_HINT}")
    return found


def search_shard(queries: Mapping[str, str], database_fasta: str | Path, settings: MmseqsSettings,
                 workdir: str | Path | None = None) -> dict[str, str]:
    """query name -> a3m text (query first) for one local FASTA shard."""
    binary = require_mmseqs(settings.binary)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="mmseqs-") as tmp:
        root = Path(tmp)
        query_fasta = root / "query.fasta"
        names = list(queries)
        query_fasta.write_text("".join(f">q{i}\n{queries[name]}\n" for i, name in enumerate(names)))

        def run(*args: str) -> None:
            result = subprocess.run([binary, *args], capture_output=True, text=True)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"mmseqs {args[0]} failed (exit {result.returncode}): {' | '.join(tail)}")

        threads = ["--threads", str(settings.threads)]
        run("createdb", str(query_fasta), str(root / "qdb"), "-v", "1")
        run("createdb", str(database_fasta), str(root / "db"), "-v", "1")
        run("search", str(root / "qdb"), str(root / "db"), str(root / "res"), str(root / "tmp"),
            "--num-iterations", str(settings.num_iterations), "-s", str(settings.sensitivity),
            "-e", str(settings.evalue), "--max-seqs", str(settings.max_seqs), "-a",
            "--split", str(settings.split), "--split-mode", "0" if settings.split > 1 else "2",
            "-v", "1", *threads)
        run("result2msa", str(root / "qdb"), str(root / "db"), str(root / "res"), str(root / "msa"),
            "--msa-format-mode", "6", "--filter-msa", "1",
            "--filter-min-enable", str(settings.filter_min_enable),
            "--diff", str(settings.diff), "--qid", settings.qid, "--qsc", "0",
            "--max-seq-id", str(settings.max_seq_id), "-v", "1", *threads)
        run("unpackdb", str(root / "msa"), str(root / "out"), "--unpack-name-mode", "0", "-v", "1")
        found: dict[str, str] = {}
        for index, name in enumerate(names):
            path = root / "out" / str(index)
            text = path.read_text().replace("\x00", "") if path.exists() else ""
            found[name] = _with_query(text, queries[name])
        return found


def _with_query(a3m: str, query: str) -> str:
    """result2msa names the query row by its database key; make it `>query` + the sequence
    (and give a query with no hits its one-row MSA)."""
    rows = _records(a3m)
    body = [(header, seq) for header, seq in rows[1:]] if rows and rows[0][1].upper() == query else rows
    lines = [">query", query] + [line for header, seq in body for line in (f">{header}", seq)]
    return "\n".join(lines) + "\n"


def _records(a3m: str) -> list[tuple[str, str]]:
    records: list[tuple[str, str]] = []
    header, chunks = None, []
    for line in a3m.splitlines():
        if line.startswith(">"):
            if header is not None:
                records.append((header, "".join(chunks)))
            header, chunks = line[1:].strip(), []
        elif line.strip():
            chunks.append(line.strip())
    if header is not None:
        records.append((header, "".join(chunks)))
    return records


def merge_a3m(parts: Sequence[str]) -> str:
    """One a3m from per-shard a3ms of the same query: the query once, then each distinct
    aligned row once, in shard order."""
    seen: set[str] = set()
    query_header, query, rows = None, None, []
    for part in parts:
        records = _records(part)
        if not records:
            continue
        if query is None:
            query_header, query = records[0]
        for header, seq in records[1:]:
            if seq not in seen:
                seen.add(seq)
                rows.append((header, seq))
    if query is None:
        return ""
    return "\n".join(line for header, seq in [(query_header, query), *rows]
                     for line in (f">{header}", seq)) + "\n"

