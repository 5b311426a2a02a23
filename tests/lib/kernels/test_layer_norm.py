"""Fused Triton LayerNorm (interpreted, fp32) against torch's, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from foldray import kernels
from foldray.model.primitives import AdaLN, LayerNorm


@pytest.mark.parametrize(("c", "affine", "with_bias"),
                         [(24, True, True), (19, True, False), (16, False, False)])
def test_layer_norm_matches_torch(c, affine, with_bias):
    g = torch.Generator().manual_seed(c)
    x = torch.randn(3, 7, c, generator=g).requires_grad_()
    w = torch.randn(c, generator=g).requires_grad_() if affine else None
    b = torch.randn(c, generator=g).requires_grad_() if with_bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    grad_y = torch.randn(3, 7, c, generator=g)
    results = {}
    for mode in ("torch", "triton"):
        with kernels.use(mode):
            y = kernels.layer_norm(x, w, b)
        results[mode] = (y, torch.autograd.grad(y, inputs, grad_y))
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-4, atol=1e-5)
    for got, ref in zip(results["triton"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_model_layer_norm_keeps_nn_layer_norm_state_dict():
    ours, theirs = LayerNorm(10), torch.nn.LayerNorm(10)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ada = AdaLN(8, 6)
    assert set(ada.state_dict()) == {"norm_s.weight", "scale.weight", "scale.bias", "shift.weight"}
    torch.manual_seed(0)
    a, s = torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    with kernels.use("torch"):
        ref = ada(a, s)
    with kernels.use("triton"):
        got = ada(a, s)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
