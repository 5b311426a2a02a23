"""`foldray msa`: the AlphaFold 3 genetic search (SI 2.2) as its own distributed CPU stage.

Reads AF3 input jobs, searches every protein chain with jackhmmer and every RNA chain with
nhmmer (pyhmmer) against the databases in the config, and writes each job back as
`<out>/<job>_data.json` with `unpairedMsa` / `pairedMsa` filled in: the input of
`foldray predict`, like AF3's data-pipeline-only mode. Each database is split into
`--shards` shards held by `--workers` Ray actors, and every search round maps the profile
over all shards. Results go to a content-addressed cache (`--cache`, default
`<out>/msa_cache`), so a chain is searched once per database release and settings, and an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass

from foldray.errors import InputError
from foldray.inputs.af3_json_writer import job_to_af3_json_text
from foldray.inputs.job import Job
from foldray.io import storage
from foldray.msa.cache import MsaCache
from foldray.msa.config import MsaConfig, load_config, with_overrides
from foldray.msa.databases import check_databases
from foldray.msa.fill import ChainSearcher, NoHitsWarning, SearchCounts, chains_to_search, fill_jobs

DEFAULT_CONFIG = "configs/msa.yaml"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray msa", description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="AF3 JSON / JSONL / mmCIF files or folders, local or URL")
    parser.add_argument("--out", required=True, help="output folder or URL (s3://...)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"databases and search settings (default: {DEFAULT_CONFIG})")
    parser.add_argument("--shards", type=int, default=None, help="shards per database (default: config)")
    parser.add_argument("--workers", type=int, default=None,
                        help="shard-holding Ray actors (default: one per shard)")
    parser.add_argument("--worker-cpus", type=float, default=1.0,
                        help="CPUs reserved per shard worker (each search runs on one core)")
    parser.add_argument("--cache", default=None, help="MSA cache folder or URL (default: config, "
                        "else <out>/msa_cache)")
    parser.add_argument("--no-ray", action="store_true", help="search in this process (no Ray)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    parser.add_argument("--quiet", action="store_true")
    return parser


@dataclass
class MsaRun:
    """What `search_jobs` did."""

    jobs: list[Job]
    counts: SearchCounts
    chains: int
    seconds: float


def search_jobs(jobs: list[Job], config: MsaConfig, *, cache_url: str | None, workers: int | None = None,
                use_ray: bool = True, quiet: bool = False, num_cpus_per_worker: float = 1.0) -> MsaRun:
    """Fill the jobs' MSAs (databases checked first); Ray actors when `use_ray`, else in-process.

    Runs on the Ray this process is connected to (callers wrap it in `connect_ray`).
    """
    from tqdm import tqdm

    from foldray.msa.search import LocalShards
    from foldray.progress import interactive

    check_databases(config)
    started = time.perf_counter()
    if use_ray:
        from foldray.actors.msa_stage import RayShards
        from foldray.jobs.ray_setup import worker_runtime_env

        shards = RayShards(config, workers or config.shards, num_cpus=num_cpus_per_worker,
                           runtime_env=worker_runtime_env())
    else:
        shards = LocalShards(config.shards)
    cache = MsaCache(cache_url) if cache_url else None
    searcher = ChainSearcher(config, shards, cache)
    n_chain = len(chains_to_search(jobs))
    with tqdm(total=n_chain, desc="msa chains", disable=not interactive(quiet), file=sys.stderr) as bar:
        filled = fill_jobs(jobs, searcher, on_chain=lambda: bar.update(1))
    if use_ray:
        shards.close()
    return MsaRun(jobs=filled, counts=searcher.counts, chains=n_chain,
                  seconds=time.perf_counter() - started)


def add_msa_arguments(parser: argparse.ArgumentParser) -> None:
    """`--msa search` and its settings, for `foldray predict-batch`."""
    parser.add_argument("--msa", choices=("given", "search"), default="given",
                        help="given: use the MSAs in the jobs; search: run the genetic search "
                             "(foldray msa) for chains without one before featurization")
    parser.add_argument("--msa-config", default=DEFAULT_CONFIG, help="databases for --msa search")
    parser.add_argument("--msa-cache", default=None,
                        help="MSA cache for --msa search (default: config, else <out>/msa_cache)")
    parser.add_argument("--msa-workers", type=int, default=None,
                        help="shard workers for --msa search (default: one per shard, at most the CPUs)")


def check_search_config(args: argparse.Namespace) -> str | None:
    """For predict-batch, before Ray starts: the `--msa search` config's problem, or None."""
    if args.msa != "search":
        return None
    try:
        check_databases(load_config(args.msa_config))
    except InputError as err:
        return str(err)
    return None


def search_stage(args: argparse.Namespace, pending):  # ray.data.Dataset -> ray.data.Dataset
    """The `--msa search` stage of predict-batch: fill the pending jobs' MSAs, keep the row order.

    Runs between reading and featurization; the shard workers are released before the
    featurization and model pools start.
    """
    import ray

    config = load_config(args.msa_config)
    rows = pending.take_all()
    cache_url = args.msa_cache or config.cache_url or storage.join(args.out, "msa_cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoHitsWarning)
        result = search_jobs([row["payload"] for row in rows], config, cache_url=cache_url,
                             workers=args.msa_workers, quiet=args.quiet)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if not args.quiet:
        print(f"msa: {result.chains} chains in {result.seconds:.1f} s: {result.counts.searched} "
              f"database searches run, {result.counts.cached} from the cache ({cache_url})")
    for row, job in zip(rows, result.jobs, strict=True):
        row["payload"] = job
    return ray.data.from_items(rows).repartition(target_num_rows_per_block=1).materialize()


def output_url(out: str, job: Job) -> str:
    return storage.join(out, f"{job.safe_name}_data.json")


def run(args: argparse.Namespace) -> int:
    from foldray.inputs.load import find_inputs, read_jobs

    try:
        config = with_overrides(load_config(args.config), shards=args.shards)
        check_databases(config)
        files = [path for location in args.inputs for path in find_inputs(location)]
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.shards < 1 or (args.workers is not None and args.workers < 1):
        print("error: --shards and --workers must be >= 1", file=sys.stderr)
        return 2
    jobs: list[Job] = []
    n_errors = 0
    for source in files:
        for item in read_jobs(source):
            if isinstance(item, InputError):
                n_errors += 1
                print(f"error: {item}", file=sys.stderr)
            else:
                jobs.append(item)
    cache_url = args.cache or config.cache_url or storage.join(args.out, "msa_cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoHitsWarning)
        if args.no_ray:
            result = search_jobs(jobs, config, cache_url=cache_url, use_ray=False, quiet=args.quiet)
        else:
            from foldray.jobs.ray_setup import connect_ray

            with connect_ray(args.address, quiet=args.quiet, num_cpus=args.num_cpus):
                result = search_jobs(jobs, config, cache_url=cache_url, workers=args.workers,
                                     quiet=args.quiet, num_cpus_per_worker=args.worker_cpus)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    for job in result.jobs:
        url = output_url(args.out, job)
        storage.write_text_atomic(url, job_to_af3_json_text(job))
        if not args.quiet:
            print(f"ok: {job.name}: {url}")
    if not args.quiet:
        print(f"msa: {len(result.jobs)} jobs, {result.chains} chains in {result.seconds:.1f} s: "
              f"{result.counts.searched} database searches run, {result.counts.cached} from the "
              f"cache ({cache_url}); {n_errors} bad records")
    return 2 if n_errors else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
