"""`foldray predict-batch --inputs URL --out URL`: predict many jobs with Ray Data.

Inputs are folders/prefixes of AF3 JSON / JSONL / mmCIF files, single files, or a Parquet
or CSV manifest (column `input`: file paths/URLs, or column `json`: AF3 JSON texts), local
or any fsspec URL (s3://, with AWS_* credentials and endpoint). The output folder of
`foldray featurize` (or one job folder of it) is an input too: its jobs are predicted from
the stored features, not featurized again (every seed uses the features of
`featurize --seed`; with `--seeds` equal to it, the outputs equal predicting from the JSON).
Stored jobs and JSON inputs may be mixed in one run. The pipeline (the batch
engine, `foldray.actors.batch`; this module only turns flags into its settings):

  read + size (CPU tasks: parse, tokenize, token budget, skip finished jobs)
  -> sort by token count, largest first (similar sizes run together; big jobs start early)
  -> featurize (CPU actors: MSAs, reference conformers, one feature set per seed)
  -> predict (actor pool, --actors MIN-MAX, --num-gpus-per-actor; model loaded once per actor)
  -> write (CPU actors: AF3 layout per job, summary written last as the completion marker)

`<out>/results.parquet` has one row per job (status ok / error / skipped); an exception
for one job in any stage is that job's error row, and finished rows also land in
`<out>/.results/` while the run goes. A rerun skips complete jobs (a folder holding a
different job with the same name is an error); --overwrite redoes them. A killed inference
actor is restarted and its records retried (writes are idempotent). The output location is
write-tested and every actor checked to fit a node before any work; pools that cannot
start within --placement-timeout stop the run. Exit 0 when every job is ok or skipped, 2
when any job (or a start check) failed.

With no --address and no RAY_ADDRESS it starts an embedded local Ray; under
`ray job submit -- python -m foldray.jobs.predict_batch ...` it runs on that cluster.
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import TYPE_CHECKING

from foldray.config_loader import ConfigError
from foldray.jobs.featurize import default_inputs
from foldray.jobs.msa import add_msa_arguments
from foldray.jobs.options import parse_devices, resolve_model_and_runtime
from foldray.jobs.predict import (
    add_model_arguments,
    random_weights_warning,
    settings_from_args,
)
from foldray.jobs.ray_setup import absolute_local, add_verbose_argument
from foldray.limits import DEFAULT_FEATURIZE_TIME_LIMIT_S, DEFAULT_PLACEMENT_TIMEOUT_S
from foldray.parallel.plan import DEFAULT_SHARD_ABOVE, ShardSettings

if TYPE_CHECKING:   # the engine (Ray Data, RDKit, gemmi) is imported where used: fast --help
    from foldray.actors.batch import BatchResult, BatchSettings


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
                        help="folders/prefixes or files (AF3 JSON, JSONL, mmCIF), a "
                             ".parquet/.csv manifest, or `foldray featurize` output; local or "
                             "URL (default: the bundled examples, so a first run needs no files)")
    parser.add_argument("--out", default="foldray_out/predictions",
                        help="output folder or URL (s3://bucket/prefix; default %(default)s)")
    add_model_arguments(parser)
    add_engine_arguments(parser)
    add_model_batch_argument(parser, 1, "jobs")
    add_sharding_arguments(parser)
    add_msa_arguments(parser)
    add_cluster_arguments(parser)
    return parser


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch engine's pool, resource and per-job time flags (predict-batch, screen)."""
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0,
                        help="GPUs per inference actor (0: CPU inference; default %(default)s)")
    parser.add_argument("--num-cpus-per-actor", type=float, default=1.0,
                        help="CPUs reserved per inference actor (default %(default)s)")
    parser.add_argument("--actors", type=parse_actors, default=None, metavar="MIN-MAX",
                        help="inference actor pool size (default 1-<GPUs / per actor>, "
                             "1 on CPU)")
    parser.add_argument("--num-cpus-per-worker", type=float, default=1.0,
                        help="CPUs per featurize / write actor (default %(default)s)")
    parser.add_argument("--cpu-workers", type=parse_actors, default=None, metavar="MIN-MAX",
                        help="featurize and write actor pools, each (default 1-<CPUs / 2>)")
    parser.add_argument("--actor-restarts", type=int, default=3,
                        help="restarts of a dead inference actor before the run fails (default %(default)s)")
    parser.add_argument("--stages", choices=("auto", "fused", "separate"), default="auto",
                        help="after reading: one actor featurizes, predicts and writes each job "
                             "(fused), or separate featurize/model/write pools; auto: fused for "
                             "CPU inference without stage node types (default %(default)s)")
    parser.add_argument("--placement-timeout", type=float, default=DEFAULT_PLACEMENT_TIMEOUT_S,
                        metavar="SECONDS",
                        help="stop the run when the actor pools cannot start within this time "
                             f"(default {DEFAULT_PLACEMENT_TIMEOUT_S:g})")
    add_featurize_time_limit(parser)


