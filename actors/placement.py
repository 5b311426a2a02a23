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


def _node_types() -> list[dict[str, float]] | None:
    """Resources of each node type an autoscaler may launch, or None without an autoscaler
    config (a fixed cluster, or one whose config Ray does not publish)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:   # private API: an older/newer Ray, or no GCS access
        return None
    if config is None or not config.node_group_configs:
        return None
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


def _fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) >= amount for name, amount in request.items() if amount)


def placement_problem(what: str, request: dict[str, float]) -> str | None:
    """Why no `what` (one actor asking for `request`) can ever be placed, or None.

    Checks every live node (one actor needs one node with all of it), then the node types
    an autoscaler can launch. With FOLDRAY_STAGE_RESOURCES=on and no published node types
    the autoscaler is trusted; the placement deadline then catches a request nothing fits.
    """
    import ray

    request = {name: amount for name, amount in request.items() if amount}
    nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    if any(_fits(request, node) for node in nodes):
        return None
    types = _node_types()
    if types and any(_fits(request, node) for node in types):
        return None
    if types is None and os.environ.get(MODE_VARIABLE, "").strip().lower() == "on":
        return None
    candidates = nodes + (types or [])
    missing = [f"{name} {amount:g} (the most any node has: "
               f"{max((node.get(name, 0.0) for node in candidates), default=0.0):g})"
               for name, amount in sorted(request.items())
               if not any(node.get(name, 0.0) >= amount for node in candidates)]
    asked = ", ".join(f"{name} {amount:g}" for name, amount in sorted(request.items()))
    why = "; ".join(missing) or "no single node has all of it"
    kinds = "node or node type" if types else "node"
    return (f"cannot place the {what}: each asks for {asked}, and no {kinds} of this Ray "
            f"cluster can provide it: {why}")
