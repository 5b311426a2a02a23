"""`foldray featurize`: featurize many jobs on Ray, inputs and outputs on disk or s3://.

The batch engine of `foldray predict-batch` (`foldray.actors.batch`) stopped after
featurization: same reading, checks and statuses (ok / error / skipped), same results
table. With no Ray address it starts an embedded local Ray; with RAY_ADDRESS (or
--address) it runs on that cluster. Each job's features land in
`<out>/<job>/features.npz` (its sidecar `features.json` last, the completion marker) and
`<out>/results.parquet` lists every record with its status, so a bad record is reported
instead of sinking the batch, and a rerun skips jobs already done.

Features are made for one model, with its featurization switches: `--checkpoint` (read from
its header) or `--model-config`, as predict-batch takes them. The sidecar records them, and
predict-batch refuses stored jobs made with another featurization than its model's.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

from foldray.config_loader import ConfigError
from foldray.jobs.options import (
    PRESETS_HELP,
    add_model_config_argument,
    add_set_argument,
    resolve_model_and_runtime,
)
from foldray.jobs.ray_setup import absolute_local, add_verbose_argument
from foldray.limits import DEFAULT_MAX_TOKENS


def default_inputs() -> str:
    """The example bundled with the package, so a newcomer's first run needs no files."""
    return str(resources.files("foldray") / "examples")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray featurize", description=__doc__)
    parser.add_argument("--inputs", nargs="+", default=None,
                        help="AF3 JSON / JSONL / mmCIF files or folders, or a .parquet/.csv "
                             "manifest; local or URL (default: the bundled example)")
    parser.add_argument("--out", default="foldray_out/features",
                        help="output folder or URL (default %(default)s)")
    add_model_config_argument(parser, help_text=(
        f"the model the features are for (its featurization): a preset ({PRESETS_HELP}) or a "
        "YAML/JSON model config file, used when no checkpoint is given (default tiny, AF3's "
        "featurization)"))
    parser.add_argument("--checkpoint", default=None,
                        help="foldray safetensors checkpoint (path or URL) the features are for: "
                             "its featurization is used, read from its header (default none: "
                             "--model-config's). predict-batch refuses stored features made with "
                             "another featurization than its model's")
    add_set_argument(parser, "override a model setting: model.featurization.paired_msa=precomputed "
                             "(only without --checkpoint)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help="token budget per job; larger jobs are error rows (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of reference-conformer rotations (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="redo jobs already featurized")
    parser.add_argument("--num-cpus-per-worker", type=float, default=1.0,
                        help="CPUs per featurize actor (default %(default)s)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    from foldray.jobs.predict_batch import add_featurize_time_limit  # it imports this module

    add_featurize_time_limit(parser)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar or progress lines; errors and the summary still print")
    add_verbose_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from foldray.actors.batch import BatchSettings, Pools, Resources
    from foldray.features.model_featurization import model_featurization
    from foldray.jobs.predict_batch import run_and_report

    try:
        model_config, _ = resolve_model_and_runtime(args)
        model_featurization(absolute_local(args.checkpoint), model_config)   # a bad one fails here
    except (ConfigError, ValueError, OSError) as err:   # WeightsError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = BatchSettings(
        inputs=tuple(absolute_local(u) for u in (args.inputs or [default_inputs()])),
        out=absolute_local(args.out), stop_after="featurize", seeds=(args.seed,), config=model_config,
        checkpoint=absolute_local(args.checkpoint),
        max_tokens=args.max_tokens, overwrite=args.overwrite,
        featurize_time_limit_s=args.featurize_time_limit or None,
        resources=Resources(num_cpus_per_worker=args.num_cpus_per_worker),
        pools=Pools(), address=args.address, num_cpus=args.num_cpus, quiet=args.quiet,
        verbose=args.verbose)
    return run_and_report(settings, "featurize")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
