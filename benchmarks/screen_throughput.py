"""Screen throughput through the client: target cache + batching vs one-by-one predictions.

Starts its own local Ray (loopback) and Serve, with the same model (tiny config, random
weights, the same sampling settings) in both cases:
- "screen": `FoldrayClient.screen` (chunks of ligands, concurrent), the server featurizes
  the target's MSA once and batches ligands of similar size into one forward pass;
- "one-by-one": each ligand as an independent AF3 job (target + ligand) through
  `FoldrayClient.predict`, one after the other, on a server with batching off.
Target: myoglobin (102m chain A, 154 residues) with its 98-row MSA; ligands: the first N
of shared/data/ligands/screen_100.smi. A first row measures the target cache alone on a
large MSA (library level). Writes benchmarks/results/screen_throughput.json.

    python benchmarks/screen_throughput.py [--n 16] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import cpu_name, free_port, git_sha  # noqa: E402  (benchmarks/provenance.py)

DATA = ROOT.parent / "shared" / "data"
TOKEN = "benchmark-token"


def featurization_row(n: int) -> dict:
    """Per-ligand featurization with and without the target cache (library level), on the
    target where the cache matters: Bcl-3 (1k1a, 241 aa) with its 3,084-row MSA."""
    from foldray.client import load_ligands, target_job
    from foldray.features.pipeline import featurize_job
    from foldray.inputs.af3_json import parse_af3_json
    from foldray.screening import LigandSpec, TargetCache, featurize_screen_job, ligand_job

    msa = (DATA / "msas" / "1k1a_A.a3m").read_text()
    target = parse_af3_json(json.dumps(target_job(msa.split("\n")[1].strip(), msa=msa)),
                            allow_paths=False)[0]
    jobs = [ligand_job(target, LigandSpec(id=item["id"], smiles=item["smiles"]))
            for item in load_ligands(DATA / "ligands" / "screen_100.smi")[:n]]
    cache = TargetCache()
    featurize_job(jobs[0], seed=1, with_targets=False)          # warm: CCD index, conformers
    cache.get(target)
    start = time.perf_counter()
    for job in jobs:
        featurize_job(job, seed=1, with_targets=False)
    plain = (time.perf_counter() - start) / len(jobs)
    start = time.perf_counter()
    for job in jobs:
        featurize_screen_job(job, cache.get(target), seed=1)
    cached = (time.perf_counter() - start) / len(jobs)
    return {"case": "featurization per ligand, 1k1a target + 3,084-row MSA: featurize_job vs "
                    "target cache (library, one process)", "n_ligands": len(jobs),
            "seconds_per_ligand_plain": plain, "seconds_per_ligand_cached": cached,
            "speedup": plain / cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="ligands per case")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "screen_throughput.json"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")      # a private loopback Ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["FOLDRAY_SERVE_TOKEN"] = TOKEN
    import ray
    import torch
    from ray import serve
    from ray._private import ray_constants

    from foldray.actors.serve import build_app
    from foldray.client import FoldrayClient, load_ligands, target_job

    sequence = json.loads((DATA / "inputs" / "102m.json").read_text())["sequences"][0]["protein"]["sequence"]
    msa = (DATA / "msas" / "102m_A.a3m").read_text()
    target = target_job(sequence, msa=msa)
    ligands = load_ligands(DATA / "ligands" / "screen_100.smi")[:args.n]
    model = {"model_config": "tiny", "n_sample": 1, "n_step": 20, "n_cycle": 1,
             "featurizer_num_cpus": 1, "model_num_cpus": 1, "access_log": False,
             "debug_endpoints": True}

    temp_dir = tempfile.mkdtemp(prefix="fr-screen-bench-", dir="/tmp")
    ray_constants.ENABLE_RAY_CLUSTER = False                 # bind loopback only
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=temp_dir, object_store_memory=1 << 30, configure_logging=False,
             log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = FoldrayClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=120)
    rows = [featurization_row(min(args.n, 8))]
    try:
        def deploy(max_batch_size: int) -> None:
            serve.run(build_app({**model, "max_batch_size": max_batch_size}), name="bench",
                      route_prefix="/")
            warm = {**target, "name": "warmup", "sequences": target["sequences"] + [
                {"ligand": {"id": "B", "smiles": "CCO"}}]}
            client.predict(warm, timeout=600)                # load + first forward not timed

        deploy(max_batch_size=1)
        start = time.monotonic()
        statuses = []
        for ligand in ligands:
            job = {**target, "name": ligand["id"],
                   "sequences": target["sequences"] + [{"ligand": {"id": "B", "smiles": ligand["smiles"]}}]}
            try:
                client.predict(job, timeout=600)
                statuses.append("ok")
            except Exception as err:   # noqa: BLE001 (a bad ligand is a row, not a crash)
                statuses.append(f"error: {err}")
        seconds = time.monotonic() - start
        rows.append({"case": "one-by-one independent predictions (no target cache, no batching)",
                     "n_ligands": len(ligands), "n_ok": statuses.count("ok"), "seconds": seconds,
                     "ligands_per_minute": 60 * len(ligands) / seconds, "server": client.stats()})
        serve.delete("bench")

        deploy(max_batch_size=args.max_batch_size)
        start = time.monotonic()
        table = client.screen(target, ligands, concurrency=args.concurrency, progress=False)
        seconds = time.monotonic() - start
        rows.append({"case": f"screen: target cache + batching (max_batch_size {args.max_batch_size}, "
                             f"client concurrency {args.concurrency})",
                     "n_ligands": len(ligands), "n_ok": table.column("status").to_pylist().count("ok"),
                     "seconds": seconds, "ligands_per_minute": 60 * len(ligands) / seconds,
                     "server": client.stats()})
    finally:
        serve.shutdown()
        ray.shutdown()

    result = {
        "name": "screen_throughput", "device": "cpu" if not torch.cuda.is_available() else "cuda",
        "cpu": cpu_name(), "torch": torch.__version__, "git_sha": git_sha(),
        "config": {**model, "target": "102m chain A (154 aa) + 98-row MSA", "ray_cpus": 2,
                   "weights": "random (no trained checkpoint yet)"},
        "n_token": len(sequence),
        "peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rows": rows,
        "ratio_screen_vs_one_by_one": rows[2]["ligands_per_minute"] / rows[1]["ligands_per_minute"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
