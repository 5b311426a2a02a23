"""The bare `foldray` command: `--version` and no-argument help."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import foldray
from foldray.jobs import cli


def test_version_prints_foldray_then_torch_and_ray(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code in (0, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"foldray {foldray.__version__}"
    assert f"torch {metadata.version('torch')}" in lines[1]
    assert f"ray {metadata.version('ray')}" in lines[1]


def test_bare_command_prints_help_and_exits_zero():
    done = subprocess.run([sys.executable, "-m", "foldray.jobs.cli"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: foldray")
    assert "predict-batch" in done.stdout and "--version" in done.stdout
    assert "error" not in done.stderr
