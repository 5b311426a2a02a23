"""Varied small jobs for the batch benchmarks, and the fixture the batch tests read.

Renamed / reseeded / trimmed copies of the small shared inputs, plus CCD-ligand and RNA
jobs, so token counts differ from job to job. benchmarks/batch_overhead.py builds its
workload with :func:`variants`; tests/jobs/test_predict_batch.py reads the first
``FIXTURE_COUNT`` of them from ``FIXTURE`` (tests never import benchmarks). Regenerate the
fixture after changing the mix:

    python benchmarks/batch_jobs.py --write-fixture
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT.parent / "shared" / "data" / "inputs"
BASES = ("1l2y", "1bna", "tiny_protein_dna", "tiny_protein_ligand_smiles")
FIXTURE = ROOT / "tests" / "fixtures" / "batch_jobs" / "variants.jsonl"
FIXTURE_COUNT = 12


def base_job(name: str) -> dict:
    return json.loads((INPUTS / f"{name}.json").read_text())


def variant(i: int) -> dict:
    """Job number ``i`` of the mix, named ``<i>_<base name>``."""
    job = base_job(BASES[i % len(BASES)])
    job["name"] = f"{i:02d}_{job['name']}"
    job["modelSeeds"] = [i + 1]
    first = job["sequences"][0]
    if "protein" in first and i % 3 == 1:
        first["protein"]["sequence"] = first["protein"]["sequence"][: 10 + i % 10]
    if i % 5 == 4:   # a CCD ligand with the Trp-cage
        job["sequences"] = [{"protein": {"id": "A", "sequence": "NLYIQWLKDGGPSSGRPPPS"}},
                            {"ligand": {"id": "B", "ccdCodes": ["ATP"]}}]
    if i % 7 == 6:   # RNA with a Mg ion
        job["sequences"] = [{"rna": {"id": "A", "sequence": "GGCUAGCUAGCC"}},
                            {"ligand": {"id": "B", "ccdCodes": ["MG"]}}]
    return job


def variants(count: int, tag: str) -> list[dict]:
    """The first ``count`` jobs of the mix, named ``<tag>_<i>_<base name>``."""
    jobs = []
    for i in range(count):
        job = variant(i)
        job["name"] = f"{tag}_{job['name']}"
        jobs.append(job)
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-fixture", action="store_true", help=f"write {FIXTURE.relative_to(ROOT)}")
    args = parser.parse_args()
    lines = "".join(json.dumps(variant(i)) + "\n" for i in range(FIXTURE_COUNT))
    if args.write_fixture:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(lines)
        print(f"wrote {FIXTURE}")
    else:
        print(lines, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
