"""Flash-style attention with an additive bias and a key mask, in Triton (forward + backward).

Same semantics as `foldray.kernels.attention.attention` (the reference): softmax(q k^T / sqrt(c)
+ bias + mask_bias) v with the same finite mask value. The [*, Q, K] logits never reach HBM:
the forward keeps a running max/sum per query row (online softmax) and saves only O, the row
max and 1/row sum (`LSE`, `RINV`); the backward recomputes each logit tile (FlashAttention-2 scheme).

Shapes: q [*, H, Q, c], k and v [*, H, K, c], bias broadcastable to [*, H, Q, K], key_mask
broadcastable to [*, K]. Leading dims may broadcast (the triangle attention shares its bias
over the rows dim, diffusion shares it over samples): each program finds its tensors through
a per-batch offset table, so broadcast inputs are read in place (stride 0), never copied.
The bias gradient of a broadcast bias is reduced with fp32 atomic adds into the bias's shape.
Head dims that are not a power of two (24) are padded to the next one with masked loads.

Importing this module imports triton: only `foldray.kernels.dispatch` does, lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _logits(q, k, bias_ptr, mask_ptr, rows, cols, n_q, n_k, sbm, sbn, smn, scale, mask_value,
            HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of q k^T * scale + (bias + mask_bias); padded keys -inf."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    if HAS_BIAS or HAS_MASK:
        t = tl.zeros(s.shape, dtype=tl.float32)
        if HAS_BIAS:
            t = tl.load(bias_ptr + rows[:, None] * sbm + cols[None, :] * sbn,
                        mask=(rows[:, None] < n_q) & (cols[None, :] < n_k), other=0.0).to(tl.float32)
        if HAS_MASK:
            keep = tl.load(mask_ptr + cols * smn, mask=cols < n_k, other=1)
            t = t + tl.where(keep != 0, 0.0, mask_value)[None, :]
        s = s + t
    return tl.where(cols[None, :] < n_k, s, float("-inf"))


@triton.jit
def _fwd_kernel(Q, K, V, B, M, O, LSE, RINV, QOFF, KOFF, VOFF, BOFF, MOFF,
                sqm, sqd, skn, skd, svn, svd, sbm, sbn, smn,
                n_q, n_k, head_dim, scale, mask_value,
                HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)       # dense offsets pid_b * n * c can pass 2^31
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    q_ptr = Q + tl.load(QOFF + pid_b)
    k_ptr = K + tl.load(KOFF + pid_b)
    v_ptr = V + tl.load(VOFF + pid_b)
    b_ptr = B + tl.load(BOFF + pid_b) if HAS_BIAS else B
    m_ptr = M + tl.load(MOFF + pid_b) if HAS_MASK else M
    d_ok = dims[None, :] < head_dim
    q = tl.load(q_ptr + rows[:, None] * sqm + dims[None, :] * sqd,
                mask=(rows[:, None] < n_q) & d_ok, other=0.0)                   # [M, D]
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(0, n_k, BLOCK_N):
        cols = start + offs_n
        kv_ok = (cols[:, None] < n_k) & d_ok
        k = tl.load(k_ptr + cols[:, None] * skn + dims[None, :] * skd, mask=kv_ok, other=0.0)
        v = tl.load(v_ptr + cols[:, None] * svn + dims[None, :] * svd, mask=kv_ok, other=0.0)
        s = _logits(q, k, b_ptr, m_ptr, rows, cols, n_q, n_k, sbm, sbn, smn, scale, mask_value,
                    HAS_BIAS, HAS_MASK, PREC)                                  # [M, N]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    out = O + pid_b * n_q * head_dim
    tl.store(out + rows[:, None] * head_dim + dims[None, :], acc.to(O.dtype.element_ty),
             mask=(rows[:, None] < n_q) & d_ok)
    # max and 1/sum kept apart: max + log(sum) rounds away log(sum) next to a -1e9 mask bias
    tl.store(LSE + pid_b * n_q + rows, m_i, mask=rows < n_q)
    tl.store(RINV + pid_b * n_q + rows, 1.0 / l_i, mask=rows < n_q)


@triton.jit
def _bwd_dq_kernel(Q, K, V, B, M, DO, LSE, RINV, DELTA, DQ, DB, QOFF, KOFF, VOFF, BOFF, MOFF, DBOFF,
                   sqm, sqd, skn, skd, svn, svd, sbm, sbn, smn, sdbm, sdbn,
                   n_q, n_k, head_dim, scale, mask_value,
                   HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, BIAS_GRAD: tl.constexpr,
                   BIAS_ATOMIC: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ for one query block, and the bias gradient dS of its rows (each tile written once)."""
    pid_b = tl.program_id(0).to(tl.int64)       # dense offsets pid_b * n * c can pass 2^31
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    q_ptr = Q + tl.load(QOFF + pid_b)
    k_ptr = K + tl.load(KOFF + pid_b)
    v_ptr = V + tl.load(VOFF + pid_b)
    b_ptr = B + tl.load(BOFF + pid_b) if HAS_BIAS else B
    m_ptr = M + tl.load(MOFF + pid_b) if HAS_MASK else M
    db_ptr = DB + tl.load(DBOFF + pid_b) if BIAS_GRAD else DB
    d_ok = dims[None, :] < head_dim
    r_ok = rows < n_q
    q = tl.load(q_ptr + rows[:, None] * sqm + dims[None, :] * sqd, mask=r_ok[:, None] & d_ok, other=0.0)
    dense = pid_b * n_q * head_dim + rows[:, None] * head_dim + dims[None, :]
    do = tl.load(DO + dense, mask=r_ok[:, None] & d_ok, other=0.0)
    lse = tl.load(LSE + pid_b * n_q + rows, mask=r_ok, other=0.0)
    rinv = tl.load(RINV + pid_b * n_q + rows, mask=r_ok, other=0.0)
    delta = tl.load(DELTA + pid_b * n_q + rows, mask=r_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(0, n_k, BLOCK_N):
        cols = start + offs_n
        kv_ok = (cols[:, None] < n_k) & d_ok
        k = tl.load(k_ptr + cols[:, None] * skn + dims[None, :] * skd, mask=kv_ok, other=0.0)
        v = tl.load(v_ptr + cols[:, None] * svn + dims[None, :] * svd, mask=kv_ok, other=0.0)
        s = _logits(q, k, b_ptr, m_ptr, rows, cols, n_q, n_k, sbm, sbn, smn, scale, mask_value,
                    HAS_BIAS, HAS_MASK, PREC)
        p = tl.where(r_ok[:, None], tl.exp(s - lse[:, None]) * rinv[:, None], 0.0)           # [M, N]
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])                                        # d logits
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        if BIAS_GRAD:
            tile = db_ptr + rows[:, None] * sdbm + cols[None, :] * sdbn
            ok = r_ok[:, None] & (cols[None, :] < n_k)
            if BIAS_ATOMIC:
                tl.atomic_add(tile, ds, mask=ok)
            else:
                tl.store(tile, ds, mask=ok)
    tl.store(DQ + dense, (dq * scale).to(DQ.dtype.element_ty), mask=r_ok[:, None] & d_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, B, M, DO, LSE, RINV, DELTA, DK, DV, QOFF, KOFF, VOFF, BOFF, MOFF,
                     sqm, sqd, skn, skd, svn, svd, sbm, sbn, smn,
                     n_q, n_k, head_dim, scale, mask_value,
                     HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK and dV for one key block, looping over query blocks."""
    pid_b = tl.program_id(0).to(tl.int64)       # dense offsets pid_b * n * c can pass 2^31
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q_ptr = Q + tl.load(QOFF + pid_b)
    k_ptr = K + tl.load(KOFF + pid_b)
    v_ptr = V + tl.load(VOFF + pid_b)
    b_ptr = B + tl.load(BOFF + pid_b) if HAS_BIAS else B
    m_ptr = M + tl.load(MOFF + pid_b) if HAS_MASK else M
    d_ok = dims[None, :] < head_dim
    kv_ok = (cols[:, None] < n_k) & d_ok
    k = tl.load(k_ptr + cols[:, None] * skn + dims[None, :] * skd, mask=kv_ok, other=0.0)
    v = tl.load(v_ptr + cols[:, None] * svn + dims[None, :] * svd, mask=kv_ok, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for start in range(0, n_q, BLOCK_M):
        rows = start + offs_m
        r_ok = rows < n_q
        q = tl.load(q_ptr + rows[:, None] * sqm + dims[None, :] * sqd,
                    mask=r_ok[:, None] & d_ok, other=0.0)
        do = tl.load(DO + pid_b * n_q * head_dim + rows[:, None] * head_dim + dims[None, :],
                     mask=r_ok[:, None] & d_ok, other=0.0)
        lse = tl.load(LSE + pid_b * n_q + rows, mask=r_ok, other=0.0)
        rinv = tl.load(RINV + pid_b * n_q + rows, mask=r_ok, other=0.0)
        delta = tl.load(DELTA + pid_b * n_q + rows, mask=r_ok, other=0.0)
        s = _logits(q, k, b_ptr, m_ptr, rows, cols, n_q, n_k, sbm, sbn, smn, scale, mask_value,
                    HAS_BIAS, HAS_MASK, PREC)
        p = tl.where(r_ok[:, None], tl.exp(s - lse[:, None]) * rinv[:, None], 0.0)           # [M, N]
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
    dense = pid_b * n_k * head_dim + cols[:, None] * head_dim + dims[None, :]
    tl.store(DK + dense, (dk * scale).to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + dense, dv.to(DV.dtype.element_ty), mask=kv_ok)


# --------------------------------------------------------------------------------------------
# Host side: broadcasting, offset tables, autograd.
# --------------------------------------------------------------------------------------------

def _offsets(t: Tensor, batch: tuple[int, ...], n_tail: int) -> Tensor:
    """Element offset into `t` of every flattened batch index; broadcast dims have stride 0."""
    expanded = t.expand(*batch, *t.shape[t.dim() - n_tail:])
    off = torch.zeros((), dtype=torch.int64, device=t.device)
    for size, stride in zip(batch, expanded.stride()[:len(batch)], strict=True):
        off = off[..., None] + torch.arange(size, device=t.device, dtype=torch.int64) * stride
    return off.reshape(-1)                                                    # [n_batch]


def _blocks(n_q: int, n_k: int, head_dim: int) -> tuple[int, int, int]:
    """Tile sizes: 64x64 on GPU, 16x16 under the interpreter (so tests cover several tiles)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpreting():
        return 16, 16, block_d
    big = 64 if block_d <= 64 else 32
    return (min(big, max(16, triton.next_power_of_2(n_q))),
            min(big, max(16, triton.next_power_of_2(n_k))), block_d)


def interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact ("ieee") unless torch itself allows TF32 matmuls; 16-bit inputs
    use tensor cores whatever this says ("tf32" is triton's default)."""
    if dtype != torch.float32 or (not interpreting() and torch.backends.cuda.matmul.allow_tf32):
        return "tf32"
    return "ieee"


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor | None,
                mask_value: float) -> Tensor:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2],
                                       *([bias.shape[:-2]] if bias is not None else []),
                                       *([mask.shape[:-1]] if mask is not None else []))
        n_q, n_k, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
        n_batch = math.prod(batch)
        dummy = q.new_zeros(1, dtype=torch.int64)
        offs = [_offsets(q, batch, 2), _offsets(k, batch, 2), _offsets(v, batch, 2),
                _offsets(bias, batch, 2) if bias is not None else dummy,
                _offsets(mask, batch, 1) if mask is not None else dummy]
        o = torch.empty(*batch, n_q, head_dim, dtype=q.dtype, device=q.device)
        lse = torch.empty(*batch, n_q, dtype=torch.float32, device=q.device)   # row max
        rinv = torch.empty_like(lse)                                            # 1 / row sum
        block_m, block_n, block_d = _blocks(n_q, n_k, head_dim)
        strides = _strides(q, k, v, bias, mask)
        scale = 1.0 / math.sqrt(head_dim)
        if n_batch and n_q:
            _fwd_kernel[(n_batch, triton.cdiv(n_q, block_m))](
                q, k, v, bias if bias is not None else q, mask if mask is not None else q, o, lse, rinv,
                *offs, *strides, n_q, n_k, head_dim, scale, mask_value,
                HAS_BIAS=bias is not None, HAS_MASK=mask is not None, PREC=_precision(q.dtype),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
        ctx.save_for_backward(q, k, v, bias, mask, o, lse, rinv, *offs)
        ctx.meta = (batch, mask_value, scale, (block_m, block_n, block_d))
        return o

    @staticmethod
    def backward(ctx, grad_o: Tensor):
        q, k, v, bias, mask, o, lse, rinv, *offs = ctx.saved_tensors
        batch, mask_value, scale, (block_m, block_n, block_d) = ctx.meta
        n_q, n_k, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
        n_batch = math.prod(batch)
        grad_o = grad_o.contiguous()
        delta = (grad_o.float() * o.float()).sum(-1)                           # [*, Q]
        dq = torch.zeros_like(o)                                                # [*, Q, c]
        dk = o.new_zeros(*batch, n_k, head_dim)                                 # [*, K, c]
        dv = torch.zeros_like(dk)
        bias_grad = bias is not None and ctx.needs_input_grad[3]
        db = q.new_zeros(1, dtype=torch.float32)
        db_off, db_strides, atomic = offs[0], (0, 0), False
        if bias_grad:
            db = torch.zeros(bias.shape, dtype=torch.float32, device=q.device)
            db_off = _offsets(db, batch, 2)
            db_strides = db.stride()[-2:]
            atomic = math.prod(bias.shape[:-2]) < n_batch     # shared over some batch dims
        strides = _strides(q, k, v, bias, mask)
        common = dict(HAS_BIAS=bias is not None, HAS_MASK=mask is not None,
                      PREC=_precision(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
        b_arg = bias if bias is not None else q
        m_arg = mask if mask is not None else q
        if n_batch and n_q and n_k:
            _bwd_dq_kernel[(n_batch, triton.cdiv(n_q, block_m))](
                q, k, v, b_arg, m_arg, grad_o, lse, rinv, delta, dq, db, *offs, db_off, *strides,
                *db_strides, n_q, n_k, head_dim, scale, mask_value,
                BIAS_GRAD=bias_grad, BIAS_ATOMIC=atomic, **common)
            _bwd_dkdv_kernel[(n_batch, triton.cdiv(n_k, block_n))](
                q, k, v, b_arg, m_arg, grad_o, lse, rinv, delta, dk, dv, *offs, *strides,
                n_q, n_k, head_dim, scale, mask_value, **common)
        grads_qkv = [g.sum_to_size(t.shape) if g.shape != t.shape else g
                     for g, t in ((dq, q), (dk, k), (dv, v))]
        db_out = db.to(bias.dtype) if bias_grad else None
        return (*grads_qkv, db_out, None, None)


def _strides(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor | None) -> tuple:
    """Row/feature strides of q, k, v; row/column of bias; key stride of the mask."""
    return (*q.stride()[-2:], *k.stride()[-2:], *v.stride()[-2:],
            *(bias.stride()[-2:] if bias is not None else (0, 0)),
            mask.stride()[-1] if mask is not None else 0)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
                    key_mask: Tensor | None = None, mask_value: float = -1e9) -> Tensor:
    """Triton attention: q [*, H, Q, c], k/v [*, H, K, c], bias -> [*, H, Q, K], key_mask [*, K]."""
    if bias is not None:
        if bias.dim() < 2:
            bias = bias.reshape((1,) * (2 - bias.dim()) + tuple(bias.shape))
        if bias.shape[-2:] != (q.shape[-2], k.shape[-2]):     # broadcast over Q or K: rare
            bias = bias.expand(*bias.shape[:-2], q.shape[-2], k.shape[-2]).contiguous()
    mask = None
    if key_mask is not None:
        mask = key_mask.to(torch.uint8).unsqueeze(-2)                         # [*, 1, K]
    return _FlashAttention.apply(q, k, v, bias, mask, mask_value)