GPU_MODEL_BATCH_SIZE = 8   # --model-batch-size auto with GPUs; on CPU auto is 1


def parse_model_batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--model-batch-size takes N or auto, got {text!r}") from None


def add_model_batch_argument(parser: argparse.ArgumentParser, default: int | str, what: str) -> None:
    """`--model-batch-size`: jobs per model-actor call, run in shared forward passes."""
    parser.add_argument("--model-batch-size", type=parse_model_batch, default=default, metavar="N|auto",
                        help=f"{what} per model-actor call; those of the same padded size run in one "
                             "forward pass, each with the samples it gets alone (fp32 rounding apart); "
                             f"auto: {GPU_MODEL_BATCH_SIZE} with GPUs, 1 on CPU, where a padded batch "
                             f"costs more per job than jobs one at a time (default {default}; 1: one a call)")


def model_batch_size(args: argparse.Namespace) -> int:
    """--model-batch-size with auto resolved by the model actors' device."""
    if args.model_batch_size != "auto":
        return args.model_batch_size
    return GPU_MODEL_BATCH_SIZE if args.num_gpus_per_actor > 0 else 1


def add_sharding_arguments(parser: argparse.ArgumentParser) -> None:
    """One job over several devices (context parallelism, docs/performance.md)."""
    group = parser.add_argument_group("sharding (one big job over several devices)")
    group.add_argument("--devices-per-job", type=parse_devices, default=1, metavar="N|auto",
                       help="run each job above --shard-above tokens on N workers in a placement group "
                            "(each with --num-gpus-per-actor GPUs / --num-cpus-per-actor CPUs), pair "
                            "representation split by rows; auto: the fewest that fit by the memory plan, "
                            "at most the largest node's devices (default 1: no sharding)")
    group.add_argument("--shard-above", type=int, default=DEFAULT_SHARD_ABOVE, metavar="TOKENS",
                       help="jobs with more tokens than this are sharded, the others run on one "
                            f"device (default {DEFAULT_SHARD_ABOVE})")
    group.add_argument("--memory-per-device", type=float, default=None, metavar="GB",
                       help="memory the plan may use per device for sharded jobs (default: measured "
                            "free memory of the workers, shared by CPU workers of one node)")


def sharding_settings(args: argparse.Namespace) -> ShardSettings:
    gb = getattr(args, "memory_per_device", None)
    return ShardSettings(devices_per_job=getattr(args, "devices_per_job", 1),
                         shard_above=getattr(args, "shard_above", DEFAULT_SHARD_ABOVE),
                         memory_per_device=None if gb is None else int(gb * 1e9))


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    add_verbose_argument(parser)


def engine_settings(args: argparse.Namespace) -> dict:
    """The BatchSettings fields `add_engine_arguments` and `add_cluster_arguments` set."""
    from foldray.actors.batch import Pools, Resources

    return dict(
        resources=Resources(num_gpus_per_actor=args.num_gpus_per_actor,
                            num_cpus_per_actor=args.num_cpus_per_actor,
                            num_cpus_per_worker=args.num_cpus_per_worker),
        pools=Pools(actors=args.actors, cpu_workers=args.cpu_workers,
                    actor_restarts=args.actor_restarts),
        placement_timeout_s=args.placement_timeout, stages=args.stages,
        featurize_time_limit_s=args.featurize_time_limit or None,
        address=args.address, num_cpus=args.num_cpus, verbose=args.verbose)


