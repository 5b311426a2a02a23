"""Screen throughput, side by side in one run: a plain loop vs `foldray screen` vs Serve.

One target with an MSA against the first N ligands of shared/data/ligands/screen_100.smi,
the same model (tiny config, random weights) and sampling settings in every case:
- (a) "loop": an in-process loop that loads the model once and, per ligand, builds the
  complex's AF3 JSON, featurizes it from scratch (MSA parsed every time), predicts and
  writes its AF3 output folder: how a folder of jobs is predicted one by one;
- (b) "screen": `foldray screen` on the batch engine (target MSAs parsed once per
  featurize actor, complexes of one padded size batched on the model actor, written by
  the write actors), wall time of the whole command including Ray's actor pools;
- (b') "funnel": (b) with `--funnel fraction:0.1` (stage one: 1 sample,
  `--stage1-steps` steps; stage two: the full settings for the best 10%);
- (c) "serve": `FoldrayClient.screen` against a local Serve app (target cache, batching),
  summaries only (no output folders written).
Ray is started once (2 CPUs here) and shared by (b), (b') and (c). Ligands per minute,
ratios vs (a), where the time went (featurize / model / write seconds per ligand; the
engine's phases). On a machine with a GPU (`--device cuda`, the default when one is
there) every case runs the model there and ligands per GPU-hour are recorded.
Writes benchmarks/results/screen_throughput.json.

    python benchmarks/screen_throughput.py [--n 100] [--target 102m] [--samples 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import cpu_name, free_port, git_sha  # noqa: E402  (benchmarks/provenance.py)

DATA = ROOT.parent / "shared" / "data"
TOKEN = "benchmark-token"
# target name -> (MSA file, what it is)
TARGETS = {"102m": ("102m_A.a3m", "myoglobin 102m chain A (154 aa) + 98-row MSA"),
           "2q2k": ("2q2k_A.a3m", "2q2k chain A (70 aa) + 4-row MSA")}


def _target(name: str) -> dict:
    from foldray.client import target_job

    msa = (DATA / "msas" / TARGETS[name][0]).read_text()
    sequence = next(line.strip() for line in msa.splitlines() if line and not line.startswith(">"))
    return {**target_job(sequence, msa=msa), "name": f"target_{name}"}


def _complex(target: dict, ligand: dict) -> dict:
    chain = chr(ord("A") + len(target["sequences"]))
    return {**target, "name": ligand["id"],
            "sequences": target["sequences"] + [{"ligand": {"id": chain, "smiles": ligand["smiles"]}}]}


def run_loop(target: dict, ligands: list[dict], args: argparse.Namespace, out: Path) -> dict:
    """(a): model loaded once (not timed), every complex featurized from scratch."""
    from foldray.errors import InputError
    from foldray.features.pipeline import featurize_seeds
    from foldray.inputs.af3_json import parse_af3_json
    from foldray.io.confidences import write_prediction
    from foldray.predictor import Predictor, PredictSettings

    predictor = Predictor.load(None, config="tiny", device=args.device)
    settings = PredictSettings(n_sample=args.samples, n_step=args.steps, n_cycle=args.recycles)
    warm = parse_af3_json(json.dumps(_complex(target, {"id": "warm", "smiles": "CCO"})),
                          allow_paths=False)[0]
    predictor.predict_featurized(featurize_seeds(warm, featurization=predictor.config.featurization),
                                 settings)
    times = collections.Counter()
    statuses = collections.Counter()
    start = time.perf_counter()
    for ligand in ligands:
        try:
            t0 = time.perf_counter()
            job = parse_af3_json(json.dumps(_complex(target, ligand)), allow_paths=False)[0]
            by_seed = featurize_seeds(job, featurization=predictor.config.featurization)
            t1 = time.perf_counter()
            tokens, samples = predictor.predict_featurized(by_seed, settings)
            t2 = time.perf_counter()
            write_prediction(str(out), job, tokens, samples, outputs=settings.outputs)
            times.update(featurize=t1 - t0, model=t2 - t1, write=time.perf_counter() - t2)
            statuses["ok"] += 1
        except InputError:
            statuses["error"] += 1
    seconds = time.perf_counter() - start
    return {"case": "(a) loop: model loaded once, each complex featurized from scratch",
            "n_ligands": len(ligands), "n_ok": statuses["ok"], "seconds": seconds,
            "seconds_per_ligand": {k: v / max(statuses["ok"], 1) for k, v in times.items()}}


def _screen_args(target_file: Path, library: Path, out: Path, args: argparse.Namespace,
                 extra: list[str]) -> list[str]:
    gpu = ["--num-gpus-per-actor", "1"] if args.device == "cuda" else []
    return ["--target", str(target_file), "--ligands", str(library), "--out", str(out),
            "--samples", str(args.samples), "--steps", str(args.steps), "--recycles", str(args.recycles),
            "--model-batch-size", str(args.model_batch_size), "--actors", f"{args.actors}-{args.actors}",
            "--quiet", "--num-cpus-per-actor", "1", "--num-cpus-per-worker", "0.5", *gpu, *extra]


def run_screen(target_file: Path, library: Path, out: Path, args: argparse.Namespace,
               funnel: bool) -> dict:
    """(b) / (b'): `foldray screen` in this process, on the Ray this script started."""
    import pyarrow.parquet as pq

    from foldray.jobs import screen

    extra = ["--funnel", "fraction:0.1", "--stage1-steps", str(args.stage1_steps)] if funnel else []
    parsed = screen.build_parser().parse_args(_screen_args(target_file, library, out, args, extra))
    settings = screen.settings_from(parsed, screen.read_target(str(target_file)))
    start = time.perf_counter()
    phases: dict = {}
    if funnel:
        code = screen.run_screen(parsed, settings)
    else:   # the engine itself, for its phases (what `foldray screen` runs)
        from foldray.actors.batch import run_batch

        result = run_batch(settings)
        phases = result.phases
        code = 0 if all(r["status"] == "ok" for r in result.rows) else 2
    seconds = time.perf_counter() - start
    rows = pq.read_table(out / "results.parquet").to_pylist()
    by_stage: dict = {}
    for row in rows:
        stage = by_stage.setdefault(row["stage"], collections.Counter())
        stage["n"] += 1
        stage["ok"] += row["status"] == "ok"
        for key in ("featurize_seconds", "model_seconds", "write_seconds"):
            stage[key] += row[key] or 0.0
    stages = {str(k): {"n_ligands": v["n"], "n_ok": v["ok"],
                       **{f"{key}_per_ligand": v[key] / max(v["n"], 1)
                          for key in ("featurize_seconds", "model_seconds", "write_seconds")}}
              for k, v in sorted(by_stage.items())}
    label = ("(b') foldray screen --funnel fraction:0.1 (stage one: 1 sample, "
             f"{args.stage1_steps} steps)" if funnel else "(b) foldray screen (batch engine)")
    return {"case": label, "exit_code": code, "n_ligands": by_stage.get(1 if funnel else 2, {}).get("n", 0),
            "n_ok": sum(1 for r in rows if r["status"] == "ok" and r["stage"] == (1 if funnel else 2)),
            "seconds": seconds, "stages": stages, "engine_phases": phases}


def run_serve(target: dict, ligands: list[dict], args: argparse.Namespace) -> dict:
    """(c): the Serve screen through the client (summaries only)."""
    from ray import serve

    from foldray.actors.serve import build_app
    from foldray.client import FoldrayClient

    model = {"model_config": "tiny", "n_sample": args.samples, "n_step": args.steps,
             "n_cycle": args.recycles, "featurizer_num_cpus": 0.5,
             # --actors model replicas beside the featurizer within the 2 CPUs
             "model_replicas": args.actors, "model_num_cpus": round(1.5 / args.actors, 3),
             "access_log": False, "debug_endpoints": True, "max_batch_size": args.model_batch_size,
             **({"num_gpus": 1, "device": "cuda"} if args.device == "cuda" else {})}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = FoldrayClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=600)
    try:
        serve.run(build_app(model), name="bench", route_prefix="/")
        client.predict(_complex(target, {"id": "warm", "smiles": "CCO"}), timeout=900)   # load: not timed
        start = time.perf_counter()
        table = client.screen(target, ligands, concurrency=args.concurrency, progress=False)
        seconds = time.perf_counter() - start
        return {"case": f"(c) Serve screen (client concurrency {args.concurrency}, max_batch_size "
                        f"{args.model_batch_size}; summaries only)",
                "n_ligands": len(ligands), "n_ok": table.column("status").to_pylist().count("ok"),
                "seconds": seconds, "server": client.stats()}
    finally:
        serve.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="ligands (default 100)")
    parser.add_argument("--target", choices=sorted(TARGETS), default="102m",
                        help="target with its MSA (default 102m)")
    parser.add_argument("--samples", type=int, default=2, help="samples per ligand (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="diffusion steps (default 20)")
    parser.add_argument("--recycles", type=int, default=1, help="trunk cycles (default 1)")
    parser.add_argument("--stage1-steps", type=int, default=5, help="funnel stage one steps (default 5)")
    parser.add_argument("--model-batch-size", type=int, default=None,
                        help="complexes per model call, (b) and (c) (default: as `foldray screen "
                             "--model-batch-size auto`, 8 on a GPU, 1 on CPU)")
    parser.add_argument("--concurrency", type=int, default=8, help="(c) client concurrency (default 8)")
    parser.add_argument("--actors", type=int, default=2,
                        help="(b) model actors of 1 CPU each (on CPU: featurize, predict and write "
                             "fused in each); the loop's torch uses every core (default 2 = this "
                             "machine's CPUs: equal CPUs)")
    parser.add_argument("--cases", default="a,b,f,c", help="which cases (default a,b,f,c; f = funnel)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "screen_throughput.json"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")      # a private loopback Ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["FOLDRAY_SERVE_TOKEN"] = TOKEN
    import ray
    import torch
    from ray._private import ray_constants

    from foldray.client import load_ligands

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model_batch_size is None:
        from foldray.jobs.predict_batch import GPU_MODEL_BATCH_SIZE

        args.model_batch_size = GPU_MODEL_BATCH_SIZE if args.device == "cuda" else 1
    cases = set(args.cases.split(","))
    target = _target(args.target)
    ligands = load_ligands(DATA / "ligands" / "screen_100.smi")[:args.n]
    work = Path(tempfile.mkdtemp(prefix="fr-screen-bench-", dir="/tmp"))
    target_file = work / "target.json"
    target_file.write_text(json.dumps(target))
    library = work / "library.smi"
    library.write_text("".join(f"{item['smiles']} {item['id']}\n" for item in ligands))

    rows = []
    if "a" in cases:
        rows.append(run_loop(target, ligands, args, work / "loop"))
    ray_constants.ENABLE_RAY_CLUSTER = False                 # bind loopback only
    ray.init(address="local", num_cpus=2, num_gpus=1 if args.device == "cuda" else 0,
             include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(work / "ray"),
             object_store_memory=1 << 30, configure_logging=False, log_to_driver=False)
    try:
        if "b" in cases:
            rows.append(run_screen(target_file, library, work / "screen", args, funnel=False))
        if "f" in cases:
            rows.append(run_screen(target_file, library, work / "funnel", args, funnel=True))
        if "c" in cases:
            rows.append(run_serve(target, ligands, args))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0]["seconds"] if rows and rows[0]["case"].startswith("(a)") else None
    for row in rows:
        row["ligands_per_minute"] = 60 * row["n_ligands"] / row["seconds"]
        if args.device == "cuda":
            row["ligands_per_gpu_hour"] = 3600 * row["n_ligands"] / row["seconds"]
        if base:
            row["ratio_vs_loop"] = base / row["seconds"] * row["n_ligands"] / rows[0]["n_ligands"]
    result = {
        "name": "screen_throughput", "device": args.device,
        "cpu": cpu_name(), "torch": torch.__version__, "git_sha": git_sha(),
        "config": {"model_config": "tiny", "weights": "random (no trained checkpoint yet)",
                   "samples": args.samples, "steps": args.steps, "recycles": args.recycles,
                   "stage1_steps": args.stage1_steps, "model_batch_size": args.model_batch_size,
                   "target": TARGETS[args.target][1], "n_ligands": len(ligands), "ray_cpus": 2,
                   "screen_model_actors": args.actors, "loop_torch_threads": torch.get_num_threads()},
        "peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
