"""`foldray screen --target TARGET --ligands LIBRARY --out URL`: one target against a ligand
library, on the batch engine (`foldray.actors.batch`; this module turns flags into its
settings and runs the funnel's two stages).

TARGET is an AF3 JSON job (its protein / RNA / DNA chains and their MSAs; ligands in it
stay) or a FASTA file; LIBRARY a .smi (`SMILES ID` per line) / .csv / .parquet (an id and
a `smiles` or `ccd` column) / .sdf file, or a folder / s3:// prefix of such files. The
library is streamed by Ray Data. Each ligand becomes the complex target + ligand, named by
its sanitized id, featurized on the CPU actors with the target's parsed MSAs cached per
actor, predicted on the model actors and written to `<out>/<ligand>/` (AF3 layout, plus
`<ligand>_ligands.sdf`: the pose with the input's bond orders and charges, pLDDT as a
property). `<out>/results.parquet` has one row per ligand: ligand_id, smiles, status
(ok / error / skipped), error, ranking_score, iptm, ptm, ligand_plddt,
min_target_ligand_pae, seconds, output, stage, then the engine's columns. A bad SMILES is
its ligand's error row; a rerun skips finished ligands.

`--funnel fraction:0.1` or `--funnel top-k:50`: stage one predicts every ligand with cheap
settings (`--stage1-samples`, `--stage1-steps`, `--stage1-recycles`) into `<out>/stage1/`;
stage two predicts the best ones by `--funnel-metric` with the full settings into
`<out>/stage2/`; `<out>/results.parquet` holds both stages' rows (column `stage`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Any

from foldray.config_loader import ConfigError
from foldray.errors import InputError, error_line
from foldray.jobs.msa import add_msa_arguments
from foldray.jobs.options import resolve_model_and_runtime
from foldray.jobs.predict import add_model_arguments, random_weights_warning, settings_from_args
from foldray.jobs.predict_batch import (
    add_cluster_arguments,
    add_engine_arguments,
    add_model_batch_argument,
    engine_settings,
    model_batch_size,
)
from foldray.jobs.ray_setup import absolute_local, connect_ray

if TYPE_CHECKING:   # the engine (Ray, torch) is imported when a screen runs, not for --help
    from foldray.actors.batch import BatchResult, BatchSettings

# metric -> True when higher is better
FUNNEL_METRICS = {"ranking_score": True, "iptm": True, "ptm": True, "ligand_plddt": True,
                  "min_target_ligand_pae": False}
DEFAULT_STAGE1_STEPS = 20
# complexes per model-actor call: those of one padded size share a forward pass


@dataclasses.dataclass(frozen=True)
class Funnel:
    """`fraction:F` (0 < F <= 1, at least one ligand) or `top-k:N` of stage one's ok ligands."""

    fraction: float | None = None
    top_k: int | None = None

    def count(self, n_ok: int) -> int:
        if self.top_k is not None:
            return min(self.top_k, n_ok)
        return min(n_ok, max(1, math.ceil((self.fraction or 0.0) * n_ok))) if n_ok else 0


def parse_funnel(text: str) -> Funnel:
    kind, _, value = text.partition(":")
    try:
        if kind == "fraction" and 0 < float(value) <= 1:
            return Funnel(fraction=float(value))
        if kind == "top-k" and int(value) >= 1:
            return Funnel(top_k=int(value))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--funnel takes fraction:F (0 < F <= 1) or top-k:N (N >= 1), "
                                     f"got {text!r}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="foldray screen", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True,
                        help="the target: an AF3 JSON job (one job; its MSAs are used) or a FASTA")
    parser.add_argument("--ligands", required=True,
                        help="the library: .smi / .csv / .parquet / .sdf file, or a folder or "
                             "s3:// prefix of such files")
    parser.add_argument("--out", required=True, help="output folder or URL (s3://bucket/prefix)")
    add_model_arguments(parser)
    pocket = parser.add_argument_group("pocket (needs a model with Protenix's constraint embedder)")
    pocket.add_argument("--pocket", action="append", metavar="CHAIN:RES[,RES...]",
                        help="target residues every ligand binds near, as a pocket restraint with the "
                             "ligand as the binder (docs/restraints.md); repeatable; default: none")
    pocket.add_argument("--pocket-distance", type=float, default=6.0, metavar="ANGSTROM",
                        help="the pocket restraint's maximum distance (default %(default)s Å)")
    funnel = parser.add_argument_group("two-stage funnel")
    funnel.add_argument("--funnel", type=parse_funnel, default=None, metavar="fraction:F|top-k:N",
                        help="stage one for every ligand, stage two for the best of them")
    funnel.add_argument("--funnel-metric", default="ranking_score", choices=sorted(FUNNEL_METRICS),
                        help="what picks stage two's ligands (min_target_ligand_pae: lowest; "
                             "default %(default)s)")
    funnel.add_argument("--stage1-samples", type=int, default=1,
                        help="stage one: samples per seed (default %(default)s)")
    funnel.add_argument("--stage1-steps", type=int, default=DEFAULT_STAGE1_STEPS,
                        help=f"stage one: diffusion steps (default {DEFAULT_STAGE1_STEPS})")
    funnel.add_argument("--stage1-recycles", type=int, default=None,
                        help="stage one: trunk cycles (default: as --recycles)")
    add_model_batch_argument(parser, "auto", "ligand complexes")
    add_engine_arguments(parser)
    add_msa_arguments(parser)
    add_cluster_arguments(parser)
    return parser


