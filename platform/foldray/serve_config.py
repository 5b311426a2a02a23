"""Settings of the Serve app (`foldray serve`, `args:` in configs/serve.yaml).

One frozen dataclass read by the shared typed loader (`foldray.config_loader`): an
unknown key or a value of the wrong type is a `ConfigError` naming the setting, before
anything starts. `runtime` is the served model's `RuntimeConfig` (precision, kernels, compile,
chunking), set with dotted keys: `--set runtime.precision=bf16`. `model_config` is a preset
name or a model config file (YAML/JSON, local or URL, read by the same loader as
`foldray predict --model-config`); a file is read once, when the settings load, and the
replicas get its resolved mapping (they never open the file). No Ray here: the
resources named below are wired into deployments by `foldray.actors.serve`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from foldray.config_loader import ConfigError, load_dataclass, to_plain
from foldray.features.tokenize import DEFAULT_MAX_TOKENS
from foldray.model.config import ModelConfig, RuntimeConfig, is_preset, model_config_from, preset_names
from foldray.out_allowlist import server_outputs

# keys that were renamed or removed, with what to write instead
REPLACED = {"allow_local_out": "replaced by output_allowlist: list the URLs requests may write under, "
                               "e.g. [\"file:///scratch/out/\"]"}


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Every setting of the Serve app with its default."""

    # ---- access
    token_file: str | None = None          # else FOLDRAY_SERVE_TOKEN / FOLDRAY_SERVE_TOKEN_FILE
    insecure_no_auth: bool = False         # local development only
    debug_endpoints: bool = False          # GET /v1/debug/stats (counters, replica PIDs)
    access_log: bool = True
    # ---- model
    # when no checkpoint is given (random weights): a preset, a YAML/JSON model config file,
    # or that file's mapping inline
    model_config: str | dict[str, Any] = "tiny"
    checkpoint: str | None = None
    device: str = "cpu"                    # used when num_gpus > 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    n_sample: int = 5
    n_step: int | None = None              # None: the model's defaults
    n_cycle: int | None = None
    # ---- model deployment
    num_gpus: float = 0.0                  # per model replica
    model_num_cpus: float = 1.0
    model_replicas: int = 1
    autoscaling: dict[str, Any] | None = None     # Serve autoscaling_config; replaces model_replicas
    max_batch_size: int = 8                # jobs of similar size per forward pass
    batch_wait_timeout_s: float = 0.05
    model_max_ongoing_requests: int = 16
    model_max_queued_requests: int = 64
    # ---- featurizer deployment
    featurizer_replicas: int = 1
    featurizer_num_cpus: float = 1.0
    target_cache_size: int = 16            # screen targets kept featurized per replica
    featurize_time_limit_s: float = 600.0  # per job; past it the job is an error
    msa_config: str | None = None          # an msa.yaml: search chains sent without an MSA
    msa_cache: str | None = None
    msa_workers: int = 1
    msa_worker_cpus: float = 1.0
    # ---- ingress
    ingress_max_ongoing_requests: int = 64
    ingress_max_queued_requests: int = 64
    max_pending_jobs: int = 256            # beyond: 503 + Retry-After
    max_stored_jobs: int = 10_000
    max_stored_bytes: int = 512 << 20
    job_ttl_s: float = 3600.0
    retry_max_s: float = 300.0             # retrying calls to dead or full replicas
    # ---- requests
    max_body_bytes: int = 16 << 20
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_jobs: int = 256                    # jobs in one POST /v1/predict
    max_ligands: int = 1024                # ligands in one POST /v1/screen
    # ---- outputs
    out: str | None = None                 # where jobs without an `out` write
    output_allowlist: tuple[str, ...] | None = ()    # where a request's `out` may point (None: none)
    # ---- replicas' environment (names of non-secret settings only; foldray.actors.env_guard)
    env_vars: dict[str, str] | None = None

    def __post_init__(self) -> None:
        spec = self.model_config
        if self.checkpoint is None and isinstance(spec, str) and not (is_preset(spec) or _is_file(spec)):
            raise ConfigError(f"unknown preset {spec!r} (choose from {', '.join(preset_names())}, "
                              "or give a .yaml/.yml/.json model config file)", key="model_config")
        for name in ("n_sample", "max_batch_size", "model_replicas", "featurizer_replicas",
                     "max_pending_jobs", "max_stored_jobs", "max_stored_bytes", "max_body_bytes",
                     "max_tokens", "max_jobs", "max_ligands", "msa_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"expected at least 1, got {getattr(self, name)}", key=name)

    def model(self) -> str | ModelConfig:
        """What the model replicas load without a checkpoint: a preset name or a ModelConfig
        (a checkpoint carries its own config: then the setting is passed on unread)."""
        spec = self.model_config
        if isinstance(spec, str) and (is_preset(spec) or self.checkpoint is not None):
            return spec
        return _resolve_model(spec)


def _is_file(spec: str) -> bool:
    return spec.strip().endswith((".yaml", ".yml", ".json"))


def _resolve_model(spec: str | Mapping[str, Any]) -> ModelConfig:
    """A model config file (or its mapping: a whole ModelConfig, or `preset:` plus dotted
    overrides) through the one model config loader."""
    text = spec if isinstance(spec, str) else yaml.safe_dump(dict(spec))   # a mapping: as its file
    try:
        return model_config_from(text)
    except ConfigError as err:
        raise err.located(field_prefix="model_config") from None


def load_serve_config(args: Mapping[str, Any]) -> ServeConfig:
    """`ServeConfig` from Serve config `args` (dotted keys allowed), with `out` and
    `output_allowlist` checked and normalised (`server_outputs`); ValueError naming the setting."""
    try:
        for key in args:
            if key in REPLACED:
                raise ConfigError(REPLACED[key], key=key)
        config = load_dataclass(ServeConfig, args)
        if config.checkpoint is None and not (isinstance(config.model_config, str)
                                              and is_preset(config.model_config)):
            # read here, once: replicas get the resolved mapping, not a path to open
            config = dataclasses.replace(config, model_config=to_plain(config.model()))
    except ConfigError as err:
        raise err.located(source="serve settings") from None
    out, allowlist = server_outputs({"out": config.out,
                                     "output_allowlist": list(config.output_allowlist or ())})
    return dataclasses.replace(config, out=out, output_allowlist=tuple(allowlist))

