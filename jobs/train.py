"""`foldray train`: distributed training / fine-tuning of the model on Ray Train.

    python -m foldray.jobs.train --config configs/tiny_cpu.yaml [key=value ...]
    ray job submit --working-dir . -- python -m foldray.jobs.train --config configs/initial_training.yaml

One YAML file per run (keys: configs/README.md); `key=value` arguments override dotted keys
(`run.max_steps=20 scaling.num_workers=4`). A TorchTrainer runs
foldray.actors.train_worker.train_loop_per_worker on `scaling.num_workers` workers (DDP: NCCL
on GPUs, gloo on CPUs); checkpoints go to `<run.storage_path>/<name>/` on local disk or
s3://. Rerunning with the same name and storage path resumes from the latest checkpoint;
FailureConfig restarts failed workers from it. Without RAY_ADDRESS (or --address) an
embedded local Ray is started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlparse

from foldray.config_loader import ConfigError, read_mapping
from foldray.io import storage
from foldray.jobs.options import (
    PRESETS_HELP,
    add_model_config_argument,
    add_runtime_arguments,
    add_set_argument,
    runtime_overrides,
)
from foldray.jobs.ray_setup import connect_ray, worker_runtime_env
from foldray.model.config import is_preset
from foldray.progress import StepBar, interactive
from foldray.training.config import DataSource, TrainConfig, load_train_config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray train", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training config YAML (local path or URL)")
    add_model_config_argument(parser, default=None, help_text=(
        f"the model: a preset ({PRESETS_HELP}) or a YAML/JSON model config file; replaces the "
        "config's model section (default: the config's)"))
    add_set_argument(parser, "override a setting, e.g. --set run.max_steps=100 --set optimizer.lr=1e-3")
    add_runtime_arguments(parser, defaults=False)   # run.runtime.*: the same flags as predict/serve
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="deprecated spelling of --set KEY=VALUE (still accepted)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true",
                        help="no step bar on the terminal (workers still log foldray-train: lines)")
    return parser


def model_overrides(spec: str | None) -> list[str]:
    """`--model-config` as training overrides: a preset sets model.preset; a file's settings
    become model.overrides on its `preset` (default full, so a whole saved config is exact)."""
    if spec is None:
        return []
    if is_preset(spec):
        return [f"model.preset={spec}"]
    data = read_mapping(spec, kind="model config")
    preset = str(data.pop("preset", "full"))
    return [f"model.preset={preset}", f"model.overrides={json.dumps(data)}"]


def storage_target(storage_path: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig.

    s3:// paths get a pyarrow S3FileSystem: pyarrow ignores AWS_ENDPOINT_URL, so an explicit
    endpoint (MinIO, SeaweedFS, R2 ...) is passed as endpoint_override. It carries no keys:
    Ray pickles it to the train controller and workers, so each process reads its own node's
    credentials (AWS_* variables, the AWS_SHARED_CREDENTIALS_FILE / AWS_PROFILE file, the
    instance role). Local paths are made absolute (Ray Train needs that) and use Ray's
    default local filesystem.
    """
    if not storage_path.startswith("s3://"):
        if "://" in storage_path:
            return storage_path, None
        return os.path.abspath(storage_path), None
    from pyarrow import fs as pafs

    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_REGION")
                              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return storage_path[len("s3://"):].rstrip("/"), pafs.S3FileSystem(**kwargs)


def absolute_local_paths(config: TrainConfig) -> TrainConfig:
    """Local relative paths resolved against the driver's working directory: train workers
    run elsewhere (their own working directory, or another node)."""
    def fix(path: str | None) -> str | None:
        return path if path is None or "://" in path else os.path.abspath(path)

    def sources(items: tuple[DataSource, ...]) -> tuple[DataSource, ...]:
        return tuple(dataclasses.replace(s, path=fix(s.path), msa_dir=fix(s.msa_dir)) for s in items)

    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, train=sources(config.data.train),
                                 validation=sources(config.data.validation)),
        finetune=dataclasses.replace(config.finetune, init_checkpoint=fix(config.finetune.init_checkpoint)),
        run=dataclasses.replace(config.run, storage_path=fix(config.run.storage_path)))


