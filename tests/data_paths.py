"""Where the shared real test data lives: ../shared/data next to the checkout."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
STRUCTURES = SHARED_DATA / "structures"
INPUTS = SHARED_DATA / "inputs"
MSAS = SHARED_DATA / "msas"
BAD_INPUTS = SHARED_DATA / "bad_inputs"
LIGANDS = SHARED_DATA / "ligands"
SEQDB = SHARED_DATA / "seqdb"
