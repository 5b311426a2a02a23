"""The PyTorch attention reference on batched, padded inputs (a group of jobs padded to the
largest): the same result as the dense formula (bias + mask materialized, softmax), without
materializing a bias the size of the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foldray.kernels import attention_reference, mask_to_bias


def _dense(q, k, v, bias, key_mask):
    """The formula spelled out: logits + bias + mask bias, all materialized, then softmax."""
    logits = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if bias is not None:
        full = bias.to(q.dtype)
        if key_mask is not None:
            full = full + mask_to_bias(key_mask, q.dtype)[..., None, None, :]
        logits = logits + full.float()
    elif key_mask is not None:
        logits = logits + mask_to_bias(key_mask, q.dtype)[..., None, None, :].float()
    return (logits.softmax(-1) @ v.float()).to(q.dtype)


def _inputs(q_shape, k_shape, c, bias_shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*q_shape, c, generator=g).to(dtype)
    k = torch.randn(*k_shape, c, generator=g).to(dtype)
    v = torch.randn(*k_shape, c, generator=g).to(dtype)
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g).to(dtype)
    return q, k, v, bias


def _pair_mask(lengths, n):
    """[B, N, N]: tok[i] & tok[k], the pair mask of jobs padded to n tokens."""
    tok = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    return tok[:, :, None] & tok[:, None, :]


TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _check(q, k, v, bias, key_mask):
    got = attention_reference(q, k, v, bias, key_mask)
    want = _dense(q, k, v, bias, key_mask)
    assert got.shape == want.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[q.dtype], rtol=TOL[q.dtype])
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triangle_attention_of_padded_jobs(dtype):
    # q [B, R, H, N, c], bias [B, 1, H, N, N] shared over rows, key mask = pair mask rows [B, R, N]:
    # rows of real tokens share one key vector, padding rows are all False
    b, n, h, c = 3, 9, 2, 8
    q, k, v, bias = _inputs((b, n, h, n), (b, n, h, n), c, (b, 1, h, n, n), dtype)
    mask = _pair_mask([9, 6, 2], n)
    out = _check(q, k, v, bias, mask)
    # a padding row keeps today's meaning: a uniform softmax, the mean of v over all keys
    torch.testing.assert_close(out[1, 7].float(), v[1, 7].float().mean(-2, keepdim=True).expand(h, n, c),
                               atol=TOL[dtype], rtol=TOL[dtype])
    # a chunk of rows that are all padding, and one without a single padding row
    _check(q[:, 7:], k[:, 7:], v[:, 7:], bias, mask[:, 7:])
    _check(q[:, :2], k[:, :2], v[:, :2], bias, mask[:, :2])
    # padding rows scattered among real ones (more runs than are sliced: gathered instead)
    n = 20
    q, k, v, bias = _inputs((1, n, h, n), (1, n, h, n), c, (1, 1, h, n, n), dtype, seed=11)
    tok = torch.arange(n) % 2 == 0
    _check(q, k, v, bias, (tok[:, None] & tok[None, :])[None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_and_window_dims_with_per_job_biases(dtype):
    b, s, h, n, c = 2, 3, 2, 10, 8
    # diffusion token attention: q [B, S, H, N, c], bias [B, 1, H, N, N], mask [B, 1, N]
    q, k, v, bias = _inputs((b, s, h, n), (b, s, h, n), c, (b, 1, h, n, n), dtype, seed=1)
    tok = torch.arange(n)[None, :] < torch.tensor([10, 7])[:, None]
    _check(q, k, v, bias, tok[:, None, :])
    # windowed atom attention in the diffusion: [B, S, blocks, H, q, c] against [.., k, c] windows,
    # bias [B, 1, blocks, H, q, k]; and the trunk's [B, blocks, ...] with a full-size bias
    q, k, v, bias = _inputs((b, s, 4, h, 4), (b, s, 4, h, 12), c, (b, 1, 4, h, 4, 12), dtype, seed=2)
    _check(q, k, v, bias, None)
    _check(q[:, 0], k[:, 0], v[:, 0], bias[:, 0], None)


def test_broadcast_biases_and_masks_of_no_common_form():
    h, n, c = 2, 11, 8
    # a bias without the leading dims (shared by the samples), rows of different masks
    q, k, v, bias = _inputs((3, h, n), (3, h, n), c, (h, n, n), torch.float32, seed=3)
    mask = torch.rand(3, n, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[2] = False
    _check(q, k, v, bias, mask)
    # a shared bias with row masks that are neither one common vector nor all False
    q, k, v, bias = _inputs((2, 5, h, n), (2, 5, h, n), c, (2, 1, h, n, n), torch.float32, seed=5)
    _check(q, k, v, bias, torch.rand(2, 5, n, generator=torch.Generator().manual_seed(6)) > 0.4)
    # keys shared over the batch, every row fully masked, no bias, unbatched
    q, k, v, bias = _inputs((4, h, n), (1, h, n), c, (1, h, n, n), torch.float32, seed=7)
    _check(q, k, v, bias, torch.zeros(4, n, dtype=torch.bool))
    _check(q, k, v, None, torch.rand(4, n, generator=torch.Generator().manual_seed(8)) > 0.5)
    _check(q[0], k[0], v[0], bias[0], None)
    # an empty chunk of rows
    q, k, v, bias = _inputs((2, 0, h, n), (2, 0, h, n), c, (2, 1, h, n, n), torch.float32, seed=10)
    _check(q, k, v, bias, torch.ones(2, 0, n, dtype=torch.bool))
    q, k, v, bias = _inputs((2, 3, 0, h, n), (2, 3, 0, h, n), c, (2, 1, 1, h, n, n), torch.float32)
    _check(q, k, v, bias, _pair_mask([9, 4], n)[:, :3, None, :])


def test_gradients_of_padded_triangle_attention():
    b, n, h, c = 2, 7, 2, 8
    q, k, v, bias = _inputs((b, n, h, n), (b, n, h, n), c, (b, 1, h, n, n), torch.float32, seed=9)
    mask = _pair_mask([7, 4], n)
    grads = []
    for fn in (attention_reference, _dense):
        inputs = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        out = fn(*inputs, mask)
        grads.append(torch.autograd.grad(out.square().sum(), inputs))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_no_bias_the_size_of_the_logits_for_padded_jobs(monkeypatch):
    """The reason for all this: with padding, triangle attention's bias used to grow to
    [B * R, H, N, N] (the whole logits tensor); now each SDPA call gets an [1, H, N, N] bias."""
    sdpa = F.scaled_dot_product_attention
    masks = []

    def spy(q, k, v, attn_mask=None):
        masks.append(tuple(attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    b, n, h, c = 3, 12, 2, 8
    q, k, v, bias = _inputs((b, n, h, n), (b, n, h, n), c, (b, 1, h, n, n), torch.float32)
    attention_reference(q, k, v, bias, _pair_mask([12, 9, 5], n))
    assert masks and all(shape[0] == 1 for shape in masks), masks
    masks.clear()       # diffusion: the per-job bias is not copied for every sample
    q, k, v, bias = _inputs((b, 4, h, n), (b, 4, h, n), c, (b, 1, h, n, n), torch.float32)
    attention_reference(q, k, v, bias, _pair_mask([12, 9, 5], n)[:, :1, :])
    assert masks and all(shape[0] == 1 for shape in masks), masks
