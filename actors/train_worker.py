"""The Ray Train worker of `foldray train` (SI 5: optimizer, schedule, EMA, stages).

`train_loop_per_worker(config)` runs on every TorchTrainer worker. It only wires the
library's loop (foldray.training.loop.TrainLoop: accumulation, clipping, non-finite skip,
EMA, cadence) to Ray Train: rank/device, DDP through `prepare_model`, `get_checkpoint` to
resume, and a callback that sends metrics and checkpoints to `ray.train.report`.

Per optimizer step each worker runs `grad_accumulation` micro-batches of `batch_size`
structures from its own rank-seeded stream of draws (DataLoader processes featurize ahead).
Every `report_every` steps the rank-averaged metrics go to `ray.train.report` and to
`<storage>/<name>/foldray/metrics.jsonl`; every `checkpoint_every` steps (and at the end) a
checkpoint goes with them; every `validate_every` steps rank 0 samples the held-out
structures with the EMA weights and reports their lDDT. `run.callbacks` adds TrainCallbacks
on every worker (an extension point; the fault-tolerance tests inject a failure with one).
A restarted or re-run worker resumes from `ray.train.get_checkpoint()` at the same step, LR,
optimizer state, RNG state and position in the data stream.

Checkpoints carry a manifest of SHA-256 hashes (foldray.training.checkpoint), written last.
A resume verifies it; if Ray's latest checkpoint is incomplete, damaged or non-finite, the
worker falls back to the newest older one that verifies (Ray keeps `run.keep_checkpoints`),
logs which it used and why the others were refused ("checkpoint_000000004: model.safetensors
sha256 mismatch; resumed from checkpoint_000000002") and records both in start.json. With
none left it fails with a CheckpointError saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from foldray.io import storage
from foldray.model.config import ModelConfig
from foldray.training import checkpoint as ckpt
from foldray.training.config import TrainConfig
from foldray.training.data import SourceData, TrainingDraws, make_loader, validation_samples
from foldray.training.loop import (
    EmaValidation,
    LoopSettings,
    TrainCallback,
    TrainLoop,
    TrainParts,
    all_gather,
    build_parts,
    load_callbacks,
)
from foldray.training.metrics import MetricsLog
from foldray.training.parallel import TrainStepModule

# Ray Train's worker logger prints INFO lines once to the console and the job logs
# (a plain print is teed twice by Ray Train's print patch).
log = logging.getLogger("foldray.train")
log.setLevel(logging.INFO)


def run_files(config: TrainConfig) -> str:
    """Where rank 0 keeps the run's own files (metrics.jsonl, start.json) beside Ray's."""
    return storage.join(config.run.storage_path, config.name, "foldray")


@dataclass
class _Resume:
    """Which checkpoint a (re)start restored and which it refused."""

    name: str | None = None                                  # the folder restored from
    skipped: dict[str, str] = field(default_factory=dict)    # refused folder -> why (newest first)
    taken: set[str] = field(default_factory=set)             # folder names a new checkpoint must avoid


def _write_start(config: TrainConfig, *, step: int, resumed: _Resume | None, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, lr: float, nodes: list[str]) -> None:
    """start.json: what this (re)start began from, to check resumes and fine-tune starts."""
    adam_steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    storage.write_text_atomic(storage.join(run_files(config), "start.json"), json.dumps({
        "step": step, "resumed": resumed is not None, "lr": lr, "nodes": nodes,
        "init_checkpoint": None if resumed else config.finetune.init_checkpoint,
        "resumed_from": resumed.name if resumed else None,
        "skipped_checkpoints": resumed.skipped if resumed else {},
        "param_checksum": ckpt.param_checksum(model.state_dict()),
        "adam_step": max(adam_steps) if adam_steps else 0.0}, indent=1))


def _generator(config: TrainConfig, device: torch.device, rank: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(config.seed * 100_003 + rank)


@contextlib.contextmanager
def _local_copy(checkpoint: Any, cache: str) -> Iterator[str]:
    """A local folder with the checkpoint's files, shared by the workers of one node.

    Not Ray's `as_directory()`: a worker that takes its download lock after another worker's
    download finished downloads again into the same folder, truncating files the other is
    reading (seen here as a size-0 rng file on resume). One download per node and attempt
    instead: the first worker under the lock downloads and marks it complete, the others
    reuse it; the folder is removed once every worker has restored (`_restore`).
    """
    from filelock import FileLock
    from pyarrow import fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield checkpoint.path
        return
    folder = os.path.join(cache, posixpath.basename(checkpoint.path.rstrip("/")))
    os.makedirs(cache, exist_ok=True)
    with FileLock(folder + ".lock"):
        if not os.path.exists(os.path.join(folder, ".foldray-complete")):
            shutil.rmtree(folder, ignore_errors=True)
            checkpoint.to_directory(folder)
            open(os.path.join(folder, ".foldray-complete"), "w").close()
    yield folder


def _candidates(resume: Any, info: _Resume, cache: str) -> Iterator[tuple[str, Any]]:
    """Ray's latest checkpoint, then (listed only if needed) the older `checkpoint_*` folders
    beside it in the run's storage, newest first, as (name, local-folder context)."""
    import ray.train
    from pyarrow import fs as pafs

    parent, newest = posixpath.split(resume.path.rstrip("/"))
    info.taken.add(newest)
    yield newest, _local_copy(resume, cache)
    try:
        listed = resume.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError as err:
        info.skipped["older checkpoints"] = f"cannot be listed ({err.__class__.__name__})"
        return
    names = {f.base_name for f in listed if f.type == pafs.FileType.Directory and ckpt.dir_order(f.base_name)}
    info.taken |= names                                   # a new checkpoint never writes into these
    limit = ckpt.dir_order(newest)
    for name in sorted(names - {newest}, key=ckpt.dir_order, reverse=True):
        if limit is None or ckpt.dir_order(name) < limit:
            older = ray.train.Checkpoint(path=posixpath.join(parent, name), filesystem=resume.filesystem)
            yield name, _local_copy(older, cache)


