"""Leak checks: every test leaves no Ray actors, nodes, placement groups, processes or temp dirs.

Why: on a 2-CPU machine a Ray actor, node or process left behind by one test holds CPUs,
memory or ports that a later test then waits for, and the failure shows up far from its
cause (issue 23). So this plugin fails loudly where the leak happens:

- after each test module (an error at the teardown of its last test) when, after a grace
  period for Ray's asynchronous clean-up, the session Ray still has actors other than Ray's
  own detached bookkeeping singletons, a placement group, a second node or CPUs in use, or
  a process started during the module is still running;
- at the end of the session, after every fixture is torn down, when any process started
  by this session or a `fr-*` temp dir it made is still there. Those are reported, then
  stopped / removed, so the next run on the machine starts clean.

Processes are attributed through an environment marker (`FOLDRAY_TEST_SESSION`, unique per
session) that every child inherits: Ray's raylet and workers, `ray start` nodes, `weed`,
job drivers, even when they were re-parented to init. Processes of other sessions on the
same machine carry another marker and are never touched. Temp dirs are attributed by the
pytest PID in their names (`/tmp/fr-<kind>-<pid>-...`, see plugins/ray_s3._short_tmpdir and
tests/local_cluster.py).

Ray is inspected through the GCS (`ray._private.state`): the session Ray runs without the
dashboard, which `ray.util.state.list_actors` needs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SESSION_ENV = "FOLDRAY_TEST_SESSION"
# How long leaks may take to go away on their own (actors reaped after their owner died,
# processes exiting after SIGTERM) before they count; a clean state returns at once.
GRACE_S = float(os.environ.get("FOLDRAY_LEAK_GRACE_S", "60"))
TMP = Path("/tmp")
# Ray keeps these detached, zero-resource singletons for the life of a Ray instance once a
# library used them (Ray Data, Ray Train's autoscaling coordinator); they are not a test's.
RAY_SINGLETONS = frozenset({"_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker"})
# Session-scoped fixtures' temp dirs outlive a module; they are checked at session end.
SESSION_DIR_KINDS = ("fr-ray-", "fr-s3-", "fr-aws-")
# Python's own per-process helpers (multiprocessing) live as long as pytest: not a leak.
PYTHON_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
RAY_FIXTURES = frozenset({"ray_session", "s3_server", "s3_bucket"})
# A weed started by the session-scoped S3 fixture outlives the module that first needed it.
SESSION_S3_DIR = "-dir=/tmp/fr-s3-"


@dataclass
class _State:
    marker: str = ""
    started: float = 0.0
    tmp_before: set[str] = field(default_factory=set)
    last_test: str = "(none)"
    ray_modules: set[str] = field(default_factory=set)   # node ids of modules whose tests used Ray


_state = _State()


# --------------------------------------------------------------------------- what exists now


_RAYLET_PID = re.compile(rb"(?:^|\0)RAY_RAYLET_PID=(\d+)\0")


def _marked_pids(marker: str) -> dict[int, str]:
    """pid -> description of every live process whose environment carries this session's marker.

    Reads /proc directly (about 5 ms for a few hundred processes); zombies have no environment
    and hold nothing, so they are skipped. A Ray worker's description names its raylet
    (RAY_RAYLET_PID), so an orphan of a stopped node can be told apart.
    """
    needle = f"{SESSION_ENV}={marker}\0".encode()
    found: dict[int, str] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = handle.read()
            if needle not in environ:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:                        # gone, or not ours to read
            continue
        if cmdline and not any(helper in cmdline for helper in PYTHON_HELPERS):
            raylet = _RAYLET_PID.search(environ)
            if raylet:
                cmdline += f"  [Ray worker of raylet {int(raylet.group(1))}]"
            found[int(name)] = cmdline
    return found


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{name}/stat").read_text()
                parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _session_service_pids(procs: dict[int, str]) -> set[int]:
    """Processes of the session-scoped fixtures: the session Ray (every process of its temp dir
    and their descendants, e.g. workers under the raylet) and the session S3 server."""
    roots = {pid for pid, cmd in procs.items() if SESSION_S3_DIR in cmd and os.path.basename(
        cmd.split()[0]) == "weed"}
    ray_dir = _session_ray_dir()
    if ray_dir:
        roots |= {pid for pid, cmd in procs.items() if ray_dir in cmd}
    if not roots:
        return set()
    parents = _parents()
    owned = set(roots)
    owned |= {pid for pid, cmd in procs.items()                  # workers, even re-parented
              if any(f"[Ray worker of raylet {root}]" in cmd for root in roots)}
    for pid in procs:
        chain, cur = [], pid
        while cur > 1 and cur not in owned and len(chain) < 64:
            chain.append(cur)
            cur = parents.get(cur, 0)
        if cur in owned:
            owned.update(chain)
    return owned


def _session_ray_dir() -> str | None:
    """The temp dir of a Ray head node started by this process (the ray_session fixture's)."""
    ray = sys.modules.get("ray")               # never import Ray for a module that did not
    if ray is None or not ray.is_initialized():
        return None
    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_temp_dir_path() if node is not None and node.head else None


def _session_dirs() -> set[str]:
    """`/tmp/fr-*` dirs whose name carries this pytest's PID and that were not there at start."""
    tag = f"-{os.getpid()}-"
    try:
        names = {e.name for e in os.scandir(TMP) if e.name.startswith("fr-") and tag in e.name}
    except OSError:
        return set()
    return names - _state.tmp_before


def _ray_leaks() -> list[str]:
    """What the session Ray still holds: actors, placement groups, extra nodes, busy CPUs."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    from ray._private import state

    if _session_ray_dir() is None:
        return [f"this process is still connected to a Ray it did not start "
                f"({ray.get_runtime_context().gcs_address}): ray.init without ray.shutdown"]
    leaks = []
    for actor in state.actors().values():
        if actor["State"] == "DEAD":
            continue
        if actor["IsDetached"] and actor["ActorClassName"] in RAY_SINGLETONS:
            continue
        leaks.append(f"Ray actor {actor['ActorClassName']} ({actor['State']}, pid {actor['Pid']}, "
                     f"name {actor['Name'] or '-'}, job {actor['JobID']}, "
                     f"detached={actor['IsDetached']})")
    for pg_id, pg in ray.util.placement_group_table().items():
        if pg.get("state") != "REMOVED":
            leaks.append(f"placement group {pg_id} ({pg.get('state')}, name {pg.get('name') or '-'}, "
                         f"bundles {list(pg.get('bundles', {}).values())})")
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        leaks.append(f"{len(alive)} Ray nodes alive in the session Ray (expected 1): "
                     + ", ".join(n["NodeManagerAddress"] + ":" + str(n["NodeManagerPort"]) for n in alive))
    total, free = ray.cluster_resources(), ray.available_resources()
    for key, amount in total.items():
        if (key in ("CPU", "GPU") or key.startswith("foldray")) and free.get(key, 0.0) < amount - 1e-6:
            leaks.append(f"Ray resource {key}: {amount - free.get(key, 0.0):g} of {amount:g} still in use")
    return leaks


def _wait_clean(check: Callable[[], list[str]], grace_s: float) -> list[str]:
    """Poll `check` until it finds nothing or the grace period ends; the last findings."""
    deadline = time.monotonic() + grace_s
    while True:
        leaks = check()
        if not leaks or time.monotonic() >= deadline:
            return leaks
        gc.collect()                            # handles in unreachable cycles release actors
        time.sleep(0.25)


def _report(where: str, leaks: list[str]) -> str:
    lines = "\n".join(f"  - {leak}" for leak in leaks)
    return (f"LEAK CHECK ({where}): left behind after the last test, {_state.last_test}:\n{lines}\n"
            f"Every test must stop what it starts (tests/leak_check.py).")


# --------------------------------------------------------------------------- hooks / fixtures


def pytest_configure(config: pytest.Config) -> None:
    """Mark this session's environment before any fixture starts a process."""
    _state.marker = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[SESSION_ENV] = _state.marker
    _state.started = time.monotonic()
    _state.tmp_before = _session_dirs()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _state.last_test = item.nodeid
    module = item.getparent(pytest.Module)
    if module is not None and RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
        _state.ray_modules.add(module.nodeid)


@pytest.fixture(scope="module", autouse=True)
def _no_leaks_after_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module's own fixtures are torn down: nothing it started is still running."""
    before = set(_marked_pids(_state.marker))
    dirs_before = _session_dirs()
    yield

    def leaks() -> list[str]:
        marked = _marked_pids(_state.marker)
        services = _session_service_pids(marked)          # their roots may predate the module
        procs = {pid: cmd for pid, cmd in marked.items() if pid not in before | services}
        found = [f"process {pid}: {cmd[:200]}" for pid, cmd in sorted(procs.items())]
        found += [f"temp dir /tmp/{name}" for name in sorted(_session_dirs() - dirs_before)
                  if not name.startswith(SESSION_DIR_KINDS)]
        if request.node.nodeid in _state.ray_modules:
            found += _ray_leaks()
        return found

    left = _wait_clean(leaks, GRACE_S)
    if left:
        pytest.fail(_report("module", left), pytrace=False)


def _stop(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL after 10 s, to this session's own leaked processes (by PID)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set(pids) & set(_marked_pids(_state.marker)):
            time.sleep(0.2)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down: no process of this session, no `fr-*` dir it made."""
    if not _state.marker:
        return

    def leaks() -> list[str]:
        found = [f"process {pid}: {cmd[:200]}" for pid, cmd in sorted(_marked_pids(_state.marker).items())]
        return found + [f"temp dir /tmp/{name}" for name in sorted(_session_dirs())]

    left = _wait_clean(leaks, GRACE_S)
    if not left:
        return
    message = _report("session end", left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "leak check failed", red=True, bold=True)
        reporter.write_line(message)
    else:
        print(message)
    _stop(sorted(_marked_pids(_state.marker)))
    for name in _session_dirs():
        shutil.rmtree(TMP / name, ignore_errors=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