def read_target(location: str) -> Any:
    """The one job of an AF3 JSON / FASTA file; an InputError otherwise."""
    from foldray.inputs.manifest import ManifestEntry, read_entry_jobs

    jobs = read_entry_jobs(ManifestEntry(location, None))
    for job in jobs:
        if isinstance(job, InputError):
            raise job
    if len(jobs) != 1:
        raise InputError(f"the target must be one job, found {len(jobs)}", source=location)
    return jobs[0]


def settings_from(args: argparse.Namespace, target: Any) -> BatchSettings:
    from foldray.actors.batch import BatchSettings
    from foldray.actors.screen_stage import ScreenSettings
    from foldray.screening import parse_pocket

    model_config, runtime = resolve_model_and_runtime(args)
    predict = settings_from_args(args)
    # per ligand: the complex mmCIF and the ligand's pose as SDF
    predict = dataclasses.replace(predict, outputs=dataclasses.replace(predict.outputs, ligand_sdf=True))
    return BatchSettings(
        inputs=(), out=absolute_local(args.out), stop_after="predict",
        checkpoint=absolute_local(args.checkpoint), config=model_config, runtime=runtime,
        predict=predict, seeds=args.seeds, max_tokens=args.max_tokens, share_trunk=args.share_trunk,
        overwrite=args.overwrite, quiet=args.quiet, **engine_settings(args),
        model_batch_size=model_batch_size(args),
        screen=ScreenSettings(target=target, library=absolute_local(args.ligands),
                              pocket=parse_pocket(args.pocket or (), target, distance=args.pocket_distance)
                              if args.pocket else (), pocket_distance=args.pocket_distance))


def stage_settings(settings: BatchSettings, args: argparse.Namespace, stage: int,
                   selected: frozenset[str] | None = None) -> BatchSettings:
    """The funnel's stage one (cheap settings, `<out>/stage1`) or two (full, `<out>/stage2`)."""
    from foldray.io import storage

    assert settings.screen is not None and settings.predict is not None
    predict = settings.predict
    if stage == 1:
        predict = dataclasses.replace(predict, n_sample=args.stage1_samples, n_step=args.stage1_steps,
                                      n_cycle=args.stage1_recycles or predict.n_cycle)
    screen = dataclasses.replace(settings.screen, stage=stage, ligand_ids=selected)
    return dataclasses.replace(settings, out=storage.join(settings.out, f"stage{stage}"),
                               predict=predict, screen=screen)


def select(rows: list[dict[str, Any]], funnel: Funnel, metric: str) -> list[str]:
    """Stage two's ligand ids: the best of stage one's finished ligands by `metric`."""
    scored = [r for r in rows if r["status"] in ("ok", "skipped") and r.get(metric) is not None
              and not math.isnan(r[metric])]
    higher = FUNNEL_METRICS[metric]
    scored.sort(key=lambda r: (-r[metric] if higher else r[metric], r["ligand_id"]))
    return [r["ligand_id"] for r in scored[:funnel.count(len(scored))]]


def _summary(label: str, result: BatchResult) -> str:
    counts = collections.Counter(r["status"] for r in result.rows)
    rate = counts["ok"] / max(result.seconds, 1e-9) * 60
    return (f"{label}: {len(result.rows)} ligands in {result.seconds:.1f} s: ok {counts['ok']}, "
            f"error {counts['error']}, skipped {counts['skipped']}; {rate:.1f} ligands/min predicted")


