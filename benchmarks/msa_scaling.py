"""Genetic-search throughput (issue 10): queries per minute, 1 vs 2 shard workers, with and
without the MSA cache.

Queries are real protein chains of shared/data (see `queries`); the database is
shared/data/seqdb/protein_db.fasta (9,674 sequences) split into `--shards` shards. Each query
is one jackhmmer search with the SI settings (E 1e-4; `--iterations` rounds, SI: 1). For each
worker count the queries run once against an empty cache (every search runs on the shard
actors) and once more against the filled cache (no search runs). An in-process 1-shard search
(no Ray) is the baseline. Writes benchmarks/results/msa_scaling.json.

    python benchmarks/msa_scaling.py [--queries 12] [--shards 4] [--iterations 1]
    python benchmarks/msa_scaling.py --compare-tools [--queries 3]
    python benchmarks/msa_scaling.py --mmseqs-ray [--queries 3] [--shards 2]

`--compare-tools` (issue 22): per chain, in-process, one core each: jackhmmer (SI settings)
vs MMseqs2 (ColabFold settings, needs the `mmseqs` binary) on the same database: seconds,
rows found and how many of jackhmmer's hits (by accession) MMseqs2 also finds; then the
SI 2.4 template search seconds per chain (profile from the chain's jackhmmer MSA against a
seqres FASTA of the shared structures, which are also the mirror). Writes
benchmarks/results/msa_tools.json.

`--mmseqs-ray` (issue 22): one job of `--queries` chains against the database as one
`tool: mmseqs2` database, side by side in one run: the chains one after the other in this
process (`--no-ray`, and the MSA stage before issue 22), then the MSA stage with every
chain a Ray CPU task (1 CPU, 1 thread each; a local Ray of 2 CPUs), unsplit and with
MMseqs2's own `--shards` split; checks the MSAs are identical. Writes
benchmarks/results/msa_mmseqs_ray.json.

The machine may be shared: the load average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import python_version  # noqa: E402  (benchmarks/provenance.py)

PROTEIN_DB = ROOT.parent / "shared" / "data" / "seqdb" / "protein_db.fasta"


def queries(n: int) -> list[str]:
    """Up to n real chains: the queries of the 102m / 1k1a / 5zyh MSAs (families with hundreds
    of hits in the database), then the other pdb| records of the database (>= 50 residues)."""
    msas = ROOT.parent / "shared" / "data" / "msas"
    found = [(msas / f"{name}_A.a3m").read_text().splitlines()[1].strip()
             for name in ("102m", "1k1a", "5zyh")]
    name, seq = None, []
    for line in PROTEIN_DB.read_text().splitlines() + [">end"]:
        if line.startswith(">"):
            if name and name.startswith("pdb|") and len("".join(seq)) >= 50 and "".join(seq) not in found:
                found.append("".join(seq))
            name, seq = line[1:].split()[0], []
        else:
            seq.append(line.strip())
    return found[:n]


def timed_run(sequences: list[str], config, shards, cache_url: str | None) -> dict:
    from foldray.msa.cache import MsaCache
    from foldray.msa.fill import ChainSearcher

    searcher = ChainSearcher(config, shards, MsaCache(cache_url) if cache_url else None)
    started = time.perf_counter()
    for sequence in sequences:
        searcher.database_a3m(sequence, "protein", config.databases[0])
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "queries_per_minute": round(60 * len(sequences) / seconds, 1),
            "searched": searcher.counts.searched, "cached": searcher.counts.cached}


def _accessions(a3m: str) -> set[str]:
    return {line[1:].split()[0].split("/")[0] for line in a3m.splitlines()[2:] if line.startswith(">")}


def compare_tools(n_queries: int, out: str) -> int:
    """jackhmmer vs MMseqs2 per chain, and template search seconds per chain."""
    import gemmi

    from foldray.msa.config import DatabaseConfig
    from foldray.msa.mmseqs import MmseqsSettings, require_mmseqs, search_shard
    from foldray.msa.search import LocalShards, iterative_search
    from foldray.msa.template_search import TemplateSearchSettings, search_templates, seqres_fasta

    require_mmseqs()
    structures = ROOT.parent / "shared" / "data" / "structures"
    sequences = queries(n_queries)
    db = DatabaseConfig(name="seqdb", url=str(PROTEIN_DB))
    local = LocalShards(1)
    local.database_size(db)
    entries = []
    for path in sorted(structures.glob("*.cif")):
        st = gemmi.read_structure(str(path))
        st.setup_entities()
        for chain in st[0]:
            polymer = chain.get_polymer()
            entity = st.get_entity_of(polymer) if polymer.length() else None
            if entity is not None and entity.polymer_type == gemmi.PolymerType.PeptideL:
                entries.append((f"{path.stem}_{chain.name}", gemmi.one_letter_code(entity.full_sequence)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="msa-tools-") as tmp:
        seqres = Path(tmp) / "pdb_seqres.txt"
        seqres.write_text(seqres_fasta(entries))
        template_settings = TemplateSearchSettings(database=str(seqres), mirror=str(structures))
        for sequence in sequences:
            started = time.perf_counter()
            jack = iterative_search(sequence, db, local).a3m
            jack_s = time.perf_counter() - started
            started = time.perf_counter()
            mm = search_shard({"q": sequence}, PROTEIN_DB, MmseqsSettings(threads=1), workdir=tmp)["q"]
            mm_s = time.perf_counter() - started
            started = time.perf_counter()
            templates = search_templates(sequence, jack, template_settings)
            template_s = time.perf_counter() - started
            a, b = _accessions(jack), _accessions(mm)
            rows.append({"length": len(sequence), "jackhmmer_seconds": round(jack_s, 2),
                         "mmseqs2_seconds": round(mm_s, 2), "jackhmmer_rows": jack.count(">") - 1,
                         "mmseqs2_rows": mm.count(">") - 1, "shared_hits": len(a & b),
                         "jackhmmer_hits_found_by_mmseqs2": round(len(a & b) / max(len(a), 1), 3),
                         "template_search_seconds": round(template_s, 2), "templates": len(templates)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"name": "msa_tools", "database_sequences": 9674, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "python": python_version(), "loadavg": os.getloadavg()}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def mmseqs_ray(n_queries: int, shards: int, out: str) -> int:
    """The MSA stage's MMseqs2 searches as Ray tasks vs one after the other in-process."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from foldray.actors.msa_stage import MsaSearchStage
    from foldray.actors.predict_rows import PENDING, result_row
    from foldray.inputs.job import Job, PolymerChain
    from foldray.msa.config import DatabaseConfig, MsaConfig
    from foldray.msa.fill import ChainSearcher, fill_jobs
    from foldray.msa.mmseqs import require_mmseqs
    from foldray.msa.search import LocalShards

    require_mmseqs()
    sequences = queries(n_queries)
    chains = tuple(PolymerChain(ids=(chr(65 + i),), mol_type="protein", sequence=seq)
                   for i, seq in enumerate(sequences))
    job = Job(name="bench", seeds=(1,), entities=chains)
    db = DatabaseConfig(name="seqdb", url=str(PROTEIN_DB), tool="mmseqs2")
    result: dict = {"name": "msa_mmseqs_ray", "database_sequences": 9674, "chains": len(chains),
                    "query_lengths": [len(s) for s in sequences],
                    "machine": {"cpus": os.cpu_count(), "python": python_version(),
                                "loadavg_before": os.getloadavg()}}
    started = time.perf_counter()
    (reference,) = fill_jobs([job], ChainSearcher(MsaConfig(databases=(db,)), LocalShards(1), None))
    result["in_process_serial_seconds"] = round(time.perf_counter() - started, 2)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for n_shard in (1, shards):
            stage = MsaSearchStage(MsaConfig(databases=(db,), shards=n_shard), None, None)
            started = time.perf_counter()
            row = stage(result_row(PENDING, name="bench", payload=job))
            seconds = time.perf_counter() - started
            same = row["payload"] is not None and all(
                a.unpaired_msa == b.unpaired_msa for a, b in zip(row["payload"].entities,
                                                                  reference.entities, strict=True))
            result[f"ray_tasks_{n_shard}_shard_seconds"] = round(seconds, 2)
            result[f"ray_tasks_{n_shard}_shard_same_msas"] = same
            print(json.dumps({k: v for k, v in result.items() if k.startswith(("in_", "ray_"))}), flush=True)
    finally:
        ray.shutdown()
    result["machine"]["loadavg_after"] = os.getloadavg()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-tools", action="store_true",
                        help="jackhmmer vs MMseqs2 per chain and template search seconds (issue 22)")
    parser.add_argument("--mmseqs-ray", action="store_true",
                        help="MMseqs2 chains as Ray tasks vs serial in-process (issue 22; default: off)")
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "msa_scaling.json"))
    args = parser.parse_args()
    if args.compare_tools:
        out = args.out if args.out != parser.get_default("out") else \
            str(ROOT / "benchmarks" / "results" / "msa_tools.json")
        return compare_tools(min(args.queries, 12), out)
    if args.mmseqs_ray:
        out = args.out if args.out != parser.get_default("out") else \
            str(ROOT / "benchmarks" / "results" / "msa_mmseqs_ray.json")
        return mmseqs_ray(args.queries, args.shards, out)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from foldray.actors.msa_stage import RayShards
    from foldray.msa.config import DatabaseConfig, MsaConfig
    from foldray.msa.search import LocalShards

    sequences = queries(args.queries)
    db = DatabaseConfig(name="uniref90", url=str(PROTEIN_DB), iterations=args.iterations)
    config = MsaConfig(databases=(db,), shards=args.shards)
    results: dict = {"queries": len(sequences), "query_lengths": [len(s) for s in sequences],
                     "database_sequences": 9674, "shards": args.shards, "iterations": args.iterations,
                     "machine": {"cpus": os.cpu_count(), "python": python_version(),
                                 "loadavg_before": os.getloadavg()}}
    local = LocalShards(1)
    local.database_size(db)  # load outside the timing, like the actors' start-up
    results["in_process_1_shard"] = timed_run(sequences, dataclasses.replace(config, shards=1), local, None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            started = time.perf_counter()
            shards = RayShards(config, workers)
            startup = time.perf_counter() - started
            with tempfile.TemporaryDirectory(prefix="msa-cache-") as cache:
                cold = timed_run(sequences, config, shards, cache)
                warm = timed_run(sequences, config, shards, cache)
            results[f"ray_{workers}_workers"] = {"actor_startup_seconds": round(startup, 3),
                                                 "no_cache": cold, "cached": warm}
            shards.close()
    finally:
        ray.shutdown()
    results["machine"]["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
