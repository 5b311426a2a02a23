"""The training loop of SI 5: optimizer steps with accumulation, clipping, EMA and cadence.

One loop for every trainer: the Ray Train worker (foldray.actors.train_worker) wires it to
Ray Train through callbacks, `benchmarks/overfit.py` runs it in one process. No Ray here;
data-parallel runs only need `torch.distributed` initialised (DDP's all-reduce happens in
the step function, the few per-report gathers here).

One optimizer step (`TrainLoop.run`):
  1. `grad_accumulation` micro-batches from `batches`, each `step_fn(batch, generator)` ->
     (loss, terms), backward of loss / grad_accumulation (a DDP wrapper's `no_sync` keeps
     gradients local until the last micro-batch);
  2. global-norm clipping (SI 5.4); a non-finite norm skips the update (counted);
  3. the LR schedule steps, then the EMA (SI 5.6), whether or not the update was skipped.
Cadence (absolute step numbers, so a resumed run keeps it): metrics every `report_every`
steps, validation every `validate_every`, checkpoints every `checkpoint_every` and at the
last step; a due validation or checkpoint also reports. Callbacks (`TrainCallback`) see
each event; exceptions in them end the run (a test injects a failure this way).

Extension point: `run.callbacks` in the training config lists `{path: "pkg.module:factory",
options: {...}}` entries; every train worker calls `factory(**options)` and adds the
returned TrainCallback to its loop (`load_callbacks`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.training.checkpoint import param_checksum
from foldray.training.config import CallbackSpec, TrainConfig
from foldray.training.evaluate import validation_lddt
from foldray.training.optim import Ema, clip_gradients, make_optimizer
from foldray.training.parallel import select_trainable

StepFn = Callable[[Mapping[str, Tensor], torch.Generator], tuple[Tensor, Mapping[str, float]]]


# ---------------------------------------------------------------------------- settings and parts


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """Length and cadence of a loop; None turns checkpoints / validation off."""

    max_steps: int
    grad_accumulation: int = 1
    grad_clip_norm: float | None = 10.0
    report_every: int = 10
    checkpoint_every: int | None = None
    validate_every: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accumulation", "report_every", "checkpoint_every",
                     "validate_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LoopSettings.{name} must be >= 1, got {value}")

    @classmethod
    def from_config(cls, config: TrainConfig) -> LoopSettings:
        """The run's settings; validation only when the config names validation data."""
        run = config.run
        return cls(max_steps=run.max_steps, grad_accumulation=run.grad_accumulation,
                   grad_clip_norm=config.optimizer.grad_clip_norm, report_every=run.report_every,
                   checkpoint_every=run.checkpoint_every,
                   validate_every=run.validate_every if config.data.validation else None)


@dataclass
class TrainParts:
    """What a run trains, before any checkpoint is restored into it."""

    model_config: ModelConfig
    model: AlphaFold3
    trainable: list[nn.Parameter]
    ema: Ema
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def build_parts(config: TrainConfig, model_config: ModelConfig, *, device: torch.device,
                init_weights: Mapping[str, Tensor] | None = None) -> TrainParts:
    """Model (optionally from fine-tune weights), trainable subset, EMA, Adam + SI schedule
    (`finetune.lr` replacing `optimizer.lr`). Seed torch first for identical inits."""
    model = AlphaFold3(model_config)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    trainable = select_trainable(model, freeze_trunk=config.finetune.freeze_trunk,
                                 train_modules=config.finetune.train_modules)
    model.to(device).train()
    if config.run.runtime.compile:   # the same switch as predict/serve (RuntimeConfig.compile)
        model.compile_blocks()
    ema = Ema(model, config.optimizer.ema_decay)
    opt_config = config.optimizer
    if config.finetune.lr is not None:
        opt_config = dataclasses.replace(opt_config, lr=config.finetune.lr)
    optimizer, scheduler = make_optimizer(trainable, opt_config)
    return TrainParts(model_config=model_config, model=model, trainable=trainable, ema=ema,
                      optimizer=optimizer, scheduler=scheduler)


# ---------------------------------------------------------------------------- callbacks


