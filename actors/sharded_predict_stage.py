"""The batch engine's sharded predict stage: jobs above `--shard-above` tokens run on a
group of N Ray workers in one placement group (`foldray.parallel`, pair representation
split by rows), every other job passes through to the normal predict stage.

The workers are started with the first sharded job and kept across jobs, each loading
the checkpoint once; this actor keeps a CPU copy of the model only for what follows the
forward pass (confidence metrics, samples), exactly as `PredictStage` does, so rows,
statuses and the writer are the same. Before each job the memory plan
(`foldray.parallel.plan`) picks the pair-stack chunk size, and with `--devices-per-job
auto` the number of workers (the group is re-formed when that changes; jobs arrive
largest first, so rarely); a job that cannot fit even over the most workers is its error
row naming its tokens, the estimate and the memory free. A threaded actor: rows that pass
through never wait behind a sharded job (sharded jobs run one at a time). Predicted rows
carry the status `sharded` past the normal predict stage (which passes on every row that
is not pending) and are pending again before the writer (`restore_stage`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from foldray.actors.predict_rows import PENDING
from foldray.actors.predict_stage import PredictStage
from foldray.model.alphafold3 import AlphaFold3, Prediction, TrunkOutput
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.parallel.plan import MemoryPlan, ShardSettings, free_memory, plan_memory, value_bytes
from foldray.parallel.predict import ShardedPredictor, rank_forward
from foldray.predictor import Predictor, PredictSettings

if TYPE_CHECKING:
    import ray.data

    from foldray.actors.batch import BatchSettings
    from foldray.actors.context_parallel import ShardGroup

Features = dict[str, torch.Tensor]
SHARDED = "sharded"   # bookkeeping status between this stage and the writer, never final


def _load_model(rank: int, world: int, checkpoint: str | None, config: str | ModelConfig,
                runtime: RuntimeConfig, device_type: str) -> AlphaFold3:
    """Once per worker: the checkpoint (or the same seeded random weights as every actor)."""
    device = f"cuda:{torch.cuda.current_device()}" if device_type == "cuda" else "cpu"
    return Predictor.load(checkpoint, config=config, runtime=runtime, device=device).model


def _worker_free_memory(model: AlphaFold3, rank: int, world: int) -> int:
    return free_memory(str(next(model.parameters()).device))


class _GroupPredictor(ShardedPredictor):
    """A ShardedPredictor whose ranks are the stage's kept Ray workers, planned per job."""

    def __init__(self, stage: ShardedPredictStage, predictor: Predictor) -> None:
        super().__init__(predictor.model, devices=1, runtime=predictor.runtime, device="cpu",
                         random_weights=predictor.random_weights)
        self.stage = stage
        self.plan: MemoryPlan | None = None

    def _forward(self, features: Sequence[dict[str, np.ndarray]], seeds: int | Sequence[int],
                 settings: PredictSettings, trunk: TrunkOutput | None = None,
                 ) -> tuple[Prediction, dict[str, torch.Tensor]]:
        from foldray.features.batch import collate

        n_token = int(collate(list(features), token_buckets=None, atom_buckets=None)["token_mask"].shape[-1])
        self.plan = self.stage.plan(n_token, settings.n_sample)
        self.devices = self.plan.world
        return super()._forward(features, seeds, settings, trunk)

    def _run_ranks(self, padded: Features, seed: int, settings: PredictSettings) -> dict[str, torch.Tensor]:
        assert self.plan is not None
        group = self.stage.group(self.plan.world)
        bf16 = value_bytes(self.runtime.precision, self.stage.device_type) == 2
        try:
            return group.run(rank_forward, (padded, seed, settings.n_sample, settings.n_cycle,
                                            settings.n_step, self.plan.chunk_size, bf16))[0]
        except BaseException:   # a rank failed (out of memory, died): its collectives are
            self.stage.close()  # broken, the next job starts fresh workers
            raise


