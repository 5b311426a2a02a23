"""Triton flash attention (interpreted, fp32) against the PyTorch reference, forward and
gradients of q, k, v and bias, for the shapes the model uses."""

from __future__ import annotations

import pytest
import torch

from foldray import kernels

TOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _compare(q_shape, k_shape, c, bias_shape=None, mask=None, seed=0):
    """Forward and gradients of both implementations on the same inputs and output grad."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*q_shape, c, generator=g).requires_grad_()
    k = torch.randn(*k_shape, c, generator=g).requires_grad_()
    v = torch.randn(*k_shape, c, generator=g).requires_grad_()
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g).requires_grad_()
    inputs = [t for t in (q, k, v, bias) if t is not None]
    results = {}
    grad_out = None
    for mode in ("torch", "triton"):
        with kernels.use(mode):
            out = kernels.attention(q, k, v, bias, mask)
        grad_out = torch.randn(out.shape, generator=g) if grad_out is None else grad_out
        results[mode] = (out, torch.autograd.grad(out, inputs, grad_out))
    (ref, ref_grads), (got, got_grads) = results["torch"], results["triton"]
    assert got.shape == ref.shape
    assert _rel(got, ref) < TOL
    for name, a, b in zip("q k v bias".split(), got_grads, ref_grads, strict=False):
        assert a.shape == b.shape, name
        assert _rel(a, b) < TOL, (name, _rel(a, b))
    return got


def test_masked_keys_odd_lengths_head_dim_24_and_a_fully_masked_row():
    # Q=37, K=21: neither a multiple of the 16-wide tiles; batch 1 has every key masked
    mask = torch.rand(2, 21, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[1] = False
    out = _compare((2, 3, 37), (2, 3, 21), 24, bias_shape=(2, 3, 37, 21), mask=mask)
    assert torch.isfinite(out).all()


def test_triangle_bias_shared_over_rows_reduces_its_gradient():
    # triangle attention: q [R, H, N, c], bias [1, H, N, N] shared by all R rows, mask [R, N]
    mask = torch.rand(5, 19, generator=torch.Generator().manual_seed(2)) > 0.2
    _compare((5, 2, 19), (5, 2, 19), 16, bias_shape=(1, 2, 19, 19), mask=mask)


def test_bias_with_fewer_dims_shared_over_samples_head_dim_32():
    # diffusion: q [N_sample, H, N, c] with the trunk's bias [H, N, N] (no sample axis), no mask
    _compare((3, 2, 20), (3, 2, 20), 32, bias_shape=(2, 20, 20))


def test_local_window_blocks_without_bias():
    # atom attention: [B, H, n_q, c] queries against [B, H, n_k, c] windows, head dim 64
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[2, 25:] = False
    _compare((3, 1, 8), (3, 1, 40), 64, mask=mask)


def test_no_grad_inputs_still_match():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 17, 16, generator=g) for _ in range(3))
    bias = torch.randn(2, 17, 17, generator=g)
    with kernels.use("triton"):
        got = kernels.attention(q, k, v, bias)
    assert _rel(got, kernels.attention_reference(q, k, v, bias)) < TOL


@pytest.mark.parametrize("n_head", [2])
def test_triangle_attention_module_matches_with_kernels_forced(n_head):
    """The model's triangle attention (Algorithm 14) is unchanged by the kernel, grads too."""
    from foldray.model.triangle import TriangleAttentionStartingNode

    torch.manual_seed(0)
    module = TriangleAttentionStartingNode(c_z=12, c_hidden=24, n_head=n_head)
    z = torch.randn(1, 9, 9, 12)
    pair_mask = torch.ones(1, 9, 9, dtype=torch.bool)
    pair_mask[:, :, 7:] = False
    outs = {}
    for mode in ("torch", "triton"):
        module.zero_grad()
        with kernels.use(mode):
            out = module(z, pair_mask)
        out.square().sum().backward()
        outs[mode] = (out.detach(), module.bias.weight.grad.clone())
    assert _rel(outs["triton"][0], outs["torch"][0]) < TOL
    assert _rel(outs["triton"][1], outs["torch"][1]) < TOL
