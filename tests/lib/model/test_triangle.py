"""Algorithms 12-15: triangle multiplications and triangle attentions."""

import math

import pytest
import torch

from foldray.model.config import ModelConfig
from foldray.model.triangle import (
    TriangleAttentionEndingNode,
    TriangleAttentionStartingNode,
    TriangleMultiplicationIncoming,
    TriangleMultiplicationOutgoing,
)

CONFIG = ModelConfig.tiny()
C_Z = CONFIG.c_z                                  # 24
C_MUL = CONFIG.pairformer.c_hidden_mul            # 16
C_ATT, N_HEAD = CONFIG.pairformer.c_hidden_tri_att, CONFIG.pairformer.n_head_tri   # 8, 2
N = 11                                            # != c_z != heads, so transposes fail


def make(cls):
    torch.manual_seed(0)
    if cls in (TriangleMultiplicationOutgoing, TriangleMultiplicationIncoming):
        module = cls(C_Z, C_MUL)
    else:
        module = cls(C_Z, C_ATT, N_HEAD)
    for p in module.parameters():   # non-trivial LayerNorm affines too
        torch.nn.init.normal_(p, std=0.5)
    return module.eval()


ALL = [TriangleMultiplicationOutgoing, TriangleMultiplicationIncoming,
       TriangleAttentionStartingNode, TriangleAttentionEndingNode]


def random_pair(*batch, n=N, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(*batch, n, n, C_Z, generator=g, dtype=dtype)


def padded_mask(n_real, n, *batch):
    token = torch.arange(n) < n_real
    return (token[:, None] & token[None, :]).expand(*batch, n, n)


# ---- references written straight from the SI formulas (float64, explicit einsums) ----

def reference_multiplication(module, z, mask, outgoing):
    zl = module.norm_in(z)
    ab = torch.sigmoid(module.ab_gate(zl)) * module.ab(zl) * mask[..., None]
    a, b = ab.chunk(2, dim=-1)
    equation = "...ikc,...jkc->...ijc" if outgoing else "...kic,...kjc->...ijc"
    p = torch.einsum(equation, a, b)
    return torch.sigmoid(module.gate(zl)) * module.out(module.norm_out(p))


def reference_attention(module, z, mask, starting):
    zl = module.norm(z)
    h, c = module.n_head, module.c
    q, k, v = (f(zl).unflatten(-1, (h, c)) for f in (module.q, module.k, module.v))
    b = module.bias(zl)                                                   # [*, N, N, H]
    if starting:   # a_ijk = softmax_k(q_ij k_ik + b_jk); keys masked by mask[i, k]
        logits = torch.einsum("...ijhc,...ikhc->...ijkh", q, k) / math.sqrt(c)
        logits = logits + b[..., None, :, :, :]
        key_mask = mask[..., :, None, :, None]
    else:          # a_ijk = softmax_k(q_ij k_kj + b_ki) (SI); keys masked by mask[k, j]
        logits = torch.einsum("...ijhc,...kjhc->...ijkh", q, k) / math.sqrt(c)
        logits = logits + b.transpose(-2, -3)[..., :, None, :, :]
        key_mask = mask.transpose(-1, -2)[..., None, :, :, None]
    a = torch.softmax(logits.masked_fill(~key_mask, float("-inf")), dim=-2)
    equation = "...ijkh,...ikhc->...ijhc" if starting else "...ijkh,...kjhc->...ijhc"
    o = torch.einsum(equation, a, v).flatten(-2)
    return module.out(torch.sigmoid(module.gate(zl)) * o)


@pytest.mark.parametrize("cls", ALL)
def test_matches_si_formula_with_masked_keys(cls):
    module = make(cls).double()
    z = random_pair(2, dtype=torch.float64)
    mask = torch.stack([padded_mask(N, N), padded_mask(8, N)])
    mask[1, 2, 5] = False   # an asymmetric hole: catches mask[i, k] vs mask[k, i] mix-ups
    with torch.no_grad():
        out = module(z, mask)
        if cls in (TriangleMultiplicationOutgoing, TriangleMultiplicationIncoming):
            expected = reference_multiplication(module, z, mask, cls is TriangleMultiplicationOutgoing)
        else:
            expected = reference_attention(module, z, mask, cls is TriangleAttentionStartingNode)
    assert out.shape == z.shape
    real = padded_mask(8, N)
    assert torch.allclose(out[0], expected[0], atol=1e-10)
    assert torch.allclose(out[1][real], expected[1][real], atol=1e-10)


def test_outgoing_and_incoming_differ_and_ending_node_is_not_starting_node():
    z, mask = random_pair(1), padded_mask(N, N, 1)
    out_mul, in_mul = make(TriangleMultiplicationOutgoing), make(TriangleMultiplicationIncoming)
    in_mul.load_state_dict(out_mul.state_dict())
    assert not torch.allclose(out_mul(z, mask), in_mul(z, mask), atol=1e-3)
    start, end = make(TriangleAttentionStartingNode), make(TriangleAttentionEndingNode)
    end.load_state_dict(start.state_dict())
    assert not torch.allclose(start(z, mask), end(z, mask), atol=1e-3)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("chunk_size", [1, 4, N, 64])
def test_chunked_equals_unchunked(cls, chunk_size):
    module = make(cls)
    z = random_pair(2, 1)                       # two leading batch dims
    mask = padded_mask(9, N, 2, 1).clone()
    with torch.no_grad():
        full = module(z, mask)
        chunked = module(z, mask, chunk_size=chunk_size)
    assert torch.allclose(full, chunked, atol=1e-5)


@pytest.mark.parametrize("cls", ALL)
def test_padding_invariance(cls):
    module = make(cls)
    n_real = 7
    z = random_pair(1)                          # padded region holds random garbage
    with torch.no_grad():
        padded = module(z, padded_mask(n_real, N, 1))[:, :n_real, :n_real]
        alone = module(z[:, :n_real, :n_real].contiguous(), padded_mask(n_real, n_real, 1))
    assert torch.isfinite(module(z, padded_mask(n_real, N, 1))).all()
    assert torch.allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("cls", ALL)
def test_deterministic_and_gradients_reach_every_parameter(cls):
    module = make(cls).train()
    z = random_pair(2).requires_grad_()
    mask = padded_mask(9, N, 2)
    out = module(z, mask)
    assert torch.equal(out, module(z, mask))
    out.square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert z.grad.abs().sum() > 0
