"""Settings of the Serve app (`foldray serve`, `args:` in configs/serve.yaml).

One frozen dataclass read by the shared typed loader (`foldray.config_loader`): an
unknown key or a value of the wrong type is a `ConfigError` naming the setting, before
anything starts. `runtime` is the served model's `RuntimeConfig` (precision, kernels, compile,
chunking), set with dotted keys: `--set runtime.precision=bf16`. No Ray here: the
resources named below are wired into deployments by `foldray.actors.serve`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from foldray.config_loader import ConfigError, load_dataclass
from foldray.features.tokenize import DEFAULT_MAX_TOKENS
from foldray.model.config import RuntimeConfig, is_preset, preset_names
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
    model_config: str = "tiny"             # preset when no checkpoint is given (random weights)
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
        if self.checkpoint is None and not is_preset(self.model_config):
            raise ConfigError(f"unknown preset {self.model_config!r} (choose from "
                              f"{', '.join(preset_names())})", key="model_config")
        for name in ("n_sample", "max_batch_size", "model_replicas", "featurizer_replicas",
                     "max_pending_jobs", "max_stored_jobs", "max_stored_bytes", "max_body_bytes",
                     "max_tokens", "max_jobs", "max_ligands", "msa_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"expected at least 1, got {getattr(self, name)}", key=name)


def load_serve_config(args: Mapping[str, Any]) -> ServeConfig:
    """`ServeConfig` from Serve config `args` (dotted keys allowed), with `out` and
    `output_allowlist` checked and normalised (`server_outputs`); ValueError naming the setting."""
    try:
        for key in args:
            if key in REPLACED:
                raise ConfigError(REPLACED[key], key=key)
        config = load_dataclass(ServeConfig, args)
    except ConfigError as err:
        raise err.located(source="serve settings") from None
    out, allowlist = server_outputs({"out": config.out,
                                     "output_allowlist": list(config.output_allowlist or ())})
    return dataclasses.replace(config, out=out, output_allowlist=tuple(allowlist))

