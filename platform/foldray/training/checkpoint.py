"""Training checkpoints: one folder holding everything a run needs to continue exactly.

    model.safetensors     weights + ModelConfig (foldray.io.weights; `foldray predict` reads it)
    ema.safetensors       the EMA weights (SI 5.6), same format: what to predict with
    optimizer.pt          Adam and LR-scheduler state (torch.save of tensors and numbers only,
                          read back with torch.load(weights_only=True): no pickled code)
    trainer_state.json    step, samples seen, world size and the TrainConfig of the run
    rng-rank<r>.pt        rank r's torch.Generator state (each train worker writes its own;
                          Ray Train merges the workers' files into one checkpoint folder)
    manifest.json         written LAST by rank 0: format, step and, for every file above (all
                          ranks' rng files too), its size and SHA-256; the weights files also
                          say their tensors were checked finite when saved

A folder without a manifest is incomplete. Restoring verifies the manifest (sizes, hashes,
step) and refuses non-finite weights before anything is loaded into the model, so a
truncated, overwritten or half-uploaded checkpoint is a CheckpointError naming the file and
the reason, never a reader's traceback; the train worker then falls back to an older one.

Written to a local folder (Ray Train uploads it to RunConfig.storage_path); read from a
local folder or any fsspec URL (a fine-tune may start from s3://.../checkpoint_xxx).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from foldray.io import storage
from foldray.io.weights import CONFIG_KEY, WeightsError, parse_weights, read_metadata, weights_bytes
from foldray.model.config import ModelConfig

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "foldray-checkpoint-manifest-v1"
STEP_KEY = "foldray_train_step"
REQUIRED_FILES = (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")   # a manifest names files in its own folder
_DIR_NAME = re.compile(r"checkpoint_(\d+)(?:-(\d+))?")
_CHUNK = 8 << 20
T = TypeVar("T")


class CheckpointError(WeightsError):
    """A checkpoint that must not be used: incomplete (no manifest), damaged (a file missing,
    truncated or changed since it was saved), unreadable, or holding non-finite weights.
    `reason` is the short why ("model.safetensors sha256 mismatch"), `folder` where."""

    def __init__(self, reason: str, *, folder: str = "") -> None:
        super().__init__(f"{folder}: {reason}" if folder else reason)
        self.reason, self.folder = reason, folder


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


def file_entry(data: bytes) -> dict[str, Any]:
    """A manifest entry: size and SHA-256 of a file's bytes."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def nonfinite_tensors(state: dict[str, Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf (sorted)."""
    return sorted(k for k, v in state.items()
                  if v.is_floating_point() and not bool(torch.isfinite(v.detach()).all()))


def _write(folder: str, name: str, data: bytes) -> dict[str, Any]:
    storage.write_bytes_atomic(os.path.join(folder, name), data)
    return file_entry(data)


def save_checkpoint(folder: str, *, model: nn.Module, model_config: ModelConfig,
                    ema: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    state: TrainerState) -> dict[str, dict[str, Any]]:
    """Write the shared files of a checkpoint (rank 0's job) into a local folder; returns their
    manifest entries. Non-finite weights are refused (CheckpointError) before anything is
    written: a diverged run must not push a good checkpoint out of Ray's `num_to_keep`.
    The checkpoint is complete only once `write_manifest` has run (after every rank's rng)."""
    weights = model.state_dict()
    for label, tensors in (("model", weights), ("EMA", ema)):
        bad = nonfinite_tensors(tensors)
        if bad:
            raise CheckpointError(f"step {state.step}: {label} weights are not finite ({len(bad)} "
                                  f"tensor(s), first {bad[0]}); training diverged, not checkpointed")
    os.makedirs(folder, exist_ok=True)
    meta = {STEP_KEY: str(state.step)}
    entries = {MODEL_FILE: _write(folder, MODEL_FILE, weights_bytes(weights, model_config, meta)),
               EMA_FILE: _write(folder, EMA_FILE, weights_bytes(ema, model_config, meta))}
    for name in (MODEL_FILE, EMA_FILE):
        entries[name]["finite"] = True                  # checked above, on what was written
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    entries[OPTIMIZER_FILE] = _write(folder, OPTIMIZER_FILE, buffer.getvalue())
    entries[STATE_FILE] = _write(folder, STATE_FILE, json.dumps({
        "step": state.step, "samples_seen": state.samples_seen, "world_size": state.world_size,
        "config": state.config}, indent=1).encode("utf-8"))
    return entries


