"""Connecting a job to Ray: an embedded local Ray by default, a cluster when asked.

Shared by the Ray jobs so they pick the cluster and forward object-storage settings the
same way. With no address (and no RAY_ADDRESS) a newcomer gets a local Ray that lives as
long as the command; under `ray job submit` RAY_ADDRESS points at the cluster.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from foldray.actors.env_guard import FORWARDED_ENV, SECRET_ENV, check_runtime_env, forwarded_env

# Workers get only non-secret object-storage settings (endpoint, region, the name of a
# credentials file or profile); keys stay on each node: see foldray.actors.env_guard.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"   # set by Ray for the driver of a submitted job

__all__ = ["FORWARDED_ENV", "SECRET_ENV", "absolute_local", "add_verbose_argument", "connect_ray",
           "worker_env", "worker_remote_args", "worker_runtime_env"]


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
                num_cpus: int | None = None, ray_logs: bool = True) -> Iterator[None]:
    """Use the Ray this process already has, else connect/start one and shut it down after.

    ray_logs=False (the batch commands without --verbose): Ray's own lines (driver INFO and
    warnings, worker output, the C++ core's stderr) go to `<session>/logs/` files, not this
    terminal, so the command's progress, error lines and summary stay readable.
    """
    import ray  # jobs wire Ray; the library never imports it

    owns_ray = not ray.is_initialized()
    with contextlib.ExitStack() as stack:
        console = None if ray_logs else stack.enter_context(_RayLogsToFile())
        if owns_ray:
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            init_kwargs: dict[str, Any] = {"address": address}
            if not ray_logs or quiet:
                init_kwargs["log_to_driver"] = False   # workers' output stays in their log files
            if address == "local":
                init_kwargs["include_dashboard"] = False
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
            stack.callback(ray.shutdown)   # before the console is given back (LIFO)
        if console is not None:
            console.open(_session_logs())
        yield


DRIVER_LOG = "foldray-driver-{pid}.log"   # in <session>/logs/: this driver's Ray lines when quiet


def add_verbose_argument(parser: Any) -> None:
    """`--verbose` of the batch commands (predict-batch, screen, featurize)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own logs (INFO lines, worker output, Ray Data's progress "
                             "bars) on the terminal (default: off; they go to the Ray session's log "
                             f"files, <session>/logs/, this driver's in {DRIVER_LOG.format(pid='<pid>')})")


def _session_logs() -> str | None:
    """`<session>/logs` of the Ray this driver is connected to (None when unknown)."""
    import ray

    try:
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except AttributeError:   # no local node (not expected for a connected driver)
        return None


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _RayLogsToFile:
    """Ray's console log handlers muted, their records (kept from before ray.init, when the
    session folder is not known yet) written to DRIVER_LOG, and file descriptor 2 pointed
    there too (Ray's C++ core writes its errors straight to it); `sys.stderr` keeps the
    terminal for this command's own lines. Ray Data keeps its own ray-data*.log files."""

    def __init__(self) -> None:
        self.buffer: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None
        self.handler = _Forward(self)
        self.muted: list[logging.Handler] = []
        self.saved_fd: int | None = None
        self.saved_stderr: Any = None
        self.drop = _DropAll()

    def __enter__(self) -> _RayLogsToFile:
        import ray.data  # noqa: F401  (configures its console handler on import: muted below)

        manager = logging.Logger.manager
        names = ["ray", *(n for n in list(manager.loggerDict) if n.startswith("ray."))]
        for logger in (logging.getLogger(n) for n in names):
            for handler in logger.handlers:
                console = isinstance(handler, logging.StreamHandler)
                if console and not isinstance(handler, logging.FileHandler):
                    handler.addFilter(self.drop)
                    self.muted.append(handler)
        # Ray's records, and foldray's own diagnostics (e.g. the traceback of a stopped batch
        # run, logged by foldray.batch): to the driver log, not the terminal
        for name in ("ray", "foldray"):
            logging.getLogger(name).addHandler(self.handler)
        return self

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        elif len(self.buffer) < 10_000:
            self.buffer.append(record)

    def open(self, logs_dir: str | None) -> None:
        if logs_dir is None or not os.path.isdir(logs_dir):
            return
        path = os.path.join(logs_dir, DRIVER_LOG.format(pid=os.getpid()))
        self.file = logging.FileHandler(path)
        self.file.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- "
                                                 "%(message)s"))
        for record in self.buffer:
            self.file.emit(record)
        self.buffer.clear()
        self._stderr_to(path)

    def _stderr_to(self, path: str) -> None:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        self.saved_fd = os.dup(2)
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, 2)
        os.close(target)
        try:
            on_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):   # pytest's capture, a StringIO
            on_fd2 = False
        if on_fd2:   # this command's own lines keep going to the terminal
            self.saved_stderr = sys.stderr
            sys.stderr = io.TextIOWrapper(io.FileIO(self.saved_fd, "w", closefd=False),
                                          encoding=sys.stderr.encoding, errors=sys.stderr.errors,
                                          line_buffering=True)

    def __exit__(self, *exc: object) -> None:
        if self.saved_fd is not None:
            if self.saved_stderr is not None:
                sys.stderr.flush()
                sys.stderr, replaced = self.saved_stderr, sys.stderr
                replaced.close()
            os.dup2(self.saved_fd, 2)
            os.close(self.saved_fd)
        for name in ("ray", "foldray"):
            logging.getLogger(name).removeHandler(self.handler)
        for handler in self.muted:
            handler.removeFilter(self.drop)
        if self.file is not None:
            self.file.close()


class _Forward(logging.Handler):
    def __init__(self, target: _RayLogsToFile) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.emit(record)
