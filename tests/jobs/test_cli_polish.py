"""CLI polish: every flag explains itself and its default, `--help` starts without the heavy
stack, and batch runs keep Ray's own log lines off the terminal (issue 21)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys

import pytest

from foldray.jobs import cli
from foldray.jobs.ray_setup import _RayLogsToFile
from foldray.progress import RunProgress
from tests.data_paths import REPO

HEAVY = ("torch", "ray", "rdkit", "gemmi", "pyarrow")
# Every subcommand: its module and parser builder import none of HEAVY (they load in `run`).
LIGHT_COMMANDS = ("convert", "example", "featurize", "import-weights", "msa", "predict", "predict-batch",
                  "report", "screen", "serve", "train", "validate")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _shows_default(action: argparse.Action, prog: str) -> bool:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    value = action.default
    spelled = {str(value)}
    if isinstance(value, float):
        spelled.add(f"{value:g}")
    return "default" in text.lower() and any(s in text for s in spelled)


def test_every_flag_has_help_that_states_its_default():
    missing, no_default = [], []
    for name, sub in _subparsers(cli.build_parser()).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                missing.append(flag)
            elif not (action.default in (None, False, argparse.SUPPRESS) or action.required
                      or action.default == [] or _shows_default(action, sub.prog)):
                no_default.append(flag)
    assert not missing, f"flags without help: {missing}"
    assert not no_default, f"flags whose help does not state the default: {no_default}"


def test_help_imports_no_heavy_module():
    """`foldray --help`, bare `foldray`, and building the light commands' parsers import none
    of torch, Ray, RDKit, gemmi, pyarrow (deterministic, unlike a timing test)."""
    code = (f"import json, sys\nfrom foldray.jobs import cli\nheavy = {HEAVY!r}\n"
            "def loaded():\n    return sorted(h for h in heavy if h in sys.modules)\n"
            "cli.build_parser(())\nreport = {'top': loaded()}\n"
            f"for name in {LIGHT_COMMANDS!r}:\n"
            "    cli.build_parser([name])\n    report[name] = loaded()\n"
            "print(json.dumps(report))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {key: [] for key in ("top", *LIGHT_COMMANDS)}, report


def test_bare_help_lists_every_command_without_building_it():
    parser = cli.build_parser(())
    text = parser.format_help()
    for name in cli.COMMANDS:
        assert name in text
    assert _subparsers(parser)["predict"]._actions[1:] == []     # only -h: not built


def test_ray_lines_go_to_the_session_log_not_the_terminal(tmp_path, capfd):
    """What `connect_ray(ray_logs=False)` does around a batch run, without starting Ray:
    Ray's logger records (also those from before the session folder is known) and writes to
    file descriptor 2 (Ray's C++ core) land in the driver log; our own lines do not."""
    ray_logger = logging.getLogger("ray.test_cli_polish")
    with _RayLogsToFile() as quiet:
        ray_logger.warning("early ray warning")              # before ray.init has a session
        quiet.open(str(tmp_path))
        ray_logger.info("late ray info")
        logging.getLogger("foldray.batch").error("batch run stopped", exc_info=ValueError("boom"))
        os.write(2, b"[E core_worker.cc] straight to fd 2\n")
        print("error: our own line", file=sys.stderr)
    captured = capfd.readouterr()
    assert "our own line" in captured.err
    assert "ray" not in (captured.out + captured.err).replace("our own line", "")
    (log,) = tmp_path.glob("foldray-driver-*.log")
    text = log.read_text()
    for line in ("early ray warning", "late ray info", "straight to fd 2", "batch run stopped"):
        assert line in text
    assert "ValueError: boom" in text and "boom" not in captured.err   # no traceback on the terminal
    os.write(2, b"fd 2 is back\n")
    assert "fd 2 is back" in capfd.readouterr().err


@pytest.mark.parametrize("interval, lines", [(0.0, 3), (3600.0, 0)])
def test_progress_lines_off_a_terminal_are_throttled(interval, lines):
    stream = io.StringIO()       # not a TTY: lines, no bar
    progress = RunProgress(3, desc="jobs", interval_s=interval, stream=stream)
    for status in ("ok", "error", "ok"):
        progress.update(status)
    progress.close()
    shown = stream.getvalue().splitlines()
    assert len(shown) == lines
    if lines:
        assert shown[-1].startswith("jobs: 3/3 done (error 1, ok 2)")
    quiet = io.StringIO()
    RunProgress(3, quiet=True, interval_s=0.0, stream=quiet).update("ok")
    assert quiet.getvalue() == ""
