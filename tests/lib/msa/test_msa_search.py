"""jackhmmer / nhmmer over shards (SI 2.2) against the real protein test database."""

from __future__ import annotations

import dataclasses
import json

import pyhmmer
import pytest

from foldray.inputs.a3m import parse_a3m
from foldray.msa.config import DatabaseConfig
from foldray.msa.databases import load_shard
from foldray.msa.search import LocalShards, digital_query, iterative_search

from .conftest import DATA, a3m_accessions


@pytest.fixture(scope="module")
def unsharded(uniref_db, seq_102m):
    return iterative_search(seq_102m, uniref_db, LocalShards(1))


def test_102m_search_finds_the_globins_and_nothing_else(unsharded):
    """One iteration at E 1e-4 includes ~770 hits, all from the 102m (globin) MSAs."""
    hits = set(unsharded.evalues)
    assert 700 <= len(hits) <= 850, len(hits)
    globins = a3m_accessions("102m_A.a3m", "102m_A_paired.a3m") | {"pdb|102m_1"}
    others = a3m_accessions("1k1a_A.a3m", "1k1a_A_paired.a3m", "5zyh_A.a3m", "5zyh_A_paired.a3m")
    assert hits <= globins, sorted(hits - globins)[:10]
    assert not hits & (others - globins)
    assert max(unsharded.evalues.values()) <= 1e-4
    assert unsharded.iterations == 1


def test_sharded_in_process_search_gives_the_same_hits_and_evalues(unsharded, uniref_db, seq_102m):
    sharded = iterative_search(seq_102m, uniref_db, LocalShards(3))
    assert sharded.evalues.keys() == unsharded.evalues.keys()
    for name, evalue in unsharded.evalues.items():
        assert sharded.evalues[name] == pytest.approx(evalue, rel=1e-6)
    assert sharded.a3m == unsharded.a3m


def test_one_shard_loop_matches_pyhmmer_jackhmmer(uniref_db, seq_102m):
    """Our iteration loop (2 rounds) against pyhmmer's own jackhmmer with the same settings."""
    db = dataclasses.replace(uniref_db, iterations=2)
    ours = iterative_search(seq_102m, db, LocalShards(1))
    block = load_shard(db, 0, 1).sequences
    theirs = list(pyhmmer.hmmer.jackhmmer(
        digital_query(seq_102m, "protein"), block, max_iterations=2, cpus=1,
        E=db.e_value, incE=db.inc_e, domE=db.e_value, incdomE=db.inc_e, F1=db.f1, F2=db.f2,
        F3=db.f3, Z=len(block), domZ=len(block)))[0]
    expected = {hit.name: hit.evalue for hit in theirs.hits if hit.included}
    assert ours.iterations == theirs.iteration == 2
    assert ours.evalues.keys() == expected.keys()
    assert len(expected) > 770  # the second round widens the family
    for name, evalue in expected.items():
        assert ours.evalues[name] == pytest.approx(evalue, rel=1e-6)


def test_a3m_output_is_query_anchored_and_cropped(unsharded, uniref_db, seq_102m):
    a3m = parse_a3m(unsharded.a3m, "protein", source="search")
    assert a3m.query_letters == seq_102m
    assert a3m.width == len(seq_102m)
    assert a3m.depth >= len(unsharded.evalues)  # one row per included domain
    species = [s for s in a3m.species if s is not None]
    assert len(species) > 100  # UniRef100_<acc>_<taxid>/ headers keep their species
    cropped = iterative_search(seq_102m, dataclasses.replace(uniref_db, max_sequences=10), LocalShards(1))
    assert parse_a3m(cropped.a3m, "protein").depth == 11


def test_nhmmer_rna_search_sharded_equals_unsharded(tmp_path):
    """nhmmer path (SI: --watson, E 1e-3) on a small RNA database: the real 4GXY RNA, 40
    point-mutated copies of it (15 % substitutions) and 200 random decoys."""
    import random

    job = json.loads((DATA / "inputs" / "4gxy.json").read_text())
    rna = next(e["rna"]["sequence"] for e in job["sequences"] if "rna" in e)
    rng = random.Random(0)
    records = []
    for i in range(40):
        records.append((f"mut{i}", "".join(rng.choice("ACGU") if rng.random() < 0.15 else c for c in rna)))
    for i in range(200):
        records.append((f"decoy{i}", "".join(rng.choice("ACGU") for _ in range(rng.randint(80, 400)))))
    rng.shuffle(records)
    path = tmp_path / "rna.fasta"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    db = DatabaseConfig(name="rfam", url=str(path), tool="nhmmer", e_value=1e-3, inc_e=1e-3,
                        f1=0.02, f2=3e-3, f3=5e-5, f3_short=0.02)
    one = iterative_search(rna, db, LocalShards(1))
    three = iterative_search(rna, db, LocalShards(3))
    assert set(one.evalues) == {f"mut{i}" for i in range(40)}
    assert three.evalues.keys() == one.evalues.keys()
    for name, evalue in one.evalues.items():
        assert three.evalues[name] == pytest.approx(evalue, rel=1e-6)
    assert parse_a3m(one.a3m, "rna").depth >= 41
