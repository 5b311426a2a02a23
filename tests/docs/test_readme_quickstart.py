"""The README's quick start, run as written (tiny config): the commands users copy first
must work. The block between the quickstart markers is extracted and executed line by
line in a fresh folder; installation lines are skipped (the test runs inside the installed
environment)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    (code,) = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for line in code.splitlines()]
    return [line for line in lines if line and not line.startswith(("pip ", "python3 -m venv", "."))]


def test_the_readme_quick_start_runs_as_written(tmp_path):
    commands = quickstart_commands()
    assert [c.split()[1] for c in commands if c.startswith("foldray ")] == ["example", "predict",
                                                                            "report"]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    # what the quick start promises: a prediction in AF3's layout and its report
    (job_dir,) = [p for p in (tmp_path / "predictions").iterdir() if p.is_dir() and p.name != "report"]
    assert (job_dir / f"{job_dir.name}_model.cif").exists()
    assert (tmp_path / "predictions" / "report" / "index.html").exists()
    assert (job_dir / "report" / "report.html").exists()
    assert shlex.split(commands[0])[0] == "foldray"
