"""The Ray Train worker loop of `foldray train` (SI 5: optimizer, schedule, EMA, stages).

`train_loop_per_worker(config)` runs on every TorchTrainer worker. Everything numeric is
the library's (foldray.training: train_step, data, optim, checkpoint); this file only wires
it to Ray Train: rank/device, DDP through `prepare_model`, `get_checkpoint` to resume and
`report` for metrics and checkpoints.

Per optimizer step each worker runs `grad_accumulation` micro-batches of `batch_size`
structures from its own rank-seeded stream of draws (DataLoader processes featurize ahead),
backward under DDP (gradients all-reduced on the last micro-batch only), clips, steps Adam,
the LR schedule and the EMA. Every `report_every` steps the rank-averaged metrics go to
`ray.train.report` and to `<storage>/<name>/foldray/metrics.jsonl`; every
`checkpoint_every` steps (and at the end) a checkpoint goes with them; every
`validate_every` steps rank 0 samples the held-out structures with the EMA weights and
reports their lDDT. A restarted or re-run worker resumes from `ray.train.get_checkpoint()`
at the same step, LR, optimizer state, RNG state and position in the data stream.

Checkpoints carry a manifest of SHA-256 hashes (foldray.training.checkpoint), written last.
A resume verifies it; if Ray's latest checkpoint is incomplete, damaged or non-finite, the
worker falls back to the newest older one that verifies (Ray keeps `run.keep_checkpoints`),
logs which it used and why the others were refused ("checkpoint_000000004: model.safetensors
sha256 mismatch; resumed from checkpoint_000000002") and records both in start.json. With
none left it fails with a CheckpointError saying so.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from foldray.io import storage
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.training import checkpoint as ckpt
from foldray.training.config import TrainConfig
from foldray.training.data import SourceData, TrainingDraws, make_loader, validation_samples
from foldray.training.evaluate import validation_lddt
from foldray.training.metrics import MetricsLog
from foldray.training.optim import Ema, clip_gradients, make_optimizer
from foldray.training.parallel import TrainStepModule, select_trainable

# Ray Train's worker logger prints INFO lines once to the console and the job logs
# (a plain print is teed twice by Ray Train's print patch).
log = logging.getLogger("foldray.train")
log.setLevel(logging.INFO)


class InjectedFailure(RuntimeError):
    """Raised once by `run.fail_once_at_step` to test recovery."""


def run_files(config: TrainConfig) -> str:
    """Where rank 0 keeps the run's own files (metrics.jsonl, start.json) beside Ray's."""
    return storage.join(config.run.storage_path, config.name, "foldray")


@dataclass
class _Resume:
    """Which checkpoint a (re)start restored and which it refused."""

    name: str | None = None                                  # the folder restored from
    skipped: dict[str, str] = field(default_factory=dict)    # refused folder -> why (newest first)
    taken: set[str] = field(default_factory=set)             # folder names a new checkpoint must avoid


@dataclass
class _Parts:
    model_config: ModelConfig
    model: AlphaFold3
    trainable: list[torch.nn.Parameter]
    ema: Ema
    opt_config: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator


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


def _build(config: TrainConfig, model_config: ModelConfig, init_weights: dict | None,
           device: torch.device, rank: int) -> _Parts:
    """Model, EMA, optimizer, schedule and generator of a run, before any checkpoint."""
    model = AlphaFold3(model_config)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    trainable = select_trainable(model, freeze_trunk=config.finetune.freeze_trunk,
                                 train_modules=config.finetune.train_modules)
    model.to(device).train()
    ema = Ema(model, config.optimizer.ema_decay)
    opt_config = config.optimizer
    if config.finetune.lr is not None:
        opt_config = dataclasses.replace(opt_config, lr=config.finetune.lr)
    optimizer, scheduler = make_optimizer(trainable, opt_config)
    return _Parts(model_config=model_config, model=model, trainable=trainable, ema=ema,
                  opt_config=opt_config, optimizer=optimizer, scheduler=scheduler,
                  generator=_generator(config, device, rank))


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


def _restore(config: TrainConfig, resume: Any, device: torch.device, rank: int,
             local_rank: int) -> tuple[_Parts, ckpt.TrainerState, _Resume]:
    """Restore the newest checkpoint that verifies; older ones only when newer ones are refused.

    Collectives stay symmetric: every worker runs its own candidate loop (no collective
    inside), then all meet once to compare their choice, even when one found none."""
    info = _Resume()
    built: list[_Parts] = []
    token = _all_gather_str(uuid.uuid4().hex)[0]          # rank 0's: one download folder per attempt
    cache = os.path.join(tempfile.gettempdir(), f"foldray-resume-{token}")

    def restore(folder: str) -> ckpt.TrainerState:
        manifest = ckpt.verify_checkpoint(folder)
        if not built:                                     # the architecture, from the header alone
            built.append(_build(config, ckpt.read_model_config(folder), None, device, rank))
        parts = built[0]
        parts.generator = _generator(config, device, rank)
        state = ckpt.restore_checkpoint(folder, model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                                        scheduler=parts.scheduler, manifest=manifest)
        ckpt.restore_rng(folder, rank, parts.generator)
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
    return built[0], state, info


def _model_config(config: TrainConfig) -> tuple[ModelConfig, dict | None]:
    """Architecture of a new run: the fine-tune start (verified against its manifest if it
    has one), else the config's preset; plus the initial weights of a fine-tune."""
    if config.finetune.init_checkpoint:
        weights, model_config = ckpt.load_init_weights(config.finetune.init_checkpoint,
                                                       use_ema=config.finetune.use_ema)
        return model_config, weights
    return config.model.build(), None


