"""Triangle multiplicative update kernels (interpreted Triton, fp32) against their PyTorch
references, forward and gradients, and the modules with kernels forced to Triton."""

from __future__ import annotations

import pytest
import torch

from foldray import kernels
from foldray.model.triangle import TriangleMultiplicationIncoming, TriangleMultiplicationOutgoing

TOL = dict(rtol=1e-4, atol=1e-5)


def _both_modes(fn, inputs: list[torch.Tensor], seed: int = 7) -> dict[str, tuple]:
    """mode -> (output, grads of `inputs`) for kernels forced to torch and to triton."""
    results = {}
    for mode in ("torch", "triton"):
        with kernels.use(mode):
            y = fn()
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        results[mode] = (y, torch.autograd.grad(y, inputs, grad_y))
    return results


def _assert_same(results: dict[str, tuple]) -> None:
    torch.testing.assert_close(results["triton"][0], results["torch"][0], **TOL)
    for got, ref in zip(results["triton"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(got, ref, **TOL)


@pytest.mark.parametrize(("feature_dim", "with_mask"), [(-1, True), (-3, True), (-1, False)])
def test_gated_linear_matches_reference(feature_dim, with_mask):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, 19, generator=g).requires_grad_()             # 35 rows: 3 row tiles
    w_gate = torch.randn(22, 19, generator=g).requires_grad_()              # 22 outputs: 2 col tiles
    w_proj = torch.randn(22, 19, generator=g).requires_grad_()
    mask = torch.rand(2, 5, 7, generator=g) > 0.3 if with_mask else None
    results = _both_modes(lambda: kernels.gated_linear(x, w_gate, w_proj, mask, feature_dim),
                          [x, w_gate, w_proj])
    _assert_same(results)
    out = results["triton"][0]
    expected_shape = (2, 5, 7, 22) if feature_dim == -1 else (2, 22, 5, 7)
    assert out.shape == results["torch"][0].shape == expected_shape
    assert out.is_contiguous()           # feature_dim=-3 is written channel-first, not moved
    if with_mask:
        assert out.movedim(feature_dim, -1)[~mask].abs().max() == 0


@pytest.mark.parametrize("affine", [True, False])
def test_gated_norm_linear_matches_reference(affine):
    g = torch.Generator().manual_seed(5)
    # p as the einsum makes it: channel-first [*, c_h, rows, N] moved to the last dim (strided)
    p = torch.randn(2, 11, 5, 7, generator=g).movedim(-3, -1).requires_grad_()   # [2, 5, 7, 11]
    z = torch.randn(2, 5, 7, 21, generator=g).requires_grad_()
    norm_w = torch.randn(11, generator=g).requires_grad_() if affine else None
    norm_b = torch.randn(11, generator=g).requires_grad_() if affine else None
    w_out = torch.randn(21, 11, generator=g).requires_grad_()
    w_gate = torch.randn(21, 21, generator=g).requires_grad_()
    inputs = [t for t in (p, z, norm_w, norm_b, w_out, w_gate) if t is not None]
    results = _both_modes(lambda: kernels.gated_norm_linear(p, z, norm_w, norm_b, w_out, w_gate, 1e-5),
                          inputs)
    _assert_same(results)
    assert results["triton"][0].shape == (2, 5, 7, 21)


def _module(cls, c_z: int = 13, c_hidden: int = 9):
    torch.manual_seed(0)
    module = cls(c_z, c_hidden)
    for param in module.parameters():     # non-trivial LayerNorm affines too
        torch.nn.init.normal_(param, std=0.5)
    return module


def _pair(n: int = 7, c_z: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, n, n, c_z, generator=g)
    mask = torch.ones(2, n, n, dtype=torch.bool)
    mask[1, -2:, :] = mask[1, :, -2:] = False                               # padded tokens
    return z, mask


@pytest.mark.parametrize(("cls", "chunk_size"), [(TriangleMultiplicationOutgoing, None),
                                                 (TriangleMultiplicationIncoming, 3)])
def test_module_with_triton_matches_default(cls, chunk_size):
    module = _module(cls)
    z, mask = _pair()
    z.requires_grad_()
    inputs = [z, *module.parameters()]
    _assert_same(_both_modes(lambda: module(z, mask, chunk_size=chunk_size), inputs))


@pytest.mark.parametrize("cls", [TriangleMultiplicationOutgoing, TriangleMultiplicationIncoming])
def test_default_path_is_the_old_expression(cls):
    """The torch path computes what the module computed before the ops existed (to rounding:
    it now projects channel-first, W @ z^T, so the batched matmul reads contiguous memory)."""
    module = _module(cls)
    z, mask = _pair()
    zn = module.norm_in(z)
    ab = torch.sigmoid(module.ab_gate(zn)) * module.ab(zn) * mask[..., None].to(zn.dtype)
    a, b = ab.movedim(-1, -3).chunk(2, dim=-3)
    left, right = (a, b.transpose(-1, -2)) if module.outgoing else (a.transpose(-1, -2), b)
    p = (left @ right).movedim(-3, -1)
    expected = torch.sigmoid(module.gate(zn)) * module.out(module.norm_out(p))
    with kernels.use("torch"):
        torch.testing.assert_close(module(z, mask), expected, rtol=1e-6, atol=1e-6)
