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
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
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


def _write_start(config: TrainConfig, *, step: int, resumed: bool, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, lr: float, nodes: list[str]) -> None:
    """start.json: what this (re)start began from, to check resumes and fine-tune starts."""
    adam_steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    storage.write_text_atomic(storage.join(run_files(config), "start.json"), json.dumps({
        "step": step, "resumed": resumed, "lr": lr, "nodes": nodes,
        "init_checkpoint": None if resumed else config.finetune.init_checkpoint,
        "param_checksum": ckpt.param_checksum(model.state_dict()),
        "adam_step": max(adam_steps) if adam_steps else 0.0}, indent=1))


def _model_config(config: TrainConfig, resume_dir: str | None) -> tuple[ModelConfig, dict | None]:
    """Architecture of the run: the checkpoint being resumed, else the fine-tune start,
    else the config's preset; plus the initial weights of a fine-tune."""
    if resume_dir is not None:
        return ckpt.read_model_config(resume_dir), None
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


def _all_gather_str(value: str) -> list[str]:
    if not torch.distributed.is_initialized():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return [str(v) for v in out]


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

    # ---- model, optimizer, EMA, resume
    resume = ray.train.get_checkpoint()
    resume_ctx = resume.as_directory() if resume is not None else contextlib.nullcontext(None)
    with resume_ctx as resume_dir:
        model_config, init_weights = _model_config(config, resume_dir)
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
        generator = torch.Generator(device).manual_seed(config.seed * 100_003 + rank)
        step = samples_seen = 0
        if resume_dir is not None:
            state = ckpt.restore_checkpoint(resume_dir, model=model, ema=ema, optimizer=optimizer,
                                            scheduler=scheduler)
            ckpt.restore_rng(resume_dir, rank, generator)
            step, samples_seen = state.step, state.samples_seen
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
        _write_start(config, step=step, resumed=resume is not None, model=model, optimizer=optimizer,
                     lr=scheduler.get_last_lr()[0], nodes=nodes)
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
                if rank == 0:
                    ckpt.save_checkpoint(folder, model=model, model_config=model_config,
                                         ema=ema.state_dict(), optimizer=optimizer, scheduler=scheduler,
                                         state=ckpt.TrainerState(step=step, samples_seen=samples_seen,
                                                                 world_size=world,
                                                                 config=config.to_dict()))
                ckpt.save_rng(folder, rank, generator)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=f"checkpoint_{step:09d}")
        else:
            ray.train.report(metrics)
        window.clear()
        window_steps, window_tokens, window_start = 0, 0.0, time.perf_counter()
