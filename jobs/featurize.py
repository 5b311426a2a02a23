"""`foldray featurize`: featurize many jobs on Ray, inputs and outputs on disk or s3://.

With no Ray address it starts an embedded local Ray; with RAY_ADDRESS (or --address) it
runs on that cluster. Each job's features land in `<out>/<job>/features.npz` and a results
table `<out>/results.parquet` lists every record with its status, so a bad record is
reported instead of sinking the batch, and a rerun skips jobs already done.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from importlib import resources

from foldray.features.tokenize import DEFAULT_MAX_TOKENS
from foldray.jobs.ray_setup import absolute_local, connect_ray, worker_remote_args


def default_inputs() -> str:
    """The example bundled with the package, so a newcomer's first run needs no files."""
    return str(resources.files("foldray") / "examples")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray featurize", description=__doc__)
    parser.add_argument("--inputs", nargs="+", default=None,
                        help="AF3 JSON / JSONL / mmCIF files or folders, local or URL "
                             "(default: the bundled example)")
    parser.add_argument("--out", default="foldray_out/features", help="output folder or URL")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--seed", type=int, default=0, help="seed of reference-conformer rotations")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    parser.add_argument("--quiet", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    import ray  # jobs wire Ray; the library never imports it

    from foldray.actors.featurize_stage import FeaturizeStage, read_jobs_stage
    from foldray.actors.placement import stage_resources
    from foldray.inputs.load import find_inputs
    from foldray.io.results import write_results_table

    inputs = [absolute_local(u) for u in (args.inputs or [default_inputs()])]
    args.out = absolute_local(args.out)      # workers run in their own working directory
    files = [path for location in inputs for path in find_inputs(location)]
    if not files:
        print(f"error: no input files under {inputs}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with connect_ray(args.address, quiet=args.quiet, num_cpus=args.num_cpus):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = not args.quiet
        remote_args = worker_remote_args()
        place = stage_resources("featurize")
        jobs = ray.data.from_items([{"source": f} for f in files]).flat_map(read_jobs_stage,
                                                                            **remote_args)
        jobs = jobs.materialize()
        names = collections.Counter(r["safe_name"] for r in jobs.select_columns(["safe_name"])
                                    .iter_rows() if r["safe_name"])
        duplicates = frozenset(name for name, count in names.items() if count > 1)
        results = jobs.map(FeaturizeStage, fn_constructor_kwargs={
            "out_url": args.out, "max_tokens": args.max_tokens, "seed": args.seed,
            "duplicates": duplicates}, compute=ray.data.ActorPoolStrategy(min_size=1),
            **remote_args, **({"resources": place} if place else {}))
        rows = results.take_all()
    table_url = write_results_table(args.out, rows)
    counts = collections.Counter(r["status"] for r in rows)
    print(f"featurized {len(rows)} records in {time.perf_counter() - started:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; results: {table_url}")
    for row in rows:
        if row["status"] == "input_error":
            print(f"error: {row['error']}", file=sys.stderr)
    return 2 if counts.get("input_error") else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
