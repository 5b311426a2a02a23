"""Featurization speed: a ~1,000-token complex with 1,000-row MSAs (issue: < 2 s on CPU).

Builds the complex from real inputs (shared/data: myoglobin + heme, CERT START domain +
its ligand, Bcl-3 ankyrin repeats x2, Trp-cage, the Dickerson DNA duplex), featurizes it
cold (first call in the process: CCD index load, conformers) and warm (the cost per job in
a long-lived worker), with 1,000 and 16,384 MSA rows, and writes
benchmarks/results/featurize-<device>.json.

    python benchmarks/featurize.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import cpu_name, git_sha  # noqa: E402  (benchmarks/provenance.py)

DATA = ROOT.parent / "shared" / "data"


def complex_job_json() -> dict:
    def seq(name: str, index: int = 0) -> dict:
        return json.loads((DATA / "inputs" / name).read_text())["sequences"][index]

    msas = DATA / "msas"
    sequences = [
        {"protein": {**seq("102m.json")["protein"], "id": "A",
                     "unpairedMsaPath": str(msas / "102m_A.a3m"),
                     "pairedMsaPath": str(msas / "102m_A_paired.a3m")}},
        {"ligand": {"id": "B", "ccdCodes": ["HEM"]}},
        {"protein": {**seq("5zyh.json")["protein"], "id": "C",
                     "unpairedMsaPath": str(msas / "5zyh_A.a3m"),
                     "pairedMsaPath": str(msas / "5zyh_A_paired.a3m")}},
        {"ligand": {"id": "D", "ccdCodes": ["9N0"]}},
        {"protein": {"id": ["E", "F"],
                     "sequence": (msas / "1k1a_A.a3m").read_text().split("\n")[1].strip(),
                     "unpairedMsaPath": str(msas / "1k1a_A.a3m"),
                     "pairedMsaPath": str(msas / "1k1a_A_paired.a3m")}},
        {"protein": {"id": "G", "sequence": "NLYIQWLKDGGPSSGRPPPS", "unpairedMsa": "",
                     "pairedMsa": ""}},
        {"dna": {"id": ["H", "I"], "sequence": "CGCGAATTCGCG"}},
    ]
    for entry in sequences:
        for key in ("unpairedMsa", "pairedMsa"):
            body = next(iter(entry.values()))
            if f"{key}Path" in body:
                body.pop(key, None)
        next(iter(entry.values())).pop("templates", None)
    return {"dialect": "alphafold3", "version": 2, "name": "bench_1000", "modelSeeds": [1],
            "sequences": sequences}


def timed(job, max_msa_rows: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    featurized = featurize_job(job, max_msa_rows=max_msa_rows)
    return time.perf_counter() - started, featurized.n_tokens, featurized.features["msa"].shape[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    (job,) = parse_af3_json(json.dumps(complex_job_json()), source=str(DATA / "inputs" / "x.json"))
    rows = []
    cold, n_token, n_msa = timed(job, 1000)
    rows.append({"case": "cold (first job in a process)", "max_msa_rows": 1000, "n_msa": n_msa,
                 "seconds": cold})
    for rows_cap in (1000, 16384):
        times = []
        for _ in range(args.repeats):
            seconds, n_token, n_msa = timed(job, rows_cap)
            times.append(seconds)
        rows.append({"case": "warm (median)", "max_msa_rows": rows_cap, "n_msa": n_msa,
                     "seconds": sorted(times)[len(times) // 2], "min_seconds": min(times)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"name": "featurize", "device": "cpu", "cpu": cpu_name(),
              "torch": torch.__version__, "git_sha": git_sha(),
              "config": {"job": "1000-token complex, 5 protein chains, 2 ligands, DNA duplex"},
              "n_token": n_token, "peak_mem_bytes": peak, "rows": rows}
    out = ROOT / "benchmarks" / "results" / "featurize-cpu.json"
    out.write_text(json.dumps(result, indent=2))
    for row in rows:
        print(f"{row['case']:32s} msa_rows<= {row['max_msa_rows']:6d} ({row['n_msa']:5d} rows): "
              f"{row['seconds']:.3f} s")
    print(f"n_token {n_token}, peak RSS {peak / 2**20:.0f} MiB -> {out}")


if __name__ == "__main__":
    main()
