"""The Serve application `foldray.actors.serve:app`: HTTP ingress, CPU featurizer, model.

    serve run foldray.actors.serve:app [key=value ...]   # token from FOLDRAY_SERVE_TOKEN
    serve deploy configs/serve.yaml                      # import_path: foldray.actors.serve:build_app
    foldray serve --set n_sample=1 --set runtime.precision=bf16

`build_app` and `app` are Ray Serve application builders (called with a config's `args:`,
or with `serve run`'s key=value strings, read as YAML), so importing this module builds
nothing and needs no token; building without one refuses to start. Settings:
`foldray.serve_config.ServeConfig`.

Three deployments, so the accelerator only runs the model:
- `Ingress` (`foldray.actors.serve_routes`, FastAPI): auth, limits, validation, the job
  table; one replica.
- `Featurizer` (`foldray.actors.serve_deployments`, CPU): featurization with a per-target
  cache for screens, MSA search through the MSA cache, result rendering and writing.
- `Model` (same module): loads the checkpoint once with the app's `RuntimeConfig`
  (precision, kernels, compile, chunking); `@serve.batch` runs jobs of similar size in one
  forward pass (`Predictor.predict_batch`); bounded queues, autoscaling, `num_gpus` per replica.
Resources and replica counts are wired here, not in the library.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from foldray.actors.env_guard import check_runtime_env
from foldray.actors.serve_deployments import Featurizer, Model, MsaSearch
from foldray.actors.serve_routes import Ingress
from foldray.config_loader import apply_overrides
from foldray.features.model_featurization import model_featurization
from foldray.serve_config import load_serve_config
from foldray.serving import resolve_token


def build_app(args: Mapping[str, Any] | None = None) -> Application:
    """The application from Serve config `args` / `foldray serve --set` (any subset of
    `ServeConfig`; dotted keys such as `runtime.precision` reach nested settings).
    ValueError naming the setting for an unknown key or a bad value, or when no token is set."""
    config = load_serve_config(args or {})
    token = resolve_token(config.token_file, insecure_no_auth=config.insecure_no_auth)
    digest = hashlib.sha256(token.encode()).hexdigest() if token else None  # the secret stays here
    runtime_env = {"env_vars": dict(config.env_vars)} if config.env_vars else {}
    check_runtime_env(runtime_env, "foldray serve setting env_vars")   # non-secret names only
    msa = (MsaSearch(config=config.msa_config, cache=config.msa_cache, workers=config.msa_workers,
                     worker_cpus=config.msa_worker_cpus) if config.msa_config else None)
    featurizer = Featurizer.options(
        num_replicas=config.featurizer_replicas,
        ray_actor_options={"num_cpus": config.featurizer_num_cpus, "runtime_env": runtime_env},
    ).bind(config.target_cache_size, msa, config.featurize_time_limit_s,
           # featurize as the model's checkpoint asks (imported weights: their reference's)
           model_featurization(config.checkpoint, config.model()))
    model_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.model_num_cpus, "num_gpus": config.num_gpus,
                              "runtime_env": runtime_env},
        "max_ongoing_requests": config.model_max_ongoing_requests,
        "max_queued_requests": config.model_max_queued_requests,
    }
    if config.autoscaling:
        model_options["autoscaling_config"] = dict(config.autoscaling)
    else:
        model_options["num_replicas"] = config.model_replicas
    device = config.device if config.num_gpus else "cpu"
    model = Model.options(**model_options).bind(config.checkpoint, config.model(), device,
                                                config.max_batch_size, config.batch_wait_timeout_s,
                                                config.runtime)
    return Ingress.options(
        num_replicas=1, ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": config.access_log},
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        max_queued_requests=config.ingress_max_queued_requests,
    ).bind(featurizer, model, config, digest)


_EXISTING_SERVE = "Connecting to existing Serve app"   # Ray Serve's line when serve_start finds a controller


class _DropExistingServeLine(logging.Filter):
    """Drops Ray Serve's "Connecting to existing Serve app ... http_options will not be
    applied" line: `serve.run` always logs it after `serve.start` made the controller, where
    it is false (the options were applied by that start)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_EXISTING_SERVE)


def deploy(application: Application, *, name: str, host: str, port: int) -> bool:
    """Start Serve with these HTTP options and run the app under `name` at `/`. On a cluster
    where Serve already runs, its HTTP options stay (they cannot change while it runs):
    returns False then, True when this call started Serve."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        started = False
    except ValueError:           # no controller: a fresh start, with our options
        serve.start(http_options={"host": host, "port": port})
        started = True
    serve_logger = logging.getLogger("ray.serve")
    quiet = _DropExistingServeLine()
    if started:
        serve_logger.addFilter(quiet)
    try:
        serve.run(application, name=name, route_prefix="/")
    finally:
        serve_logger.removeFilter(quiet)
    return started


def app(args: dict[str, Any]) -> Application:
    """`serve run foldray.actors.serve:app [key=value ...]`: Ray Serve calls this builder
    with the command line's pairs, whose values are strings; they are read as YAML values,
    as `foldray serve --set` reads them (`insecure_no_auth=true`, `runtime.chunk_size=64`)."""
    typed = {key: value for key, value in args.items() if not isinstance(value, str)}
    return build_app(apply_overrides(typed, [f"{key}={value}" for key, value in args.items()
                                             if isinstance(value, str)]))
