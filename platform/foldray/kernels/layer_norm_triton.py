"""Fused LayerNorm in Triton, forward and backward.

Shapes: x [*, c] viewed as rows [R, c]; weight, bias [c] or None. One program normalises
one row in registers (c padded to a power of two with masked loads); the backward computes
dx per row and accumulates dweight/dbias per program over a group of rows, whose partial sums
(a [n_program, c] fp32 buffer) are added up by torch. Statistics are kept in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ln_fwd_kernel(X, Y, W, B, MEAN, RSTD, n_col, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < n_col
    x = tl.load(X + row * n_col + cols, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / n_col
    xc = tl.where(ok, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / n_col + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * n_col + cols, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ln_bwd_kernel(X, DY, DX, W, MEAN, RSTD, DW, DB, n_row, n_col, rows_per_program,
                   HAS_W: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < n_col
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32) if HAS_W else 1.0
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    first = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (first + i).to(tl.int64)
        if row < n_row:
            x = tl.load(X + row * n_col + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * n_col + cols, mask=ok, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            xhat = tl.where(ok, (x - mean) * rstd, 0.0)
            g = dy * w                                                        # d xhat
            dx = (g - xhat * (tl.sum(g * xhat, 0) / n_col) - tl.sum(g, 0) / n_col) * rstd
            tl.store(DX + row * n_col + cols, dx.to(DX.dtype.element_ty), mask=ok)
            dw += dy * xhat
            db += dy
    tl.store(DW + pid * n_col + cols, dw, mask=ok)
    tl.store(DB + pid * n_col + cols, db, mask=ok)


class _FusedLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()                             # [R, c]
        n_row, n_col = x2.shape
        y = torch.empty_like(x2)
        mean = torch.empty(n_row, dtype=torch.float32, device=x.device)
        rstd = torch.empty(n_row, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_col)
        if n_row:
            _ln_fwd_kernel[(n_row,)](x2, y, weight if weight is not None else x2,
                                     bias if bias is not None else x2, mean, rstd, n_col, eps,
                                     HAS_W=weight is not None, HAS_B=bias is not None,
                                     BLOCK_C=block, num_warps=_warps(block))
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        n_row, n_col = x2.shape
        dy = grad_y.reshape(n_row, n_col).contiguous()
        dx = torch.empty_like(x2)
        block = triton.next_power_of_2(n_col)
        n_prog = max(1, min(n_row, 4 * _sm_count(x2.device)))
        rows_per_program = triton.cdiv(n_row, n_prog) if n_row else 0
        partial_w = torch.zeros(n_prog, n_col, dtype=torch.float32, device=x2.device)
        partial_b = torch.zeros(n_prog, n_col, dtype=torch.float32, device=x2.device)
        if n_row:
            _ln_bwd_kernel[(n_prog,)](x2, dy, dx, weight if weight is not None else x2, mean, rstd,
                                      partial_w, partial_b, n_row, n_col, rows_per_program,
                                      HAS_W=weight is not None, BLOCK_C=block,
                                      num_warps=_warps(block))
        dw = partial_w.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = partial_b.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx.reshape(ctx.shape), dw, db, None


def _warps(block: int) -> int:
    return min(16, max(1, block // 256))


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def fused_layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                     eps: float = 1e-5) -> Tensor:
    """Triton LayerNorm over the last dim of x [*, c]."""
    return _FusedLayerNorm.apply(x, weight, bias, eps)
