"""msa.yaml settings and database checks: bad config and missing databases fail at start."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from foldray.errors import InputError
from foldray.msa.config import MsaConfig, config_from_dict, load_config
from foldray.msa.databases import check_databases, database_identity, load_shard

from .conftest import PROTEIN_DB

REPO = Path(__file__).resolve().parents[3]


def test_default_config_has_the_si_settings(monkeypatch):
    monkeypatch.setenv("FOLDRAY_MSA_DB", "/dbs")
    config = load_config(str(REPO / "configs" / "msa.yaml"))
    by_name = {db.name: db for db in config.databases}
    assert set(by_name) == {"uniref90", "small_bfd", "mgnify", "uniprot", "rfam", "rnacentral", "nt"}
    uniref = by_name["uniref90"]
    assert (uniref.iterations, uniref.e_value, uniref.inc_e, uniref.f1, uniref.f2, uniref.f3) == \
        (1, 1e-4, 1e-4, 5e-4, 5e-5, 5e-7)  # -N 1 -E 0.0001 --incE 0.0001 --F1 --F2 --F3
    assert uniref.url == "/dbs/uniref90_2022_05.fa"
    assert [by_name[n].max_sequences for n in ("uniref90", "small_bfd", "mgnify", "uniprot")] == \
        [10_000, 5_000, 5_000, 50_000]
    assert by_name["uniprot"].role == "paired" and by_name["uniprot"].z == 138515945
    assert {by_name[n].tool for n in ("rfam", "rnacentral", "nt")} == {"nhmmer"}
    assert (by_name["rfam"].e_value, by_name["rfam"].f3, by_name["rfam"].f3_short) == (1e-3, 5e-5, 0.02)


def test_bad_config_is_an_input_error_naming_the_field():
    with pytest.raises(InputError, match="databases\\[0\\].*unknown key"):
        config_from_dict({"databases": [{"name": "u", "url": "x", "evalue": 1}]}, source="m.yaml")
    with pytest.raises(InputError, match="tool"):
        config_from_dict({"databases": [{"name": "u", "url": "x", "tool": "blast"}]})
    with pytest.raises(InputError, match="shards"):
        config_from_dict({"databases": [{"name": "u", "url": "x"}], "shards": 0})


def test_missing_database_fails_at_start_naming_it(tmp_path):
    config = config_from_dict({"databases": [
        {"name": "uniref90", "url": str(PROTEIN_DB)},
        {"name": "mgnify", "url": str(tmp_path / "mgy_clusters.fa")}]})
    with pytest.raises(InputError, match="database 'mgnify'.*not found") as err:
        check_databases(config)
    assert err.value.source.endswith("mgy_clusters.fa")
    not_fasta = tmp_path / "junk.fa"
    not_fasta.write_text("hello\n")
    with pytest.raises(InputError, match="database 'junk' .*not FASTA"):
        check_databases(MsaConfig(databases=config_from_dict(
            {"databases": [{"name": "junk", "url": str(not_fasta)}]}).databases))


def test_gzip_database_loads_like_plain_and_identity_tracks_the_file(tmp_path):
    gz = tmp_path / "db.fasta.gz"
    gz.write_bytes(gzip.compress(PROTEIN_DB.read_bytes()))
    config = config_from_dict({"databases": [{"name": "plain", "url": str(PROTEIN_DB)},
                                             {"name": "gz", "url": str(gz)}]})
    check_databases(config)
    plain, packed = (load_shard(db, 1, 2) for db in config.databases)
    assert len(plain.sequences) == len(packed.sequences) == 9674 // 2  # odd indices
    assert [s.name for s in plain.sequences[:5]] == [s.name for s in packed.sequences[:5]]
    before = database_identity(config.databases[1])
    gz.write_bytes(gzip.compress(PROTEIN_DB.read_bytes()[:50_000]))
    assert database_identity(config.databases[1]) != before


def test_overrides_and_located_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLDRAY_MSA_DB", "/dbs")
    config = load_config(str(REPO / "configs" / "msa.yaml"), ["shards=7", "cache_url=s3://b/cache"])
    assert (config.shards, config.cache_url) == (7, "s3://b/cache")
    path = tmp_path / "msa.yaml"
    path.write_text("databases:\n  - {name: u, url: x, max_sequences: many}\n")
    with pytest.raises(InputError) as err:
        load_config(str(path))
    assert (err.value.source, err.value.field) == (str(path), "databases[0].max_sequences")
    path.write_text("databases:\n  - {name: u, url: x}\n  - {name: u, url: y}\n")
    with pytest.raises(InputError, match="unique"):
        load_config(str(path))
    with pytest.raises(InputError, match="not found"):
        load_config(str(tmp_path / "none.yaml"))