def search_target(args: argparse.Namespace, settings: BatchSettings) -> BatchSettings:
    """`--msa search`: the target's chains searched once (the engine's MSA stage and its
    cache), before any ligand; every ligand complex then uses the target's MSAs. The
    searched target is kept as `<out>/target/<name>_data.json`. Ray is connected."""
    from foldray.actors.batch import BatchError
    from foldray.actors.msa_stage import search_and_write
    from foldray.io import storage
    from foldray.jobs.ray_setup import worker_remote_args
    from foldray.msa.config import load_config
    from foldray.msa.databases import check_databases

    assert settings.screen is not None
    try:
        config = load_config(absolute_local(args.msa_config))
        check_databases(config)
    except (InputError, ConfigError) as err:   # a missing database: fail before any ligand
        raise BatchError(str(err)) from None
    cache = absolute_local(args.msa_cache) or config.cache_url or storage.join(settings.out, "msa_cache")
    rows, totals, warnings = search_and_write(
        [settings.screen.target], config, out_url=storage.join(settings.out, "target"),
        cache_url=cache, workers=args.msa_workers, remote=worker_remote_args())
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if rows[0]["status"] != "ok":
        raise BatchError(f"target MSA search: {rows[0]['error']}")
    if not settings.quiet:
        print(f"msa: target: {totals['msa_chains']} chains: {totals['msa_searched']} database "
              f"searches run, {totals['msa_cached']} from the cache ({cache})", file=sys.stderr)
    target = read_target(rows[0]["output"])
    return dataclasses.replace(settings, screen=dataclasses.replace(settings.screen, target=target))


def run_screen(args: argparse.Namespace, settings: BatchSettings) -> int:
    """Run one stage, or the funnel's two, in one Ray session; print errors and one summary
    line per stage."""
    with connect_ray(settings.address, quiet=settings.quiet, num_cpus=settings.num_cpus,
                     ray_logs=settings.verbose):
        if getattr(args, "msa", "given") == "search":
            settings = search_target(args, settings)
        return _run_stages(args, settings)


def _run_stages(args: argparse.Namespace, settings: BatchSettings) -> int:
    from foldray.actors.batch import run_batch
    from foldray.io.results import SCREEN_SCHEMA, write_results_table

    results: list[tuple[str, BatchResult]] = []
    if args.funnel is None:
        results.append(("screen", run_batch(settings)))
    else:
        first = run_batch(stage_settings(settings, args, 1))
        results.append(("stage 1", first))
        chosen = frozenset(select(first.rows, args.funnel, args.funnel_metric))
        if chosen:
            results.append(("stage 2", run_batch(stage_settings(settings, args, 2, chosen))))
        rows = [row for _, result in results for row in result.rows]
        table = write_results_table(settings.out, rows, SCREEN_SCHEMA)
    failed = False
    for label, result in results:
        for row in result.rows:
            if row["status"] == "error":
                print(f"error: {row['error']}", file=sys.stderr)
        if result.problem:
            print(f"error: {result.problem}", file=sys.stderr)
        failed = failed or result.problem is not None or any(r["status"] == "error" for r in result.rows)
        print(_summary(label, result))
    print(f"results: {results[0][1].table_url if args.funnel is None else table}")
    return 2 if failed else 0


def _has_constraint_embedder(settings: BatchSettings) -> bool:
    """From the checkpoint's header (or the config without one): checked before any ligand runs."""
    from foldray.features.model_featurization import model_config_header

    try:
        return bool(model_config_header(settings.checkpoint, settings.config).constraint_embedder)
    except Exception:   # an unreadable checkpoint: the model stage reports it, as without --pocket
        return True


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.stage1_samples < 1 or model_batch_size(args) < 1:
        print("error: --samples, --stage1-samples and --model-batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        target = read_target(absolute_local(args.target))
        settings = settings_from(args, target)
    except InputError as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if settings.screen is not None and settings.screen.pocket and not _has_constraint_embedder(settings):
        print(f"error: --pocket: the model ({settings.checkpoint or 'random weights'}) has no constraint "
              "embedder; use a checkpoint imported from a Protenix constraint model (docs/restraints.md)",
              file=sys.stderr)
        return 2
    if args.checkpoint is None:
        print(random_weights_warning(args.model_config), file=sys.stderr)
    from foldray.actors.batch import BatchError

    try:
        return run_screen(args, settings)
    except BatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
