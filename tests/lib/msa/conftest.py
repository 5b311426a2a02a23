"""Shared inputs of the genetic-search tests: the real 9,674-sequence protein database
(shared/data/seqdb, built from the MSAs in shared/data/msas) and real chain sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foldray.msa.config import DatabaseConfig

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
PROTEIN_DB = DATA / "seqdb" / "protein_db.fasta"
MSAS = DATA / "msas"
# 60 random residues (random.Random(7)); checked to have no homolog in the database.
NO_HIT_SEQUENCE = "MFPCDVENWCTHCDQQDIDVQCWEIWCWWPCICVFLQFVEWLVGEWWHNEVDWCYHSVQM"


def chain_sequence(input_name: str, chain_id: str = "A") -> str:
    """The protein sequence of one chain of a job in shared/data/inputs."""
    job = json.loads((DATA / "inputs" / f"{input_name}.json").read_text())
    for entry in job["sequences"]:
        body = entry.get("protein")
        if body and chain_id in ([body["id"]] if isinstance(body["id"], str) else body["id"]):
            return body["sequence"]
    raise KeyError(f"{input_name} chain {chain_id}")


def a3m_accessions(*names: str) -> set[str]:
    """First header token of every record (not the query) of shared/data/msas a3m files."""
    found: set[str] = set()
    for name in names:
        headers = [line[1:].split()[0] for line in (MSAS / name).read_text().splitlines()
                   if line.startswith(">")]
        found.update(headers[1:])
    return found


@pytest.fixture(scope="session")
def uniref_db() -> DatabaseConfig:
    """The test database under the SI's jackhmmer settings (1 iteration, E 1e-4)."""
    return DatabaseConfig(name="uniref90", url=str(PROTEIN_DB))


@pytest.fixture(scope="session")
def seq_102m() -> str:
    return chain_sequence("102m")


@pytest.fixture(scope="session")
def seq_5zyh() -> str:
    return chain_sequence("5zyh")
