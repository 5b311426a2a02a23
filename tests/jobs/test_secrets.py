"""S3 keys never travel to Ray (issue 17): not in a runtime_env, actor options, a Serve config
or a pickled filesystem. Ray shows runtime_envs in its state API and dashboard and writes them
to its logs, so the driver forwards only the endpoint, region and the *name* of a credentials
file; workers authenticate with their node's own credentials (here: the session's credentials
file, written by the s3_server fixture).

The driver of each test has the real keys in its environment, as a user's shell would; the
tests then look for those exact strings where Ray keeps what it was sent.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from foldray.actors.env_guard import (
    FORWARDED_ENV,
    SECRET_ENV,
    SecretInRuntimeEnvError,
    check_env,
    check_runtime_env,
)
from foldray.jobs.ray_setup import worker_env, worker_remote_args, worker_runtime_env
from tests.data_paths import INPUTS

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.5",
        "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1", "--quiet"]


@pytest.fixture
def driver_keys(s3_server, monkeypatch) -> list[bytes]:
    """The driver's environment has the real keys (and endpoint, credentials-file name)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key
    return [s3_server.secret_key.encode(), s3_server.access_key.encode()]


def gcs_records() -> bytes:
    """What Ray's state API and dashboard serve, read from the GCS they read it from: the
    actor table (each actor's runtime_env), task events (each task's runtime_env), jobs and
    workers. The session Ray runs without the dashboard, so its HTTP state API is absent."""
    import ray._private.state as ray_state

    accessor = ray_state.state._connect_and_get_accessor()
    parts = [*accessor.get_actor_table(None, None), *accessor.get_task_events(),
             *accessor.get_job_table(), *accessor.get_worker_table()]
    return b"\n".join(p if isinstance(p, bytes) else repr(p).encode() for p in parts)