def _all_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks. Gathered as objects (a few dozen numbers), so a
    metric that only some ranks have (a batch without some target) averages over those."""
    if not torch.distributed.is_initialized():
        return values
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, values)
    keys = sorted({k for d in gathered for k in d})
    return {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}


def _all_gather(value: Any) -> list[Any]:
    if not torch.distributed.is_initialized():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def _all_gather_str(value: str) -> list[str]:
    return [str(v) for v in _all_gather(value)]


def _maybe_fail(config: TrainConfig, rank: int, step: int) -> None:
    run = config.run
    if rank != 0 or run.fail_once_at_step is None or step != run.fail_once_at_step:
        return
    marker = run.fail_marker or os.path.join(tempfile.gettempdir(), f"foldray-fail-{config.name}")
    if os.path.exists(marker):
        return
    with open(marker, "w") as handle:
        handle.write(str(step))
    raise InjectedFailure(f"injected failure at step {step} (marker {marker})")


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
        parts, state, resumed = _restore(config, resume, device, rank, context.get_local_rank())
        step, samples_seen = state.step, state.samples_seen
    else:
        parts = _build(config, *_model_config(config), device, rank)
    model_config, model, trainable, ema = parts.model_config, parts.model, parts.trainable, parts.ema
    opt_config, optimizer, scheduler = parts.opt_config, parts.optimizer, parts.scheduler
    generator = parts.generator
    taken = resumed.taken if resumed and resumed.skipped else set()
    loss_config = config.loss_config(model_config)
    step_module = TrainStepModule(model, runtime=config.runtime(), loss=loss_config,
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
    val_samples, eval_model = [], None
    if rank == 0 and config.data.validation and run.validate_every:
        val_samples = validation_samples(
            [SourceData.load(s) for s in config.data.validation],
            max_structures=config.data.max_validation_structures,
            max_tokens=config.data.validation_max_tokens, max_msa_rows=config.data.max_msa_rows)
    metrics_log = MetricsLog(storage.join(run_files(config), "metrics.jsonl"), resume_step=step) \
        if rank == 0 else None
    if rank == 0:
        _write_start(config, step=step, resumed=resumed, model=model, optimizer=optimizer,
                     lr=scheduler.get_last_lr()[0], nodes=nodes)
        if resumed is not None:
            log.info(f"foldray-train: {ckpt.resume_summary(resumed.name, resumed.skipped)}")
        log.info(f"foldray-train: start at step {step}/{run.max_steps}, {world} worker(s) on nodes "
              f"{nodes}, device {device}, {sum(p.numel() for p in trainable):,} trainable parameters")

    window: dict[str, float] = defaultdict(float)
    window_steps, window_tokens, window_start = 0, 0.0, time.perf_counter()
    while step < run.max_steps:
        optimizer.zero_grad(set_to_none=True)
        for micro in range(run.grad_accumulation):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            last = micro == run.grad_accumulation - 1
            sync = contextlib.nullcontext() if last or not hasattr(ddp, "no_sync") else ddp.no_sync()
            with sync:
                loss, terms = ddp(batch, generator)
                (loss / run.grad_accumulation).backward()
            for key, value in terms.items():
                window[key] += value / run.grad_accumulation
            window_tokens += float(batch["token_mask"].sum())
        _maybe_fail(config, rank, step)
        grad_norm = clip_gradients(trainable, opt_config.grad_clip_norm)
        window["lr"] += scheduler.get_last_lr()[0]
        window["grad_norm"] += grad_norm
        if torch.isfinite(torch.tensor(grad_norm)):
            optimizer.step()
        else:
            window["skipped_steps"] += 1.0                  # a non-finite gradient: no update
        scheduler.step()
        ema.update(model)
        step += 1
        samples_seen += per_step * world
        window_steps += 1

        checkpoint_due = step % run.checkpoint_every == 0 or step == run.max_steps
        validate_due = bool(val_samples) and step % run.validate_every == 0 if run.validate_every else False
        if not (step % run.report_every == 0 or checkpoint_due or validate_due):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {k: v / window_steps for k, v in window.items()}
        metrics.setdefault("skipped_steps", 0.0)
        metrics["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
        metrics["step_s"] = elapsed / window_steps
        metrics = _all_mean(metrics)
        metrics["tokens_per_s"] *= world
        metrics.update(step=step, samples_seen=samples_seen, world_size=world)
        if checkpoint_due and world > 1:                    # DDP kept every replica equal
            sums = [float(s) for s in _all_gather_str(repr(ckpt.param_checksum(model.state_dict())))]
            metrics["param_sync_spread"] = max(sums) - min(sums)
        if validate_due and rank == 0:
            eval_model = eval_model or copy.deepcopy(model).eval()
            ema.copy_to(eval_model)
            metrics.update(validation_lddt(eval_model, val_samples, device=device,
                                           n_sample=run.validation_n_sample,
                                           n_step=run.validation_n_step, seed=config.seed,
                                           runtime=config.runtime()))
        if rank == 0:
            metrics["nodes"] = ",".join(nodes)
            metrics_log.append(metrics)
            shown = ("step", "loss", "diffusion", "distogram", "lr", "grad_norm", "tokens_per_s", "val_lddt")
            log.info("foldray-train: " + "  ".join(
                f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                for k in shown if k in metrics))
        if checkpoint_due:
            with tempfile.TemporaryDirectory() as folder:
                entries: dict[str, Any] = {}
                if rank == 0:
                    entries = ckpt.save_checkpoint(
                        folder, model=model, model_config=model_config, ema=ema.state_dict(),
                        optimizer=optimizer, scheduler=scheduler,
                        state=ckpt.TrainerState(step=step, samples_seen=samples_seen, world_size=world,
                                                config=config.to_dict()))
                rng_entries = _all_gather(ckpt.save_rng(folder, rank, generator))
                if rank == 0:                   # last: lists every rank's files
                    for entry in rng_entries:
                        entries.update(entry)
                    ckpt.write_manifest(folder, step=step, entries=entries)
                # after a fall back, never into a refused (or any existing) folder's name
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=ckpt.dir_name(step, taken))
        else:
            ray.train.report(metrics)
        window.clear()
        window_steps, window_tokens, window_start = 0, 0.0, time.perf_counter()