class TrainCallback:
    """Hooks of `TrainLoop`; subclass and override what you need (all default to nothing).

    `loop.step` is the number of optimizer steps done so far; in on_report / on_checkpoint
    it is the step just finished."""

    def on_train_start(self, loop: TrainLoop) -> None:
        """Before the first step of this run (or of a resumed run)."""

    def on_step_start(self, loop: TrainLoop) -> None:
        """Before the micro-batches of step `loop.step + 1`."""

    def on_validate(self, loop: TrainLoop) -> Mapping[str, Any]:
        """At a validation step: metrics to add to the report (e.g. val_lddt)."""
        return {}

    def on_report(self, loop: TrainLoop, metrics: dict[str, Any], *, checkpoint: bool) -> None:
        """Every report; `checkpoint` says on_checkpoint follows with the same metrics."""

    def on_checkpoint(self, loop: TrainLoop, metrics: dict[str, Any]) -> None:
        """At a checkpoint step: save loop.model / ema / optimizer / scheduler / generator."""

    def on_train_end(self, loop: TrainLoop) -> None:
        """After the last step."""


def load_callbacks(specs: Sequence[CallbackSpec]) -> list[TrainCallback]:
    """`run.callbacks`: import each `path` ("pkg.module:name" or "pkg.module.name") and call
    it with `options`; it must return a TrainCallback."""
    callbacks = []
    for i, spec in enumerate(specs):
        module_name, sep, attr = spec.path.partition(":")
        if not sep:
            module_name, _, attr = spec.path.rpartition(".")
        where = f"run.callbacks[{i}] {spec.path!r}"
        if not module_name or not attr:
            raise ValueError(f"{where}: expected 'package.module:name'")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"{where}: cannot be imported ({err.__class__.__name__}: {err})") from None
        callback = factory(**spec.options)
        if not isinstance(callback, TrainCallback):
            raise ValueError(f"{where}: returned {type(callback).__name__}, not a TrainCallback")
        callbacks.append(callback)
    return callbacks


