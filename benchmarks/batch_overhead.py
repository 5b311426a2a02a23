"""Ray Data batch prediction overhead: `foldray predict-batch` vs a plain loop (issue 5).

N small jobs (renamed / reseeded / trimmed copies of the shared tiny inputs) are predicted
twice on this machine with the same model settings: once by a sequential loop of
`Predictor.predict_to` in this process (featurize + model + write, one job after another),
once by the Ray Data pipeline on an embedded local Ray. Writes
benchmarks/results/batch_overhead.json with both wall times, their ratio, and the model
time the pipeline's results table reports.

    python benchmarks/batch_overhead.py [--jobs 200] [--steps 10] [--samples 2] [--also A:C:W ...]

The first layout (--actors / --cpus-per-actor / --cpus-per-worker: one model actor on one
CPU, as the loop) is the equal-CPU comparison; `--also` layouts (default: two model actors
next to featurization) run after it on the same jobs. Each run records where predict-batch's
time went (`phases_seconds`: reading, sorting, placement probe, actor pools until the first
finished row, the rest of the stream, results table) besides Ray's start.

The tiny model takes ~0.1 s a job on CPU, so fixed costs (Ray start, actor start-up,
scheduling) weigh far more here than with the full model on a GPU; the load average is
recorded because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_jobs import variants  # noqa: E402  (benchmarks/batch_jobs.py: the job mix)
from provenance import git_sha, machine_summary  # noqa: E402  (benchmarks/provenance.py)


def build_jobs(n: int, folder: Path) -> Path:
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


def pipeline(inputs: Path, out: Path, args: argparse.Namespace, layout: tuple[str, float, float],
             ) -> tuple[float, float, list, dict[str, float]]:
    """predict-batch with `layout` = (model actors MIN-MAX, CPUs per model actor, CPUs per
    featurize / write actor)."""
    import ray

    from foldray.actors.batch import run_batch
    from foldray.jobs import predict_batch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # local, loopback-only benchmark
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="fr-bench-", dir="/tmp"),
             object_store_memory=1 << 30, log_to_driver=False)
    init_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        flags = predict_batch.build_parser().parse_args([
            "--inputs", str(inputs), "--out", str(out), "--samples", str(args.samples),
            "--steps", str(args.steps), "--recycles", str(args.recycles), "--quiet",
            "--actors", layout[0], "--num-cpus-per-actor", str(layout[1]),
            "--cpu-workers", "1-1", "--num-cpus-per-worker", str(layout[2])])
        result = run_batch(predict_batch.settings_from(flags))   # the engine, as the CLI runs it
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    if result.problem or any(r["status"] != "ok" for r in result.rows):
        raise SystemExit(f"predict-batch failed: {result.problem or 'error rows'}")
    return seconds, init_seconds, result.rows, result.phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--recycles", type=int, default=1)
    parser.add_argument("--actors", default="1-1")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--also", nargs="*", default=["2-2:0.75:0.25"], metavar="A:C:W",
                        help="further predict-batch layouts run in the same invocation: model "
                             "actors MIN-MAX : CPUs per model actor : CPUs per featurize/write "
                             "actor (default: 2 model actors next to featurization)")
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
        layouts = [(args.actors, args.cpus_per_actor, args.cpus_per_worker)] + [
            (a, float(c), float(w)) for a, c, w in (text.split(":") for text in args.also)]
        runs = []
        for i, layout in enumerate(layouts):
            runs.append((layout, *pipeline(inputs, work / f"pipeline{i}", args, layout),
                         os.getloadavg()[0]))
            print(f"predict-batch {layout}: {runs[-1][1]:.1f} s", file=sys.stderr, flush=True)
        (_, pipe_seconds, init_seconds, rows, phases, _) = runs[0]
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model_seconds = sum(r["model_seconds"] for r in rows)
    stage_sums = {f"{stage}_seconds_sum": round(sum(r[f"{stage}_seconds"] for r in rows), 2)
                  for stage in ("featurize", "model", "write")}
    result = {
        "name": "batch_overhead", "device": "cpu", "torch": torch.__version__, "git_sha": git_sha(),
        "machine": machine_summary(),
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
        "pipeline_stage_sums": stage_sums,
        "pipeline_phases_seconds": phases,   # where predict-batch's wall time went
        "layouts": [{"actors": layout[0], "cpus_per_actor": layout[1], "cpus_per_worker": layout[2],
                     "pipeline_seconds": round(seconds, 2), "ray_init_seconds": round(init, 2),
                     "ratio_pipeline_over_sequential": round(seconds / seq_seconds, 3),
                     "model_seconds_sum": round(sum(r["model_seconds"] for r in rows_), 2),
                     "phases_seconds": phases_, "load_average_after": round(load, 2)}
                    for layout, seconds, init, rows_, phases_, load in runs],
    }
    out = ROOT / "benchmarks" / "results" / "batch_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
