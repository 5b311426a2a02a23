"""Filling jobs from the search: cache (no second search, resume), pairing, no-hit chains."""

from __future__ import annotations

import numpy as np
import pytest

from foldray.features.msa import ChainMsaInput, build_msa
from foldray.inputs.a3m import encode_letters, parse_a3m
from foldray.inputs.af3_json import parse_job
from foldray.inputs.af3_json_writer import job_to_af3_json
from foldray.inputs.job import Job, LigandChain, PolymerChain
from foldray.msa.cache import MsaCache
from foldray.msa.config import DatabaseConfig, MsaConfig
from foldray.msa.fill import ChainSearcher, NoHitsWarning, fill_jobs
from foldray.msa.search import LocalShards

from .conftest import NO_HIT_SEQUENCE, PROTEIN_DB


@pytest.fixture(scope="module")
def config() -> MsaConfig:
    """Main MSA from 'uniref90', pairing MSA from 'uniprot' (both the test database)."""
    return MsaConfig(databases=(DatabaseConfig(name="uniref90", url=str(PROTEIN_DB)),
                                DatabaseConfig(name="uniprot", url=str(PROTEIN_DB), role="paired")))


@pytest.fixture(scope="module")
def shards() -> LocalShards:
    return LocalShards(1)


def _job(name: str, *sequences: str) -> Job:
    chains = tuple(PolymerChain(mol_type="protein", ids=(chr(ord("A") + i),), sequence=s)
                   for i, s in enumerate(sequences))
    return Job(name=name, seeds=(1,), entities=chains + (LigandChain(ids=("Z",), ccd_codes=("HEM",)),))


@pytest.fixture(scope="module")
def complex_run(config, shards, seq_102m, seq_5zyh, tmp_path_factory):
    cache = MsaCache(str(tmp_path_factory.mktemp("cache")))
    searcher = ChainSearcher(config, shards, cache)
    jobs = [_job("globin_start", seq_102m, seq_5zyh), _job("globin", seq_102m)]
    return searcher, cache, jobs, fill_jobs(jobs, searcher)


def test_chains_are_searched_once_and_jobs_filled(complex_run, seq_102m):
    searcher, _, _, filled = complex_run
    assert searcher.counts.searched == 4  # 2 unique chains x 2 databases; 102m shared by both jobs
    for job in filled:
        for chain in job.entities:
            if isinstance(chain, PolymerChain):
                unpaired = parse_a3m(chain.unpaired_msa, "protein")
                assert unpaired.query_letters == chain.sequence and unpaired.depth > 100
                assert parse_a3m(chain.paired_msa, "protein").depth > 100
                assert chain.templates == ()
    # the rewritten job is valid AF3 JSON that reads back with the MSAs
    again = parse_job(job_to_af3_json(filled[1]))
    assert again.entities[0].unpaired_msa == filled[1].entities[0].unpaired_msa


def test_second_run_is_served_from_the_cache(complex_run, config, shards):
    _, cache, jobs, filled = complex_run
    calls_before = shards.calls
    again = ChainSearcher(config, shards, MsaCache(cache.url))
    refilled = fill_jobs(jobs, again)
    assert (again.counts.searched, again.counts.cached) == (0, 4)
    assert shards.calls == calls_before  # no shard was searched
    assert [job_to_af3_json(j) for j in refilled] == [job_to_af3_json(j) for j in filled]


def test_interrupted_run_resumes_from_the_cache(complex_run, config, shards, tmp_path):
    _, cache, jobs, _ = complex_run
    partial = MsaCache(str(tmp_path / "cache"))
    first = ChainSearcher(config, shards, partial)
    first.chain(jobs[1].entities[0].sequence, "protein")  # "interrupted" after one chain
    resumed = ChainSearcher(config, shards, MsaCache(partial.url))
    fill_jobs(jobs, resumed)
    assert (resumed.counts.cached, resumed.counts.searched) == (2, 2)


def test_multi_chain_job_pairs_rows_of_the_same_species(complex_run):
    """features.msa pairs the searched UniProt MSAs: each paired row joins one species."""
    _, _, _, filled = complex_run
    chains = [e for e in filled[0].entities if isinstance(e, PolymerChain)]
    inputs, paired = [], []
    for chain in chains:
        query = encode_letters(chain.sequence, "protein")
        paired.append(parse_a3m(chain.paired_msa, "protein"))
        inputs.append(ChainMsaInput(chain_id=chain.ids[0], entity_id=len(inputs) + 1, mol_type="protein",
                                    query=query, unpaired=parse_a3m(chain.unpaired_msa, "protein"),
                                    paired=paired[-1]))
    features = build_msa(inputs)
    assert features.n_paired_rows > 0
    width = inputs[0].query.shape[0]
    for row in features.msa[1:features.n_paired_rows + 1]:  # [L_total]
        species = []
        for a3m, part in zip(paired, (row[:width], row[width:]), strict=True):
            matches = np.flatnonzero((a3m.rows == part).all(axis=1))  # rows of this chain's MSA
            species.append({a3m.species[i] for i in matches} - {None})
        assert species[0] & species[1], species


def test_no_hit_chain_gets_a_single_sequence_msa_and_a_warning(config, shards):
    searcher = ChainSearcher(config, shards, None)
    with pytest.warns(NoHitsWarning, match="no hits"):
        msas = searcher.chain(NO_HIT_SEQUENCE, "protein")
    assert parse_a3m(msas.unpaired, "protein").depth == 1
    assert parse_a3m(msas.paired, "protein").depth == 1
