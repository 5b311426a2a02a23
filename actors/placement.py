"""Where each stage runs: custom Ray resources that send CPU work to CPU nodes and model
work to GPU nodes (cluster.yaml declares them per node type).

On a cluster whose nodes advertise these resources, featurization (MSA parsing,
conformers, tokenization) asks for `foldray_featurize` and model actors / train workers
for `foldray_model`, so a GPU node never spends its CPUs on featurization and a CPU node
never gets a model. On a laptop or any cluster without them, the stages ask for nothing
extra and run wherever Ray has room.
"""

from __future__ import annotations

from typing import Literal

import ray

FEATURIZE_RESOURCE = "foldray_featurize"   # one unit per CPU of a featurization node
MODEL_RESOURCE = "foldray_model"           # one unit per GPU (or per model slot on CPU)

Stage = Literal["featurize", "model"]
_RESOURCE_OF: dict[str, str] = {"featurize": FEATURIZE_RESOURCE, "model": MODEL_RESOURCE}


def stage_resources(stage: Stage, amount: float = 1.0) -> dict[str, float]:
    """Ray `resources=` for a task or actor of `stage`: the stage's custom resource when
    some node of the running cluster advertises it, else nothing."""
    name = _RESOURCE_OF[stage]
    if ray.is_initialized() and ray.cluster_resources().get(name, 0) > 0:
        return {name: amount}
    return {}
