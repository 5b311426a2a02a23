"""Algorithms 8-10: MsaModule, OuterProductMean, MSAPairWeightedAveraging (real MSA inputs)."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from foldray.features.batch import collate, pad_features
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.model.config import ModelConfig
from foldray.model.msa import (
    MSA_FEATURES,
    MsaModule,
    MSAPairWeightedAveraging,
    OuterProductMean,
    sample_msa_rows,
)
from tests.data_paths import INPUTS

CONFIG = ModelConfig.tiny()
MSA_CONFIG = dataclasses.replace(CONFIG.msa, n_block=2)   # a full block and the last block
C_Z, C_M, C_S_INPUTS = CONFIG.c_z, MSA_CONFIG.c_m, CONFIG.c_s_inputs


TOKEN_FEATURES = ("msa", "has_deletion", "deletion_value", "restype", "asym_id")


def featurize(name: str, max_msa_rows: int, tokens: list[int] | None = None) -> dict:
    """The MSA-module features of a real job, optionally restricted to some tokens (this
    2-core CI machine runs the tiny model at ~200 tokens in seconds per call, not ms)."""
    path = Path(INPUTS / f"{name}.json")
    job = parse_af3_json(path.read_text(), source=str(path))[0]
    features = featurize_job(job, max_msa_rows=max_msa_rows).features
    out = {name: features[name] for name in TOKEN_FEATURES}
    if tokens is not None:
        out = {name: x[..., tokens] if x.ndim == 2 and name != "restype" else x[tokens]
               for name, x in out.items()}
    return out


@pytest.fixture(scope="module")
def myoglobin():
    """102m: myoglobin's real MSA (with deletions); residues 61-90 and 10 heme tokens
    (gap-only MSA columns, another chain)."""
    features = featurize("102m", max_msa_rows=10, tokens=[*range(60, 90), *range(154, 164)])
    assert features["msa"].shape == (10, 40) and features["has_deletion"].sum() > 0
    assert len(set(features["asym_id"].tolist())) == 2
    return features


@pytest.fixture(scope="module")
def small():
    return featurize("tiny_protein_ligand_smiles", max_msa_rows=10)   # 35 tokens, 2 rows


def make(seed=0, config=MSA_CONFIG):
    torch.manual_seed(seed)
    module = MsaModule(C_Z, C_S_INPUTS, config, CONFIG.pairformer)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


def trunk_inputs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, n, C_Z, generator=g), torch.randn(1, n, C_S_INPUTS, generator=g)


def embed_pad(x, n, seed=7):
    """Put [1, n_real, ..] token tensors into random garbage of token size n."""
    n_real = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    if x.dim() == 4:   # pair
        out = torch.randn(1, n, n, x.shape[-1], generator=g)
        out[:, :n_real, :n_real] = x
    else:
        out = torch.randn(1, n, x.shape[-1], generator=g)
        out[:, :n_real] = x
    return out


def run(module, batch, z, s_inputs, **kwargs):
    with torch.no_grad():
        return module(batch, z, s_inputs, batch["token_mask"], **kwargs)


def test_shapes_and_last_block_has_no_msa_stack(myoglobin):
    module = make()
    batch = collate([myoglobin], token_buckets=None)
    n = batch["token_mask"].shape[1]
    z, s_inputs = trunk_inputs(n)
    out = run(module, batch, z, s_inputs)
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, z, atol=1e-3)
    assert module.blocks[0].pair_weighted_averaging is not None
    assert module.blocks[-1].pair_weighted_averaging is None
    assert module.blocks[-1].msa_transition is None


def test_embedding_equals_linear_over_the_34_msa_features(myoglobin):
    module = make()
    batch = collate([myoglobin], token_buckets=None)
    s_inputs = trunk_inputs(batch["token_mask"].shape[1])[1]
    one_hot = F.one_hot(batch["msa"].long(), 32).float()
    f = torch.cat([one_hot, batch["has_deletion"][..., None], batch["deletion_value"][..., None]], -1)
    assert f.shape[-1] == 34
    expected = module.embed_msa(f) + module.embed_s(s_inputs)[:, None]
    with torch.no_grad():
        assert torch.allclose(module.embed(batch, s_inputs), expected, atol=1e-5)


def test_token_and_msa_row_padding_invariance(myoglobin):
    module = make()
    alone = collate([myoglobin], token_buckets=None)
    n_real, n_msa = alone["token_mask"].shape[1], alone["msa"].shape[1]
    z, s_inputs = trunk_inputs(n_real)
    expected = run(module, alone, z, s_inputs)
    # 40 -> 64 tokens and 10 -> 16 MSA rows; padding holds garbage
    padded = collate([pad_features(myoglobin, n_token=n_real, n_atom=0, n_msa=n_msa + 6)],
                     token_buckets=(64,))
    n_pad = padded["token_mask"].shape[1]
    assert n_pad == 64 and padded["msa_mask"].shape[1] == n_msa + 6
    padded["has_deletion"][:, n_msa:] = 1.0      # masked rows with content must not matter
    padded["msa"][:, n_msa:] = 3
    out = run(module, padded, embed_pad(z, n_pad), embed_pad(s_inputs, n_pad))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :n_real, :n_real], expected, atol=1e-5)


def test_batched_samples_match_single_samples(myoglobin, small):
    module = make()
    singles, zs, ss = [], [], []
    for i, features in enumerate((myoglobin, small)):
        batch = collate([features], token_buckets=None)
        z, s_inputs = trunk_inputs(batch["token_mask"].shape[1], seed=i)
        singles.append(run(module, batch, z, s_inputs))
        zs.append(z)
        ss.append(s_inputs)
    batch = collate([myoglobin, small], token_buckets=None)
    n = batch["token_mask"].shape[1]
    z = torch.cat([embed_pad(x, n) for x in zs])
    s_inputs = torch.cat([embed_pad(x, n) for x in ss])
    out = run(module, batch, z, s_inputs)
    for i, single in enumerate(singles):
        m = single.shape[1]
        assert torch.allclose(out[i, :m, :m], single[0], atol=1e-5)


def test_chunked_equals_unchunked(myoglobin):
    module = make()
    batch = collate([myoglobin], token_buckets=None)
    z, s_inputs = trunk_inputs(batch["token_mask"].shape[1])
    full = run(module, batch, z, s_inputs)
    chunked = run(module, batch, z, s_inputs, chunk_size=7)
    assert torch.allclose(full, chunked, atol=1e-5)


def test_msa_row_order_does_not_matter_and_sampling_picks_real_rows(myoglobin):
    module = make()
    batch = collate([myoglobin], token_buckets=None)
    z, s_inputs = trunk_inputs(batch["token_mask"].shape[1])
    expected = run(module, batch, z, s_inputs)
    order = torch.randperm(batch["msa"].shape[1], generator=torch.Generator().manual_seed(3))
    shuffled = {**batch, **{k: batch[k][:, order] for k in MSA_FEATURES}}
    assert torch.allclose(run(module, shuffled, z, s_inputs), expected, atol=1e-5)
    # n_sample >= rows keeps them all (in random order): same result
    all_rows = run(module, batch, z, s_inputs, n_sample=50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(all_rows, expected, atol=1e-5)
    # sampling from 10 real + 6 padding rows: only real rows, no repeats
    padded = pad_features(myoglobin, n_token=len(myoglobin["restype"]), n_atom=0, n_msa=16)
    padded = collate([padded], token_buckets=None)
    padded["msa"][:, :10] = torch.arange(10, dtype=torch.int8)[None, :, None]  # tag real rows
    picks = set()
    for seed in range(20):
        sub = sample_msa_rows(padded, 4, torch.Generator().manual_seed(seed))
        assert sub["msa"].shape[1] == 4 and sub["msa_mask"].any(-1).all()
        tags = sub["msa"][0, :, 0].tolist()
        assert len(set(tags)) == 4
        picks.update(tags)
    assert picks == set(range(10))   # uniform over real rows: all get picked


def test_deterministic_and_gradients_reach_every_parameter(myoglobin):
    module = make()
    batch = collate([myoglobin], token_buckets=None)
    z, s_inputs = trunk_inputs(batch["token_mask"].shape[1])
    assert torch.equal(run(module, batch, z, s_inputs), run(module, batch, z, s_inputs))
    module.train()
    out = module(batch, z.requires_grad_(), s_inputs, batch["token_mask"],
                 checkpoint_activations=True)
    out.square().mean().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_outer_product_mean_matches_masked_mean_and_chunks():
    torch.manual_seed(0)
    opm = OuterProductMean(C_M, C_Z, c_hidden=5).double()
    m = torch.randn(2, 7, 9, C_M, dtype=torch.float64)
    mask = torch.rand(2, 7, 9) > 0.3
    a = opm.a(opm.norm(m)) * mask[..., None]
    b = opm.b(opm.norm(m)) * mask[..., None]
    outer = torch.einsum("...sic,...sjd->...ijcd", a, b).flatten(-2)
    count = torch.einsum("...si,...sj->...ij", mask.double(), mask.double())
    expected = opm.out(outer) / (1e-3 + count[..., None])
    with torch.no_grad():
        assert torch.allclose(opm(m, mask), expected, atol=1e-10)
        assert torch.allclose(opm(m, mask, chunk_size=2), expected, atol=1e-10)
        # a masked row, whatever it holds, changes nothing
        m2 = m.clone()
        m2[0, 3] = torch.where(mask[0, 3, :, None], m2[0, 3], 100.0)
        assert torch.allclose(opm(m2, mask), expected, atol=1e-10)


def test_pair_weighted_averaging_matches_formula():
    torch.manual_seed(0)
    pwa = MSAPairWeightedAveraging(C_M, C_Z, c_hidden=3, n_head=2).double()
    m = torch.randn(1, 4, 9, C_M, dtype=torch.float64)
    z = torch.randn(1, 9, 9, C_Z, dtype=torch.float64)
    token_mask = torch.arange(9)[None] < 7
    ml = pwa.norm_m(m)
    v = pwa.v(ml).unflatten(-1, (2, 3))
    b = pwa.bias(pwa.norm_z(z)).masked_fill(~token_mask[:, None, :, None], float("-inf"))
    w = torch.softmax(b, dim=-2)                                   # over j
    o = torch.einsum("bijh,bsjhc->bsihc", w, v).flatten(-2)
    expected = pwa.out(torch.sigmoid(pwa.gate(ml)) * o)
    with torch.no_grad():
        assert torch.allclose(pwa(m, z, token_mask), expected, atol=1e-10)
