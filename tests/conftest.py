"""Session-wide test settings; the Ray and S3 fixtures live in tests/plugins/ray_s3.py.

TRITON_INTERPRET: see tests/plugins/triton_mode.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.plugins.triton_mode",  # first: before any plugin or test module can import triton
    "tests.plugins.ray_s3",       # ray_session, s3_server, s3_bucket, child_env
    "tests.leak_check",           # Ray actors, nodes, processes, temp dirs left behind
]

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI runs the checkout at <somewhere>/main with the shared data next to it (../shared).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Environment defaults every test process and child process sees."""
    # The shared example inputs name their MSAs as ../msas/...: outside their own folder,
    # which `...Path` fields may not leave unless a root allows it (inputs/af3_json.py).
    os.environ.setdefault("FOLDRAY_INPUT_PATH_ROOTS", str(SHARED_DATA))


# --------------------------------------------------------------------------- shared data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared real-world test data (structures, MSAs, inputs): ``../shared/data``."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared test data not found at {SHARED_DATA}: the checkout is expected at "
            f"<dir>/main with the shared data at <dir>/shared/data (see its MANIFEST.md)",
            pytrace=False,
        )
    return SHARED_DATA
