"""Adaptive LayerNorm (Algorithm 26): the fused Triton core (interpreted, fp32) against the
PyTorch reference, forward and gradients, and the AdaLN module forced to Triton."""

from __future__ import annotations

import pytest
import torch

from foldray import kernels
from foldray.model.primitives import AdaLN

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("a_shape", "s_shape"), [((3, 7, 21), (3, 7, 10)), ((2, 5, 19), (5, 10))])
def test_ada_layer_norm_matches_reference(a_shape, s_shape):
    g = torch.Generator().manual_seed(sum(a_shape))
    c_a, c_s = a_shape[-1], s_shape[-1]
    a = torch.randn(a_shape, generator=g).requires_grad_()
    s = torch.randn(s_shape, generator=g).requires_grad_()          # second case broadcasts s
    norm_w = torch.randn(c_s, generator=g).requires_grad_()
    scale_w = torch.randn(c_a, c_s, generator=g).requires_grad_()
    scale_b = torch.randn(c_a, generator=g).requires_grad_()
    shift_w = torch.randn(c_a, c_s, generator=g).requires_grad_()
    inputs = [a, s, norm_w, scale_w, scale_b, shift_w]
    grad_y = torch.randn(a_shape, generator=g)
    results = {}
    for mode in ("torch", "triton"):
        with kernels.use(mode):
            y = kernels.ada_layer_norm(a, s, norm_w, None, scale_w, scale_b, shift_w)
        results[mode] = (y, torch.autograd.grad(y, inputs, grad_y))
    torch.testing.assert_close(results["triton"][0], results["torch"][0], **TOL)
    for got, ref in zip(results["triton"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(got, ref, **TOL)


def _ada() -> AdaLN:
    torch.manual_seed(0)
    ada = AdaLN(23, 6)
    for param in ada.parameters():
        torch.nn.init.normal_(param, std=0.5)
    return ada


def test_ada_ln_module_with_triton_matches_default():
    ada = _ada()
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 9, 23, generator=g).requires_grad_()
    s = torch.randn(2, 9, 6, generator=g).requires_grad_()
    inputs = [a, s, *ada.parameters()]
    grad_y = torch.randn(2, 9, 23, generator=g)
    results = {}
    for mode in ("torch", "triton"):
        with kernels.use(mode):
            y = ada(a, s)
        results[mode] = (y, torch.autograd.grad(y, inputs, grad_y))
    torch.testing.assert_close(results["triton"][0], results["torch"][0], **TOL)
    for got, ref in zip(results["triton"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(got, ref, **TOL)


def test_ada_ln_default_path_is_the_old_expression_bit_for_bit():
    ada = _ada()
    g = torch.Generator().manual_seed(4)
    a, s = torch.randn(4, 23, generator=g), torch.randn(4, 6, generator=g)
    s_n = torch.nn.functional.layer_norm(s, (6,), ada.norm_s.weight, None, ada.norm_s.eps)
    a_n = torch.nn.functional.layer_norm(a, (23,), None, None, ada.norm_a.eps)
    expected = torch.sigmoid(ada.scale(s_n)) * a_n + ada.shift(s_n)
    with kernels.use("torch"):
        assert torch.equal(ada(a, s), expected)
    assert set(ada.state_dict()) == {"norm_s.weight", "scale.weight", "scale.bias", "shift.weight"}
