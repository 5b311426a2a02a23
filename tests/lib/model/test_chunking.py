"""Pair-stack chunk size chosen from memory (pairformer.auto_chunk_size), and that the
chosen chunking and the in-place inference path leave the model's outputs unchanged."""

from pathlib import Path

import pytest
import torch

from foldray.features.batch import collate
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.model.pairformer import (
    ATTENTION_COPIES,
    PairformerStack,
    auto_chunk_size,
    available_memory,
)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
GIB = 2**30


def attention_transient(rows: int, n: int, n_head: int, n_batch: int = 1) -> int:
    return ATTENTION_COPIES * n_batch * n_head * rows * n * n * 4


def test_small_inputs_are_not_chunked():
    assert auto_chunk_size(16, 128, 4, budget_bytes=GIB) is None
    assert auto_chunk_size(8, 24, 2, budget_bytes=GIB) is None


def test_chunk_fits_the_budget_and_is_a_power_of_two():
    for n in (100, 256, 384, 1024):
        for budget in (64 * 2**20, GIB, 8 * GIB):
            rows = auto_chunk_size(n, 128, 4, budget_bytes=budget)
            assert rows is not None and rows >= 1 and rows & (rows - 1) == 0
            if rows > 1:     # one row may exceed an impossible budget; more rows never do
                assert attention_transient(rows, n, 4) <= budget
            assert attention_transient(2 * rows, n, 4) > min(budget, 4 * n * n * 128 * 4)


def test_less_memory_means_smaller_chunks():
    sizes = [auto_chunk_size(2048, 128, 4, budget_bytes=b) for b in (GIB // 16, GIB, 16 * GIB)]
    assert sizes[0] < sizes[1] <= sizes[2]
    # more samples scored at once (confidence head) share the same budget
    assert auto_chunk_size(2048, 128, 4, n_batch=5, budget_bytes=GIB) < sizes[1]
    assert auto_chunk_size(4096, 128, 4, budget_bytes=1) == 1


def test_default_budget_reads_available_memory():
    free = available_memory("cpu")
    assert 0 < free < 2**50
    rows = auto_chunk_size(4096, 128, 4)     # 4096 tokens: never unchunked on a machine
    assert rows is not None and attention_transient(rows, 4096, 4) <= free // 4


@pytest.fixture(scope="module")
def tiny_batch():
    path = DATA / "inputs" / "tiny_protein_ligand_smiles.json"
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    features = featurize_job(job, with_targets=False).features
    return collate([features], token_buckets=None, atom_buckets=None)


def test_auto_chunking_leaves_the_trunk_unchanged(tiny_batch):
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    model = AlphaFold3(config).eval()
    for p in model.parameters():               # nonzero everywhere, so every path counts
        torch.nn.init.normal_(p, std=0.2)
    n_token = tiny_batch["token_mask"].shape[-1]
    chosen = model.chunk_size(RuntimeConfig(), n_token)
    assert chosen is not None and chosen < n_token, "the tiny input should be chunked by default"
    with torch.no_grad():
        auto = model.run_trunk(tiny_batch, n_cycle=1)
        whole = model.run_trunk(tiny_batch, n_cycle=1, runtime=RuntimeConfig(chunk_size=n_token))
    torch.testing.assert_close(auto.z, whole.z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(auto.s, whole.s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 5])
def test_in_place_inference_equals_the_autograd_path(chunk):
    config = ModelConfig.tiny()
    torch.manual_seed(0)
    stack = PairformerStack(config.c_s, config.c_z, config.pairformer).eval()
    for p in stack.parameters():
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(1)
    s, z = torch.randn(2, 11, config.c_s, generator=g), torch.randn(2, 11, 11, config.c_z, generator=g)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    z_in = z.clone()
    with torch.no_grad():
        s_fast, z_fast = stack(s, z, mask, chunk_size=chunk)
    s_ref, z_ref = stack(s, z, mask, chunk_size=chunk)          # grad enabled: out of place
    assert torch.equal(z, z_in), "the caller's z must not be modified"
    torch.testing.assert_close(z_fast, z_ref.detach(), rtol=1e-5, atol=1e-5)   # fp32 round-off
    torch.testing.assert_close(s_fast, s_ref.detach(), rtol=1e-5, atol=1e-5)
