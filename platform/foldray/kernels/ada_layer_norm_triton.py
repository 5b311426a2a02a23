"""The fused core of adaptive LayerNorm in Triton, forward and backward.

Shapes: a, scale, shift [*, c] viewed as rows [R, c] (scale/shift are the Linear outputs,
expanded to a's shape). One program per row: y = sigmoid(scale) * LN(a) + shift with the
statistics in fp32 registers; nothing but y and the per-row mean/rstd is written. The
backward (also Triton, one program per row) recomputes a_hat and sigmoid and writes
da = LN^T(dy * sigmoid(scale)), dscale = dy * a_hat * s(1 - s), dshift = dy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ada_ln_fwd_kernel(A, SC, SH, Y, MEAN, RSTD, n_col, eps, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < n_col
    off = row * n_col + cols
    a = tl.load(A + off, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(a, 0) / n_col
    ac = tl.where(ok, a - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(ac * ac, 0) / n_col + eps)
    sc = tl.load(SC + off, mask=ok, other=0.0).to(tl.float32)
    sh = tl.load(SH + off, mask=ok, other=0.0).to(tl.float32)
    y = tl.sigmoid(sc) * (ac * rstd) + sh
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ada_ln_bwd_kernel(A, SC, DY, MEAN, RSTD, DA, DSC, n_col, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < n_col
    off = row * n_col + cols
    a = tl.load(A + off, mask=ok, other=0.0).to(tl.float32)
    sc = tl.load(SC + off, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + off, mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + row)
    rstd = tl.load(RSTD + row)
    a_hat = tl.where(ok, (a - mean) * rstd, 0.0)
    gate = tl.sigmoid(sc)
    tl.store(DSC + off, (dy * a_hat * gate * (1.0 - gate)).to(DSC.dtype.element_ty), mask=ok)
    g = tl.where(ok, dy * gate, 0.0)                                                  # d a_hat
    da = (g - a_hat * (tl.sum(g * a_hat, 0) / n_col) - tl.sum(g, 0) / n_col) * rstd
    tl.store(DA + off, da.to(DA.dtype.element_ty), mask=ok)


class _FusedAdaLN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, scale: Tensor, shift: Tensor, eps: float) -> Tensor:
        shape = a.shape
        n_col = shape[-1]
        a2 = a.reshape(-1, n_col).contiguous()                                          # [R, c]
        sc2 = scale.reshape(-1, n_col).contiguous()
        sh2 = shift.reshape(-1, n_col).contiguous()
        n_row = a2.shape[0]
        y = torch.empty_like(a2)
        mean = torch.empty(n_row, dtype=torch.float32, device=a.device)
        rstd = torch.empty(n_row, dtype=torch.float32, device=a.device)
        block = triton.next_power_of_2(n_col)
        if n_row:
            _ada_ln_fwd_kernel[(n_row,)](a2, sc2, sh2, y, mean, rstd, n_col, eps, BLOCK_C=block,
                                         num_warps=_warps(block))
        ctx.save_for_backward(a2, sc2, mean, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        a2, sc2, mean, rstd = ctx.saved_tensors
        n_row, n_col = a2.shape
        dy = grad_y.reshape(n_row, n_col).contiguous()
        da, dsc = torch.empty_like(a2), torch.empty_like(sc2)
        block = triton.next_power_of_2(n_col)
        if n_row:
            _ada_ln_bwd_kernel[(n_row,)](a2, sc2, dy, mean, rstd, da, dsc, n_col, BLOCK_C=block,
                                         num_warps=_warps(block))
        shape = ctx.shape
        return da.reshape(shape), dsc.reshape(shape), dy.reshape(shape), None


def _warps(block: int) -> int:
    return min(16, max(1, block // 256))


def fused_ada_layer_norm(a: Tensor, scale: Tensor, shift: Tensor, eps: float = 1e-5) -> Tensor:
    """sigmoid(scale) * LayerNorm(a) + shift over the last dim; scale and shift broadcast to a
    (autograd sums their gradients back over the broadcast dims)."""
    return _FusedAdaLN.apply(a, scale.expand_as(a), shift.expand_as(a), eps)
