"""A real multi-node Ray cluster on this machine, for tests of placement and node failure.

`ray start --head --block` and `ray start --address --block` children with free ports, one
temp dir, dashboard on loopback, and stopped by SIGTERM to the PIDs started here (never
`ray stop`). Ray 2.60 turns `--node-ip-address=127.0.0.1` into the machine's routable address
once a second node joins (services.resolve_ip_for_localhost), so the nodes are not
loopback-only: token authentication stays on, with a random RAY_AUTH_TOKEN for every
process started here (nothing is written under ~/.ray).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.plugins.ray_s3 import child_env

# Worker nodes' worker-port ranges: one block per cluster, a slice of it per node. Every other
# port of the cluster is drawn outside the block, so Ray never refuses a node because one of
# its ports lies in its own (or a sibling's) worker-port range ("... used by other components").
_WORKER_PORTS_PER_NODE = 201
_MAX_WORKER_NODES = 4


def free_ports(n: int, avoid: range | None = None) -> list[int]:
    """n distinct currently free loopback ports, chosen by the OS, none inside `avoid`.

    Every socket stays bound until all are chosen, so the OS never hands out a port twice
    (nor one we skipped): the loop ends."""
    sockets, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if avoid is None or port not in avoid:
                ports.append(port)
    finally:
        for s in sockets:
            s.close()
    return ports


def node_ports(avoid: range | None = None) -> list[str]:
    manager, objects, agent, agent_grpc, metrics, runtime_env = free_ports(6, avoid)
    return [f"--node-manager-port={manager}", f"--object-manager-port={objects}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def _resource_args(num_cpus: int, resources: dict[str, float] | None) -> list[str]:
    args = [f"--num-cpus={num_cpus}"]
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    return args


class LocalCluster:
    """Head plus worker nodes; `add_node` / `stop_node` for placement and failure tests."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.temp_dir = Path(f"/tmp/fr-cluster-{os.getpid()}-{time.monotonic_ns() % 10 ** 6}")
        first = free_ports(1)[0]
        self.worker_ports = range(first, first + _WORKER_PORTS_PER_NODE * _MAX_WORKER_NODES)
        self.gcs_port, self.dashboard_port, self._client_port = free_ports(3, self.worker_ports)
        self._n_workers = 0
        self.env = child_env({"RAY_AUTH_MODE": "token",
                              "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
                              "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
        self.procs: list[subprocess.Popen] = []
        self._n_logs = 0

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        self._n_logs += 1
        log = self.log_dir / f"{self._n_logs:02d}-{name}.log"
        with open(log, "wb") as handle:   # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, env=self.env, stdout=handle, stderr=subprocess.STDOUT)
        proc.log_path = log               # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        head = self._spawn(
            ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={self._client_port}",
             f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
             *_resource_args(num_cpus, resources), *node_ports(self.worker_ports)], "head")

        def up() -> bool:
            assert head.poll() is None, head.log_path.read_text()
            try:
                return subprocess.run(["ray", "job", "list", "--address", self.dashboard_address],
                                      env=self.env, capture_output=True, timeout=20).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        wait_for(up, 90, "head node did not come up")

    def alive_node_ids(self, strict: bool = True) -> set[str]:
        """Ids of the nodes the GCS lists alive (Ray's state API CLI)."""
        try:
            done = subprocess.run(["ray", "list", "nodes", "--address", self.dashboard_address,
                                   "--format", "json", "--filter", "state=ALIVE"],
                                  env=self.env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            if strict:
                raise
            return set()
        if done.returncode != 0 and not strict:
            return set()
        assert done.returncode == 0, done.stderr[-3000:]
        return {n["node_id"] for n in json.loads(done.stdout)}

    def add_node(self, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 timeout: float = 180) -> subprocess.Popen:
        """A worker node (`ray start --address --block`), returned once the GCS lists it alive.

        Waiting for the node itself (not a fixed sleep) means a test never starts work that
        needs the node before it has joined, however slow the machine is; a node that dies
        fails here with its log."""
        assert self._n_workers < _MAX_WORKER_NODES, "raise _MAX_WORKER_NODES"
        port = self.worker_ports.start + _WORKER_PORTS_PER_NODE * self._n_workers
        self._n_workers += 1
        before = self.alive_node_ids()
        worker = self._spawn(
            ["ray", "start", f"--address={self.gcs_address}", "--block", "--node-ip-address=127.0.0.1",
             "--disable-usage-stats", f"--min-worker-port={port}",
             f"--max-worker-port={port + _WORKER_PORTS_PER_NODE - 1}",
             *_resource_args(num_cpus, resources), *node_ports(self.worker_ports)], "worker")

        def joined() -> bool:
            assert worker.poll() is None, worker.log_path.read_text()[-6000:]
            return bool(self.alive_node_ids(strict=False) - before)

        wait_for(joined, timeout, "the worker node did not join the cluster")
        return worker

    @staticmethod
    def stop_node(proc: subprocess.Popen, timeout: float = 60) -> None:
        """SIGTERM to one node's `ray start --block` (no drain: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pids(self) -> list[int]:
        """Every live process of this cluster, wherever it was re-parented: they all carry the
        cluster's own RAY_AUTH_TOKEN in their environment (raylets, GCS, agents, workers)."""
        needle = f"RAY_AUTH_TOKEN={self.env['RAY_AUTH_TOKEN']}\0".encode()
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/environ", "rb") as handle:
                        if needle in handle.read():
                            found.append(int(name))
                except OSError:
                    continue
        return found

    def shutdown(self) -> None:
        """Stop the nodes, then any of their processes still running, then remove the temp dir.

        SIGTERM to the `ray start` processes stops a cluster in ~3 s, but an actor's worker
        process can outlive its raylet for minutes on a busy machine (measured: a
        `_AutoscalingCoordinatorActor` > 60 s), holding memory and CPU the next test needs;
        so those are stopped by PID too."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            left = self.pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = [pid for pid in self.pids() if pid in left]
        subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)