def make_trainer(config: TrainConfig) -> Any:
    """The TorchTrainer of one run (Ray must be initialised)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from foldray.actors.placement import stage_resources
    from foldray.actors.train_worker import train_loop_per_worker

    scaling = config.scaling
    use_gpu = scaling.gpus_per_worker > 0
    # on clusters whose GPU nodes advertise `foldray_model` (cluster.yaml), train workers ask
    # for it (one unit per GPU), so they never land on the CPU featurization nodes
    resources = {"CPU": scaling.cpus_per_worker,
                 **stage_resources("model", scaling.gpus_per_worker if use_gpu else 1.0),
                 **scaling.resources_per_worker}
    if use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    storage_path, filesystem = storage_target(config.run.storage_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config.to_dict()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=scaling.placement_strategy),
        run_config=RunConfig(
            name=config.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.run.keep_checkpoints),
            worker_runtime_env=worker_runtime_env()),
    )


def metrics_url(config: TrainConfig) -> str:
    """The metrics.jsonl rank 0 rewrites at every report (see foldray.actors.train_worker)."""
    return storage.join(config.run.storage_path, config.name, "foldray", "metrics.jsonl")


@contextmanager
def own_sigint() -> Iterator[None]:
    """Give SIGINT back to the caller after `fit()`.

    Ray Train's `fit()` installs a SIGINT handler that holds the run's controller actor and
    leaves it installed: in a long-lived driver (a notebook, a test session) the finished
    controller and its helpers then stay alive until the next fit, and Ctrl-C keeps going to
    a run that has ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def step_bar(config: TrainConfig, *, enabled: bool, every_s: float = 2.0) -> Iterator[StepBar]:
    """A driver-side step bar while `fit()` runs: polls the run's metrics file.

    Workers run in other processes (or nodes) and their output reaches the driver as log
    lines, where a worker-side tqdm would print one line per refresh; so the workers keep
    logging and the driver, when it owns a terminal, draws the bar from what rank 0 reported.
    """
    from foldray.training.metrics import read_metrics

    bar = StepBar(config.run.max_steps, enabled=enabled, desc=f"train {config.name}")
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(every_s):
            try:
                bar.show(read_metrics(metrics_url(config)))
            except (OSError, ValueError):   # a half-listed object store: try again next time
                continue

    thread = threading.Thread(target=follow, name="foldray-train-progress", daemon=True)
    if enabled:
        thread.start()
    try:
        yield bar
    finally:
        stop.set()
        if enabled:
            thread.join(timeout=10)
            with suppress(OSError, ValueError):
                bar.show(read_metrics(metrics_url(config)))
        bar.close()


def run(args: argparse.Namespace) -> int:
    from foldray.errors import InputError

    try:
        overrides = [*model_overrides(args.model_config), *args.set, *args.overrides,
                     *(f"run.{item}" for item in runtime_overrides(args))]   # --precision ...
        config = absolute_local_paths(load_train_config(args.config, overrides))
    except ConfigError as err:   # located: file and dotted key
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, InputError, FileNotFoundError) as err:   # the user's config, not a bug
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    from foldray.training.checkpoint import resumable_problem

    try:   # every checkpoint incomplete or truncated: say so once, not in every worker retry
        problem = resumable_problem(storage.join(config.run.storage_path, config.name))
    except OSError as err:   # storage unreachable: the same check Ray would fail on, said plainly
        problem = f"{config.run.storage_path}: {err.__class__.__name__}: {err}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with connect_ray(args.address, num_cpus=args.num_cpus), \
            step_bar(config, enabled=interactive(args.quiet)), own_sigint():
        result = make_trainer(config).fit()
    metrics = result.metrics or {}
    checkpoint = result.checkpoint.path if result.checkpoint else None
    print(f"foldray train: run {config.name!r} finished at step {metrics.get('step')} in "
          f"{time.perf_counter() - started:.0f} s; loss {metrics.get('loss')}; "
          f"checkpoint {checkpoint}")
    if result.error:   # the cause in one line; Ray's traceback is in the worker logs
        from foldray.errors import error_summary

        print(f"error: training failed: {error_summary(result.error)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