def save_rng(folder: str, rank: int, generator: torch.Generator) -> dict[str, dict[str, Any]]:
    """Each worker's own random state (its generator drives noise, crops of train_step);
    returns its manifest entry (gathered to rank 0, which writes the manifest)."""
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"generator": generator.get_state(), "device": str(generator.device)}, buffer)
    return {rng_file(rank): _write(folder, rng_file(rank), buffer.getvalue())}


def write_manifest(folder: str, *, step: int, entries: dict[str, dict[str, Any]]) -> None:
    """Write manifest.json LAST, after every file it lists: its presence marks the folder
    complete, and its sizes and hashes let a resume prove nothing changed since."""
    missing = [name for name in REQUIRED_FILES if name not in entries]
    if missing:
        raise CheckpointError(f"manifest would miss {', '.join(missing)}", folder=folder)
    storage.write_text_atomic(os.path.join(folder, MANIFEST_FILE), json.dumps(
        {"format": MANIFEST_FORMAT, "step": step, "files": dict(sorted(entries.items()))}, indent=1))


def read_manifest(folder: str) -> dict[str, Any]:
    """The parsed manifest, checked for shape (not yet against the files)."""
    url = storage.join(folder, MANIFEST_FILE)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise CheckpointError(f"no {MANIFEST_FILE} (incomplete checkpoint)", folder=folder) from None
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        ok = (manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("step"), int)
              and isinstance(files, dict)
              and all(_SAFE_NAME.fullmatch(name) and isinstance(e, dict) and isinstance(e.get("size"), int)
                      and isinstance(e.get("sha256"), str) for name, e in files.items()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{MANIFEST_FILE} is damaged or of an unknown format", folder=folder)
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise CheckpointError(f"{MANIFEST_FILE} does not list {', '.join(missing)}", folder=folder)
    return manifest


def _check_entry(folder: str, name: str, entry: dict[str, Any], data: bytes) -> bytes:
    if len(data) != entry["size"]:
        raise CheckpointError(f"{name} size {len(data)} != {entry['size']} in the manifest "
                              "(truncated or overwritten)", folder=folder)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{name} sha256 mismatch", folder=folder)
    return data


def _verify_file(folder: str, name: str, entry: dict[str, Any]) -> None:
    """Size, then SHA-256 streamed in chunks (a checkpoint may be gigabytes)."""
    fs, path = storage.filesystem(storage.join(folder, name))
    try:
        size = fs.size(path)
    except FileNotFoundError:
        size = None
    if size is None:
        raise CheckpointError(f"{name} is missing", folder=folder)
    if size != entry["size"]:
        raise CheckpointError(f"{name} size {size} != {entry['size']} in the manifest "
                              "(truncated or overwritten)", folder=folder)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{name} sha256 mismatch", folder=folder)


def verify_checkpoint(folder: str) -> dict[str, Any]:
    """Check every file the manifest lists (present, same size, same SHA-256); returns the
    manifest. Raises CheckpointError with the first problem found."""
    manifest = read_manifest(folder)
    for name, entry in sorted(manifest["files"].items()):
        _verify_file(folder, name, entry)
    return manifest


def _read_verified(folder: str, name: str, manifest: dict[str, Any] | None) -> bytes:
    """A file's bytes, checked against its manifest entry when a manifest is given."""
    try:
        data = storage.read_bytes(storage.join(folder, name))
    except FileNotFoundError:
        raise CheckpointError(f"{name} is missing", folder=folder) from None
    if manifest is not None:
        entry = manifest["files"].get(name)
        if entry is None:
            raise CheckpointError(f"{name} is not in the manifest", folder=folder)
        _check_entry(folder, name, entry, data)
    return data


def _parse_finite(folder: str, name: str, data: bytes) -> tuple[dict[str, Tensor], ModelConfig]:
    try:
        tensors, config = parse_weights(data, name)
    except (WeightsError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(str(err) if isinstance(err, WeightsError) else f"{name}: bad model config",
                              folder=folder) from None
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"{name} has non-finite values in {len(bad)} tensor(s) (first {bad[0]})",
                              folder=folder)
    return tensors, config


def _torch_load(folder: str, name: str, data: bytes) -> dict[str, Any]:
    """Plain tensors and numbers only (weights_only=True: a pickle that would run code, or
    any unreadable file, is a CheckpointError)."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"{name} cannot be read with torch.load(weights_only=True) "
                              f"({err.__class__.__name__})", folder=folder) from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{name} does not hold a dict", folder=folder)
    return loaded


def load_trainer_state(folder: str, data: bytes | None = None) -> TrainerState:
    try:
        data = json.loads(data if data is not None else storage.read_bytes(storage.join(folder, STATE_FILE)))
        return TrainerState(step=int(data["step"]), samples_seen=int(data["samples_seen"]),
                            world_size=int(data["world_size"]), config=data["config"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{STATE_FILE} is damaged", folder=folder) from None


def restore_checkpoint(folder: str, *, model: nn.Module, ema: nn.Module | Any,
                       optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler,
                       manifest: dict[str, Any] | None = None) -> TrainerState:
    """Load weights, EMA, optimizer and scheduler in place; returns the trainer state.

    The checkpoint is verified first (`verify_checkpoint`, skipped when its `manifest` is
    passed) and everything is read and checked (finite weights, the manifest's step) before
    the model is touched, so a refused checkpoint leaves model and optimizer as they were.
    `ema` is anything with `load_state_dict` (foldray.training.optim.Ema). The model config
    stored in the weights must equal the model's (a checkpoint never meets another
    architecture silently).
    """
    manifest = manifest if manifest is not None else verify_checkpoint(folder)
    weights, config = _parse_finite(folder, MODEL_FILE, _read_verified(folder, MODEL_FILE, manifest))
    own = getattr(model, "config", None)
    # compared as JSON: ModelConfig.from_dict gives lists where the dataclass has tuples
    if own is not None and json.dumps(own.to_dict()) != json.dumps(config.to_dict()):
        raise CheckpointError("checkpoint model config differs from the run's model config", folder=folder)
    ema_weights, _ = _parse_finite(folder, EMA_FILE, _read_verified(folder, EMA_FILE, manifest))
    opt = _torch_load(folder, OPTIMIZER_FILE, _read_verified(folder, OPTIMIZER_FILE, manifest))
    state = load_trainer_state(folder, _read_verified(folder, STATE_FILE, manifest))
    if state.step != manifest["step"]:
        raise CheckpointError(f"{STATE_FILE} step {state.step} != manifest step {manifest['step']}",
                              folder=folder)
    if "optimizer" not in opt or "scheduler" not in opt:
        raise CheckpointError(f"{OPTIMIZER_FILE} lacks optimizer or scheduler state", folder=folder)
    try:
        model.load_state_dict(weights)
        ema.load_state_dict(ema_weights)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"its state does not fit this run's model or optimizer "
                              f"({err.__class__.__name__})", folder=folder) from None
    return state


def restore_rng(folder: str, rank: int, generator: torch.Generator) -> bool:
    """Restore rank's generator; False (generator untouched) if that rank wrote none,
    e.g. when a run resumes with more workers than it had. Only a file the manifest
    lists (and whose hash matches) is used."""
    manifest = read_manifest(folder)
    if rng_file(rank) not in manifest["files"]:
        return False
    data = _read_verified(folder, rng_file(rank), manifest)
    try:
        generator.set_state(_torch_load(folder, rng_file(rank), data)["generator"])
    except (KeyError, RuntimeError, TypeError):
        raise CheckpointError(f"{rng_file(rank)} holds no usable generator state", folder=folder) from None
    return True


def read_model_config(folder: str) -> ModelConfig:
    """The ModelConfig of a checkpoint from the safetensors header alone (no tensors read):
    a resumed worker builds its model before loading gigabytes of weights."""
    fs, path = storage.filesystem(storage.join(folder, MODEL_FILE))
    try:
        with fs.open(path, "rb") as handle:
            head = handle.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            metadata = read_metadata(head + handle.read(n))
        if CONFIG_KEY not in metadata:
            raise WeightsError("no model config")
        return ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    except FileNotFoundError:
        raise CheckpointError(f"{MODEL_FILE} is missing", folder=folder) from None
    except (WeightsError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{MODEL_FILE}: {err}", folder=folder) from None


def load_init_weights(location: str, *, use_ema: bool = True) -> tuple[dict[str, Tensor], ModelConfig]:
    """Weights to start a fine-tune from: a safetensors file, or a train checkpoint folder
    (its EMA weights by default, the raw weights with use_ema=False).

    Where a manifest.json sits beside the weights and lists them (a train checkpoint), the
    file must match it; a file without one (`foldray import-weights` output, a checkpoint
    saved before manifests) is read as it is. Non-finite weights are refused either way.
    """
    if location.endswith(".safetensors"):
        split = posixpath.split if storage.is_url(location) else os.path.split
        folder, name = split(location)
    else:
        folder, name = location, EMA_FILE if use_ema else MODEL_FILE
    manifest = read_manifest(folder) if storage.exists(storage.join(folder, MANIFEST_FILE)) else None
    if manifest is not None and name not in manifest["files"]:
        manifest = None                # a file beside, not part of, that checkpoint
    return _parse_finite(folder, name, _read_verified(folder, name, manifest))


def dir_order(name: str) -> tuple[int, int] | None:
    """Sort key of a checkpoint folder name `checkpoint_<step>[-<n>]`; None for other names."""
    found = _DIR_NAME.fullmatch(name)
    return (int(found.group(1)), int(found.group(2) or 0)) if found else None


def dir_name(step: int, taken: Collection[str] = ()) -> str:
    """`checkpoint_<step:09d>`, or `-1`, `-2`... appended while that name is taken: after a
    fall back to an older checkpoint the run re-reaches the steps of the refused ones, and
    writing into their folders would mix files and let Ray's cleanup of the old entry delete
    the new checkpoint."""
    name = base = f"checkpoint_{step:09d}"
    n = 0
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def resume_summary(used: str | None, skipped: dict[str, str]) -> str:
    """One line for logs and errors: "checkpoint_000000004: model.safetensors sha256
    mismatch; resumed from checkpoint_000000002"."""
    parts = [f"{name}: {why}" for name, why in skipped.items()]
    parts.append(f"resumed from {used}" if used else "no usable checkpoint left")
    return "; ".join(parts)


def restore_first_valid(candidates: Iterable[tuple[str, AbstractContextManager[str]]],
                        restore: Callable[[str], T], *, skipped: dict[str, str] | None = None,
                        on_skip: Callable[[str, str], None] | None = None, where: str = "the run",
                        ) -> tuple[str, T]:
    """`restore(folder)` on each candidate (name, context manager giving a local folder or URL),
    newest first, until one succeeds; a CheckpointError or OSError refuses a candidate, and
    its reason lands in `skipped` (and `on_skip`). Candidates are opened (downloaded) one at a
    time and only while needed. None left: a CheckpointError naming every refusal."""
    skipped = {} if skipped is None else skipped
    for name, opener in candidates:
        try:
            with opener as folder:
                return name, restore(folder)
        except (CheckpointError, OSError) as err:
            reason = err.reason if isinstance(err, CheckpointError) else \
                f"cannot be read ({err.__class__.__name__})"
            skipped[name] = reason
            if on_skip is not None:
                on_skip(name, reason)
    raise CheckpointError(f"{where} has no usable checkpoint ({resume_summary(None, skipped)}); a retry "
                          "reads the same files: repair or remove them, or train under a new name")


def _check_sizes(folder: str) -> None:
    """The cheap half of `verify_checkpoint`: a manifest, and every file at its size."""
    manifest = read_manifest(folder)
    fs, path = storage.filesystem(folder)
    for name, entry in sorted(manifest["files"].items()):
        try:
            size = fs.size(posixpath.join(path, name))
        except FileNotFoundError:
            raise CheckpointError(f"{name} is missing", folder=folder) from None
        if size != entry["size"]:
            raise CheckpointError(f"{name} size {size} != {entry['size']} in the manifest "
                                  "(truncated or overwritten)", folder=folder)


def resumable_problem(run_url: str) -> str | None:
    """Why a run that has checkpoints cannot resume from any of them (None: it can, or it
    has none). Checked on the driver before training starts, from listings and sizes only
    (no download), so a run whose every checkpoint is incomplete or truncated stops with
    one message instead of every worker retry refusing the same files; hash and finiteness
    checks stay with the workers, which read the files anyway."""
    fs, path = storage.filesystem(run_url)
    try:
        listed = fs.ls(path, detail=True)
    except FileNotFoundError:
        return None
    names = [posixpath.basename(e["name"].rstrip("/")) for e in listed if e.get("type") == "directory"]
    folders = sorted((n for n in names if dir_order(n)), key=dir_order, reverse=True)
    skipped: dict[str, str] = {}
    for name in folders:
        try:
            _check_sizes(storage.join(run_url, name))
            return None
        except (CheckpointError, OSError) as err:
            skipped[name] = err.reason if isinstance(err, CheckpointError) else \
                f"cannot be read ({err.__class__.__name__})"
    if not folders:
        return None
    return (f"{run_url} has no usable checkpoint ({resume_summary(None, skipped)}): repair or "
            "remove them, or train under a new name")
