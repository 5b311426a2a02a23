"""Triton kernels for the triangle multiplicative update (see `triangle_multiplication.py`).

Both ops view their inputs as [B, M, K] (batch, rows, features) with arbitrary strides, so
channel-first tensors moved to the last dim are read in place; the grid is
(row tiles, output-feature tiles, B).

gated_linear: one program computes acc_g = x W_g^T and acc_p = x W_p^T for a [BM, BN] tile
  (K loop, fp32 accumulators) and stores sigmoid(acc_g) * acc_p * mask. Backward is a Triton
  kernel too: it recomputes both products for the tile and writes the pre-activation
  gradients dG = dy*m*p*s*(1-s), dP = dy*m*s ([B, M, c_out] each); dx = dG W_g + dP W_p and
  dW = dG^T x, dP^T x are then torch matmuls. Nothing of the forward is saved but its inputs.
gated_norm_linear: one program loads a [BM, c_h] row tile of p (c_h padded to a power of
  two), normalises it in fp32, multiplies by W_out^T [c_h, BN] and by sigmoid(z W_gate^T)
  (K loop over c_z) for the same rows. Backward recomputes the reference with PyTorch ops
  from the saved inputs (p, z, weights) and differentiates it.
fp32 products use IEEE fp32 unless torch allows TF32 matmuls; under CUDA autocast the
operands are cast to the autocast dtype first, as F.linear would.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from foldray.kernels import dispatch
from foldray.kernels.triangle_multiplication import gated_norm_linear_reference


@triton.jit
def _gated_linear_kernel(X, WG, WP, MASK, OUT, DOUT, DG, DP, M, K, N,
                         sxb, sxm, sxk, smb, smm, sob, som, son, sdb, sdm, sdn,
                         HAS_MASK: tl.constexpr, BACKWARD: tl.constexpr, PRECISION: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    ok_m, ok_n = rm < M, rn < N
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_p = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        ok_k = rk < K
        x = tl.load(X + b * sxb + rm[:, None] * sxm + rk[None, :] * sxk,
                    mask=ok_m[:, None] & ok_k[None, :], other=0.0)                     # [BM, BK]
        w_off = rn[None, :] * K + rk[:, None]                                          # W^T [BK, BN]
        w_ok = ok_k[:, None] & ok_n[None, :]
        wg = tl.load(WG + w_off, mask=w_ok, other=0.0)
        wp = tl.load(WP + w_off, mask=w_ok, other=0.0)
        acc_g = tl.dot(x, wg, acc_g, input_precision=PRECISION)
        acc_p = tl.dot(x, wp, acc_p, input_precision=PRECISION)
    gate = tl.sigmoid(acc_g)
    ok = ok_m[:, None] & ok_n[None, :]
    if HAS_MASK:
        keep = tl.load(MASK + b * smb + rm * smm, mask=ok_m, other=0.0).to(tl.float32)[:, None]
    else:
        keep = 1.0
    if BACKWARD:
        dy = tl.load(DOUT + b * sob + rm[:, None] * som + rn[None, :] * son, mask=ok, other=0.0)
        dy = dy.to(tl.float32) * keep
        d_off = b * sdb + rm[:, None] * sdm + rn[None, :] * sdn
        tl.store(DG + d_off, (dy * acc_p * gate * (1.0 - gate)).to(DG.dtype.element_ty), mask=ok)
        tl.store(DP + d_off, (dy * gate).to(DP.dtype.element_ty), mask=ok)
    else:
        y = gate * acc_p * keep
        tl.store(OUT + b * sob + rm[:, None] * som + rn[None, :] * son, y.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _gated_norm_linear_kernel(P, Z, LNW, LNB, WO, WG, OUT, M, CH, CZ, N, eps,
                              spb, spm, spc, szb, szm, szc,
                              HAS_W: tl.constexpr, HAS_B: tl.constexpr, PRECISION: tl.constexpr,
                              BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rc = tl.arange(0, BC)
    ok_m, ok_n, ok_c = rm < M, rn < N, rc < CH
    # LayerNorm of the p row tile, in fp32 registers
    p = tl.load(P + b * spb + rm[:, None] * spm + rc[None, :] * spc,
                mask=ok_m[:, None] & ok_c[None, :], other=0.0).to(tl.float32)           # [BM, BC]
    mean = tl.sum(p, 1) / CH
    pc = tl.where(ok_c[None, :], p - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(pc * pc, 1) / CH + eps)
    p_hat = pc * rstd[:, None]
    if HAS_W:
        p_hat = p_hat * tl.load(LNW + rc, mask=ok_c, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        p_hat = p_hat + tl.load(LNB + rc, mask=ok_c, other=0.0).to(tl.float32)[None, :]
    wo = tl.load(WO + rn[None, :] * CH + rc[:, None], mask=ok_c[:, None] & ok_n[None, :], other=0.0)
    y = tl.dot(p_hat.to(wo.dtype), wo, input_precision=PRECISION)                      # [BM, BN]
    # gate from the same rows of z
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, CZ, BK):
        rk = k0 + tl.arange(0, BK)
        ok_k = rk < CZ
        z = tl.load(Z + b * szb + rm[:, None] * szm + rk[None, :] * szc,
                    mask=ok_m[:, None] & ok_k[None, :], other=0.0)                     # [BM, BK]
        wg = tl.load(WG + rn[None, :] * CZ + rk[:, None], mask=ok_k[:, None] & ok_n[None, :], other=0.0)
        acc_g = tl.dot(z, wg, acc_g, input_precision=PRECISION)
    out = tl.sigmoid(acc_g) * y
    tl.store(OUT + b * M * N + rm[:, None] * N + rn[None, :], out.to(OUT.dtype.element_ty),
             mask=ok_m[:, None] & ok_n[None, :])


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not dispatch.interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _blocks(n_out: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BM, BN, BK, num_warps). One small config under the interpreter (fast tests); on GPU
    narrower output tiles for fp32, whose [c_h, BN] W_out tile would crowd shared memory."""
    if dispatch.interpreting():
        return 16, 16, 16, 1
    widest = 128 if dtype.itemsize <= 2 else 64
    return 64, min(widest, max(16, triton.next_power_of_2(n_out))), 32, 4


