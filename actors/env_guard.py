"""What may travel to Ray workers in a `runtime_env`, actor options or a Serve config.

Ray shows every runtime_env in its state API and dashboard, and writes it to its logs
(runtime_env_agent.log, ray-data.log); Serve keeps its configs in the GCS. So secrets never
go there: workers authenticate with their own node's credentials (an instance role, their
own environment, or a credentials file on shared storage named by AWS_SHARED_CREDENTIALS_FILE).
Only where the object store is and where a node finds its credentials is forwarded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# Non-secret object-storage settings the driver forwards to workers: the endpoint and region,
# and the *names* of the credentials file / config file / profile (never their contents).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_EC2_METADATA_DISABLED", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
                 "AWS_PROFILE")
# Paths among them: made absolute, since workers run in another working directory.
_PATH_ENV = ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")

# Deny-list: never forwarded, refused wherever an env dict is about to be sent to Ray.
SECRET_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_SECURITY_TOKEN", "FOLDRAY_SERVE_TOKEN"})
# Other names that look like secrets (HF_TOKEN, DB_PASSWORD, MY_API_KEY, ...).
_SECRET_WORDS = ("SECRET", "PASSWORD", "PASSWD")
_SECRET_SUFFIXES = ("_TOKEN", "_API_KEY", "_ACCESS_KEY", "_ACCESS_KEY_ID", "_PRIVATE_KEY")

_HOW = ("workers use their node's credentials (instance role, their own environment, or a "
        "credentials file named by AWS_SHARED_CREDENTIALS_FILE, which is forwarded)")


class SecretInRuntimeEnvError(ValueError):
    """A secret was about to be sent to Ray workers in plain text."""


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return (upper in SECRET_ENV or any(word in upper for word in _SECRET_WORDS)
            or upper.endswith(_SECRET_SUFFIXES))


def check_env(env: Mapping[str, Any] | None, where: str) -> None:
    """Raise SecretInRuntimeEnvError if `env` holds a secret, by name or by value.

    The value check catches a secret renamed on the way (MY_KEY=<the secret access key>).
    The message names the variables, never their values.
    """
    if not env:
        return
    secret_values = {value for name, value in os.environ.items()
                     if value and len(value) >= 8 and is_secret_name(name)}
    bad = sorted(name for name, value in env.items()
                 if is_secret_name(str(name)) or (isinstance(value, str) and value in secret_values))
    if bad:
        raise SecretInRuntimeEnvError(
            f"{where}: refusing to send {', '.join(bad)} to Ray workers (Ray shows runtime_env "
            f"in its state API, dashboard and logs); {_HOW}")


def check_runtime_env(runtime_env: Mapping[str, Any] | None, where: str) -> None:
    """check_env on a runtime_env's env_vars."""
    if runtime_env:
        check_env(runtime_env.get("env_vars"), where)


def forwarded_env() -> dict[str, str]:
    """The FORWARDED_ENV variables this process has (credential paths made absolute)."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    for name in _PATH_ENV:
        path = env.get(name)
        if path and not path.startswith("~") and not os.path.isabs(path):
            env[name] = os.path.abspath(path)
    check_env(env, "forwarded object-storage settings")
    return env
