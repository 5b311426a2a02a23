"""`foldray serve`: run the Serve app (HTTP API + model) on a local or cluster Ray.

The bearer token comes from FOLDRAY_SERVE_TOKEN or a file (FOLDRAY_SERVE_TOKEN_FILE,
`token_file` in the config); without one the server refuses to start unless
--insecure-no-auth is given (local development only). `--config` takes the same Serve
config file as `serve deploy` (configs/serve.yaml): its http_options and the first
application's args; flags override it. Blocks until Ctrl-C unless --detach.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from foldray.jobs.options import (
    PRESETS_HELP,
    add_model_config_argument,
    add_runtime_arguments,
    runtime_overrides,
)
from foldray.jobs.ray_setup import connect_ray, worker_env

APP_NAME = "foldray"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray serve", description=__doc__)
    parser.add_argument("--config", default=None, help="Serve config YAML (e.g. configs/serve.yaml)")
    parser.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    parser.add_argument("--checkpoint", default=None, help="safetensors checkpoint path or URL")
    add_model_config_argument(parser, default=None, help_text=(
        f"the model when no checkpoint is given: a preset ({PRESETS_HELP}; _ and - are the same) "
        "or a YAML/JSON model config file, as for predict (default: the config's model_config, "
        "else tiny)"))
    parser.add_argument("--num-gpus", type=float, default=None, help="GPUs per model replica")
    parser.add_argument("--token-file", default=None, help="file holding the bearer token")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="serve without a token (local development only)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any app setting (foldray.serve_config.ServeConfig; YAML value), e.g. "
                             "--set n_sample=1 --set runtime.precision=bf16")
    add_runtime_arguments(parser, defaults=False)   # runtime.* of the served model
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    parser.add_argument("--detach", action="store_true",
                        help="return once deployed and leave the app running on the cluster")
    return parser


def app_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(app args, http options) from the config file, then the flags."""
    app_args: dict[str, Any] = {}
    http: dict[str, Any] = {"host": "127.0.0.1", "port": 8000}
    if args.config:
        config = yaml.safe_load(Path(args.config).read_text()) or {}
        http.update(config.get("http_options") or {})
        apps = config.get("applications") or []
        if apps:
            app_args.update(apps[0].get("args") or {})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"foldray serve: --set expects KEY=VALUE, got {item!r}")
        app_args[key.strip()] = yaml.safe_load(value)
    for item in runtime_overrides(args):   # --precision bf16 -> runtime.precision: bf16
        key, _, value = item.partition("=")
        app_args[key] = yaml.safe_load(value)
    flags = {"checkpoint": args.checkpoint, "model_config": args.model_config,
             "num_gpus": args.num_gpus, "token_file": args.token_file}
    app_args.update({k: v for k, v in flags.items() if v is not None})
    if args.insecure_no_auth:
        app_args["insecure_no_auth"] = True
    if app_args.get("num_gpus") and "device" not in app_args:
        app_args["device"] = "cuda"
    # where replicas writing `out` URLs find the object store (endpoint, region, credentials
    # file name); never keys: replicas use their node's credentials (foldray.actors.env_guard)
    env = worker_env()
    if env and not app_args.get("env_vars"):
        app_args["env_vars"] = env
    if args.host:
        http["host"] = args.host
    if args.port is not None:
        http["port"] = args.port
    return app_args, http


def run(args: argparse.Namespace) -> int:
    from ray import serve  # jobs wire Ray; the library never imports it

    from foldray.actors.serve import build_app, deploy

    app_args, http = app_settings(args)
    try:
        app = build_app(app_args)        # refuses to start without a token
    except ValueError as err:
        print(f"error: foldray serve: {err}", file=sys.stderr)
        return 2
    if not app_args.get("checkpoint"):
        model = app_args.get("model_config", "tiny")
        model = model if isinstance(model, str) else "configured"
        print(f"warning: foldray serve: no checkpoint: the {model!r} "
              "model has RANDOM weights; predictions are meaningless", file=sys.stderr, flush=True)
    with connect_ray(args.address, quiet=args.detach):
        started = deploy(app, name=APP_NAME, host=http["host"], port=int(http["port"]))
        if not started:
            print("foldray serve: Serve already runs on this cluster; its HTTP host/port stay "
                  "as they are (--host/--port apply only when Serve starts)", file=sys.stderr)
        print(f"foldray serve: ready at http://{http['host']}:{http['port']}/ "
              f"(health: /healthz, API: /v1/predict, /v1/screen, /v1/jobs/<id>)", flush=True)
        if args.detach:
            return 0
        # SIGTERM stops like Ctrl-C; set after Ray connected, replacing the handler Ray's core
        # worker installs (it prints a stack dump before exiting)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)    # one stop at a time
            serve.delete(APP_NAME)
            print("foldray serve: stopped", flush=True)
            return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
