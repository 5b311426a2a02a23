"""Fused stages (issue 18, overhead): for CPU inference one actor featurizes, predicts and
writes each job; the outputs and rows equal the separate featurize/model/write pools'."""

import dataclasses
import json

from foldray.actors.batch import BatchSettings, Resources, fused_stages
from foldray.parallel.plan import ShardSettings

ROW_KEYS = ("name", "status", "n_tokens", "n_atoms", "ranking_score", "ptm", "mean_plddt", "error")


def test_auto_fuses_only_cpu_inference_on_undivided_nodes():
    cpu = BatchSettings(inputs=(), out="/x")
    assert fused_stages(cpu, separate_nodes=False)
    assert not fused_stages(cpu, separate_nodes=True)            # featurization nodes of their own
    assert not fused_stages(dataclasses.replace(cpu, resources=Resources(num_gpus_per_actor=1.0)),
                            separate_nodes=False)               # a GPU never waits for featurization
    assert fused_stages(dataclasses.replace(cpu, model_batch_size=4), separate_nodes=False)  # batched
    assert not fused_stages(dataclasses.replace(cpu, stages="separate"), separate_nodes=False)
    assert fused_stages(dataclasses.replace(cpu, screen=object()), separate_nodes=False)
    assert not fused_stages(dataclasses.replace(cpu, sharding=ShardSettings(devices_per_job=2)),
                            separate_nodes=False)
    assert fused_stages(dataclasses.replace(cpu, stages="fused", resources=Resources(num_gpus_per_actor=1.0)),
                        separate_nodes=True)
    assert ShardSettings().enabled is False


def test_fused_and_separate_stages_give_the_same_outputs_and_rows(ray_session, tmp_path):
    from foldray.actors.batch import run_batch
    from foldray.jobs import predict_batch

    jobs = [{"dialect": "alphafold3", "version": 2, "name": f"trp_{i}", "modelSeeds": [1],
             "sequences": [{"protein": {"id": "A", "sequence": seq}}]}
            for i, seq in enumerate(["NLYIQWLKDGGPSSGRPPPS", "GRPPPSNLYIQW"])]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    rows = {}
    for stages in ("fused", "separate", "fused-batched"):
        flags = predict_batch.build_parser().parse_args([
            "--inputs", str(tmp_path / "jobs.json"), "--out", str(tmp_path / stages), "--samples", "1",
            "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.5", "--num-cpus-per-worker",
            "0.5", "--cpu-workers", "1-1", "--actors", "1-1", "--quiet", "--stages", stages.split("-")[0],
            "--model-batch-size", "2" if stages.endswith("batched") else "1"])
        result = run_batch(predict_batch.settings_from(flags))
        assert result.problem is None
        rows[stages] = [{key: row[key] for key in ROW_KEYS} for row in result.rows]
        assert all(row["featurize_seconds"] > 0 and row["model_seconds"] > 0 and row["write_seconds"] > 0
                   for row in result.rows)
    assert rows["fused"] == rows["separate"] and {r["status"] for r in rows["fused"]} == {"ok"}
    # both jobs in one forward pass (FusedBatchStage): the same results to fp32 rounding
    for batched, alone in zip(rows["fused-batched"], rows["fused"], strict=True):
        assert batched["status"] == "ok" and batched["n_tokens"] == alone["n_tokens"]
        assert abs(batched["ranking_score"] - alone["ranking_score"]) < 1e-4
        assert abs(batched["mean_plddt"] - alone["mean_plddt"]) < 1e-3
    for job in jobs:
        name = job["name"]
        fused = (tmp_path / "fused" / name / f"{name}_model.cif").read_text()
        assert fused == (tmp_path / "separate" / name / f"{name}_model.cif").read_text()


def test_fused_actors_take_small_jobs_several_to_a_block(ray_session):
    from foldray.actors.batch import Pools, _block_rows

    fused = BatchSettings(inputs=(), out="/x", pools=Pools(actors=(1, 2)))
    assert _block_rows(fused, 200, 40) == 8          # tiny jobs: 25 tasks, not 200
    assert _block_rows(fused, 200, 300) == 1         # real-size jobs: progress job by job
    assert _block_rows(fused, 12, 40) == 1           # few jobs: every actor gets several blocks
    assert _block_rows(dataclasses.replace(fused, stages="separate"), 200, 40) == 1


def test_model_batch_size_auto_batches_on_gpus_only():
    from foldray.jobs import predict_batch, screen

    def resolved(parser, *flags):
        return predict_batch.model_batch_size(parser.parse_args(list(flags)))

    assert resolved(predict_batch.build_parser()) == 1
    assert resolved(predict_batch.build_parser(), "--model-batch-size", "auto") == 1
    assert resolved(predict_batch.build_parser(), "--model-batch-size", "auto",
                    "--num-gpus-per-actor", "1") == 8
    target = ["--target", "t.json", "--ligands", "l.smi", "--out", "o"]
    assert resolved(screen.build_parser(), *target) == 1                        # screens: auto
    assert resolved(screen.build_parser(), *target, "--num-gpus-per-actor", "0.5") == 8
    assert resolved(screen.build_parser(), *target, "--model-batch-size", "3") == 3


def test_model_actor_threads_follow_its_cpus():
    """A reused worker keeps the thread pool it started with; the model actor sets torch's
    threads to its CPUs (none assigned: left alone)."""
    import torch

    from foldray.actors.predict_stage import _match_threads_to_cpus

    before = torch.get_num_threads()
    try:
        _match_threads_to_cpus({"CPU": 1.0})
        assert torch.get_num_threads() == 1
        _match_threads_to_cpus({"CPU": 2.0, "GPU": 1.0})
        assert torch.get_num_threads() == 2
        _match_threads_to_cpus({})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
