"""`foldray predict-batch` on a real two-node Ray cluster with stage resources, as on a cloud
cluster from cluster.yaml: the head advertises `foldray_featurize` (a CPU node), a second
node advertises `foldray_model` (the "GPU" node). Featurization must run on the CPU node and
the model on the model node (node ids from the results table), and stopping the model node
by PID mid-run must not lose work: its jobs finish once a model node comes back.

Tiny config, 1 sample, a few diffusion steps: the point is placement and recovery.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from foldray.actors.placement import FEATURIZE_RESOURCE, MODEL_RESOURCE
from tests.data_paths import INPUTS
from tests.local_cluster import LocalCluster, wait_for

N_JOBS = 6
# Enough model work per job (120 sampler steps) that the model node is still busy when the
# first job is written: with 30 steps a quiet machine predicted every job before the write
# actors had started, and the node was stopped after the run (seen once, session 6).


def write_jobs(folder) -> list[str]:
    """Trp-cage jobs of different lengths and seeds (each a real AF3 JSON input)."""
    base = json.loads((INPUTS / "1l2y.json").read_text())
    names = []
    for i in range(N_JOBS):
        job = json.loads(json.dumps(base))
        job["name"] = f"trp_{i}"
        job["modelSeeds"] = [i + 1]
        protein = job["sequences"][0]["protein"]
        protein["sequence"] = protein["sequence"][: 12 + i]
        (folder / f"trp_{i}.json").write_text(json.dumps(job))
        names.append(job["name"])
    return names


def node_resources(cluster: LocalCluster) -> dict[str, dict]:
    """node id -> total resources of every alive node (Ray's state API CLI)."""
    done = subprocess.run(["ray", "list", "nodes", "--address", cluster.dashboard_address,
                           "--format", "json", "--detail", "--filter", "state=ALIVE"],
                          env=cluster.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {n["node_id"]: n["resources_total"] for n in json.loads(done.stdout)}


def the_node_with(cluster: LocalCluster, resource: str) -> str:
    (node,) = [n for n, res in node_resources(cluster).items() if res.get(resource, 0) > 0]
    return node


@pytest.mark.timeout(900)
def test_stages_run_on_their_nodes_and_survive_losing_the_model_node(tmp_path):
    cluster = LocalCluster(tmp_path)
    try:
        cluster.start_head(num_cpus=2, resources={FEATURIZE_RESOURCE: 2})
        model_node = cluster.add_node(num_cpus=1, resources={MODEL_RESOURCE: 1})
        cpu_node_id = the_node_with(cluster, FEATURIZE_RESOURCE)
        first_model_node_id = the_node_with(cluster, MODEL_RESOURCE)

        inputs, out = tmp_path / "inputs", tmp_path / "out"
        inputs.mkdir()
        names = write_jobs(inputs)
        driver = subprocess.Popen(
            [sys.executable, "-m", "foldray.jobs.predict_batch", "--inputs", str(inputs),
             "--out", str(out), "--address", cluster.gcs_address, "--samples", "1", "--steps", "120",
             "--recycles", "1", "--actors", "1-1", "--quiet"],
            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        logs: list[str] = []
        reader = threading.Thread(target=lambda: logs.extend(driver.stdout), daemon=True)
        reader.start()

        def some_job_written() -> bool:
            assert driver.poll() is None, "".join(logs)[-6000:]
            return any(out.glob("*/*_summary_confidences.json"))

        wait_for(some_job_written, 400, "no job finished on the model node")
        LocalCluster.stop_node(model_node)             # the model node dies mid-run ...
        written_before = {p.parent.name for p in out.glob("*/*_summary_confidences.json")}
        assert len(written_before) < N_JOBS, "the run ended before the node was stopped"
        time.sleep(5)
        cluster.add_node(num_cpus=1, resources={MODEL_RESOURCE: 1})   # ... and a new one joins

        def new_model_nodes() -> list[str]:   # the stopped node may stay listed a moment
            return [n for n, res in node_resources(cluster).items()
                    if res.get(MODEL_RESOURCE, 0) > 0 and n != first_model_node_id]

        wait_for(lambda: len(new_model_nodes()) == 1, 120, "the new model node did not register")
        (second_model_node_id,) = new_model_nodes()

        driver.wait(timeout=600)
        reader.join(timeout=10)
        assert driver.returncode == 0, "".join(logs)[-6000:]
    finally:
        cluster.shutdown()

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["name"] for r in rows) == sorted(names)
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    # featurization on the CPU node, the model on a model node: before and after the loss
    assert {r["featurize_node_id"] for r in rows} == {cpu_node_id}
    # jobs predicted before the loss keep the first node; the rest (and any result lost with
    # the node's object store) are predicted again on the new one
    model_nodes = {r["node_id"] for r in rows}
    assert model_nodes <= {first_model_node_id, second_model_node_id}
    for name in names:                                  # every job's outputs are complete
        assert (out / name / f"{name}_model.cif").stat().st_size > 0
        summary = json.loads((out / name / f"{name}_summary_confidences.json").read_text())
        assert 0.0 <= summary["ptm"] <= 1.0
