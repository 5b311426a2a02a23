"""Ray Data batch prediction overhead: `foldray predict-batch` vs a plain loop (issue 5).

N small jobs (renamed / reseeded / trimmed copies of the shared tiny inputs) are predicted
twice on this machine with the same model settings: once by a sequential loop of
`Predictor.predict_to` in this process (featurize + model + write, one job after another),
once by the Ray Data pipeline on an embedded local Ray. Writes
benchmarks/results/batch_overhead.json with both wall times, their ratio, and the model
time the pipeline's results table reports.

    python benchmarks/batch_overhead.py [--jobs 200] [--steps 10] [--samples 2] [--stages auto] [--no-cold]
                                        [--also A:C:W[:S] ...] [--scale-jobs N] [--out FILE]

The first layout (--actors / --cpus-per-actor / --cpus-per-worker / --stages: one model
actor on one CPU, as the loop; stages auto = fused featurize+predict+write actors on CPU)
is the equal-CPU comparison; `--also` layouts (default: the separate stage pools at equal
CPUs, then two model actors on one CPU each) run after it on the same jobs. Each run records
where predict-batch's time went: `phases_seconds` (reading, sorting, placement probe, actor
pools until the first finished row, the rest of the stream, results table) and
`breakdown_seconds` (Ray start, driver work, actor start-up, the jobs' own stage work, the
stream's remaining overhead). `--out` writes the JSON elsewhere (development runs).
The in-process comparison leaves out what only predict-batch pays once per run (Ray start is
recorded apart; this process's imports, the loop's and the driver's, happen before either
clock starts, while the actors' own imports count). `--scale-jobs N` reruns the loop and two
layouts on N jobs and splits each into a fixed cost and a time per job. `cold_process_seconds` adds
the comparison a user sees: a loop script and the `foldray predict-batch` command, each timed
from a fresh process (interpreter, imports, Ray start, model load, the jobs).

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
from typing import Any

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


LOOP_SCRIPT = """
import sys, time
started = time.perf_counter()
import torch
from foldray.inputs.load import read_jobs
from foldray.predictor import Predictor, PredictSettings
inputs, out, threads, samples, steps, recycles = sys.argv[1:7]
torch.set_num_threads(int(threads))
predictor = Predictor.load(None, config="tiny")
settings = PredictSettings(n_sample=int(samples), n_step=int(steps), n_cycle=int(recycles))
for job in read_jobs(inputs):
    predictor.predict_to(out, job, settings)