def _autocast(*tensors: Tensor | None) -> list[Tensor | None]:
    """Under CUDA autocast, the matmul operands in the autocast dtype (as F.linear would
    take them), so the kernel runs the same bf16 products as the reference does."""
    first = tensors[0]
    if first is None or not first.is_cuda or not torch.is_autocast_enabled("cuda"):
        return list(tensors)
    dtype = torch.get_autocast_dtype("cuda")
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def _as_bmk(t: Tensor, n_trailing: int) -> Tensor:
    """t [*, d_1..d_n, K] -> [B, M, K] with M = prod(d_i) (n = n_trailing) and B the rest;
    a view when the strides allow (reshape copies otherwise)."""
    lead = t.shape[:-1]
    m = math.prod(lead[len(lead) - n_trailing:])
    return t.reshape(-1, m, t.shape[-1]) if t.numel() else t.reshape(0, max(m, 1), t.shape[-1])


class _GatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3: Tensor, w_gate: Tensor, w_proj: Tensor, mask2: Tensor | None,
                channels_first: bool) -> Tensor:
        n_b, n_m, n_k = x3.shape
        n_n = w_gate.shape[0]
        w_gate, w_proj = w_gate.contiguous(), w_proj.contiguous()
        if channels_first:       # memory [B, N, M]: the einsum reads it without a copy
            out = torch.empty(n_b, n_n, n_m, dtype=x3.dtype, device=x3.device).transpose(1, 2)
        else:
            out = torch.empty(n_b, n_m, n_n, dtype=x3.dtype, device=x3.device)
        _launch_gated_linear(x3, w_gate, w_proj, mask2, out, None, None, None)
        ctx.save_for_backward(x3, w_gate, w_proj, mask2)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x3, w_gate, w_proj, mask2 = ctx.saved_tensors
        n_b, n_m, n_k = x3.shape
        n_n = w_gate.shape[0]
        d_gate = torch.empty(n_b, n_m, n_n, dtype=x3.dtype, device=x3.device)          # dL/d(x Wg^T)
        d_proj = torch.empty_like(d_gate)                                              # dL/d(x Wp^T)
        _launch_gated_linear(x3, w_gate, w_proj, mask2, None, grad_out, d_gate, d_proj)
        dg2, dp2 = d_gate.reshape(-1, n_n), d_proj.reshape(-1, n_n)
        dx = dw_g = dw_p = None
        if ctx.needs_input_grad[0]:
            dx = (dg2 @ w_gate + dp2 @ w_proj).reshape(n_b, n_m, n_k)
        x2 = x3.reshape(-1, n_k)
        if ctx.needs_input_grad[1]:
            dw_g = dg2.t() @ x2
        if ctx.needs_input_grad[2]:
            dw_p = dp2.t() @ x2
        return dx, dw_g, dw_p, None, None