class EmaValidation(TrainCallback):
    """Validation with the EMA weights (SI 5.6) on a separate model copy: all-atom lDDT of
    structures sampled on held-out examples (foldray.training.evaluate)."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]], *, device: torch.device,
                 n_sample: int = 1, n_step: int | None = None, seed: int = 0,
                 runtime: RuntimeConfig | None = None) -> None:
        self.samples, self.device, self.runtime = samples, device, runtime
        self.n_sample, self.n_step, self.seed = n_sample, n_step, seed
        self.eval_model: nn.Module | None = None

    def on_validate(self, loop: TrainLoop) -> Mapping[str, Any]:
        if not self.samples:
            return {}
        if self.eval_model is None:
            self.eval_model = copy.deepcopy(loop.model).eval()
        if loop.ema is not None:
            loop.ema.copy_to(self.eval_model)
        else:                                   # no EMA: the current weights
            self.eval_model.load_state_dict(loop.model.state_dict())
        return validation_lddt(self.eval_model, self.samples, device=self.device,
                               n_sample=self.n_sample, n_step=self.n_step, seed=self.seed,
                               runtime=self.runtime)


# ---------------------------------------------------------------------------- ranks


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; [value] without torch.distributed."""
    if not torch.distributed.is_initialized():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks. Gathered as objects (a few dozen numbers), so a
    metric that only some ranks have (a batch without some target) averages over those."""
    gathered = all_gather(dict(values))
    keys = sorted({k for d in gathered for k in d})
    return {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}


# ---------------------------------------------------------------------------- the loop


class _Window:
    """Sums since the last report; `metrics()` turns them into per-step means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps, self.tokens, self.start = 0, 0.0, time.perf_counter()

    def metrics(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        out = {k: v / self.steps for k, v in self.sums.items()}
        out.setdefault("skipped_steps", 0.0)
        out["tokens_per_s"] = self.tokens / max(elapsed, 1e-9)
        out["step_s"] = elapsed / self.steps
        return out


class TrainLoop:
    """Optimizer steps of `step_fn` over `batches` (see the module docstring).

    step_fn(batch, generator) -> (loss [], terms) is normally a TrainStepModule (or its DDP
    wrapper); `model` is the bare model (EMA, checkpoints), `params` the trainable
    parameters (clipping). `start_step` / `samples_seen` resume a run: `batches` must then
    continue the data stream from there, and optimizer / scheduler / EMA hold the restored
    state. Batches are moved to `device` (default: where they are).

    Reported metrics (means over the steps since the last report, then over ranks): the
    step function's terms, lr, grad_norm (before clipping), skipped_steps (share of steps
    whose update was skipped; `self.skipped_steps` counts them all), tokens_per_s (all
    ranks), step_s; plus step, samples_seen, world_size, param_sync_spread (at checkpoints
    with several ranks) and what validation callbacks return.
    """

    def __init__(self, step_fn: StepFn, *, model: nn.Module, params: Sequence[nn.Parameter],
                 optimizer: torch.optim.Optimizer, batches: Iterator[Mapping[str, Tensor]],
                 generator: torch.Generator, settings: LoopSettings,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 ema: Ema | None = None, callbacks: Sequence[TrainCallback] = (),
                 device: torch.device | None = None, start_step: int = 0,
                 samples_seen: int = 0) -> None:
        self.step_fn, self.model, self.params = step_fn, model, list(params)
        self.optimizer, self.scheduler, self.ema = optimizer, scheduler, ema
        self.batches, self.generator, self.settings = batches, generator, settings
        self.callbacks, self.device = list(callbacks), device
        self.step, self.samples_seen = start_step, samples_seen
        self.skipped_steps = 0                  # updates skipped for a non-finite gradient
        self.rank, self.world_size = rank(), world_size()

    def run(self) -> TrainLoop:
        """Train up to `settings.max_steps`; returns self (step, samples_seen, skipped_steps)."""
        for callback in self.callbacks:
            callback.on_train_start(self)
        window = _Window()
        while self.step < self.settings.max_steps:
            for callback in self.callbacks:
                callback.on_step_start(self)
            self._update(window)
            checkpoint, validate = self._due(self.settings.checkpoint_every), \
                self._due(self.settings.validate_every, final=False)
            if checkpoint or validate or self.step % self.settings.report_every == 0:
                self._report(window, checkpoint=checkpoint, validate=validate)
                window = _Window()
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self

    def lr(self) -> float:
        if self.scheduler is not None:
            return float(self.scheduler.get_last_lr()[0])
        return float(self.optimizer.param_groups[0]["lr"])

    def _due(self, every: int | None, *, final: bool = True) -> bool:
        if every is None:
            return False
        return self.step % every == 0 or (final and self.step == self.settings.max_steps)

    def _next_batch(self) -> dict[str, Tensor]:
        batch = next(self.batches)
        if self.device is None:
            return dict(batch)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _update(self, window: _Window) -> None:
        n_micro = self.settings.grad_accumulation
        self.optimizer.zero_grad(set_to_none=True)
        structures = 0
        for micro in range(n_micro):
            batch = self._next_batch()
            no_sync = getattr(self.step_fn, "no_sync", None)
            local = no_sync() if no_sync is not None and micro < n_micro - 1 else contextlib.nullcontext()
            with local:
                loss, terms = self.step_fn(batch, self.generator)
                (loss / n_micro).backward()
            for key, value in terms.items():
                window.sums[key] += value / n_micro
            window.tokens += float(batch["token_mask"].sum())
            structures += int(batch["token_mask"].shape[0])
        grad_norm = clip_gradients(self.params, self.settings.grad_clip_norm)
        window.sums["lr"] += self.lr()
        window.sums["grad_norm"] += grad_norm
        if math.isfinite(grad_norm):
            self.optimizer.step()
        else:                                   # a non-finite gradient: no update
            self.skipped_steps += 1
            window.sums["skipped_steps"] += 1.0
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.samples_seen += structures * self.world_size
        window.steps += 1

    def _report(self, window: _Window, *, checkpoint: bool, validate: bool) -> None:
        metrics: dict[str, Any] = mean_over_ranks(window.metrics())
        metrics["tokens_per_s"] *= self.world_size
        metrics.update(step=self.step, samples_seen=self.samples_seen, world_size=self.world_size)
        if checkpoint and self.world_size > 1:          # DDP kept every replica equal
            sums = [float(s) for s in all_gather(repr(param_checksum(self.model.state_dict())))]
            metrics["param_sync_spread"] = max(sums) - min(sums)
        if validate:
            for callback in self.callbacks:
                metrics.update(callback.on_validate(self))
        for callback in self.callbacks:
            callback.on_report(self, metrics, checkpoint=checkpoint)
        if checkpoint:
            for callback in self.callbacks:
                callback.on_checkpoint(self, metrics)
