"""Print the custom Ray resources this machine should advertise, as JSON for
`ray start --resources=...` (used by configs/cluster-onprem.yaml).

Machines with GPUs advertise `foldray_model` (one per GPU) and keep their CPUs for the
model's own data handling; machines without advertise `foldray_featurize` (one per CPU),
so featurization lands on CPU machines and models on GPU machines
(foldray.actors.placement).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys


def gpu_count() -> int:
    """GPUs visible to this machine: CUDA_VISIBLE_DEVICES if set, else nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def node_resources(n_gpu: int | None = None, n_cpu: int | None = None) -> dict[str, int]:
    from foldray.actors.placement import FEATURIZE_RESOURCE, MODEL_RESOURCE

    n_gpu = gpu_count() if n_gpu is None else n_gpu
    n_cpu = (os.cpu_count() or 1) if n_cpu is None else n_cpu
    return {MODEL_RESOURCE: n_gpu} if n_gpu > 0 else {FEATURIZE_RESOURCE: n_cpu}


def main() -> int:
    print(json.dumps(node_resources()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
