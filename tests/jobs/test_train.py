"""`foldray train` on real Ray Train: DDP over 2 CPU workers (gloo), checkpoints in a real S3
bucket and resume, recovery from a failed worker, fine-tuning from a checkpoint, and a
`ray job submit` onto a two-node local cluster with the workers on different nodes.

Tiny model, 32-token crops, 2 noised copies, a few steps each: the point is the platform
(resume, placement, recovery), not learning; one test checks that the loss goes down.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from foldray.io.weights import load_weights, save_weights
from foldray.jobs.train import main
from foldray.training.checkpoint import param_checksum
from foldray.training.config import OptimizerConfig
from foldray.training.optim import lr_at
from tests.data_paths import MSAS, REPO, STRUCTURES
from tests.jobs.train_faults import FAIL_ONCE
from tests.local_cluster import LocalCluster

CONFIG = str(REPO / "configs" / "tiny_cpu.yaml")
TINY = [
    f"data.train=[{{path: {STRUCTURES}, msa_dir: {MSAS}, names: [1l2y, 1ubq, 102m]}}]",
    f"data.validation=[{{path: {STRUCTURES}, names: [1l2y]}}]",
    "stage.crop_size=32", "stage.diffusion_batch=2", "stage.loss={mini_rollout_steps: 4}",
    "data.loader_workers=0", "data.max_msa_rows=16", "data.validation_max_tokens=24",
    "run.report_every=1", "run.validate_every=null", "run.validation_n_step=5", "run.max_failures=0",
]
OPTIMIZER = OptimizerConfig(lr=2e-3, warmup_steps=10)   # tiny_cpu.yaml's


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _adam_steps(optimizer_pt: bytes) -> set[float]:
    state = torch.load(io.BytesIO(optimizer_pt), weights_only=True)["optimizer"]["state"]
    return {float(s["step"]) for s in state.values()}


# ---------------------------------------------------------------------------- (a), (b), (d)


@pytest.fixture(scope="module")
def s3_run(ray_session, s3_server, tmp_path_factory):
    """Two workers (gloo), checkpoints in a fresh S3 bucket. Fit 1: 4 steps, checkpoint every
    2, rank 0 raises once at step 3 (a test callback, tests/jobs/train_faults.py) ->
    FailureConfig restarts the workers from checkpoint 2.
    Fit 2: the same name, 5 steps -> resumes from checkpoint 4. Yields what the tests read."""
    bucket = s3_server.create_bucket()
    fs = s3_server.filesystem()
    run = f"{bucket}/runs/tiny-s3"
    marker = tmp_path_factory.mktemp("marker") / "failed-once"
    common = [*TINY, f"run.storage_path=s3://{bucket}/runs", "name=tiny-s3",
              "scaling.num_workers=2", "run.checkpoint_every=2"]
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        assert main(["--config", CONFIG, *common, "run.max_steps=4", "run.validate_every=4",
                     f"run.callbacks=[{{path: '{FAIL_ONCE}', options: {{step: 3, marker: '{marker}'}}}}]",
                     "run.max_failures=1"]) == 0
        first = {"start": json.loads(fs.cat(f"{run}/foldray/start.json")),
                 "rows": _rows(fs.cat(f"{run}/foldray/metrics.jsonl").decode()),
                 "files": {p.rsplit("/", 1)[1] for p in fs.ls(f"{run}/checkpoint_000000004")} - {""},
                 "adam": _adam_steps(fs.cat(f"{run}/checkpoint_000000004/optimizer.pt")),
                 "weights": load_weights(f"s3://{run}/checkpoint_000000004/model.safetensors")[0]}
        assert main(["--config", CONFIG, *common, "run.max_steps=5", "run.checkpoint_every=5"]) == 0
        yield {"fs": fs, "run": run, "marker": marker, "first": first}


def test_worker_failure_is_recovered_from_the_last_checkpoint(s3_run):
    first = s3_run["first"]
    assert s3_run["marker"].read_text() == "3"                   # the failure did happen ...
    assert first["start"]["resumed"] and first["start"]["step"] == 2   # ... restart from step 2
    assert [r["step"] for r in first["rows"]] == [1, 2, 3, 4]          # and finished at 4
    assert first["files"] == {"model.safetensors", "ema.safetensors", "optimizer.pt",
                              "trainer_state.json", "rng-rank0.pt", "rng-rank1.pt", "manifest.json"}
    assert first["adam"] == {4.0}
    last = first["rows"][-1]
    assert last["param_sync_spread"] == 0.0                   # DDP kept both replicas equal
    assert 0.0 <= last["val_lddt"] <= 1.0 and last["world_size"] == 2
    assert {"loss", "diffusion", "distogram", "lr", "grad_norm", "tokens_per_s"} <= set(last)


def test_second_fit_with_the_same_name_resumes_step_lr_and_optimizer(s3_run):
    fs, run = s3_run["fs"], s3_run["run"]
    start = json.loads(fs.cat(f"{run}/foldray/start.json"))
    assert start["resumed"] and start["step"] == 4 and start["adam_step"] == 4.0
    assert start["lr"] == pytest.approx(lr_at(4, OPTIMIZER))
    assert start["param_checksum"] == pytest.approx(param_checksum(s3_run["first"]["weights"]),
                                                    rel=1e-12)
    state = json.loads(fs.cat(f"{run}/checkpoint_000000005/trainer_state.json"))
    assert state["step"] == 5 and state["samples_seen"] == 10 and state["world_size"] == 2
    assert _adam_steps(fs.cat(f"{run}/checkpoint_000000005/optimizer.pt")) == {5.0}
    rows = _rows(fs.cat(f"{run}/foldray/metrics.jsonl").decode())
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]       # one history, no restart from 0
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(s, OPTIMIZER) for s in range(5)])


def test_finetune_starts_from_the_checkpoint_weights_and_trains(s3_run, s3_server, tmp_path,
                                                                monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    source = f"s3://{s3_run['run']}/checkpoint_000000005"
    ema, _ = load_weights(f"{source}/ema.safetensors")
    sigint = signal.getsignal(signal.SIGINT)
    assert main(["--config", CONFIG, *TINY, f"run.storage_path={tmp_path}", "name=ft",
                 f"finetune.init_checkpoint={source}", "finetune.freeze_trunk=true",
                 "finetune.lr=1e-3", "optimizer.warmup_steps=0", "stage.name=finetune1",
                 "scaling.num_workers=1", "run.max_steps=2", "run.checkpoint_every=2"]) == 0
    # Ray Train's handler (it holds the finished run's controller actor alive) is gone again
    assert signal.getsignal(signal.SIGINT) is sigint
    start = json.loads((tmp_path / "ft" / "foldray" / "start.json").read_text())
    assert not start["resumed"] and start["step"] == 0 and start["init_checkpoint"] == source
    assert start["param_checksum"] == pytest.approx(param_checksum(ema), rel=1e-12)  # equal at step 0
    tuned, _ = load_weights(str(tmp_path / "ft" / "checkpoint_000000002" / "model.safetensors"))
    changed = {k.split(".")[0] for k in tuned if not torch.equal(tuned[k], ema[k].to(tuned[k].dtype))}
    assert "diffusion_module" in changed                      # it trained ...
    assert changed <= {"diffusion_module", "confidence_head", "distogram_head"}  # ... not the trunk
    rows = _rows((tmp_path / "ft" / "foldray" / "metrics.jsonl").read_text())
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3])
    assert all(r["smooth_lddt"] >= 0 and r["loss"] > 0 for r in rows)


def test_resume_falls_back_from_a_corrupted_checkpoint(ray_session, tmp_path, capfd):
    """A NaN written over the newest checkpoint's weights (same size: only the manifest hash
    tells): the next fit resumes from the previous checkpoint, says so, never writes into the
    refused folder, and a later fit resumes normally from the new newest one."""
    common = [*TINY, f"run.storage_path={tmp_path}", "name=corrupt", "scaling.num_workers=1",
              "run.checkpoint_every=1"]
    assert main(["--config", CONFIG, *common, "run.max_steps=2"]) == 0
    run = tmp_path / "corrupt"
    good = load_weights(str(run / "checkpoint_000000001" / "model.safetensors"))[0]
    bad_file = run / "checkpoint_000000002" / "model.safetensors"
    weights, model_config = load_weights(str(bad_file))
    first = next(k for k, v in sorted(weights.items()) if v.is_floating_point())
    weights[first].view(-1)[0] = float("nan")
    size = bad_file.stat().st_size
    save_weights(str(bad_file), weights, model_config, {"foldray_train_step": "2"})
    assert bad_file.stat().st_size == size
    corrupted = bad_file.read_bytes()

    assert main(["--config", CONFIG, *common, "run.max_steps=3"]) == 0
    start = json.loads((run / "foldray" / "start.json").read_text())
    assert start["resumed_from"] == "checkpoint_000000001" and start["step"] == 1
    assert start["skipped_checkpoints"] == {"checkpoint_000000002": "model.safetensors sha256 mismatch"}
    assert start["param_checksum"] == pytest.approx(param_checksum(good), rel=1e-12)
    logs = "".join(capfd.readouterr())                           # worker log lines reach the driver
    assert ("checkpoint_000000002: model.safetensors sha256 mismatch; resumed from checkpoint_000000001"
            in logs), logs[-3000:]
    assert bad_file.read_bytes() == corrupted                     # the refused folder is left alone
    redone = json.loads((run / "checkpoint_000000002-1" / "trainer_state.json").read_text())
    assert redone["step"] == 2
    assert json.loads((run / "checkpoint_000000003" / "manifest.json").read_text())["step"] == 3
    assert [r["step"] for r in _rows((run / "foldray" / "metrics.jsonl").read_text())] == [1, 2, 3]

    assert main(["--config", CONFIG, *common, "run.max_steps=3"]) == 0   # Ray's run state still fine
    start = json.loads((run / "foldray" / "start.json").read_text())
    assert start["resumed_from"] == "checkpoint_000000003" and start["skipped_checkpoints"] == {}


# ---------------------------------------------------------------------------- (c) + (e) cluster


@pytest.fixture
def two_node_cluster(tmp_path):
    """Head + a second `ray start --address` node, 1 CPU each (tests/local_cluster.py)."""
    cluster = LocalCluster(tmp_path)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        yield cluster.dashboard_address, cluster.env
    finally:
        cluster.shutdown()


def test_ray_job_submit_on_two_nodes(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "tiny.yaml").write_text(Path(CONFIG).read_text())   # the config travels with the job
    storage = tmp_path / "runs"
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", str(job_dir), "--",
           "python", "-m", "foldray.jobs.train", "--config", "tiny.yaml", *TINY,
           f"data.train=[{{path: {STRUCTURES}, names: [1l2y]}}]", "stage.diffusion_batch=4",
           "data.loader_workers=1",                         # featurized ahead in a process
           "optimizer.warmup_steps=3",
           f"run.storage_path={storage}", "name=two-node", "scaling.num_workers=2",
           "scaling.placement_strategy=STRICT_SPREAD", "run.max_steps=8", "run.checkpoint_every=8"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-6000:]
    assert "succeeded" in logs and "finished at step 8" in logs
    wrong = subprocess.run(["ray", "job", "list", "--address", address], capture_output=True,
                           env={**env, "RAY_AUTH_TOKEN": "0" * 64}, timeout=60)
    assert wrong.returncode != 0                                  # the cluster checks the token
    losses = {}
    for line in logs.splitlines():
        found = re.search(r"foldray-train: step (\d+)  loss ([0-9.e+-]+)", line)
        if found:
            losses[int(found.group(1))] = float(found.group(2))
    assert sorted(losses) == list(range(1, 9)), logs[-4000:]
    last = [losses[s] for s in (6, 7, 8)]
    assert sum(last) / 3 < losses[1], losses                      # the loss goes down
    start = json.loads((storage / "two-node" / "foldray" / "start.json").read_text())
    assert len(start["nodes"]) == 2 and start["nodes"][0] != start["nodes"][1]   # one per node
