"""Fill jobs' MSAs from the genetic search: AF3's data-pipeline-only mode (SI 2.2).

Per chain: every ``unpaired`` database of its molecule type is searched (or read from the
cache), the results are stacked in config order and deduplicated into the main MSA
(``unpairedMsa``); the ``paired`` (UniProt) result becomes ``pairedMsa`` for proteins, which
`foldray.features.msa` pairs by species at featurization (SI 2.3). A chain with no hits gets
the query alone and a `NoHitsWarning`. Chains that already carry an MSA are left alone.
With a `templates` section, protein chains then get templates searched with their main MSA
(SI 2.4), cached like the MSAs; without one, templates stay empty as in AF3's data
pipeline when no template search runs. A job's own ``maxTemplateDate`` overrides the
run's cutoff for its chains. Databases with `tool: mmseqs2` are searched with MMseqs2
(ColabFold's route) instead of HMMER, through an `MmseqsRunner`: in this process
(`LocalMmseqs`) or as Ray CPU tasks (foldray.actors.msa_stage.RayMmseqs), which
`ChainSearcher.prefetch` hands every MMseqs2 search of a job at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from foldray.inputs.job import Job, PolymerChain, TemplateInput
from foldray.msa.cache import MsaCache, cache_key
from foldray.msa.config import DatabaseConfig, MsaConfig
from foldray.msa.databases import database_identity
from foldray.msa.search import ShardSearch, iterative_search

SEARCHED_TYPES = ("protein", "rna")  # AF3 searches no DNA MSA


class NoHitsWarning(UserWarning):
    """A chain found no homologs: it gets a single-sequence MSA."""


@dataclass(frozen=True)
class ChainMsas:
    unpaired: str  # a3m, query first
    paired: str | None  # a3m of the paired database (protein), None without one
    templates: tuple[TemplateInput, ...] | None = None   # None: no template search configured


@dataclass
class SearchCounts:
    """What a run did: database searches run vs. served from the cache."""

    searched: int = 0
    cached: int = 0


class MmseqsRunner(Protocol):
    """Runs MMseqs2 searches: one a3m per (chain sequence, database), in request order."""

    def run(self, requests: Sequence[tuple[str, DatabaseConfig]], shards: int) -> list[str]:
        """`mmseqs_search` of every request (`shards`: MMseqs2's own exact target split)."""


class LocalMmseqs:
    """`MmseqsRunner` in this process, one search after the other."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, requests: Sequence[tuple[str, DatabaseConfig]], shards: int) -> list[str]:
        self.calls += len(requests)
        return [mmseqs_search(sequence, db, shards) for sequence, db in requests]


class ChainSearcher:
    """Searches chains against the config's databases through the cache."""

    def __init__(self, config: MsaConfig, shards: ShardSearch, cache: MsaCache | None,
                 mmseqs: MmseqsRunner | None = None) -> None:
        self.config, self.shards, self.cache = config, shards, cache
        self.mmseqs = mmseqs if mmseqs is not None else LocalMmseqs()
        self.counts = SearchCounts()
        self._identity = {db.name: database_identity(db) for db in config.databases}
        self._prefetched: dict[str, str] = {}   # cache key -> a3m, until `database_a3m` takes it

    def prefetch(self, chains: Iterable[tuple[str, str]]) -> None:
        """Run the MMseqs2 searches of these (sequence, mol_type) chains that the cache does
        not hold, all in one `MmseqsRunner.run` (Ray runs them at once); `chain` then reads
        them. Counted here, as searched or cached, once each."""
        todo: dict[str, tuple[str, DatabaseConfig]] = {}
        for sequence, mol_type in chains:
            for db in self.config.for_mol_type(mol_type):
                key = cache_key(sequence, mol_type, db, self._identity[db.name])
                if db.tool != "mmseqs2" or key in todo or key in self._prefetched:
                    continue
                if self.cache is not None and (text := self.cache.get(key)) is not None:
                    self.counts.cached += 1
                    self._prefetched[key] = text
                else:
                    todo[key] = (sequence.upper(), db)
        if not todo:
            return
        for key, a3m in zip(todo, self.mmseqs.run(list(todo.values()), self.config.shards), strict=True):
            self.counts.searched += 1
            if self.cache is not None:
                self.cache.put(key, a3m)
            self._prefetched[key] = a3m

    def database_a3m(self, sequence: str, mol_type: str, db: DatabaseConfig) -> str:
        key = cache_key(sequence, mol_type, db, self._identity[db.name])
        if (text := self._prefetched.pop(key, None)) is not None:
            return text
        if self.cache is not None and (text := self.cache.get(key)) is not None:
            self.counts.cached += 1
            return text
        if db.tool == "mmseqs2":
            (a3m,) = self.mmseqs.run([(sequence.upper(), db)], self.config.shards)
        else:
            a3m = iterative_search(sequence, db, self.shards).a3m
        self.counts.searched += 1
        if self.cache is not None:
            self.cache.put(key, a3m)
        return a3m

    def chain(self, sequence: str, mol_type: str, max_template_date: str | None = None) -> ChainMsas:
        """The chain's MSAs (and templates, searched with the cutoff `max_template_date`
        when given, else the run's)."""
        dbs = self.config.for_mol_type(mol_type)
        unpaired = [self.database_a3m(sequence, mol_type, db) for db in dbs if db.role == "unpaired"]
        paired = [self.database_a3m(sequence, mol_type, db) for db in dbs if db.role == "paired"]
        main = stack_a3m(sequence, unpaired)
        if main.count(">") == 1 and all(text.count(">") == 1 for text in paired):
            warnings.warn(f"{mol_type} chain {sequence[:20]}... ({len(sequence)} residues) has no "
                          f"hits in {[db.name for db in dbs]}: single-sequence MSA",
                          NoHitsWarning, stacklevel=2)
        templates = self.templates(sequence, main, max_template_date) if mol_type == "protein" else None
        return ChainMsas(unpaired=main, paired=paired[0] if paired and mol_type == "protein" else None,
                         templates=templates)

    def templates(self, sequence: str, msa: str,
                  max_template_date: str | None = None) -> tuple[TemplateInput, ...] | None:
        """SI 2.4 templates of one protein chain (None without a `templates` section); a
        job's `max_template_date` replaces the run's cutoff, and is part of the cache key."""
        config = self.config.templates
        if config is None:
            return None
        from foldray.msa.template_search import search_templates

        if max_template_date is not None:
            config = dataclasses.replace(config, max_template_date=str(max_template_date))
        settings = config.settings()
        key = "templates-" + hashlib.sha256(json.dumps(
            [sequence, dataclasses.asdict(config), msa], sort_keys=True, default=str).encode()).hexdigest()
        if self.cache is not None and (text := self.cache.get(key)) is not None:
            return tuple(TemplateInput(mmcif=t["mmcif"], query_indices=tuple(t["query"]),
                                       template_indices=tuple(t["template"])) for t in json.loads(text))
        found = search_templates(sequence, msa, settings)
        if self.cache is not None:
            self.cache.put(key, json.dumps([{"mmcif": t.mmcif, "query": list(t.query_indices),
                                             "template": list(t.template_indices)} for t in found]))
        return found


def mmseqs_search(sequence: str, db: DatabaseConfig, shards: int) -> str:
    """One MMseqs2 search of `db` (a local copy of a remote database is made once per process);
    `shards` becomes MMseqs2's own target split, which keeps results exact (a search per
    FASTA shard would not be: MMseqs2's E-values scale with the searched database's size,
    and its profile iterations would each see one shard's hits)."""
    from foldray.msa.mmseqs import search_shard

    settings = dataclasses.replace(db.mmseqs, split=shards if shards > 1 else db.mmseqs.split)
    a3m = search_shard({"query": sequence}, _local_database(db.url), settings)["query"]
    if db.max_sequences is not None:
        lines = a3m.splitlines()
        a3m = "\n".join(lines[: 2 * (db.max_sequences + 1)]) + "\n"
    return a3m


_LOCAL_COPIES: dict[str, str] = {}


def _local_database(url: str) -> str:
    """A path mmseqs can read: the file itself, or a cached local copy of a remote URL."""
    from foldray.io import storage

    if not storage.is_url(url) or url.startswith("file://"):
        return url.removeprefix("file://")
    if url not in _LOCAL_COPIES:
        import tempfile

        suffix = ".fasta.gz" if url.endswith(".gz") else ".fasta"
        with tempfile.NamedTemporaryFile(prefix="foldray-mmseqs-db-", suffix=suffix, delete=False) as handle:
            handle.write(storage.read_bytes(url))
        _LOCAL_COPIES[url] = handle.name
    return _LOCAL_COPIES[url]


def _records(a3m: str) -> list[tuple[str, str]]:
    """(header, aligned row) pairs of a3m text written by `hits_to_a3m` (one line per row)."""
    lines = [line for line in a3m.splitlines() if line]
    return [(lines[i][1:], lines[i + 1]) for i in range(0, len(lines) - 1, 2)]


def stack_a3m(sequence: str, texts: Iterable[str]) -> str:
    """The main MSA: query, then each database's hits in order, duplicates dropped (SI 2.2)."""
    out = [">query", sequence.upper()]
    seen = {sequence.upper()}
    for text in texts:
        for header, row in _records(text)[1:]:
            key = "".join(c for c in row if not c.islower())  # aligned residues, insertions ignored
            if key not in seen:
                seen.add(key)
                out += [f">{header}", row]
    return "\n".join(out) + "\n"


def chains_to_search(jobs: Iterable[Job]) -> list[tuple[str, str]]:
    """Unique (sequence, mol_type) of protein/RNA chains without a given MSA, in job order."""
    found: dict[tuple[str, str], None] = {}
    for job in jobs:
        for entity in job.entities:
            if isinstance(entity, PolymerChain) and _needs_search(entity):
                found.setdefault((entity.sequence.upper(), entity.mol_type), None)
    return list(found)


def _needs_search(chain: PolymerChain) -> bool:
    return chain.mol_type in SEARCHED_TYPES and chain.unpaired_msa is None


def fill_job(job: Job, msas: Callable[[str, str, str | None], ChainMsas]) -> Job:
    """The job with ``unpairedMsa`` / ``pairedMsa`` set for every chain that had none;
    `msas(sequence, mol_type, job.max_template_date)` gives a chain's."""
    entities = []
    for entity in job.entities:
        if isinstance(entity, PolymerChain) and _needs_search(entity):
            found = msas(entity.sequence.upper(), entity.mol_type, job.max_template_date)
            changes = {"unpaired_msa": found.unpaired}
            if entity.mol_type == "protein":
                # AF3 data pipeline: pairedMsa "" when there is nothing to pair; no template search.
                changes["paired_msa"] = entity.paired_msa if entity.paired_msa is not None \
                    else (found.paired or "")
                if entity.templates is None:
                    changes["templates"] = found.templates if found.templates is not None else ()
            entity = dataclasses.replace(entity, **changes)
        entities.append(entity)
    return dataclasses.replace(job, entities=tuple(entities))


def fill_jobs(jobs: list[Job], searcher: ChainSearcher,
              on_chain: Callable[[], None] | None = None) -> list[Job]:
    """Search every chain that needs it once (chains shared by jobs too; per template cutoff
    when jobs set their own), then fill all jobs."""
    found: dict[tuple[str, str, str | None], ChainMsas] = {}
    done: set[tuple[str, str]] = set()
    for sequence, mol_type, date in _chains_and_dates(jobs):
        found[(sequence, mol_type, date)] = searcher.chain(sequence, mol_type, date)
        if on_chain is not None and (sequence, mol_type) not in done:
            on_chain()                      # progress counts chains, as chains_to_search does
        done.add((sequence, mol_type))
    return [fill_job(job, lambda *chain: found[chain]) for job in jobs]


def _chains_and_dates(jobs: Iterable[Job]) -> list[tuple[str, str, str | None]]:
    """`chains_to_search`, once per distinct job template cutoff of each chain."""
    found: dict[tuple[str, str, str | None], None] = {}
    for job in jobs:
        for sequence, mol_type in chains_to_search([job]):
            found.setdefault((sequence, mol_type, job.max_template_date), None)
    return list(found)