class ShardedPredictStage(PredictStage):
    """Featurized job in; above the threshold: samples and metrics out (as PredictStage),
    else the row unchanged for the normal predict stage."""

    def __init__(self, checkpoint: str | None, config: str | ModelConfig, runtime: RuntimeConfig,
                 settings: PredictSettings, sharding: ShardSettings, max_devices: int,
                 num_cpus: float, num_gpus: float, placement_timeout_s: float, group_name: str = "") -> None:
        super().__init__(checkpoint, config, dataclasses.replace(runtime, compile=False), "cpu", settings)
        self.predictor = _GroupPredictor(self, self.predictor)
        self.checkpoint, self.config, self.runtime = checkpoint, config, runtime
        self.sharding, self.max_devices = sharding, max_devices
        self.num_cpus, self.num_gpus, self.placement_timeout_s = num_cpus, num_gpus, placement_timeout_s
        self.device_type = "cuda" if num_gpus > 0 else "cpu"
        self.group_name = group_name       # per run: removable by name (remove_groups)
        self._group: ShardGroup | None = None
        self._free: int | None = None      # per device, measured with the model loaded
        self._lock = threading.Lock()
        self._unplaceable: str | None = None   # the group could not be placed: fail fast after
        self.job = ""                      # the job being planned, for its error message

    def close(self) -> None:
        """Stop the workers and free their placement group (the engine also removes it by
        name after the run: Ray Data kills this actor without a call)."""
        group, self._group = self._group, None
        if group is not None:
            group.close()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] != PENDING or int(row.get("n_tokens") or 0) <= self.sharding.shard_above:
            return row
        with self._lock:                   # one sharded job at a time on the group
            self.job = str(row.get("name") or "")
            done = super().__call__(row)
        # predicted: past the normal predict stage untouched (`restore_pending` before writing)
        return done | {"status": SHARDED} if done["status"] == PENDING else done

    def plan(self, n_token: int, n_sample: int) -> MemoryPlan:
        """Workers and chunk size for one job (MemoryPlanError: it cannot fit)."""
        wanted = self.sharding.devices_per_job
        worlds = ([w for w in range(1, self.max_devices + 1) if n_sample % w == 0] if wanted == "auto"
                  else [int(wanted)])
        if wanted != "auto" and n_sample % int(wanted):
            raise ValueError(f"--samples {n_sample} is not a multiple of --devices-per-job {wanted}")
        available = self.sharding.memory_per_device or self._measured_free(worlds[-1])
        chunk = self.runtime.chunk_size
        return plan_memory(n_token, self.predictor.config, available_bytes=available, worlds=worlds,
                           chunk_size=chunk, fixed_chunk=chunk is not None, n_sample=n_sample,
                           dtype_bytes=value_bytes(self.runtime.precision, self.device_type),
                           # CPU workers on one node share its memory; a given figure is per device
                           shared=self.device_type == "cpu" and not self.sharding.memory_per_device,
                           job=self.job)

    def _measured_free(self, world: int) -> int:
        if self._free is None:             # the first sharded job: start the widest group
            self._free = min(self.group(world).run(_worker_free_memory))
        return self._free

    def group(self, world: int) -> ShardGroup:
        """The kept worker group of `world` ranks (started, or re-formed at a new size)."""
        from foldray.actors.context_parallel import ShardGroup

        if self._group is not None and self._group.world != world:
            self._group.close()
            self._group = None
        if self._group is None:
            from foldray.actors.context_parallel import remove_groups

            if self._unplaceable:          # one wait of --placement-timeout per run, not per job
                raise RuntimeError(self._unplaceable)
            if self.group_name:            # left by a dead predecessor (a restarted actor)
                remove_groups(self.group_name)
            try:
                self._group = ShardGroup(world, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                         placement_timeout_s=self.placement_timeout_s, name=self.group_name)
            except RuntimeError as err:
                if "cannot place" in str(err):
                    self._unplaceable = str(err)
                raise
            try:                           # each worker loads the checkpoint, once
                self._group.setup(_load_model, (self.checkpoint, self.config,
                                                dataclasses.replace(self.runtime, compile=False),
                                                self.device_type))
            except BaseException:
                self.close()
                raise
        return self._group


def max_devices(sharding: ShardSettings, num_cpus: float, num_gpus: float) -> int:
    """The most workers one job may use: N, or with `auto` what the largest node holds
    (its GPUs over --num-gpus-per-actor, on CPU its CPUs over --num-cpus-per-actor)."""
    import ray

    if sharding.devices_per_job != "auto":
        return int(sharding.devices_per_job)
    key, per = ("GPU", num_gpus) if num_gpus > 0 else ("CPU", num_cpus)
    largest = max((node["Resources"].get(key, 0.0) for node in ray.nodes() if node.get("Alive")), default=0.0)
    return max(1, int(largest // max(per, 1e-9)))


def sharded_stage(featurized: ray.data.Dataset, settings: BatchSettings,
                  remote: dict[str, Any]) -> ray.data.Dataset:
    """The stage between featurize and predict (`predict-batch --devices-per-job`)."""
    from ray.data import ActorPoolStrategy

    res = settings.resources
    num_cpus, num_gpus = res.num_cpus_per_actor, res.num_gpus_per_actor
    return featurized.map(
        ShardedPredictStage, fn_constructor_kwargs={
            "checkpoint": settings.checkpoint, "config": settings.config, "runtime": settings.runtime,
            "settings": settings.predict or PredictSettings(), "sharding": settings.sharding,
            "max_devices": max_devices(settings.sharding, num_cpus, num_gpus),
            "num_cpus": num_cpus, "num_gpus": num_gpus,
            "placement_timeout_s": settings.placement_timeout_s, "group_name": group_name(settings)},
        # one coordinator; its workers hold the devices (their own placement group)
        compute=ActorPoolStrategy(size=1, max_tasks_in_flight_per_actor=4,
                                  max_concurrent_calls_per_actor=4),
        num_cpus=0.1, **remote)


def group_name(settings: BatchSettings) -> str:
    """The workers' placement group name, one per output location (so one per run)."""
    import hashlib

    return "foldray-shard-" + hashlib.sha256(settings.out.encode()).hexdigest()[:16]


def remove_run_groups(settings: BatchSettings) -> None:
    """After the run: the sharded stage's placement group, whatever became of its actor."""
    from foldray.actors.context_parallel import remove_groups

    remove_groups(group_name(settings))


def restore_pending(row: dict[str, Any]) -> dict[str, Any]:
    """After the normal predict stage: sharded predictions go to the writer as any other."""
    return row | {"status": PENDING} if row["status"] == SHARDED else row


def restore_stage(predicted: ray.data.Dataset, settings: BatchSettings,
                  remote: dict[str, Any]) -> ray.data.Dataset:
    """`restore_pending` as a task map with the writer's resources, so Ray Data fuses it
    into the write actors (no extra workers, no extra hop)."""
    from foldray.actors.placement import stage_resources

    per = settings.resources.num_cpus_per_worker
    place = stage_resources("featurize", per)
    return predicted.map(restore_pending, num_cpus=per, **remote, **({"resources": place} if place else {}))