def files_containing(folder: Path, needles: list[bytes]) -> list[str]:
    """Regular files under `folder` (logs included) holding any of `needles`."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            if not path.is_file():           # sockets, fifos
                continue
            try:
                data = path.read_bytes()
            except OSError:                  # removed while we walked
                continue
            if any(needle in data for needle in needles):
                found.append(str(path.relative_to(folder)))
    return found


def test_predict_batch_sends_no_key_to_ray(ray_session, s3_server, s3_bucket, driver_keys):
    from foldray.jobs.predict_batch import main

    fs = s3_server.filesystem()
    for name in ("1l2y", "tiny_protein_ligand_smiles"):
        fs.pipe(f"{s3_bucket}/in/{name}.json", (INPUTS / f"{name}.json").read_bytes())
    assert main(["--inputs", f"s3://{s3_bucket}/in", "--out", f"s3://{s3_bucket}/out", *FAST]) == 0
    # the workers read and wrote the bucket: they authenticated without the keys
    with fs.open(f"{s3_bucket}/out/results.parquet", "rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    assert sorted((r["name"], r["status"]) for r in rows) == [
        ("1l2y", "ok"), ("tiny_protein_ligand_smiles", "ok")]
    assert fs.exists(f"{s3_bucket}/out/1l2y/1l2y_model.cif")

    records = gcs_records()
    # the check looks where the keys used to be: the forwarded settings are there
    assert s3_server.endpoint_url.encode() in records
    assert os.environ["AWS_SHARED_CREDENTIALS_FILE"].encode() in records
    assert not [k for k in driver_keys if k in records], "an S3 key is in Ray's state (GCS)"
    assert files_containing(ray_session.temp_dir, driver_keys) == []
    logged = files_containing(ray_session.temp_dir, [s3_server.endpoint_url.encode()])
    assert any("runtime_env_agent" in path for path in logged)    # where runtime_envs are logged


def test_workers_authenticate_through_the_forwarded_credentials_file(
        ray_session, s3_server, s3_bucket, driver_keys, tmp_path, monkeypatch):
    """A credentials file only the driver names (other than the one the nodes were started
    with) reaches workers by its name; the keys themselves never leave the driver."""
    copy = tmp_path / "credentials"
    copy.write_bytes(Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).read_bytes())
    copy.chmod(0o600)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(copy))

    @ray.remote
    def probe(bucket: str) -> tuple[str | None, bool, list[str]]:
        from foldray.io import storage

        fs, path = storage.filesystem(f"s3://{bucket}", skip_instance_cache=True)
        fs.pipe(f"{path}/probe.txt", b"written by a worker")
        return (os.environ.get("AWS_SHARED_CREDENTIALS_FILE"),
                any(name in os.environ for name in SECRET_ENV), fs.ls(path))

    args = worker_remote_args()
    assert not set(args["runtime_env"]["env_vars"]) & SECRET_ENV
    name, has_key, listed = ray.get(probe.options(**args).remote(s3_bucket), timeout=120)
    assert name == str(copy) and not has_key
    assert f"{s3_bucket}/probe.txt" in listed


def test_worker_settings_forward_names_never_keys(driver_keys, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_PROFILE", "science")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_CONFIG_FILE", "aws-config")       # relative: workers run elsewhere
    env = worker_env()
    assert set(env) <= set(FORWARDED_ENV) and not set(env) & SECRET_ENV
    assert env["AWS_CONFIG_FILE"] == str(tmp_path / "aws-config")
    assert {"AWS_PROFILE", "AWS_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"} <= set(env)
    assert worker_runtime_env() == {"env_vars": env}
    assert not [k for k in driver_keys if k in pickle.dumps(worker_remote_args())]


def test_guard_refuses_secrets_by_name_and_by_value(driver_keys, s3_server):
    secret = s3_server.secret_key
    for env in ({"AWS_SECRET_ACCESS_KEY": secret}, {"AWS_ACCESS_KEY_ID": "AKIA0000"},
                {"AWS_SESSION_TOKEN": "t" * 20}, {"HF_TOKEN": "hf_x"}, {"DB_PASSWORD": "pw"},
                {"MY_STORE": secret}):                      # a key under another name
        with pytest.raises(SecretInRuntimeEnvError) as err:
            check_env(env, "test")
        assert secret not in str(err.value) and next(iter(env)) in str(err.value)
    with pytest.raises(SecretInRuntimeEnvError):
        check_runtime_env({"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}, "test")
    check_env({"AWS_ENDPOINT_URL": s3_server.endpoint_url, "FOLDRAY_SERVE_TOKEN_FILE": "/t",
               "OMP_NUM_THREADS": "8"}, "test")               # names of files, settings: fine


def test_serve_config_carries_no_key(driver_keys, s3_server, capsys):
    from ray import cloudpickle

    from foldray.actors.serve import build_app
    from foldray.jobs.serve import app_settings, build_parser, main

    app_args, _ = app_settings(build_parser().parse_args(["--insecure-no-auth"]))
    assert app_args["env_vars"]["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert not set(app_args["env_vars"]) & SECRET_ENV
    blob = cloudpickle.dumps(build_app(app_args))      # what serve.run hands to Serve's controller
    assert s3_server.endpoint_url.encode() in blob
    assert not [k for k in driver_keys if k in blob]

    with pytest.raises(SecretInRuntimeEnvError) as err:
        build_app({"insecure_no_auth": True, "env_vars": {"AWS_SECRET_ACCESS_KEY": s3_server.secret_key}})
    assert "AWS_SECRET_ACCESS_KEY" in str(err.value) and s3_server.secret_key not in str(err.value)
    # the CLI refuses it before connecting to Ray, with one line and no traceback
    assert main(["--insecure-no-auth", "--set", "env_vars={AWS_SECRET_ACCESS_KEY: x}"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: foldray serve:") and "AWS_SECRET_ACCESS_KEY" in stderr
    assert "Traceback" not in stderr


def test_train_storage_filesystem_pickles_without_keys(driver_keys, s3_server, s3_bucket, monkeypatch):
    from foldray.jobs.train import storage_target

    path, filesystem = storage_target(f"s3://{s3_bucket}/runs")
    assert path == f"{s3_bucket}/runs"
    blob = pickle.dumps(filesystem)                 # Ray ships it to the train controller and workers
    assert not [k for k in driver_keys if k in blob]
    # a process without the keys in its environment (a worker) authenticates from its node's
    # credentials file
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    remote = pickle.loads(blob)
    with remote.open_output_stream(f"{s3_bucket}/runs/probe.txt") as handle:
        handle.write(b"checkpoint")
    assert s3_server.filesystem().cat(f"{s3_bucket}/runs/probe.txt") == b"checkpoint"
