"""The featurization of the model a pipeline will predict with, without loading its weights.

Batch and Serve featurize on CPU workers apart from the model, yet must featurize as the
model's checkpoint asks (imported OpenFold3 weights expect OpenFold3's features): they read it
here from the safetensors header alone (a few kilobytes, not the gigabytes of tensors).
"""

from __future__ import annotations

import json

from foldray.features.config import FeaturizationConfig
from foldray.io import storage
from foldray.io.weights import CONFIG_KEY, WeightsError, read_metadata
from foldray.model.config import NAMED_CONFIGS, ModelConfig

MAX_HEADER_BYTES = 100 * 2**20   # a safetensors header of a full model is ~1 MiB


def model_featurization(checkpoint: str | None, config: str | ModelConfig = "tiny") -> FeaturizationConfig:
    """`checkpoint`'s featurization; without one (random weights), the named `config`'s."""
    return model_config_header(checkpoint, config).featurization


def model_config_header(checkpoint: str | None, config: str | ModelConfig = "tiny") -> ModelConfig:
    """`checkpoint`'s model config from its header; without one (random weights), `config`."""
    if checkpoint is None:
        if isinstance(config, ModelConfig):
            return config
        if config not in NAMED_CONFIGS:
            raise ValueError(f"unknown model config {config!r} (choose from {', '.join(NAMED_CONFIGS)})")
        return NAMED_CONFIGS[config]()
    fs, path = storage.filesystem(checkpoint)
    try:
        with fs.open(path, "rb") as handle:
            head = handle.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if n > MAX_HEADER_BYTES:
                raise WeightsError("not a safetensors file (bad header length)")
            metadata = read_metadata(head + handle.read(n))
    except FileNotFoundError:
        raise WeightsError(f"{checkpoint}: checkpoint not found") from None
    except WeightsError as err:
        raise WeightsError(f"{checkpoint}: {err}") from None
    if CONFIG_KEY not in metadata:
        raise WeightsError(f"{checkpoint}: not a foldray checkpoint (no model config in its metadata)")
    return ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
