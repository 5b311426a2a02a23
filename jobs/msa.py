"""`foldray msa`: the AlphaFold 3 genetic search (SI 2.2) as its own distributed CPU stage.

Reads AF3 input jobs, searches every protein chain with jackhmmer and every RNA chain with
nhmmer (pyhmmer) against the databases in the config, and writes each job back as
`<out>/<job>_data.json` with `unpairedMsa` / `pairedMsa` filled in: the input of
`foldray predict`, like AF3's data-pipeline-only mode. On Ray the search and the writes
are the batch engine's MSA stage (`foldray.actors.msa_stage`, also `predict-batch --msa
search`); this module parses flags and prints. Each database is split into
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
from foldray.jobs.options import add_set_argument
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
    add_set_argument(parser, "override a setting of the --config file, e.g. --set shards=8 "
                             "--set cache_url=s3://bucket/msa_cache")
    parser.add_argument("--shards", type=int, default=None, help="shards per database (default: config)")
    parser.add_argument("--workers", type=int, default=None,
                        help="shard-holding Ray actors (default: one per shard)")
    parser.add_argument("--worker-cpus", type=float, default=1.0,
                        help="CPUs reserved per shard worker (each search runs on one core; "
                             "default %(default)s)")
    parser.add_argument("--cache", default=None, help="MSA cache folder or URL (default: config, "
                        "else <out>/msa_cache)")
    parser.add_argument("--no-ray", action="store_true", help="search in this process (no Ray)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no per-job ok lines; errors still print")
    return parser


@dataclass
class MsaRun:
    """What `search_jobs` did."""

    jobs: list[Job]
    counts: SearchCounts
    chains: int
    seconds: float


def search_jobs(jobs: list[Job], config: MsaConfig, *, cache_url: str | None,
                quiet: bool = False) -> MsaRun:
    """Fill the jobs' MSAs in this process (`--no-ray`; databases checked first)."""
    from tqdm import tqdm

    from foldray.msa.search import LocalShards
    from foldray.progress import interactive

    check_databases(config)
    started = time.perf_counter()
    searcher = ChainSearcher(config, LocalShards(config.shards), MsaCache(cache_url) if cache_url else None)
    n_chain = len(chains_to_search(jobs))
    with tqdm(total=n_chain, desc="msa chains", disable=not interactive(quiet), file=sys.stderr) as bar:
        filled = fill_jobs(jobs, searcher, on_chain=lambda: bar.update(1))
    return MsaRun(jobs=filled, counts=searcher.counts, chains=n_chain,
                  seconds=time.perf_counter() - started)


def add_msa_arguments(parser: argparse.ArgumentParser) -> None:
    """`--msa search` and its settings, for `foldray predict-batch`."""
    parser.add_argument("--msa", choices=("given", "search"), default="given",
                        help="given: use the MSAs in the jobs; search: run the genetic search "
                             "(foldray msa) for chains without one before featurization "
                             "(default %(default)s)")
    parser.add_argument("--msa-config", default=DEFAULT_CONFIG,
                        help="databases for --msa search (default %(default)s)")
    parser.add_argument("--msa-cache", default=None,
                        help="MSA cache for --msa search (default: config, else <out>/msa_cache)")
    parser.add_argument("--msa-workers", type=int, default=None,
                        help="shard workers for --msa search (default: one per shard, at most the CPUs)")


def output_url(out: str, job: Job) -> str:
    return storage.join(out, f"{job.safe_name}_data.json")


def run(args: argparse.Namespace) -> int:
    from foldray.inputs.load import find_inputs, read_jobs

    try:
        config = with_overrides(load_config(args.config, args.set), shards=args.shards)
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
    if args.no_ray:
        return _run_local(args, jobs, config, cache_url, n_errors)
    return _run_ray(args, jobs, config, cache_url, n_errors)


def _run_local(args: argparse.Namespace, jobs: list[Job], config: MsaConfig, cache_url: str,
               n_errors: int) -> int:
    """`--no-ray`: search and write in this process."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoHitsWarning)
        result = search_jobs(jobs, config, cache_url=cache_url, quiet=args.quiet)
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


def _run_ray(args: argparse.Namespace, jobs: list[Job], config: MsaConfig, cache_url: str,
             n_errors: int) -> int:
    """The batch engine's MSA stage (`foldray.actors.msa_stage`): search and write in the
    cluster; this process prints what came back."""
    from foldray.actors.msa_stage import search_and_write
    from foldray.jobs.ray_setup import connect_ray, worker_remote_args

    started = time.perf_counter()
    with connect_ray(args.address, quiet=args.quiet, num_cpus=args.num_cpus):
        rows, totals, lines = search_and_write(
            jobs, config, out_url=args.out, cache_url=cache_url, workers=args.workers,
            num_cpus_per_worker=args.worker_cpus, remote=worker_remote_args())
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
    for row in sorted(rows, key=lambda r: (r["source"], r["name"])):
        if row["status"] == "ok":
            if not args.quiet:
                print(f"ok: {row['name']}: {row['output']}")
        else:
            n_errors += 1
            print(f"error: {row['error']}", file=sys.stderr)
    if not args.quiet:
        print(f"msa: {len(jobs)} jobs, {len(chains_to_search(jobs))} chains in "
              f"{time.perf_counter() - started:.1f} s: {totals['msa_searched']} database searches "
              f"run, {totals['msa_cached']} from the cache ({cache_url}); {n_errors} bad records")
    return 2 if n_errors else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
