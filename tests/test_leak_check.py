"""tests/leak_check.py catches what a test leaves running, says which test, and cleans up.

An inner pytest session (its own process, so its own PID and session marker) runs a test that
leaks a child process and a `fr-*` temp dir; the plugin must fail that session, name the
process, the dir and the last test, and stop / remove them at session end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from tests.data_paths import REPO

LEAKY = textwrap.dedent("""
    import os, subprocess, tempfile

    def test_clean():
        subprocess.run(["true"], check=True)      # a child that ends is fine

    def test_leaks():
        proc = subprocess.Popen(["sleep", "300"])
        path = tempfile.mkdtemp(prefix=f"fr-leaky-{os.getpid()}-", dir="/tmp")
        open(os.path.join(os.path.dirname(__file__), "leaked.txt"), "w").write(f"{proc.pid} {path}")
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_leaked_process_and_temp_dir_fail_the_session_and_are_cleaned_up(tmp_path):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "FOLDRAY_LEAK_GRACE_S": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.leak_check", "test_leaky.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    pid, path = (tmp_path / "leaked.txt").read_text().split()
    assert done.returncode == 1, out
    assert "LEAK CHECK (module)" in out and "LEAK CHECK (session end)" in out, out
    assert f"process {pid}: sleep 300" in out and f"temp dir {path}" in out, out
    assert "after the last test, test_leaky.py::test_leaks" in out, out
    assert "1 error" in out                      # reported at the module's last teardown
    deadline = time.monotonic() + 10
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid)) and not os.path.exists(path)     # stopped and removed
