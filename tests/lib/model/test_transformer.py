"""Algorithms 23-26 and the attention kernel's reference path."""

import torch

from foldray.kernels import attention, mask_to_bias
from foldray.model.config import ModelConfig
from foldray.model.primitives import AdaLN, Transition
from foldray.model.transformer import AttentionPairBias, DiffusionTransformer

torch.manual_seed(0)


def test_attention_matches_explicit_softmax_and_masks_keys():
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    k = torch.randn(2, 3, 7, 4)
    v = torch.randn(2, 3, 7, 4)
    bias = torch.randn(2, 3, 5, 7)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    logits = q @ k.transpose(-1, -2) / 2.0 + bias
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = torch.softmax(logits, -1) @ v
    assert torch.allclose(attention(q, k, v, bias, mask), expected, atol=1e-5)


def test_fully_masked_rows_stay_finite():
    q = k = v = torch.randn(1, 2, 4, 8)
    out = attention(q, k, v, None, torch.zeros(1, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()
    assert mask_to_bias(torch.tensor([True, False]), torch.float16)[1] > -65504


def test_adaln_and_transition_shapes_and_conditioning():
    ada = AdaLN(24, 40)
    a, s = torch.randn(3, 10, 24), torch.randn(3, 10, 40)
    out = ada(a, s)
    assert out.shape == a.shape
    assert not torch.allclose(out, ada(a, s + 1.0))   # the conditioning matters
    assert Transition(24)(a).shape == a.shape


def test_attention_pair_bias_padding_invariance():
    config = ModelConfig.tiny()
    module = AttentionPairBias(config.c_s, None, config.c_z, config.pairformer.n_head).eval()
    n, pad = 11, 5
    a = torch.randn(1, n + pad, config.c_s)
    z = torch.randn(1, n + pad, n + pad, config.c_z)
    mask = torch.arange(n + pad)[None] < n
    padded = module(a, None, z, mask=mask)[:, :n]
    alone = module(a[:, :n], None, z[:, :n, :n], mask=mask[:, :n])
    assert torch.allclose(padded, alone, atol=1e-5)


def test_local_attention_equals_full_attention_when_windows_cover_all_keys():
    torch.manual_seed(1)
    n, n_block = 8, 2
    module = DiffusionTransformer(16, 12, 6, n_block=1, n_head=2)
    a, s = torch.randn(1, n, 16), torch.randn(1, n, 12)
    z = torch.randn(1, n, n, 6)
    key_index = torch.arange(n).expand(n_block, n)            # every block sees all keys
    z_local = z.unflatten(1, (n_block, n // n_block))          # [1, B, q, k, c]
    full = module(a, s, z)
    local = module(a, s, z_local, key_index=key_index)
    assert torch.allclose(full, local, atol=1e-5)


def test_gradients_reach_every_parameter():
    module = DiffusionTransformer(16, 12, 6, n_block=2, n_head=4)
    a = torch.randn(2, 5, 16, requires_grad=True)
    out = module(a, torch.randn(2, 5, 12), torch.randn(2, 5, 5, 6))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
