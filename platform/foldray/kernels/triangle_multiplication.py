"""The two fused halves of the triangle multiplicative update (SI Algorithms 12-13): the
dispatching ops and their PyTorch references.

Around the einsum the update is (LN = LayerNorm over the last dim):

    z  = LN_in(z)                                              # [*, N, N, c_z]  (torch / layer_norm)
    ab = sigmoid(z @ Wg^T) * (z @ Wp^T) * mask[..., None]      # [*, N, N, 2c]   -> `gated_linear`
    p  = sum_k a_.. b_..                                       # [*, rows, N, c] (torch matmul)
    out = sigmoid(z @ Wgate^T) * (LN_out(p) @ Wout^T)          # [*, rows, N, c_z] -> `gated_norm_linear`

`gated_linear` computes both products of a row tile in one Triton program and applies sigmoid,
product and mask in registers, so the two [*, N, N, 2c] pre-activations are never written;
`feature_dim=-3` lets it write ab channel-first ([*, 2c, N, N] memory), the layout the einsum's
batched matmul reads without a copy. `gated_norm_linear` normalises a row tile of p in
registers, multiplies it by Wout and by the gate computed from the same rows of z: neither
LN_out(p), Linear(.) nor the gate [*, rows, N, c_z] is materialised. The einsum stays a
torch (cuBLAS) matmul. Backward: see `triangle_multiplication_triton.py`.

The references compute exactly the expressions `_TriangleMultiplication` always computed
(F.linear == nn.Linear, F.layer_norm == nn.LayerNorm), so the CPU path is unchanged bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from foldray.kernels import dispatch

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_NORM_DIM = 256          # c_hidden of the output LayerNorm: one row tile lives in registers


def _unsupported(x: Tensor, *weights: Tensor) -> str | None:
    if x.dtype not in _KERNEL_DTYPES or any(w.dtype != x.dtype for w in weights):
        return f"dtypes {x.dtype}/{[w.dtype for w in weights]}"
    return None


def gated_linear(x: Tensor, w_gate: Tensor, w_proj: Tensor, mask: Tensor | None = None,
                 feature_dim: int = -1) -> Tensor:
    """sigmoid(x @ w_gate^T) * (x @ w_proj^T) * mask[..., None], features moved to `feature_dim`.

    x [*, c_in]; w_gate, w_proj [c_out, c_in]; mask broadcastable to x.shape[:-1] (bool or
    float) or None. Returns [*, c_out] (feature_dim=-1) or e.g. [*, c_out, N, N] for
    feature_dim=-3 on x [*, N, N, c_in]: always a view `out.movedim(-1, feature_dim)`.
    """
    if feature_dim >= 0 or -feature_dim > x.dim():
        raise ValueError(f"feature_dim={feature_dim}: expected a negative dim of x {tuple(x.shape)}")
    xc, wg, wp = dispatch.autocast_operands(x, w_gate, w_proj)
    tensors = [t for t in (xc, wg, wp, mask) if t is not None]
    kernel = dispatch.kernel_for("gated_linear", "triangle_multiplication_triton", tensors,
                                 _unsupported(xc, wg, wp))
    if kernel is not None:
        return kernel.fused_gated_linear(xc, wg, wp, mask, feature_dim)
    return gated_linear_reference(x, w_gate, w_proj, mask, feature_dim)


def gated_linear_reference(x: Tensor, w_gate: Tensor, w_proj: Tensor, mask: Tensor | None = None,
                           feature_dim: int = -1) -> Tensor:
    """The PyTorch reference (the model's Algorithm 12/13 lines 2 before this op existed).

    With feature_dim < -1 the result is *contiguous* in that layout (W @ x^T instead of a moved
    view of x @ W^T): the einsum's batched matmul on a strided view copies every matrix and
    runs ~25x slower on CPU (2.4 s vs 0.1 s at 256 tokens, c = 128). Without autograd it is
    written `_CHUNK_BYTES` of rows at a time into the output, so the pre-activations (3x the
    output's size unchunked) never exist in full.
    """
    if feature_dim == -1:
        out = torch.sigmoid(F.linear(x, w_gate)) * F.linear(x, w_proj)             # [*, c_out]
        return out if mask is None else out * mask[..., None].to(x.dtype)
    k = -feature_dim                                       # features go before the last k-1 dims
    inner = x.shape[-k:-1]                                 # e.g. (N, N)
    weight = torch.cat([w_gate, w_proj])                   # one pass over x for both products
    c_out = w_gate.shape[0]
    if mask is not None:
        mask = mask.to(x.dtype).expand(x.shape[:-1])

    def rows(xs: Tensor, ms: Tensor | None) -> Tensor:     # xs [*, r, ..., c_in] -> [*, c_out, r*...]
        g, p = (weight @ xs.flatten(-k, -2).transpose(-1, -2)).split([c_out, c_out], dim=-2)
        out = torch.sigmoid(g) * p
        return out if ms is None else out * ms.flatten(-(k - 1))[..., None, :]

    row_values = 3 * 2 * c_out * x.shape[:-k].numel() * inner[1:].numel()    # transient per row
    step = max(1, _CHUNK_BYTES // max(1, row_values * x.element_size()))
    n_rows = inner[0]
    if torch.is_grad_enabled() or step >= n_rows:
        return rows(x, mask).unflatten(-1, inner)          # [*, c_out, *inner], contiguous
    out = x.new_empty(*x.shape[:-k], c_out, *inner)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        chunk = rows(x.narrow(-k, start, stop - start),
                     None if mask is None else mask.narrow(-(k - 1), start, stop - start))
        out.narrow(-(k - 1), start, stop - start).copy_(chunk.unflatten(-1, (stop - start, *inner[1:])))
    return out


# Rows of gated_linear's output computed at once in inference: bounds its transient.
_CHUNK_BYTES = 32 << 20


def gated_norm_linear(p: Tensor, z: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
                      w_out: Tensor, w_gate: Tensor, eps: float = 1e-5) -> Tensor:
    """sigmoid(z @ w_gate^T) * (LayerNorm(p) @ w_out^T).

    p [*, c_h] (any strides: the einsum's channel-first output moved to the last dim is read in
    place); z [*, c_z] with the same leading dims; norm_weight, norm_bias [c_h] or None;
    w_out [c_o, c_h]; w_gate [c_o, c_z]. Returns [*, c_o].
    """
    pc, zc, wo, wg = dispatch.autocast_operands(p, z, w_out, w_gate)
    tensors = [t for t in (pc, zc, norm_weight, norm_bias, wo, wg) if t is not None]
    reason = _unsupported(pc, zc, wo, wg)
    if reason is None and p.shape[-1] > _MAX_NORM_DIM:
        reason = f"c_h={p.shape[-1]} > {_MAX_NORM_DIM}"
    if reason is None and p.shape[:-1] != z.shape[:-1]:
        reason = f"leading dims of p {tuple(p.shape)} and z {tuple(z.shape)} differ"
    kernel = dispatch.kernel_for("gated_norm_linear", "triangle_multiplication_triton", tensors, reason)
    if kernel is not None:
        return kernel.fused_gated_norm_linear(pc, zc, norm_weight, norm_bias, wo, wg, eps)
    return gated_norm_linear_reference(p, z, norm_weight, norm_bias, w_out, w_gate, eps)


def gated_norm_linear_reference(p: Tensor, z: Tensor, norm_weight: Tensor | None,
                                norm_bias: Tensor | None, w_out: Tensor, w_gate: Tensor,
                                eps: float = 1e-5) -> Tensor:
    """The PyTorch reference (the model's Algorithm 12/13 lines 3-4 before this op existed)."""
    g = torch.sigmoid(F.linear(z, w_gate))                                          # [*, c_o]
    return g * F.linear(F.layer_norm(p, p.shape[-1:], norm_weight, norm_bias, eps), w_out)