def _restore(config: TrainConfig, resume: Any, device: torch.device, rank: int, local_rank: int
             ) -> tuple[TrainParts, torch.Generator, ckpt.TrainerState, _Resume]:
    """Restore the newest checkpoint that verifies; older ones only when newer ones are refused.

    Collectives stay symmetric: every worker runs its own candidate loop (no collective
    inside), then all meet once to compare their choice, even when one found none."""
    info = _Resume()
    built: list[TrainParts] = []
    generator: list[torch.Generator] = []                 # a fresh one per attempt
    token = _all_gather_str(uuid.uuid4().hex)[0]          # rank 0's: one download folder per attempt
    cache = os.path.join(tempfile.gettempdir(), f"foldray-resume-{token}")

    def restore(folder: str) -> ckpt.TrainerState:
        manifest = ckpt.verify_checkpoint(folder)
        if not built:                                     # the architecture, from the header alone
            built.append(build_parts(config, ckpt.read_model_config(folder), device=device))
        parts = built[0]
        generator[:] = [_generator(config, device, rank)]
        state = ckpt.restore_checkpoint(folder, model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                                        scheduler=parts.scheduler, manifest=manifest)
        ckpt.restore_rng(folder, rank, generator[0])
        return state

    def skip(name: str, reason: str) -> None:
        log.warning(f"foldray-train: {name}: {reason}; trying an older checkpoint")

    failure: ckpt.CheckpointError | None = None
    try:
        info.name, state = ckpt.restore_first_valid(_candidates(resume, info, cache), restore,
                                                    skipped=info.skipped, on_skip=skip,
                                                    where=f"run {config.name!r}")
    except ckpt.CheckpointError as err:
        failure = err
    chosen = _all_gather_str(info.name or "")               # every worker is done reading here
    if local_rank == 0:
        shutil.rmtree(cache, ignore_errors=True)
    if failure is not None:
        raise failure
    if len(set(chosen)) > 1:
        raise ckpt.CheckpointError(f"workers restored different checkpoints {chosen}")
    return built[0], generator[0], state, info


def _model_config(config: TrainConfig) -> tuple[ModelConfig, dict | None]:
    """Architecture of a new run: the fine-tune start (verified against its manifest if it
    has one), else the config's preset; plus the initial weights of a fine-tune."""
    if config.finetune.init_checkpoint:
        weights, model_config = ckpt.load_init_weights(config.finetune.init_checkpoint,
                                                       use_ema=config.finetune.use_ema)
        return model_config, weights
    return config.model.build(), None


def _all_gather_str(value: str) -> list[str]:
    return [str(v) for v in all_gather(value)]


