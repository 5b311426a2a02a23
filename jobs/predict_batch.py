"""`foldray predict-batch --inputs URL --out URL`: predict many jobs with Ray Data.

Inputs are folders/prefixes of AF3 JSON / JSONL / mmCIF files, single files, or a Parquet
or CSV manifest (column `input`: file paths/URLs, or column `json`: AF3 JSON texts), local
or any fsspec URL (s3://, with AWS_* credentials and endpoint). The pipeline:

  read + size (CPU tasks: parse, tokenize, token budget, skip finished jobs)
  -> sort by token count, largest first (similar sizes run together; big jobs start early)
  -> featurize (CPU tasks: MSAs, reference conformers, one feature set per seed)
  -> predict (actor pool, --actors MIN-MAX, --num-gpus-per-actor; model loaded once per actor)
  -> write (CPU tasks: AF3 layout per job, summary written last as the completion marker)

`<out>/results.parquet` has one row per job (status ok / error / skipped). A rerun skips
complete jobs; --overwrite redoes them. A killed inference actor is restarted and its
records retried (writes are idempotent). The output location is write-tested before any
work, so a missing bucket or refused credentials fail at once. Exit 0 when every job is ok
or skipped, 2 when any job (or the storage check) failed.

With no --address and no RAY_ADDRESS it starts an embedded local Ray; under
`ray job submit -- python -m foldray.jobs.predict_batch ...` it runs on that cluster.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from typing import Any

from foldray.errors import InputError, error_line
from foldray.jobs.msa import add_msa_arguments, check_search_config, search_stage
from foldray.jobs.predict import (
    add_model_arguments,
    random_weights_warning,
    runtime_from_args,
    settings_from_args,
)
from foldray.jobs.ray_setup import absolute_local, connect_ray, worker_remote_args


def parse_actors(text: str) -> tuple[int, int]:
    """`N` or `MIN-MAX` -> (min, max) actor pool size."""
    try:
        low, _, high = text.partition("-")
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--actors takes N or MIN-MAX, got {text!r}") from None
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise argparse.ArgumentTypeError(f"--actors needs 1 <= MIN <= MAX, got {text!r}")
    return bounds


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="foldray predict-batch", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", default=None,
                        help="folders/prefixes or files (AF3 JSON, JSONL, mmCIF), or a "
                             ".parquet/.csv manifest; local or URL (default: the bundled "
                             "examples, so a first run needs no files)")
    parser.add_argument("--out", default="foldray_out/predictions",
                        help="output folder or URL (s3://bucket/prefix)")
    add_model_arguments(parser)
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0,
                        help="GPUs per inference actor (0: CPU inference)")
    parser.add_argument("--num-cpus-per-actor", type=float, default=1.0,
                        help="CPUs reserved per inference actor")
    parser.add_argument("--actors", type=parse_actors, default=None, metavar="MIN-MAX",
                        help="inference actor pool size (default 1-<GPUs / per actor>, "
                             "1 on CPU)")
    parser.add_argument("--num-cpus-per-worker", type=float, default=1.0,
                        help="CPUs per featurize / write actor")
    parser.add_argument("--cpu-workers", type=parse_actors, default=None, metavar="MIN-MAX",
                        help="featurize and write actor pools, each (default 1-<CPUs / 2>)")
    parser.add_argument("--actor-restarts", type=int, default=3,
                        help="restarts of a dead inference actor before the run fails")
    add_msa_arguments(parser)
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    return parser


def collect_entries(locations: list[str]) -> tuple[list[dict[str, Any]], list[InputError]]:
    """Input units (files, or manifest rows holding JSON) and the locations that failed.

    Storage errors here (missing bucket, refused credentials) are raised, not collected.
    """
    from foldray.inputs.load import INPUT_SUFFIXES, find_inputs
    from foldray.inputs.manifest import ManifestEntry, is_manifest, read_manifest

    entries: list[dict[str, Any]] = []
    errors: list[InputError] = []

    def add_files(location: str) -> None:
        files = find_inputs(location)
        if not files:
            errors.append(InputError(f"no input files ({', '.join(INPUT_SUFFIXES)}) found",
                                     source=location))
        entries.extend({"source": f, "text": None} for f in files)

    for location in locations:
        try:
            if not is_manifest(location):
                add_files(location)
                continue
            for entry in read_manifest(location):
                if isinstance(entry, InputError):
                    errors.append(entry)
                elif isinstance(entry, ManifestEntry) and entry.text is not None:
                    entries.append({"source": entry.source, "text": entry.text})
                else:
                    try:
                        add_files(entry.source)
                    except InputError as err:
                        errors.append(err)
        except InputError as err:
            errors.append(err)
    return entries, errors


def _storage_error(what: str, err: Exception) -> int:
    print(f"error: {what}: {err.__class__.__name__}: {err} (check the bucket/path and the "
          "AWS_* credentials and endpoint)", file=sys.stderr)
    return 2


def _error_rows(errors: list[InputError]) -> list[dict[str, Any]]:
    from foldray.actors.predict_rows import result_row

    return [result_row("error", source=err.source, name=err.job, error=error_line(err))
            for err in errors]


def _mark_duplicates(rows: list[dict[str, Any]]) -> frozenset[str]:
    """Output names used by more than one job: those jobs are errors, not overwrites."""
    names = collections.Counter(r["safe_name"] for r in rows if r["status"] != "error")
    return frozenset(name for name, count in names.items() if count > 1 and name)


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        print("error: --samples must be >= 1", file=sys.stderr)
        return 2
    from foldray.io import storage
    from foldray.jobs.featurize import default_inputs

    # workers resolve paths in their own working directory: make local ones absolute here
    args.inputs = [absolute_local(u) for u in (args.inputs or [default_inputs()])]
    args.out, args.checkpoint = absolute_local(args.out), absolute_local(args.checkpoint)
    args.msa_config, args.msa_cache = absolute_local(args.msa_config), absolute_local(args.msa_cache)
    started = time.perf_counter()
    try:   # before Ray or the model: a wrong bucket or key fails in seconds
        storage.check_writable(args.out)
    except OSError as err:
        return _storage_error(f"output {args.out}", err)
    try:
        entries, bad_locations = collect_entries(args.inputs)
    except Exception as err:  # s3fs/botocore errors when listing inputs
        return _storage_error(f"inputs {args.inputs}", err)
    if (msa_error := check_search_config(args)) is not None:  # missing database: fail now
        print(f"error: {msa_error}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        print(random_weights_warning(args.config), file=sys.stderr)
    with connect_ray(args.address, quiet=args.quiet, num_cpus=args.num_cpus):
        rows = _run_pipeline(args, entries) if entries else []
    rows = sorted(rows + _error_rows(bad_locations), key=lambda r: (r["source"], r["name"]))
    return _report(args, rows, time.perf_counter() - started)


def _pool_sizes(args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int]]:
    """(inference, CPU stage) actor pool bounds, defaulting to what the cluster has."""
    import ray

    resources = ray.cluster_resources()
    inference = args.actors
    if inference is None and args.num_gpus_per_actor > 0:
        inference = 1, max(1, int(resources.get("GPU", 0.0) // args.num_gpus_per_actor))
    cpu = args.cpu_workers or (1, max(1, int(resources.get("CPU", 1.0) // 2)))
    return inference or (1, 1), cpu


def _run_pipeline(args: argparse.Namespace, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col
    from ray.util.annotations import RayDeprecationWarning

    from foldray.actors.placement import stage_resources
    from foldray.actors.predict_rows import PENDING, RESULT_COLUMNS
    from foldray.actors.predict_stage import PredictStage
    from foldray.actors.prepare_stage import FeaturizeStage, read_stage
    from foldray.actors.write_stage import WriteStage

    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    remote = worker_remote_args()
    read = (ray.data.from_items(entries)
            .flat_map(read_stage, fn_kwargs={"out_url": args.out, "max_tokens": args.max_tokens,
                                             "overwrite": args.overwrite}, **remote)
            .materialize())
    light = read.select_columns(list(RESULT_COLUMNS)).take_all()
    duplicates = _mark_duplicates(light)
    finished = []
    for row in light:
        if row["safe_name"] in duplicates and row["status"] != "error":
            row.update(status="error", output="", error=f"{row['source']}: {row['name']}: name: "
                       f"another job in this batch has the output name {row['safe_name']!r}")
        if row["status"] != PENDING:
            finished.append(row)
    if len(finished) == len(light):
        return finished

    (low, high), (cpu_low, cpu_high) = _pool_sizes(args)
    keep = col("status") == PENDING
    if duplicates:
        keep = keep & col("safe_name").not_in(sorted(duplicates))
    # Largest first: similar sizes run back to back and the longest jobs do not straggle at
    # the end. Materialized before the actor pools start, so sort tasks never wait for CPUs
    # the pools hold. One job per block: jobs spread evenly over the actors.
    pending = (read.filter(expr=keep)
               .sort("n_tokens", descending=True)
               .repartition(target_num_rows_per_block=1)
               .materialize())
    if args.msa == "search":  # genetic search (foldray msa) before featurization
        pending = search_stage(args, pending)
    # CPU stages are actor pools too: a worker decodes the CCD once, and Ray's idle-worker
    # reaping does not restart (and re-import) task workers between jobs.
    # On a cluster with stage resources (cluster.yaml), CPU stages go to featurization
    # nodes and model actors to GPU nodes; without them, anywhere with room.
    cpu_place = stage_resources("featurize", args.num_cpus_per_worker)
    model_place = stage_resources("model", args.num_gpus_per_actor or 1.0)
    cpu_stage = {"compute": ActorPoolStrategy(min_size=cpu_low, max_size=cpu_high),
                 "num_cpus": args.num_cpus_per_worker, **remote,
                 **({"resources": cpu_place} if cpu_place else {})}
    featurized = pending.map(FeaturizeStage, fn_constructor_kwargs={
        "seeds": args.seeds, "max_tokens": args.max_tokens, "share_trunk": args.share_trunk},
        **cpu_stage)
    with warnings.catch_warnings():
        # Ray 2.60 flags every extra remote arg as deprecated but has no named parameter for
        # restarts; its default (-1) would retry an actor that dies on every record forever.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        predicted = featurized.map(
            PredictStage, fn_constructor_kwargs={
                "checkpoint": args.checkpoint, "config": args.config,
                "runtime": runtime_from_args(args),
                "device": "cuda" if args.num_gpus_per_actor > 0 else "cpu",
                "settings": settings_from_args(args)},
            compute=ActorPoolStrategy(min_size=low, max_size=high),
            num_gpus=args.num_gpus_per_actor, num_cpus=args.num_cpus_per_actor,
            max_restarts=args.actor_restarts, max_task_retries=-1, **remote,
            **({"resources": model_place} if model_place else {}))
    written = predicted.map(WriteStage, fn_constructor_kwargs={"out_url": args.out}, **cpu_stage)
    return finished + written.take_all()


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], seconds: float) -> int:
    from foldray.io.results import PREDICT_SCHEMA, write_results_table

    table_url = write_results_table(args.out, rows, schema=PREDICT_SCHEMA)
    counts = collections.Counter(r["status"] for r in rows)
    for row in rows:
        if row["status"] == "error":
            print(f"error: {row['error']}", file=sys.stderr)
    print(f"predict-batch: {len(rows)} jobs in {seconds:.1f} s: ok {counts['ok']}, "
          f"error {counts['error']}, skipped {counts['skipped']}; "
          f"{counts['ok'] / max(seconds, 1e-9):.2f} jobs/s predicted; results: {table_url}")
    return 2 if counts["error"] else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
