"""A real multi-node Ray cluster on this machine, for tests of placement and node failure.

`ray start --head --block` and `ray start --address --block` children with free ports, one
temp dir, dashboard on loopback, and stopped by SIGTERM to the PIDs started here (never
`ray stop`). Ray 2.60 turns `--node-ip-address=127.0.0.1` into the machine's routable address
once a second node joins (services.resolve_ip_for_localhost), so the nodes are not
loopback-only: token authentication stays on, with a random RAY_AUTH_TOKEN for every
process started here (nothing is written under ~/.ray).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.conftest import child_env


def free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def node_ports() -> list[str]:
    manager, objects, agent, agent_grpc, metrics, runtime_env = free_ports(6)
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
        self.gcs_port, self.dashboard_port, client, self.min_worker_port = free_ports(4)
        self._client_port = client
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
             *_resource_args(num_cpus, resources), *node_ports()], "head")

        def up() -> bool:
            assert head.poll() is None, head.log_path.read_text()
            try:
                return subprocess.run(["ray", "job", "list", "--address", self.dashboard_address],
                                      env=self.env, capture_output=True, timeout=20).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        wait_for(up, 90, "head node did not come up")

    def add_node(self, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 settle_s: float = 5.0) -> subprocess.Popen:
        """A worker node (`ray start --address --block`); returns its process.

        Its worker-port range and its other ports are picked separately, so they can overlap;
        Ray then refuses to start ("... used by other components") and we retry with new ones."""
        port = self.min_worker_port + 201 * (len(self.procs) - 1)
        for _ in range(3):
            worker = self._spawn(
                ["ray", "start", f"--address={self.gcs_address}", "--block", "--node-ip-address=127.0.0.1",
                 "--disable-usage-stats", f"--min-worker-port={port}", f"--max-worker-port={port + 200}",
                 *_resource_args(num_cpus, resources), *node_ports()], "worker")
            time.sleep(settle_s)
            if worker.poll() is None or "used by other components" not in worker.log_path.read_text():
                break
            self.procs.remove(worker)
            port = free_ports(1)[0]
        assert worker.poll() is None, worker.log_path.read_text()
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

    def shutdown(self) -> None:
        # SIGTERM to all at once stops them in ~3 s; a worker node alone waits longer
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)
