"""`foldray predict INPUT... --out DIR_OR_URL`: predict structures locally, no Ray needed.

Writes per job the AlphaFold 3 output layout (`<out>/<job>/<job>_model.cif` with pLDDT in
the B-factors, summary and full confidence JSONs, ranking scores, one folder per
seed x sample). Jobs whose outputs are complete are skipped, so a rerun after a crash
resumes. A bad job is reported (`error: <file>: <job>: <field>: <message>`) and the others
still run; the exit code is 2 if any job failed on its input.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from foldray.config_loader import ConfigError
from foldray.errors import InputError
from foldray.jobs.options import (
    add_model_config_argument,
    add_runtime_arguments,
    add_set_argument,
    deprecated_config_alias,
    parse_devices,
    resolve_model_and_runtime,
)
from foldray.limits import DEFAULT_MAX_TOKENS
from foldray.model.config import RuntimeConfig
from foldray.progress import JobsBar, StageBars, interactive

if TYPE_CHECKING:   # the input and output stack (RDKit, gemmi) is imported where used: fast --help
    from foldray.inputs.job import Job
    from foldray.io.outputs import OutputOptions
    from foldray.predictor import Predictor, PredictSettings


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers like 1,2,3, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes non-negative integers, got {text!r}")
    return seeds


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, sampling and resume options shared by `predict` and `predict-batch`."""
    add_model_config_argument(parser)
    deprecated_config_alias(parser, "model_config")
    parser.add_argument("--checkpoint", default=None,
                        help="foldray safetensors checkpoint (path or URL); its config is used")
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="comma-separated seeds (default: the job's modelSeeds)")
    parser.add_argument("--samples", type=int, default=5,
                        help="diffusion samples per seed (default %(default)s)")
    parser.add_argument("--recycles", type=int, default=None, help="trunk cycles (default: model's)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: model's)")
    parser.add_argument("--share-trunk", action="store_true",
                        help="one trunk run per job for all seeds (seeds then differ only in "
                             "diffusion noise): faster with many seeds, less diverse")
    add_runtime_arguments(parser)
    add_set_argument(parser, "override a runtime or model setting: runtime.chunk_size=64, "
                             "model.n_cycle=2 (model.* only without --checkpoint)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help="token budget per job; larger jobs are errors (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="redo jobs already complete")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar or progress lines; errors and the summary still print")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Extra output files (foldray.io.outputs), shared by `predict` and `predict-batch`."""
    group = parser.add_argument_group("outputs")
    group.add_argument("--output-format", default="mmcif", choices=("mmcif", "pdb", "both"),
                       help="structure files per sample: mmCIF (AF3's), PDB, or both "
                            "(default mmcif)")
    group.add_argument("--save-ligand-sdf", action="store_true",
                       help="write <prefix>_ligands.sdf per sample for jobs with ligands: the "
                            "model's poses with the input's bond orders and charges")
    group.add_argument("--save-pde", action="store_true",
                       help="add the predicted distance error matrix (pde) to each confidences.json")
    group.add_argument("--save-embeddings", action="store_true",
                       help="write the trunk's single and pair embeddings per seed "
                            "(seed-<s>_embeddings/*.npz; pair is N_token^2 x 128 floats)")
    group.add_argument("--save-distogram", action="store_true",
                       help="write the distogram's bin probabilities per seed "
                            "(seed-<s>_distogram/*.npz, float16)")


def outputs_from_args(args: argparse.Namespace) -> OutputOptions:
    from foldray.io.outputs import OutputOptions

    return OutputOptions(structure_format=args.output_format, ligand_sdf=args.save_ligand_sdf,
                         save_pde=args.save_pde, save_embeddings=args.save_embeddings,
                         save_distogram=args.save_distogram)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray predict", description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="AF3 JSON / JSONL / mmCIF files or folders, local or URL")
    parser.add_argument("--out", required=True, help="output folder or URL (s3://...)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument("--devices", type=parse_devices, default=1, metavar="N|auto",
                        help="spread each prediction over N local devices (GPUs with --device cuda, "
                             "else CPU processes): the pair representation split by rows; "
                             "--samples must be a multiple of N; auto: per job the fewest that fit "
                             "by the memory plan, and its chunk size (default %(default)s)")
    parser.add_argument("--memory-per-device", type=float, default=None, metavar="GB",
                        help="with --devices auto: memory the plan may use per device (default: "
                             "free memory measured now, shared by CPU processes)")
    add_model_arguments(parser)
    return parser


def runtime_from_args(args: argparse.Namespace) -> RuntimeConfig:
    return resolve_model_and_runtime(args)[1]


def settings_from_args(args: argparse.Namespace) -> PredictSettings:
    from foldray.predictor import PredictSettings  # torch loads only when a command needs it

    return PredictSettings(seeds=args.seeds, n_sample=args.samples, n_cycle=args.recycles,
                           n_step=args.steps, max_tokens=args.max_tokens,
                           share_trunk=args.share_trunk, outputs=outputs_from_args(args))


def random_weights_warning(config: str) -> str:
    return (f"warning: no --checkpoint given: the {config!r} model runs with RANDOM "
            "weights; structures and confidences are meaningless (use this to test the "
            "pipeline, not to predict)")


def run(args: argparse.Namespace) -> int:
    from foldray.inputs.load import iter_jobs
    from foldray.io.confidences import is_complete, job_dir
    from foldray.jobs.validate import format_error
    from foldray.predictor import Predictor

    if args.samples < 1:
        print("error: --samples must be >= 1", file=sys.stderr)
        return 2
    try:
        model_config, runtime = resolve_model_and_runtime(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.devices != 1:          # context parallelism: one complex over several devices
        from foldray.parallel.predict import check_devices

        try:
            if args.share_trunk:
                raise ValueError("--devices N does not combine with --share-trunk")
            if args.devices != "auto":
                check_devices(args.devices, args.device, args.samples)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    predictor = Predictor.load(args.checkpoint, config=model_config, runtime=runtime, device=args.device)
    if args.devices not in (1, "auto"):
        from foldray.parallel.predict import ShardedPredictor

        predictor = ShardedPredictor.from_predictor(predictor, args.devices)
    if predictor.random_weights:
        print(random_weights_warning(args.model_config), file=sys.stderr)
    settings = settings_from_args(args)
    items = list(iter_jobs(args.inputs))      # parsed up front: the jobs bar knows its total
    jobs_bar = JobsBar(len(items), enabled=interactive(args.quiet), desc="jobs")
    bars = StageBars(enabled=interactive(args.quiet))    # recycles and diffusion steps
    predictor.progress = bars
    n_ok = n_skipped = n_errors = 0
    try:
        for item in items:
            if isinstance(item, InputError):
                n_errors += 1
                jobs_bar.write(format_error(item), file=sys.stderr)
            elif not args.overwrite and is_complete(args.out, item):
                n_skipped += 1
                if not args.quiet:
                    jobs_bar.write(f"skip: {item.name}: complete in {job_dir(args.out, item)}")
            else:
                started = time.perf_counter()
                bars.prefix = f"{item.name}: "
                try:
                    chosen = predictor if args.devices != "auto" else planned_predictor(predictor, item, args)
                    url = chosen.predict_to(args.out, item, settings)
                except InputError as err:
                    n_errors += 1
                    jobs_bar.write(format_error(err.located(source=item.source, job=item.name)),
                                   file=sys.stderr)
                else:
                    n_ok += 1
                    if not args.quiet:
                        jobs_bar.write(f"ok: {item.name}: {url} ({time.perf_counter() - started:.1f} s)")
            jobs_bar.update(status=f"{n_ok} ok, {n_skipped} skipped, {n_errors} failed")
    finally:
        bars.close()
        jobs_bar.close()
    if not args.quiet:
        print(f"predicted {n_ok}, skipped {n_skipped} complete, {n_errors} failed")
    return 2 if n_errors else 0


def planned_predictor(base: Predictor, job: Job, args: argparse.Namespace) -> Predictor:
    """`--devices auto`: this job on one device or the fewest local devices that fit it, with
    the chunk size of the memory plan; a job that fits nowhere is an InputError naming it."""
    import copy
    import dataclasses
    import os

    import torch

    from foldray.inputs.size import count_tokens
    from foldray.parallel.plan import MemoryPlanError, free_memory, plan_memory, value_bytes
    from foldray.parallel.predict import ShardedPredictor

    cuda = base.device.type == "cuda"
    most = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    given = args.memory_per_device
    chunk = base.runtime.chunk_size
    try:
        plan = plan_memory(count_tokens(job), base.config,
                           available_bytes=int(given * 1e9) if given else free_memory(str(base.device)),
                           worlds=[w for w in range(1, most + 1) if args.samples % w == 0],
                           chunk_size=chunk, fixed_chunk=chunk is not None, n_sample=args.samples,
                           dtype_bytes=value_bytes(base.runtime.precision, base.device.type),
                           shared=not cuda and not given, job=job.name)
    except MemoryPlanError as err:
        raise InputError(str(err), source=job.source, job=job.name, field="devices") from None
    chosen = copy.copy(base)
    chosen.runtime = dataclasses.replace(base.runtime, chunk_size=plan.chunk_size)
    return chosen if plan.world == 1 else ShardedPredictor.from_predictor(chosen, plan.world)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
