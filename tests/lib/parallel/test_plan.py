"""The memory plan of a sharded prediction (foldray.parallel.plan): arithmetic only."""

from __future__ import annotations

import json

import pytest

from foldray.model.config import ModelConfig
from foldray.parallel.plan import (
    SAFETY,
    MemoryPlanError,
    pair_stack_bytes,
    peak_bytes,
    plan_memory,
)
from tests.data_paths import REPO

RESULTS = REPO / "benchmarks" / "results"
FULL = ModelConfig.full()


def test_estimate_grows_with_tokens_and_shrinks_with_workers_and_chunks():
    sizes = [64, 128, 256, 512, 1024, 2048, 4096]
    for world in (1, 2, 4):
        peaks = [peak_bytes(n, FULL, world=world) for n in sizes]
        assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    for n in sizes:
        by_world = [pair_stack_bytes(n, FULL, world=w, chunk_size=64) for w in (1, 2, 4, 8)]
        assert by_world == sorted(by_world, reverse=True)
        by_chunk = [pair_stack_bytes(n, FULL, chunk_size=c) for c in (None, 256, 64, 8)]
        assert by_chunk == sorted(by_chunk, reverse=True)
    half = pair_stack_bytes(1024, FULL, dtype_bytes=2)
    assert half * 2 == pytest.approx(pair_stack_bytes(1024, FULL), rel=1e-6)
    assert peak_bytes(1024, FULL, n_sample=1) < peak_bytes(1024, FULL, n_sample=5)   # gathered logits


def test_plan_takes_the_fewest_workers_and_largest_chunk_that_fit():
    n = 1024
    one = plan_memory(n, FULL, available_bytes=10**12, worlds=(1, 2, 4))
    assert (one.world, one.chunk_size) == (1, None)
    # room for 2 workers with small chunks, not for 1 with any chunk
    budget = int(SAFETY * peak_bytes(n, FULL, world=2, chunk_size=64)) + 1
    plan = plan_memory(n, FULL, available_bytes=budget, worlds=(1, 2, 4))
    assert plan.world == 2 and plan.chunk_size is not None and plan.chunk_size >= 64
    assert plan.peak_bytes * SAFETY <= budget
    # CPU workers on one node share the memory: the same budget per worker needs world x it
    shared = plan_memory(n, FULL, available_bytes=budget * 2, worlds=(2,), shared=True)
    assert shared.world == 2 and shared.available_bytes == budget


def test_a_job_that_cannot_fit_names_its_tokens_the_estimate_and_the_memory():
    with pytest.raises(MemoryPlanError) as caught:
        plan_memory(4096, FULL, available_bytes=2 * 10**9, worlds=(1, 2, 4), job="big complex")
    text = str(caught.value)
    assert text.startswith("job 'big complex' (4096 tokens) does not fit even over 4 device(s)")
    assert "2.00 GB is free per device" in text
    with pytest.raises(MemoryPlanError, match="fixed"):   # a given chunk size is kept
        plan_memory(512, FULL, available_bytes=peak_bytes(512, FULL, chunk_size=8) * 2, chunk_size=None,
                    fixed_chunk=True, job="fixed")


def test_pair_stack_estimate_is_within_the_stated_band_of_the_measured_peaks():
    """benchmarks/results/context_parallel-cpu.json: per-worker peak of the full-width
    Pairformer pair stack above the stored z rows (the estimate without them)."""
    rows = json.loads((RESULTS / "context_parallel-cpu.json").read_text())["rows"]
    ratios = []
    for row in rows:
        n, world = row["n_token"], row["world"]
        z_rows = -(-n // world) * n * FULL.c_z * 4
        estimate = pair_stack_bytes(n, FULL, world=world, chunk_size=row["chunk_size"]) - z_rows
        ratios.append(estimate / row["peak_bytes_per_worker"])
    assert min(ratios) > 0.7 and max(ratios) < 1.35, ratios


@pytest.mark.parametrize("name", ["context_parallel-model-cuda.json", "context_parallel-model-cpu16.json"])
def test_whole_estimate_is_never_below_a_measured_sharded_prediction(name):
    """Whole predictions at P = 1, 2, 4 (benchmarks/context_parallel.py --scope model)."""
    path = RESULTS / name
    if not path.exists():
        pytest.skip(f"{path} not measured in this checkout")
    result = json.loads(path.read_text())
    config = result["config"]
    for row in result["rows"]:
        estimate = peak_bytes(row["n_token"], FULL, world=row["world"], chunk_size=config["chunk_size"],
                              n_sample=config["samples"])
        ratio = estimate / row["peak_bytes_per_worker"]
        assert 1.0 <= ratio < 1.45, (row["n_token"], row["world"], ratio)
