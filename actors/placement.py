"""Where each stage runs: custom Ray resources that send CPU work to CPU nodes and model
work to GPU nodes (cluster.yaml declares them per node type).

On a cluster whose nodes advertise these resources, featurization (MSA parsing,
conformers, tokenization) asks for `foldray_featurize` and model actors / train workers
for `foldray_model`, so a GPU node never spends its CPUs on featurization and a CPU node
never gets a model. On a laptop or any cluster without them, the stages ask for nothing
extra and run wherever Ray has room.

An autoscaling cluster that starts with no worker nodes has no node advertising them yet
when a job starts, so `FOLDRAY_STAGE_RESOURCES=on` (set by cluster.yaml and
configs/job-runtime-env.yaml) makes stages ask for them anyway: the autoscaler then
launches the node type that declares them. `off` never asks; `auto` (default) asks when a
live node advertises them.
"""

from __future__ import annotations

import os
from typing import Literal

import ray

FEATURIZE_RESOURCE = "foldray_featurize"   # one unit per CPU of a featurization node
MODEL_RESOURCE = "foldray_model"           # one unit per GPU (or per model slot on CPU)

Stage = Literal["featurize", "model"]
_RESOURCE_OF: dict[str, str] = {"featurize": FEATURIZE_RESOURCE, "model": MODEL_RESOURCE}
MODE_VARIABLE = "FOLDRAY_STAGE_RESOURCES"   # auto | on | off


def stage_resources(stage: Stage, amount: float = 1.0) -> dict[str, float]:
    """Ray `resources=` for a task or actor of `stage`: the stage's custom resource when
    some node of the running cluster advertises it (or FOLDRAY_STAGE_RESOURCES=on), else
    nothing."""
    name = _RESOURCE_OF[stage]
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"{MODE_VARIABLE}={mode!r}: expected auto, on or off")
    if mode == "on":
        return {name: amount}
    if mode == "auto" and ray.is_initialized() and ray.cluster_resources().get(name, 0) > 0:
        return {name: amount}
    return {}
