"""The SI 2.2 searches over database shards: jackhmmer (protein) and nhmmer (RNA) with pyhmmer.

`iterative_search` is HMMER's jackhmmer loop written out so that each iteration maps the
current profile over every shard (`ShardSearch.search`) and merges the hits:
build the profile (the query alone, then the query-anchored alignment of the included hits)
-> search all shards -> merge -> align the included hits to the profile -> repeat until
`iterations` or convergence (no new hits, alignment no larger). E-values use ``Z`` / ``domZ``
= the whole database, so 1 shard and N shards give the same hits and E-values; on 1 shard
it is `pyhmmer.hmmer.jackhmmer` (tested). nhmmer is the same loop with one iteration on a
`LongTargetsPipeline` (SI: --watson; Z = database residues).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pyhmmer import easel, plan7

from foldray.msa.a3m_out import hits_to_a3m
from foldray.msa.config import DatabaseConfig
from foldray.msa.databases import Shard, alphabet, load_shards

SHORT_RNA = 50  # SI: nhmmer --F3 0.02 for sequences shorter than 50 nucleotides


class ShardSearch(Protocol):
    """Maps one profile over every shard of a database (in-process, or Ray actors)."""

    def database_size(self, db: DatabaseConfig) -> tuple[int, int]:
        """(sequences, residues) of the whole database, summed over its shards."""

    def search(self, db: DatabaseConfig, hmm: plan7.HMM, z: float, short_query: bool,
               ) -> list[plan7.TopHits]:
        """One TopHits per shard, searched with `search_shard`."""


@dataclass(frozen=True)
class SearchResult:
    """One database search of one chain."""

    database: str
    a3m: str  # query first, then the included hits aligned to it (cropped to max_sequences)
    evalues: dict[str, float]  # included hit name -> sequence E-value (last iteration)
    iterations: int
    converged: bool


def search_z(db: DatabaseConfig, size: tuple[int, int]) -> float:
    """E-value search space: the config's -Z, else the whole database (sequences; nhmmer: residues)."""
    if db.z is not None:
        return float(db.z)
    return float(size[0] if db.tool == "jackhmmer" else size[1])


def search_shard(shard: Shard, db: DatabaseConfig, hmm: plan7.HMM, z: float,
                 short_query: bool = False) -> plan7.TopHits:
    """Search one shard with the database's SI flags; ``z`` is the whole database's size."""
    abc = shard.sequences.alphabet
    if db.tool == "jackhmmer":
        pipeline = plan7.Pipeline(abc, E=db.e_value, incE=db.inc_e, domE=db.e_value,
                                  incdomE=db.inc_e, F1=db.f1, F2=db.f2, F3=db.f3, Z=z, domZ=z)
    else:
        f3 = db.f3_short if short_query and db.f3_short is not None else db.f3
        pipeline = plan7.LongTargetsPipeline(abc, strand="watson", E=db.e_value, incE=db.inc_e,
                                             F1=db.f1, F2=db.f2, F3=f3, Z=z)
    return pipeline.search_hmm(hmm, shard.sequences)


def digital_query(sequence: str, mol_type: str, name: str = "query") -> easel.DigitalSequence:
    """The chain sequence as a digital pyhmmer sequence (RNA: T read as U)."""
    text = sequence.upper().replace("T", "U") if mol_type == "rna" else sequence.upper()
    return easel.TextSequence(name=name, sequence=text).digitize(alphabet(mol_type))


def iterative_search(sequence: str, db: DatabaseConfig, shards: ShardSearch) -> SearchResult:
    """jackhmmer (``db.iterations`` rounds) or nhmmer (one round) of one chain over all shards."""
    query = digital_query(sequence, db.mol_type)
    abc = query.alphabet
    background = plan7.Background(abc)
    # jackhmmer builds with the alignment's consensus (RF) columns: the profile keeps one node per
    # query residue in every round. nhmmer uses the default nucleotide builder.
    builder = plan7.Builder(abc, seed=42, architecture="hand") if db.tool == "jackhmmer" \
        else plan7.Builder(abc, seed=42)
    z = search_z(db, shards.database_size(db))
    short = db.tool == "nhmmer" and len(sequence) < SHORT_RNA
    rounds = db.iterations if db.tool == "jackhmmer" else 1
    ranking = easel.KeyHash()
    msa: easel.DigitalMSA | None = None
    hits: plan7.TopHits | None = None
    converged = False
    done = 0
    for done in range(1, rounds + 1):
        if msa is None:
            hmm, _, _ = builder.build(query, background)  # round 1: the query alone
            n_prev = 1
        else:
            hmm, _, _ = builder.build_msa(msa, background)  # then: the query-anchored alignment
            n_prev = len(msa.sequences)
        hits = merge_hits(shards.search(db, hmm, z, short))
        n_new = hits.compare_ranking(ranking)
        msa = hits.to_msa(abc, sequences=[query], traces=[plan7.Trace.from_sequence(query)],
                          all_consensus_cols=True, digitize=True)
        msa.name = f"{db.name}-i{done}"
        if n_new == 0 and len(msa.sequences) <= n_prev:
            converged = True
            break
    assert hits is not None
    evalues = {hit.name: hit.evalue for hit in hits if hit.included}
    a3m = hits_to_a3m(hits, query, sequence, max_sequences=db.max_sequences)
    return SearchResult(database=db.name, a3m=a3m, evalues=evalues, iterations=done,
                        converged=converged)


def merge_hits(per_shard: Sequence[plan7.TopHits]) -> plan7.TopHits:
    """Shard hits -> one TopHits sorted best first (Z was already the whole database)."""
    if not per_shard:
        raise ValueError("no shards were searched")
    merged = per_shard[0].merge(*per_shard[1:])
    merged.sort(by="key")
    return merged


class LocalShards:
    """`ShardSearch` in this process: each shard loaded once, on first use, and kept."""

    def __init__(self, n_shard: int = 1) -> None:
        self.n_shard = n_shard
        self.shards: dict[str, list[Shard]] = {}
        self.calls = 0  # shard searches run (for tests and benchmarks)

    def _load(self, db: DatabaseConfig) -> list[Shard]:
        if db.name not in self.shards:
            self.shards[db.name] = list(load_shards(db, tuple(range(self.n_shard)), self.n_shard).values())
        return self.shards[db.name]

    def database_size(self, db: DatabaseConfig) -> tuple[int, int]:
        shards = self._load(db)
        return sum(len(s.sequences) for s in shards), sum(s.n_residues for s in shards)

    def search(self, db: DatabaseConfig, hmm: plan7.HMM, z: float, short_query: bool,
               ) -> list[plan7.TopHits]:
        self.calls += len(self._load(db))
        return [search_shard(shard, db, hmm, z, short_query) for shard in self._load(db)]