def _launch_gated_linear(x3: Tensor, w_gate: Tensor, w_proj: Tensor, mask2: Tensor | None,
                         out: Tensor | None, grad_out: Tensor | None, d_gate: Tensor | None,
                         d_proj: Tensor | None) -> None:
    n_b, n_m, n_k = x3.shape
    n_n = w_gate.shape[0]
    if not (n_b and n_m and n_n):
        return
    bm, bn, bk, warps = _blocks(n_n, x3.dtype)
    y = out if out is not None else grad_out                                          # [B, M, N] strided
    d = d_gate if d_gate is not None else y
    grid = (triton.cdiv(n_m, bm), triton.cdiv(n_n, bn), n_b)
    _gated_linear_kernel[grid](
        x3, w_gate, w_proj, mask2 if mask2 is not None else x3, y, y, d, d_proj if d_proj is not None else d,
        n_m, n_k, n_n, *x3.stride(), *(mask2.stride() if mask2 is not None else (0, 0)),
        *y.stride(), *d.stride(), HAS_MASK=mask2 is not None, BACKWARD=out is None,
        PRECISION=_precision(x3.dtype), BM=bm, BN=bn, BK=bk, num_warps=warps)


def fused_gated_linear(x: Tensor, w_gate: Tensor, w_proj: Tensor, mask: Tensor | None,
                       feature_dim: int = -1) -> Tensor:
    """Triton `gated_linear` (same contract as `triangle_multiplication.gated_linear`)."""
    x, w_gate, w_proj = _autocast(x, w_gate, w_proj)
    lead = x.shape[:-1]
    n_trailing = -feature_dim - 1             # dims after the feature dim in the output
    channels_first = n_trailing > 0
    x3 = _as_bmk(x, n_trailing if channels_first else len(lead))                     # [B, M, K]
    mask2 = None
    if mask is not None:
        mask2 = mask.expand(lead).to(x.dtype).reshape(x3.shape[:2])                   # [B, M]
    out3 = _GatedLinear.apply(x3, w_gate, w_proj, mask2, channels_first)               # [B, M, N]
    return out3.reshape(*lead, w_gate.shape[0]).movedim(-1, feature_dim)


class _GatedNormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p3: Tensor, z3: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
                w_out: Tensor, w_gate: Tensor, eps: float) -> Tensor:
        n_b, n_m, n_c = p3.shape
        n_n, n_z = w_gate.shape
        w_out, w_gate = w_out.contiguous(), w_gate.contiguous()
        out = torch.empty(n_b, n_m, n_n, dtype=p3.dtype, device=p3.device)
        if n_b and n_m and n_n:
            bm, bn, bk, warps = _blocks(n_n, p3.dtype)
            grid = (triton.cdiv(n_m, bm), triton.cdiv(n_n, bn), n_b)
            _gated_norm_linear_kernel[grid](
                p3, z3, norm_weight if norm_weight is not None else p3,
                norm_bias if norm_bias is not None else p3, w_out, w_gate, out,
                n_m, n_c, n_z, n_n, eps, *p3.stride(), *z3.stride(),
                HAS_W=norm_weight is not None, HAS_B=norm_bias is not None,
                PRECISION=_precision(p3.dtype), BM=bm, BN=bn,
                BC=max(16, triton.next_power_of_2(n_c)), BK=bk, num_warps=warps)
        ctx.save_for_backward(p3, z3, norm_weight, norm_bias, w_out, w_gate)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, ctx.needs_input_grad, strict=False)]
        with torch.enable_grad():
            out = gated_norm_linear_reference(*inputs, eps=ctx.eps)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        result = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return (*result, None)


def fused_gated_norm_linear(p: Tensor, z: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
                            w_out: Tensor, w_gate: Tensor, eps: float = 1e-5) -> Tensor:
    """Triton `gated_norm_linear` (same contract as `triangle_multiplication.gated_norm_linear`)."""
    p, z, w_out, w_gate = _autocast(p, z, w_out, w_gate)
    lead = p.shape[:-1]
    n_trailing = min(2, len(lead))         # [*, rows, N, c]: rows x N are one M when strides allow
    p3, z3 = _as_bmk(p, n_trailing), _as_bmk(z, n_trailing)
    out3 = _GatedNormLinear.apply(p3, z3, norm_weight, norm_bias, w_out, w_gate, eps)
    return out3.reshape(*lead, w_out.shape[0])
