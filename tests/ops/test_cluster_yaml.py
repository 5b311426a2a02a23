"""cluster.yaml and the on-prem example against the autoscaler schema shipped in the
installed ray wheel, and the stage resources they declare."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from foldray.actors.placement import (
    FEATURIZE_RESOURCE,
    MODE_VARIABLE,
    MODEL_RESOURCE,
    stage_resources,
)
from foldray.jobs.node_resources import node_resources

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "configs/cluster-onprem.yaml"])
def test_cluster_configs_follow_the_ray_autoscaler_schema(name):
    config = _load(name)
    jsonschema.validate(config, SCHEMA)
    images = [v for k, v in config["docker"].items() if k.endswith("image")]
    assert images
    for image in images:
        repository, tag = image.split(":")
        assert repository == "rayproject/ray"                 # ray-ml images are discontinued
        assert tag.startswith(f"{ray.__version__}-py311"), image


def test_cluster_node_types_route_stages_to_the_right_hardware():
    config = _load("cluster.yaml")
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert set(gpu_types) == {"gpu_1x", "gpu_8x"}
    assert types["gpu_1x"]["resources"]["GPU"] == 1 and types["gpu_8x"]["resources"]["GPU"] == 8
    for t in gpu_types.values():
        assert t["resources"][MODEL_RESOURCE] == t["resources"]["GPU"]
        assert FEATURIZE_RESOURCE not in t["resources"]
        assert t["max_workers"] >= t.get("min_workers", 0) == 0      # GPUs scale from zero
    cpu = types["cpu_featurize"]["resources"]
    assert "GPU" not in cpu and cpu[FEATURIZE_RESOURCE] == cpu["CPU"]
    assert sum(t.get("max_workers", 0) for t in types.values()) >= config["max_workers"] > 0
    text = (REPO / "cluster.yaml").read_text()
    for secret in ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "AKIA"):
        assert secret not in text                                     # credentials come from the role


def test_node_resources_split_gpu_and_cpu_machines():
    assert node_resources(n_gpu=2, n_cpu=32) == {MODEL_RESOURCE: 2}
    assert node_resources(n_gpu=0, n_cpu=16) == {FEATURIZE_RESOURCE: 16}


def test_stages_ask_for_nothing_extra_on_a_cluster_without_stage_resources(ray_session, monkeypatch):
    monkeypatch.delenv(MODE_VARIABLE, raising=False)
    assert stage_resources("featurize") == {} and stage_resources("model") == {}
    monkeypatch.setenv(MODE_VARIABLE, "off")
    assert stage_resources("model") == {}


def test_an_autoscaling_cluster_asks_for_stage_resources_before_any_node_has_them(ray_session,
                                                                                 monkeypatch):
    # cluster.yaml's worker types start at zero nodes: the head sets the mode for its jobs
    head_start = " ".join(_load("cluster.yaml")["head_start_ray_commands"])
    assert f"export {MODE_VARIABLE}=on;" in head_start
    assert _load("configs/job-runtime-env.yaml")["env_vars"][MODE_VARIABLE] == "on"
    monkeypatch.setenv(MODE_VARIABLE, "on")
    assert stage_resources("featurize", 0.5) == {FEATURIZE_RESOURCE: 0.5}
    assert stage_resources("model") == {MODEL_RESOURCE: 1.0}
    monkeypatch.setenv(MODE_VARIABLE, "yes")
    with pytest.raises(ValueError, match=MODE_VARIABLE):
        stage_resources("model")


def test_the_job_runtime_env_example_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    spec = _load("configs/job-runtime-env.yaml")
    assert set(spec) <= set(RuntimeEnv.known_fields)          # Ray would take typos as plugins
    env = RuntimeEnv(**spec)                                  # type checks (env_vars: str -> str)
    assert env["working_dir"] == "." and ".git" in env["excludes"]
    assert not any("SECRET" in key or "ACCESS_KEY" in key for key in env["env_vars"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())