"""


def cold_runs(inputs: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """What a user waits for, each from a fresh process: a loop script (interpreter start,
    imports, model load, the loop) vs the `foldray predict-batch` command (its own embedded
    Ray, one fused model actor on one CPU as the first layout)."""
    import subprocess

    timings = {}
    loop = [sys.executable, "-c", LOOP_SCRIPT, str(inputs), str(work / "cold_loop"), str(args.threads),
            str(args.samples), str(args.steps), str(args.recycles)]
    cli = [sys.executable, "-m", "foldray.jobs.cli", "predict-batch", "--inputs", str(inputs),
           "--out", str(work / "cold_cli"), "--samples", str(args.samples), "--steps", str(args.steps),
           "--recycles", str(args.recycles), "--quiet", "--actors", args.actors,
           "--num-cpus-per-actor", str(args.cpus_per_actor), "--num-cpus", str(os.cpu_count())]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    for name, command in (("loop_script", loop), ("predict_batch_cli", cli)):
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, timeout=3600)
        timings[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
    timings["ratio_cli_over_loop_script"] = round(timings["predict_batch_cli_seconds"]
                                                  / timings["loop_script_seconds"], 3)
    return timings


def pipeline(inputs: Path, out: Path, args: argparse.Namespace, layout: tuple[str, float, float, str],
             ) -> tuple[float, float, list, dict[str, float], int]:
    """predict-batch with `layout` = (model actors MIN-MAX, CPUs per model actor, CPUs per
    featurize / write actor, stages: auto / fused / separate): its seconds, Ray's start, the
    rows, the engine's phases and the jobs per block of the stream (the engine's own rule)."""
    import ray
    import ray.data  # noqa: F401  (the driver's imports stay before the clock, as the loop's do)

    from foldray.actors.batch import _block_rows, run_batch
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
            "--cpu-workers", "1-1", "--num-cpus-per-worker", str(layout[2]), "--stages", layout[3]])
        settings = predict_batch.settings_from(flags)
        result = run_batch(settings)   # the engine, as the CLI runs it
        seconds = time.perf_counter() - started
        per_block = _block_rows(settings, len(result.rows), max(r["n_tokens"] for r in result.rows))
    finally:
        ray.shutdown()
    errors = [r["error"] for r in result.rows if r["status"] != "ok"]
    if result.problem or errors:
        raise SystemExit(f"predict-batch failed: {result.problem or errors[:3]}")
    return seconds, init_seconds, result.rows, result.phases, per_block


def scale_runs(work: Path, args: argparse.Namespace, loop_seconds: float,
               layouts: list[tuple[tuple[str, float, float, str], float]]) -> dict[str, Any]:
    """The loop and `layouts` (each with its time at --jobs) again on --scale-jobs jobs: a
    straight line through the two sizes splits each run into a fixed cost (start-up: for
    predict-batch, its actors' imports and model load) and a time per job (the steady state,
    where a long run spends its time)."""
    n1, n2 = args.jobs, args.scale_jobs
    (work / "scale").mkdir(exist_ok=True)
    inputs = build_jobs(n2, work / "scale")

    def line(t1: float, t2: float) -> dict[str, float]:
        per_job = (t2 - t1) / (n2 - n1)
        return {f"seconds_{n1}": round(t1, 2), f"seconds_{n2}": round(t2, 2),
                "per_job_seconds": round(per_job, 4), "fixed_seconds": round(t1 - n1 * per_job, 2)}

    loop = line(loop_seconds, sequential(inputs, work / "scale_sequential", args))
    print(f"sequential x{n2}: {loop[f'seconds_{n2}']:.1f} s", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"jobs": [n1, n2], "loop": loop, "layouts": []}
    for i, (layout, t1) in enumerate(layouts):
        t2 = pipeline(inputs, work / f"scale_pipeline{i}", args, layout)[0]
        print(f"predict-batch {layout} x{n2}: {t2:.1f} s", file=sys.stderr, flush=True)
        run = line(t1, t2)
        out["layouts"].append({"actors": layout[0], "cpus_per_actor": layout[1], "stages": layout[3], **run,
                               "per_job_ratio_over_loop": round(run["per_job_seconds"]
                                                                / loop["per_job_seconds"], 3),
                               f"ratio_over_loop_at_{n2}": round(t2 / loop[f"seconds_{n2}"], 3)})
    return out


def _fused(layout: tuple[str, float, float, str]) -> bool:
    return layout[3] == "fused" or layout[3] == "auto"    # auto fuses for CPU inference


def breakdown(seconds: float, init: float, rows: list, phases: dict[str, float],
              per_block: int, fused: bool) -> dict[str, float]:
    """Where one predict-batch run's time went, from the engine's phases and the rows' stage
    times: Ray's start (outside `seconds`), the driver's work before the stream, the actor
    start-up (the first row's wait less its block's own work: a row leaves an actor with its
    block, and the first block holds the `per_block` largest jobs), the jobs' own stage work
    (per actor: summed over actors it overlaps), and the stream's remaining overhead
    (scheduling, object transfer, serialisation, the last blocks' imbalance)."""
    def total(key: str) -> float:
        return sum(r[key] or 0.0 for r in rows)

    work = {stage: total(f"{stage}_seconds") for stage in ("featurize", "model", "write")}
    largest = sorted(rows, key=lambda r: r["n_tokens"] or 0, reverse=True)[:per_block]
    first_block = sum(r[f"{stage}_seconds"] or 0.0 for r in largest for stage in work)
    first = phases.get("pools_start_to_first_row", 0.0)
    before = sum(phases.get(k, 0.0) for k in ("checks", "ray_start", "read", "read_to_driver", "sort",
                                               "placement_probe"))
    actors = len({r["actor_id"] for r in rows if r.get("actor_id")}) or 1
    stream = first + phases.get("stream_rest", 0.0)
    # the actors' own work: fused actors do every stage, else the model is the bottleneck stage
    critical = (sum(work.values()) if fused else work["model"]) / actors
    return {"ray_init": round(init, 2), "driver_before_stream": round(before, 2),
            "actor_startup_estimate": round(max(0.0, first - first_block), 2),
            **{f"{stage}_work_sum": round(value, 2) for stage, value in work.items()},
            "actor_work_per_actor": round(critical, 2), "model_actors": actors, "jobs_per_block": per_block,
            "stream_overhead_estimate": round(stream - max(0.0, first - first_block) - critical, 2),
            "after_stream": round(seconds - before - stream, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--recycles", type=int, default=1)
    parser.add_argument("--actors", default="1-1")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--stages", default="auto", choices=("auto", "fused", "separate"),
                        help="the first layout's stages (BatchSettings.stages; default auto: fused on CPU)")
    parser.add_argument("--also", nargs="*", default=["1-1:1:0.5:separate", "2-2:1:0.5:auto"],
                        metavar="A:C:W[:S]",
                        help="further predict-batch layouts run in the same invocation: model "
                             "actors MIN-MAX : CPUs per model actor : CPUs per featurize/write "
                             "actor [: stages auto|fused|separate, default auto] (default: the "
                             "separate stages at equal CPUs, then 2 model actors)")
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a loop script and the predict-batch command each as a fresh "
                             "process, imports and Ray start included (default: on)")
    parser.add_argument("--scale-jobs", type=int, default=None, metavar="N",
                        help="also run the loop, the first layout and the last --also layout on N "
                             "jobs, and report each one's fixed cost and time per job from the two "
                             "sizes (default: off; benchmarks/RESULTS.md uses 1000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the sequential loop (the actor gets 1 per CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_overhead.json",
                        help="where the JSON goes (default benchmarks/results/batch_overhead.json)")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="fr-bench-batch-"))
    try:
        inputs = build_jobs(args.jobs, work)
        load_before = os.getloadavg()
        seq_seconds = sequential(inputs, work / "sequential", args)
        print(f"sequential: {seq_seconds:.1f} s", file=sys.stderr, flush=True)
        layouts = [(args.actors, args.cpus_per_actor, args.cpus_per_worker, args.stages)] + [
            (a, float(c), float(w), rest[0] if rest else "auto")
            for a, c, w, *rest in (text.split(":") for text in args.also)]
        runs = []
        for i, layout in enumerate(layouts):
            runs.append((layout, *pipeline(inputs, work / f"pipeline{i}", args, layout),
                         os.getloadavg()[0]))
            print(f"predict-batch {layout}: {runs[-1][1]:.1f} s", file=sys.stderr, flush=True)
        cold = cold_runs(inputs, work, args) if args.cold else None
        if cold:
            print(f"cold: {cold}", file=sys.stderr, flush=True)
        scaling = None
        if args.scale_jobs:
            scaling = scale_runs(work, args, seq_seconds, [(layouts[0], runs[0][1]),
                                                           (layouts[-1], runs[-1][1])])
            print(f"scaling: {scaling}", file=sys.stderr, flush=True)
        (_, pipe_seconds, init_seconds, rows, phases, _, _) = runs[0]
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
        # each from a fresh process, as a user runs them (--cold): imports, Ray start and all
        "cold_process_seconds": cold,
        # --scale-jobs: each run at two sizes -> its fixed cost and its time per job
        "scaling": scaling,
        "layouts": [{"actors": layout[0], "cpus_per_actor": layout[1], "cpus_per_worker": layout[2],
                     "stages": layout[3], "fused": _fused(layout),
                     "pipeline_seconds": round(seconds, 2), "ray_init_seconds": round(init, 2),
                     "ratio_pipeline_over_sequential": round(seconds / seq_seconds, 3),
                     "model_seconds_sum": round(sum(r["model_seconds"] for r in rows_), 2),
                     "phases_seconds": phases_,
                     "breakdown_seconds": breakdown(seconds, init, rows_, phases_, per_block,
                                                                 _fused(layout)),
                     "load_average_after": round(load, 2)}
                    for layout, seconds, init, rows_, phases_, per_block, load in runs],
    }
    out = args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
