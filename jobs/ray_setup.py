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

# Object-storage settings the driver has and workers need. On a cluster, workers get
# credentials from their instance role; an explicit endpoint (MinIO, SeaweedFS, R2, ...)
# and region still have to travel with the job.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_EC2_METADATA_DISABLED")


def absolute_local(url: str | None) -> str | None:
    """A local relative path resolved against the driver's working directory (URLs and None
    unchanged): Ray workers run in their own working directory, or on another node."""
    return url if url is None or "://" in url else os.path.abspath(url)


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def worker_remote_args() -> dict[str, Any]:
    """`runtime_env` for Ray Data stages, so workers reach the same object store."""
    env = worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


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
        ray.init(**init_kwargs)
    try:
        yield
    finally:
        if owns_ray:
            ray.shutdown()
