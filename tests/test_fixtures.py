"""Prove the shared fixtures work: real Ray tasks, a real S3 endpoint that enforces credentials."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import ray

if TYPE_CHECKING:
    from tests.plugins.ray_s3 import RaySession, S3Server


@ray.remote
def _worker_square(x: int) -> tuple[int, int, str | None]:
    """Module-level task: checks workers can import test modules by reference."""
    return x * x, os.getpid(), os.environ.get("RAY_AUTH_MODE")


def test_ray_task_runs_in_worker(ray_session: RaySession) -> None:
    value, worker_pid, auth_mode = ray.get(_worker_square.remote(7), timeout=60)
    assert value == 49
    assert worker_pid != os.getpid()  # computed in a worker process, not the driver
    assert auth_mode == "disabled"  # the test env reached the workers
    assert ray_session.address.startswith("127.0.0.1:")
    assert ray.cluster_resources().get("CPU") == 2
    assert ray_session.env["RAY_AUTH_MODE"] == "disabled"


def _non_loopback_ipv4() -> list[str]:
    psutil = pytest.importorskip("psutil")
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def test_ray_binds_loopback_only(ray_session: RaySession) -> None:
    host, port = ray_session.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # reachable on loopback
    others = _non_loopback_ipv4()
    if not others:
        pytest.skip("no non-loopback IPv4 interface to probe")
    for ip in others:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, int(port)), timeout=5).close()


def test_ray_local_closure_task(ray_session: RaySession) -> None:
    @ray.remote
    def total(xs: list[int]) -> int:
        return sum(xs)

    refs = [total.remote(list(range(n))) for n in range(5)]
    assert ray.get(refs, timeout=60) == [0, 0, 1, 3, 6]


def test_s3_round_trip(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    payload = os.urandom(4096) + b"foldray"
    path = f"{s3_bucket}/dir/blob.bin"
    fs.pipe(path, payload)
    assert fs.ls(f"{s3_bucket}/dir", detail=False) == [path]
    assert fs.cat(path) == payload
    assert fs.info(path)["size"] == len(payload)


def test_s3_fsspec_url_with_storage_options(s3_server: S3Server, s3_bucket: str) -> None:
    import fsspec

    url = f"s3://{s3_bucket}/hello.txt"
    with fsspec.open(url, "w", **s3_server.storage_options()) as f:
        f.write("hello")
    with fsspec.open(url, "r", **s3_server.storage_options()) as f:
        assert f.read() == "hello"


def test_s3_buckets_are_fresh(s3_server: S3Server, s3_bucket: str) -> None:
    assert s3_server.filesystem().ls(s3_bucket) == []
    other = s3_server.create_bucket()
    assert other != s3_bucket


def _s3_error_code(exc: BaseException) -> str:
    """The S3 error code behind s3fs's PermissionError (it chains botocore's ClientError)."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    assert isinstance(cause, ClientError), f"expected a chained ClientError, got {cause!r}"
    return str(cause.response["Error"]["Code"])


def test_s3_wrong_secret_is_refused(s3_server: S3Server, s3_bucket: str) -> None:
    good = s3_server.filesystem()
    path = f"{s3_bucket}/secret.txt"
    good.pipe(path, b"top secret")
    bad = s3_server.filesystem(secret="not-the-secret")
    with pytest.raises(PermissionError) as listing:
        bad.ls(s3_bucket)
    assert _s3_error_code(listing.value) == "SignatureDoesNotMatch"
    with pytest.raises(PermissionError) as reading:
        bad.cat(path)  # starts with a HEAD request: a bare 403 without an error body
    assert _s3_error_code(reading.value) in {"403", "SignatureDoesNotMatch"}
    with pytest.raises(PermissionError) as writing:
        bad.pipe(f"{s3_bucket}/intruder.txt", b"x")
    assert _s3_error_code(writing.value) == "SignatureDoesNotMatch"
    assert good.ls(s3_bucket, detail=False) == [path]  # nothing was written


def test_s3_unknown_access_key_is_refused(s3_server: S3Server, s3_bucket: str) -> None:
    bad = s3_server.filesystem(key="AKNOTAREALKEY", secret=s3_server.secret_key)
    with pytest.raises(PermissionError) as listing:
        bad.ls(s3_bucket)
    assert _s3_error_code(listing.value) == "InvalidAccessKeyId"


def test_s3_pyarrow_filesystem(s3_server: S3Server, s3_bucket: str) -> None:
    pafs = s3_server.pyarrow_filesystem()
    with pafs.open_output_stream(f"{s3_bucket}/pa.bin") as out:
        out.write(b"arrow")
    assert s3_server.filesystem().cat(f"{s3_bucket}/pa.bin") == b"arrow"


def test_shared_data_present(shared_data: Path) -> None:
    assert shared_data.is_dir()
    assert (shared_data / "MANIFEST.md").is_file()