class _RayReporting(TrainCallback):
    """The loop's reports and checkpoints to Ray Train (`ray.train.report`, one call per
    report, with the checkpoint folder when one is due), plus rank 0's metrics.jsonl and
    `foldray-train:` log lines."""

    SHOWN = ("step", "loss", "diffusion", "distogram", "lr", "grad_norm", "tokens_per_s", "val_lddt")

    def __init__(self, config: TrainConfig, parts: TrainParts, *, nodes: list[str],
                 metrics_log: MetricsLog | None, taken: set[str]) -> None:
        self.config, self.parts, self.nodes = config, parts, nodes
        self.metrics_log, self.taken = metrics_log, taken

    def on_report(self, loop: TrainLoop, metrics: dict[str, Any], *, checkpoint: bool) -> None:
        import ray.train

        if self.metrics_log is not None:
            metrics["nodes"] = ",".join(self.nodes)
            self.metrics_log.append(metrics)
            log.info("foldray-train: " + "  ".join(
                f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                for k in self.SHOWN if k in metrics))
        if not checkpoint:
            ray.train.report(metrics)

    def on_checkpoint(self, loop: TrainLoop, metrics: dict[str, Any]) -> None:
        import ray.train

        parts = self.parts
        with tempfile.TemporaryDirectory() as folder:
            entries: dict[str, Any] = {}
            if loop.rank == 0:
                entries = ckpt.save_checkpoint(
                    folder, model=parts.model, model_config=parts.model_config, ema=parts.ema.state_dict(),
                    optimizer=parts.optimizer, scheduler=parts.scheduler,
                    state=ckpt.TrainerState(step=loop.step, samples_seen=loop.samples_seen,
                                            world_size=loop.world_size, config=self.config.to_dict()))
            rng_entries = all_gather(ckpt.save_rng(folder, loop.rank, loop.generator))
            if loop.rank == 0:                  # last: lists every rank's files
                for entry in rng_entries:
                    entries.update(entry)
                ckpt.write_manifest(folder, step=loop.step, entries=entries)
            # after a fall back, never into a refused (or any existing) folder's name
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=ckpt.dir_name(loop.step, self.taken))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config = TrainConfig.from_dict(loop_config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run = config.run
    torch.manual_seed(config.seed)                       # identical init on every rank

    # ---- model, optimizer, EMA, resume (from the newest checkpoint that verifies)
    resume = ray.train.get_checkpoint()
    resumed: _Resume | None = None
    step = samples_seen = 0
    if resume is not None:
        parts, generator, state, resumed = _restore(config, resume, device, rank, context.get_local_rank())
        step, samples_seen = state.step, state.samples_seen
    else:
        model_config, init_weights = _model_config(config)
        parts = build_parts(config, model_config, device=device, init_weights=init_weights)
        generator = _generator(config, device, rank)
    taken = resumed.taken if resumed and resumed.skipped else set()
    step_module = TrainStepModule(parts.model, runtime=config.runtime(),
                                  loss=config.loss_config(parts.model_config),
                                  diffusion_batch=config.stage.resolved_diffusion_batch(),
                                  n_cycle=run.n_cycle, msa_rows=config.data.msa_rows)
    ddp = ray.train.torch.prepare_model(step_module, parallel_strategy_kwargs={
        "find_unused_parameters": True})
    nodes = _all_gather_str(ray.get_runtime_context().get_node_id())

    # ---- data: this rank's stream of draws, from where the checkpoint left it
    per_step = config.data.batch_size * run.grad_accumulation
    sources = [SourceData.load(source) for source in config.data.train]
    dataset = TrainingDraws(sources, crop_size=config.stage.resolved_crop_size(), seed=config.seed,
                            rank=rank, max_msa_rows=config.data.max_msa_rows)
    batches = iter(make_loader(dataset, batch_size=config.data.batch_size, start_draw=step * per_step,
                               num_workers=config.data.loader_workers,
                               prefetch_factor=config.data.prefetch_factor,
                               pin_memory=device.type == "cuda"))

    # ---- callbacks: validation (rank 0), run.callbacks, Ray reporting last
    callbacks: list[TrainCallback] = []
    if rank == 0 and config.data.validation and run.validate_every:
        callbacks.append(EmaValidation(
            validation_samples([SourceData.load(s) for s in config.data.validation],
                               max_structures=config.data.max_validation_structures,
                               max_tokens=config.data.validation_max_tokens,
                               max_msa_rows=config.data.max_msa_rows),
            device=device, n_sample=run.validation_n_sample, n_step=run.validation_n_step,
            seed=config.seed, runtime=config.runtime()))
    callbacks.extend(load_callbacks(run.callbacks))
    metrics_log = MetricsLog(storage.join(run_files(config), "metrics.jsonl"), resume_step=step) \
        if rank == 0 else None
    callbacks.append(_RayReporting(config, parts, nodes=nodes, metrics_log=metrics_log, taken=taken))

    if rank == 0:
        _write_start(config, step=step, resumed=resumed, model=parts.model, optimizer=parts.optimizer,
                     lr=parts.scheduler.get_last_lr()[0], nodes=nodes)
        if resumed is not None:
            log.info(f"foldray-train: {ckpt.resume_summary(resumed.name, resumed.skipped)}")
        n_trainable = sum(p.numel() for p in parts.trainable)
        log.info(f"foldray-train: start at step {step}/{run.max_steps}, {world} worker(s) on nodes "
                 f"{nodes}, device {device}, {n_trainable:,} trainable parameters")
    TrainLoop(ddp, model=parts.model, params=parts.trainable, optimizer=parts.optimizer,
              scheduler=parts.scheduler, ema=parts.ema, batches=batches, generator=generator,
              settings=LoopSettings.from_config(config), callbacks=callbacks, device=device,
              start_step=step, samples_seen=samples_seen).run()
