"""Provenance for benchmark results: which commit, machine and versions produced a number.

One helper so every results JSON records these the same way (issue 18). Benchmarks import
it as a sibling: ``sys.path.insert(0, <this folder>)`` then ``from provenance import ...``.
Benchmarks never import tests, and tests never import benchmarks.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_sha(short: bool = True) -> str:
    """The checkout's HEAD commit ("unknown" outside a git checkout or without git)."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    """The processor name Python reports, else the architecture (``x86_64``)."""
    return platform.processor() or platform.machine()


def cpu_model() -> str:
    """The CPU model from ``lscpu`` (e.g. "AMD EPYC 7R13 Processor"), else :func:`cpu_name`."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return cpu_name()


def machine_summary() -> str:
    """"<cpu>, <n> CPUs": the one-line machine record of the CPU benchmarks."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs"


def python_version() -> str:
    return platform.python_version()


def torch_version() -> str:
    import torch

    return torch.__version__


def gpu_name() -> str:
    """CUDA device 0 as a file-name-friendly slug, e.g. "nvidia-h200"."""
    import torch

    return "-".join(torch.cuda.get_device_name(0).lower().replace("nvidia", "nvidia ").split())


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
