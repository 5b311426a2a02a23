"""Model weights as safetensors with the model config stored in the file's metadata.

One self-describing file: `load_weights` rebuilds the config it was trained with, so a
checkpoint can never be paired with the wrong architecture. Pickle-based formats are refused
(a pickle can run code); `.pt` files are read only with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from foldray.io import checkpoint_cache, storage
from foldray.model.config import ModelConfig

CONFIG_KEY = "foldray_model_config"
FORMAT_KEY = "foldray_format"
FORMAT = "foldray-weights-v1"


class WeightsError(ValueError):
    """A checkpoint that cannot be used: wrong format, missing config, mismatched tensors."""


def save_weights(url: str, state_dict: dict[str, torch.Tensor], config: ModelConfig,
                 extra_metadata: dict[str, str] | None = None) -> None:
    """Write weights + config atomically (local) or as one object (object storage)."""
    storage.write_bytes_atomic(url, weights_bytes(state_dict, config, extra_metadata))


def weights_bytes(state_dict: dict[str, torch.Tensor], config: ModelConfig,
                  extra_metadata: dict[str, str] | None = None) -> bytes:
    """The file `save_weights` writes, as bytes (a caller that also hashes them reads them once)."""
    metadata = {FORMAT_KEY: FORMAT, CONFIG_KEY: json.dumps(config.to_dict())}
    metadata.update(extra_metadata or {})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return save_safetensors(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata without loading tensors."""
    if len(data) < 8:
        raise WeightsError("not a safetensors file (too short)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or header_len > len(data) - 8:
        raise WeightsError("not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError("not a safetensors file (header is not JSON)") from None
    return header.get("__metadata__", {}) or {}


def load_weights(url: str) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Tensors and the config they belong to. Only safetensors files are accepted. Remote
    checkpoints are read through the machine-local cache (`foldray.io.checkpoint_cache`)."""
    if url.endswith((".pt", ".pth", ".ckpt", ".pkl", ".pickle")):
        raise WeightsError(f"{url}: pickle-based checkpoints are not loaded; convert it with "
                           "`foldray import-weights` to safetensors")
    cached = checkpoint_cache.local_copy(url)
    if cached is not None:
        try:
            return parse_weights(cached.read_bytes(), url)
        except FileNotFoundError:   # evicted by another process between fetch and read
            pass
        except WeightsError:   # a damaged cached copy must not poison later loads: drop it
            checkpoint_cache.discard(cached)
    return parse_weights(storage.read_bytes(url), url)


def parse_weights(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """`load_weights` on bytes already read (and verified) by the caller; `source` names them in
    errors. A truncated or damaged file is a WeightsError, not the reader's own exception."""
    try:
        metadata = read_metadata(data)
    except WeightsError as err:
        raise WeightsError(f"{source}: {err}") from None
    if metadata.get(FORMAT_KEY) != FORMAT or CONFIG_KEY not in metadata:
        raise WeightsError(f"{source}: not a foldray checkpoint (no model config in its metadata)")
    config = ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    try:
        tensors = load_safetensors(data)
    except Exception as err:  # safetensors' SafetensorError is a bare Exception subclass
        raise WeightsError(f"{source}: not a readable safetensors file (truncated or damaged: "
                           f"{err.__class__.__name__})") from None
    return tensors, config
