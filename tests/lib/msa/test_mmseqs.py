"""MMseqs2 MSAs: run when the `mmseqs` binary is installed (.ci/run installs the Debian
package where it can), with the shared sequence database and a real query."""

from __future__ import annotations

import shutil

import pytest

from foldray.msa.mmseqs import MmseqsMissing, MmseqsSettings, merge_a3m, require_mmseqs, search_shard
from tests.data_paths import MSAS, SEQDB

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None,
                                  reason="the mmseqs binary is not installed (apt-get install mmseqs2)")


def _rows(a3m: str) -> list[str]:
    return [line for line in a3m.splitlines() if line and not line.startswith(">")]


def test_a_missing_binary_is_named_with_how_to_install_it():
    with pytest.raises(MmseqsMissing, match="apt-get install mmseqs2"):
        require_mmseqs("mmseqs-not-installed-here")


def test_merge_keeps_the_query_once_and_each_row_once():
    merged = merge_a3m([">query\nMKV\n>a\nMKI\n>b\nMRV\n", ">query\nMKV\n>c\nMKI\n>d\nM-V\n"])
    assert merged == ">query\nMKV\n>a\nMKI\n>b\nMRV\n>d\nM-V\n"


@needs_mmseqs
def test_search_finds_the_homologs_and_a_split_database_gives_the_same_msa():
    query = _rows((MSAS / "102m_A.a3m").read_text())[0]
    whole = search_shard({"102m_A": query}, SEQDB / "protein_db.fasta", MmseqsSettings())["102m_A"]
    split = search_shard({"102m_A": query}, SEQDB / "protein_db.fasta", MmseqsSettings(split=3))["102m_A"]
    assert whole == split                                  # MMseqs2's own target split is exact
    rows = _rows(whole)
    assert rows[0] == query and len(rows) > 500
    assert all(len("".join(c for c in row if not c.islower())) == len(query) for row in rows)
    # rows keep the database's headers, so a `role: paired` MMseqs2 database pairs chains by
    # species like the jackhmmer path (foldray.inputs.a3m.species_key)
    from foldray.inputs.a3m import species_key

    headers = [line[1:] for line in whole.splitlines()[2:] if line.startswith(">")]
    keyed = [h for h in headers if species_key(h) is not None]
    assert len(keyed) / len(headers) > 0.8, headers[:3]   # 727 of 823 here; the rest are bare
    # UniProt accessions, which carry no species in this database (as in jackhmmer's rows)
    # the database holds the rows of this chain's jackhmmer MSA, named by accession: most
    # of them come back
    jackhmmer = _accessions((MSAS / "102m_A.a3m").read_text())
    found = _accessions(whole)
    assert len(jackhmmer & found) / len(jackhmmer) > 0.8, len(jackhmmer & found) / len(jackhmmer)


def _accessions(a3m: str) -> set[str]:
    return {line[1:].split()[0] for line in a3m.splitlines()[2:] if line.startswith(">")}
