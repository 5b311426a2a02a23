"""Ray Data batch prediction overhead: `foldray predict-batch` vs a plain loop (issue 5).

N small jobs (renamed / reseeded / trimmed copies of the shared tiny inputs) are predicted
twice on this machine with the same model settings: once by a sequential loop of
`Predictor.predict_to` in this process (featurize + model + write, one job after another),
once by the Ray Data pipeline on an embedded local Ray. Writes
benchmarks/results/batch_overhead.json with both wall times, their ratio, and the model
time the pipeline's results table reports.

    python benchmarks/batch_overhead.py [--jobs 200] [--steps 10] [--samples 2]

The tiny model takes ~0.1 s a job on CPU, so fixed costs (Ray start, actor start-up,
scheduling) weigh far more here than with the full model on a GPU; the load average is
recorded because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # tests.jobs.test_predict_batch.variants builds the jobs


def build_jobs(n: int, folder: Path) -> Path:
    from tests.jobs.test_predict_batch import variants

    path = folder / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(job) for job in variants(n, "bench")) + "\n")
    return path


def sequential(inputs: Path, out: Path, args: argparse.Namespace) -> float:
    import torch

    from foldray.inputs.load import read_jobs
    from foldray.predictor import Predictor, PredictSettings

    torch.set_num_threads(args.threads)   # as the inference actor (Ray: 1 thread per CPU)
    started = time.perf_counter()
    predictor = Predictor.load(None, config="tiny")
    settings = PredictSettings(n_sample=args.samples, n_step=args.steps, n_cycle=args.recycles)
    for job in read_jobs(str(inputs)):
        predictor.predict_to(str(out), job, settings)
    return time.perf_counter() - started


def pipeline(inputs: Path, out: Path, args: argparse.Namespace) -> tuple[float, float, list]:
    import pyarrow.parquet as pq
    import ray

    from foldray.jobs import predict_batch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # local, loopback-only benchmark
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="fr-bench-", dir="/tmp"),
             object_store_memory=1 << 30, log_to_driver=False)
    init_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        code = predict_batch.main([
            "--inputs", str(inputs), "--out", str(out), "--samples", str(args.samples),
            "--steps", str(args.steps), "--recycles", str(args.recycles), "--quiet",
            "--actors", args.actors, "--num-cpus-per-actor", str(args.cpus_per_actor),
            "--cpu-workers", "1-1", "--num-cpus-per-worker", str(args.cpus_per_worker)])
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    if code != 0:
        raise SystemExit(f"predict-batch failed with exit code {code}")
    return seconds, init_seconds, pq.read_table(out / "results.parquet").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--recycles", type=int, default=1)
    parser.add_argument("--actors", default="1-1")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the sequential loop (the actor gets 1 per CPU)")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="fr-bench-batch-"))
    try:
        inputs = build_jobs(args.jobs, work)
        load_before = os.getloadavg()
        seq_seconds = sequential(inputs, work / "sequential", args)
        print(f"sequential: {seq_seconds:.1f} s", file=sys.stderr, flush=True)
        pipe_seconds, init_seconds, rows = pipeline(inputs, work / "pipeline", args)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model_seconds = sum(r["model_seconds"] for r in rows)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    result = {
        "name": "batch_overhead", "device": "cpu", "torch": torch.__version__, "git_sha": sha,
        "machine": f"{stdlib_platform.processor() or stdlib_platform.machine()}, "
                   f"{os.cpu_count()} CPUs",
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "config": {"model": "tiny", "samples": args.samples, "steps": args.steps,
                   "recycles": args.recycles, "actors": args.actors,
                   "cpus_per_actor": args.cpus_per_actor, "cpus_per_worker": args.cpus_per_worker,
                   "sequential_torch_threads": args.threads},
        "n_jobs": args.jobs,
        "n_ok": sum(r["status"] == "ok" for r in rows),
        "sequential_seconds": round(seq_seconds, 2),
        "pipeline_seconds": round(pipe_seconds, 2),
        "ray_init_seconds": round(init_seconds, 2),
        "ratio_pipeline_over_sequential": round(pipe_seconds / seq_seconds, 3),
        "pipeline_model_seconds_sum": round(model_seconds, 2),
        "pipeline_overhead_over_model_time": round((pipe_seconds - model_seconds) / model_seconds, 3),
    }
    out = ROOT / "benchmarks" / "results" / "batch_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
