"""Connecting a job to Ray: an embedded local Ray by default, a cluster when asked.

Shared by the Ray jobs so they pick the cluster and forward object-storage settings the
same way. With no address (and no RAY_ADDRESS) a newcomer gets a local Ray that lives as
long as the command; under `ray job submit` RAY_ADDRESS points at the cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from foldray.actors.env_guard import FORWARDED_ENV, SECRET_ENV, check_runtime_env, forwarded_env

# Workers get only non-secret object-storage settings (endpoint, region, the name of a
# credentials file or profile); keys stay on each node: see foldray.actors.env_guard.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"   # set by Ray for the driver of a submitted job

__all__ = ["FORWARDED_ENV", "SECRET_ENV", "absolute_local", "connect_ray", "worker_env",
           "worker_remote_args", "worker_runtime_env"]


def absolute_local(url: str | None) -> str | None:
    """A local relative path resolved against the driver's working directory (URLs and None
    unchanged): Ray workers run in their own working directory, or on another node."""
    return url if url is None or "://" in url else os.path.abspath(url)


def worker_env() -> dict[str, str]:
    """The FORWARDED_ENV settings of this driver; never a secret (SECRET_ENV is refused)."""
    return forwarded_env()


def worker_runtime_env() -> dict[str, Any] | None:
    """`runtime_env` for Ray actors and train workers, so they reach the same object store."""
    env = worker_env()
    runtime_env = {"env_vars": env} if env else None
    check_runtime_env(runtime_env, "worker runtime_env")
    return runtime_env


def worker_remote_args() -> dict[str, Any]:
    """`ray_remote_args` for Ray Data stages: worker_runtime_env(), if any."""
    runtime_env = worker_runtime_env()
    return {"runtime_env": runtime_env} if runtime_env else {}


@contextlib.contextmanager
def connect_ray(address: str | None = None, *, quiet: bool = False,
                num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray this process already has, else connect/start one and shut it down after."""
    import ray  # jobs wire Ray; the library never imports it

    owns_ray = not ray.is_initialized()
    if owns_ray:
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        init_kwargs: dict[str, Any] = {"address": address}
        if address == "local":
            init_kwargs.update(log_to_driver=not quiet, include_dashboard=False)
            if num_cpus:
                init_kwargs["num_cpus"] = num_cpus
        elif _JOB_CONFIG_ENV not in os.environ:
            # a driver joining a cluster by address: every actor of the job (Ray Train's
            # controller too, which takes no per-actor runtime_env from us) gets the settings.
            # Under `ray job submit` the submitted runtime_env is the job's and is left alone.
            runtime_env = worker_runtime_env()
            if runtime_env:
                init_kwargs["runtime_env"] = runtime_env
        ray.init(**init_kwargs)
    try:
        yield
    finally:
        if owns_ray:
            ray.shutdown()
