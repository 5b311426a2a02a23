"""predict-batch sharding (`--devices-per-job N --shard-above TOKENS`) on a real Ray: jobs
above the threshold run on N gloo workers in a placement group, kept across jobs, and give
the coordinates one device gives; a job the memory plan cannot fit is its own error row.

Tiny model, 2 samples (one per worker), 2 steps, 1 recycle; 2 workers of 0.25 CPU each
(the session Ray has 2 CPUs). Three protein jobs: 12 tokens (below the threshold), 30
(sharded) and 60 (sharded, but given a memory per device between the two plans' needs).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq

from foldray.actors.predict_rows import PENDING, FeaturizedSeeds, PredictedJob, result_row
from foldray.features.pipeline import featurize_seeds
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.cli import main
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.parallel.plan import CHUNK_CHOICES, SAFETY, ShardSettings, peak_bytes
from foldray.predictor import Predictor, PredictSettings

SEQUENCE = "NLYIQWLKDGGPSSGRPPPSAWVKHGRELTMQDFYSNLYIQWLKDGGPSSGRPPPSAWVK"
SIZES = {"small": 12, "medium": 30, "large": 60}
SHARD_ABOVE, WORLD, SEED = 20, 2, 5
SETTINGS = PredictSettings(n_sample=2, n_step=2, n_cycle=1)


def job_json(name: str) -> dict:
    return {"dialect": "alphafold3", "version": 2, "name": name, "modelSeeds": [SEED],
            "sequences": [{"protein": {"id": "A", "sequence": SEQUENCE[:SIZES[name]]}}]}


def memory_between() -> int:
    """Bytes per device the medium job's plan fits in and the large job's does not."""
    config = ModelConfig.tiny()

    def least(n: int) -> float:
        return SAFETY * min(peak_bytes(n, config, world=WORLD, chunk_size=c, n_sample=SETTINGS.n_sample)
                            for c in CHUNK_CHOICES)

    fits, too_big = least(SIZES["medium"]), least(SIZES["large"])
    assert fits < too_big
    return int(math.sqrt(fits * too_big))


def featurized_row(name: str) -> dict:
    (job,) = parse_af3_json(json.dumps(job_json(name)), source=f"{name}.json")
    by_seed = featurize_seeds(job, (SEED,))
    return result_row(PENDING, payload=FeaturizedSeeds(by_seed), name=name, source=f"{name}.json",
                      safe_name=name, n_tokens=SIZES[name])


def test_sharded_stage_equals_one_device_and_plans_memory(ray_session):
    """The stage itself (its workers in a placement group): the sharded job's coordinates
    equal one device's within 1e-5, the workers are kept for the next sharded job, a job
    below the threshold passes through untouched, and a job the plan cannot fit is its
    error row naming its tokens and the memory."""
    from foldray.actors.sharded_predict_stage import SHARDED, ShardedPredictStage, restore_pending

    rows = {name: featurized_row(name) for name in SIZES}
    sharding = ShardSettings(devices_per_job=WORLD, shard_above=SHARD_ABOVE,
                             memory_per_device=memory_between())
    stage = ShardedPredictStage(None, "tiny", RuntimeConfig(), SETTINGS, sharding, max_devices=WORLD,
                                num_cpus=0.25, num_gpus=0.0, placement_timeout_s=120.0)
    try:
        out = {name: stage(dict(row)) for name, row in rows.items()}
        group = stage._group
        again = stage(dict(rows["medium"]))     # the next sharded job: the same workers
        assert group is not None and stage._group is group
    finally:
        stage.close()
    for first, second in zip(out["medium"]["payload"].samples, again["payload"].samples, strict=True):
        np.testing.assert_array_equal(first.coords, second.coords)
    assert out["small"]["status"] == PENDING and isinstance(out["small"]["payload"], FeaturizedSeeds)
    assert out["large"]["status"] == "error", out["large"]
    error = out["large"]["error"]
    assert error.startswith("large.json: large: predict: MemoryPlanError: job 'large' (60 tokens)"), error
    assert "per device" in error and ("GB" in error or "MB" in error)
    medium = out["medium"]
    assert medium["status"] == SHARDED and restore_pending(medium)["status"] == PENDING
    predicted: PredictedJob = medium["payload"]
    _, expected = Predictor.load(None, config="tiny").predict_featurized(rows["medium"]["payload"].by_seed,
                                                                        SETTINGS)
    assert len(predicted.samples) == len(expected) == SETTINGS.n_sample
    for got, want in zip(predicted.samples, expected, strict=True):
        np.testing.assert_allclose(got.coords, want.coords, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.atom_plddt, want.atom_plddt, rtol=1e-5, atol=1e-4)
    assert medium["ranking_score"] is not None and medium["model_seconds"] > 0


def test_predict_batch_shards_big_jobs_and_fails_only_the_one_that_cannot_fit(ray_session, tmp_path):
    """Through the CLI: the small job takes the normal path, the medium one the sharded
    stage, both written `ok`; the large one is its located memory error row."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in SIZES:
        (inputs / f"{name}.json").write_text(json.dumps(job_json(name)))
    gb = memory_between() / 1e9
    code = main(["predict-batch", "--inputs", str(inputs), "--out", str(out), "--samples", "2",
                 "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.25",
                 "--num-cpus-per-worker", "0.25", "--cpu-workers", "1-1", "--actors", "1-1", "--quiet",
                 "--devices-per-job", str(WORLD), "--shard-above", str(SHARD_ABOVE),
                 "--memory-per-device", f"{gb!r}"])
    rows = {r["name"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert code == 2
    statuses = {n: r["status"] for n, r in rows.items()}
    assert statuses == {"small": "ok", "medium": "ok", "large": "error"}, rows
    assert "MemoryPlanError: job 'large' (60 tokens)" in rows["large"]["error"]
    assert rows["medium"]["actor_id"] != rows["small"]["actor_id"]   # the sharded stage ran it
    for name in ("small", "medium"):
        assert (out / name / f"{name}_model.cif").exists()
        assert rows[name]["ranking_score"] is not None


def test_predict_devices_auto_plans_each_job(tmp_path, capsys):
    """`foldray predict --devices auto`: a small job fits one device (no workers started)
    and is written; with too little memory it is one error line naming its tokens."""
    job = tmp_path / "small.json"
    job.write_text(json.dumps(job_json("small")))
    fast = ["--samples", "2", "--steps", "2", "--recycles", "1", "--quiet", "--devices", "auto"]
    assert main(["predict", str(job), "--out", str(tmp_path / "ok"), *fast]) == 0
    assert (tmp_path / "ok" / "small" / "small_model.cif").exists()
    capsys.readouterr()
    code = main(["predict", str(job), "--out", str(tmp_path / "tight"), *fast, "--memory-per-device", "1e-6"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "devices: job 'small' (12 tokens) does not fit even over" in err, err
    assert not (tmp_path / "tight" / "small").exists()
