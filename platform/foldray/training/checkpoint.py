"""Training checkpoints: one folder holding everything a run needs to continue exactly.

    model.safetensors     weights + ModelConfig (foldray.io.weights; `foldray predict` reads it)
    ema.safetensors       the EMA weights (SI 5.6), same format: what to predict with
    optimizer.pt          Adam and LR-scheduler state (torch.save of tensors and numbers only,
                          read back with torch.load(weights_only=True): no pickled code)
    trainer_state.json    step, samples seen, world size and the TrainConfig of the run
    rng-rank<r>.pt        rank r's torch.Generator state (each train worker writes its own;
                          Ray Train merges the workers' files into one checkpoint folder)

Written to a local folder (Ray Train uploads it to RunConfig.storage_path); read from a
local folder or any fsspec URL (a fine-tune may start from s3://.../checkpoint_xxx).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from foldray.io import storage
from foldray.io.weights import CONFIG_KEY, WeightsError, load_weights, read_metadata, save_weights
from foldray.model.config import ModelConfig

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
STEP_KEY = "foldray_train_step"


def param_checksum(state: dict[str, Tensor]) -> float:
    """Sum of every floating-point tensor in float64: a cheap fingerprint of a set of weights
    (equal weights give equal sums; used to check resumes and fine-tune starts)."""
    return float(sum(state[k].detach().double().sum() for k in sorted(state)   # fixed order
                     if state[k].is_floating_point()))


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


@dataclass(frozen=True, kw_only=True)
class TrainerState:
    step: int                      # optimizer steps done
    samples_seen: int              # structures trained on, all workers together
    world_size: int
    config: dict[str, Any]         # TrainConfig.to_dict() of the run that wrote it


def save_checkpoint(folder: str, *, model: nn.Module, model_config: ModelConfig,
                    ema: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainerState) -> None:
    """Write the shared files of a checkpoint (rank 0's job) into a local folder."""
    os.makedirs(folder, exist_ok=True)
    meta = {STEP_KEY: str(state.step)}
    save_weights(os.path.join(folder, MODEL_FILE), model.state_dict(), model_config, meta)
    save_weights(os.path.join(folder, EMA_FILE), ema, model_config, meta)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    storage.write_bytes_atomic(os.path.join(folder, OPTIMIZER_FILE), buffer.getvalue())
    storage.write_text_atomic(os.path.join(folder, STATE_FILE), json.dumps({
        "step": state.step, "samples_seen": state.samples_seen, "world_size": state.world_size,
        "config": state.config}, indent=1))


def save_rng(folder: str, rank: int, generator: torch.Generator) -> None:
    """Each worker's own random state (its generator drives noise, crops of train_step)."""
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"generator": generator.get_state(), "device": str(generator.device)}, buffer)
    storage.write_bytes_atomic(os.path.join(folder, rng_file(rank)), buffer.getvalue())


def _torch_load(url: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)


def load_trainer_state(folder: str) -> TrainerState:
    data = json.loads(storage.read_text(storage.join(folder, STATE_FILE)))
    return TrainerState(step=int(data["step"]), samples_seen=int(data["samples_seen"]),
                        world_size=int(data["world_size"]), config=data["config"])


def restore_checkpoint(folder: str, *, model: nn.Module, ema: nn.Module | Any,
                       optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler) -> TrainerState:
    """Load weights, EMA, optimizer and scheduler in place; returns the trainer state.

    `ema` is anything with `load_state_dict` (foldray.training.optim.Ema). The model config
    stored in the weights must equal the model's (a checkpoint never meets another
    architecture silently).
    """
    weights, config = load_weights(storage.join(folder, MODEL_FILE))
    own = getattr(model, "config", None)
    # compared as JSON: ModelConfig.from_dict gives lists where the dataclass has tuples
    if own is not None and json.dumps(own.to_dict()) != json.dumps(config.to_dict()):
        raise ValueError(f"{folder}: checkpoint model config differs from the run's model config")
    model.load_state_dict(weights)
    ema_weights, _ = load_weights(storage.join(folder, EMA_FILE))
    ema.load_state_dict(ema_weights)
    opt = _torch_load(storage.join(folder, OPTIMIZER_FILE))
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return load_trainer_state(folder)


def restore_rng(folder: str, rank: int, generator: torch.Generator) -> bool:
    """Restore rank's generator; False (generator untouched) if that rank wrote none,
    e.g. when a run resumes with more workers than it had."""
    url = storage.join(folder, rng_file(rank))
    if not storage.exists(url):
        return False
    generator.set_state(_torch_load(url)["generator"])
    return True


def read_model_config(folder: str) -> ModelConfig:
    """The ModelConfig of a checkpoint from the safetensors header alone (no tensors read):
    a resumed worker builds its model before loading gigabytes of weights."""
    fs, path = storage.filesystem(storage.join(folder, MODEL_FILE))
    with fs.open(path, "rb") as handle:
        head = handle.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        metadata = read_metadata(head + handle.read(n))
    if CONFIG_KEY not in metadata:
        raise WeightsError(f"{folder}: {MODEL_FILE} has no model config")
    return ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]))


def load_init_weights(location: str, *, use_ema: bool = True) -> tuple[dict[str, Tensor], ModelConfig]:
    """Weights to start a fine-tune from: a safetensors file, or a train checkpoint folder
    (its EMA weights by default, the raw weights with use_ema=False)."""
    if location.endswith(".safetensors"):
        return load_weights(location)
    return load_weights(storage.join(location, EMA_FILE if use_ema else MODEL_FILE))