def add_featurize_time_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--featurize-time-limit", type=float, default=DEFAULT_FEATURIZE_TIME_LIMIT_S,
                        metavar="SECONDS",
                        help="per job: featurization past this is the job's error row "
                             f"(default {DEFAULT_FEATURIZE_TIME_LIMIT_S:g}; 0: no limit)")


def settings_from(args: argparse.Namespace) -> BatchSettings:
    """The flags as engine settings; local paths made absolute (workers run elsewhere).
    A bad --model-config / --set is a ConfigError naming the key."""
    from foldray.actors.batch import BatchSettings, MsaSettings

    model_config, runtime = resolve_model_and_runtime(args)
    return BatchSettings(
        inputs=tuple(absolute_local(u) for u in (args.inputs or [default_inputs()])),
        out=absolute_local(args.out), stop_after="predict",
        checkpoint=absolute_local(args.checkpoint), config=model_config,
        runtime=runtime, predict=settings_from_args(args), seeds=args.seeds,
        max_tokens=args.max_tokens, share_trunk=args.share_trunk,
        msa=MsaSettings(mode=args.msa, config=absolute_local(args.msa_config),
                        cache=absolute_local(args.msa_cache), workers=args.msa_workers),
        overwrite=args.overwrite, quiet=args.quiet, sharding=sharding_settings(args),
        model_batch_size=model_batch_size(args), **engine_settings(args))


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or model_batch_size(args) < 1:
        print("error: --samples and --model-batch-size must be >= 1", file=sys.stderr)
        return 2
    if model_batch_size(args) > 1 and args.devices_per_job != 1:
        print("error: --model-batch-size > 1 and --devices-per-job are exclusive (a sharded job "
              "runs alone)", file=sys.stderr)
        return 2
    if args.placement_timeout <= 0:
        print("error: --placement-timeout must be > 0", file=sys.stderr)
        return 2
    if isinstance(args.devices_per_job, int) and args.devices_per_job < 1:
        print(f"error: --devices-per-job must be >= 1, got {args.devices_per_job}", file=sys.stderr)
        return 2
    if isinstance(args.devices_per_job, int) and args.samples % args.devices_per_job:
        print(f"error: --samples {args.samples} is not a multiple of --devices-per-job "
              f"{args.devices_per_job}: each device denoises the same number of samples", file=sys.stderr)
        return 2
    if args.memory_per_device is not None and args.memory_per_device <= 0:
        print("error: --memory-per-device must be > 0", file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        print(random_weights_warning(args.model_config), file=sys.stderr)
    return run_and_report(settings, "predict-batch")


def run_and_report(settings: BatchSettings, command: str) -> int:
    """Run the engine; a run that cannot start is one `error:` line and exit 2."""
    from foldray.actors.batch import BatchError, run_batch

    try:
        result = run_batch(settings)
    except BatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return report(result, command)


def report(result: BatchResult, command: str) -> int:
    """Print every error and the counts; exit code 2 when any job failed."""
    counts = collections.Counter(r["status"] for r in result.rows)
    for row in result.rows:
        if row["status"] == "error":
            print(f"error: {row['error']}", file=sys.stderr)
    if result.problem:
        print(f"error: {result.problem}", file=sys.stderr)
    rate = (f"; {counts['ok'] / max(result.seconds, 1e-9):.2f} jobs/s predicted"
            if command == "predict-batch" else "")
    print(f"{command}: {len(result.rows)} jobs in {result.seconds:.1f} s: ok {counts['ok']}, "
          f"error {counts['error']}, skipped {counts['skipped']}{rate}; "
          f"results: {result.table_url}")
    return 2 if counts["error"] or result.problem else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
