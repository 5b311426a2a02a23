"""Attention with an additive bias and a key mask: the dispatching op and its PyTorch reference.

Shapes: q [*, H, Q, c], k and v [*, H, K, c], bias broadcastable to [*, H, Q, K],
key_mask [*, K] bool (True = real). Masks become a *finite* bias that fits the compute
dtype, so a fully padded row gives a uniform softmax instead of NaN.
`attention` runs the Triton kernel (`attention_triton.py`) when `dispatch` picks it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from foldray.kernels import dispatch

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def mask_to_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """bool mask (True = keep) -> additive bias: 0 where kept, a large finite negative else."""
    return (~mask).to(dtype) * _mask_value(dtype)


def _mask_value(dtype: torch.dtype) -> float:
    """The additive bias of a masked key: large, finite, and representable in `dtype`."""
    return -3e4 if dtype == torch.float16 else -1e9


def _unsupported(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why the Triton kernel cannot take these inputs (None = it can)."""
    if q.dtype not in _KERNEL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}"
    if not q.shape[-1] == k.shape[-1] == v.shape[-1] or q.shape[-1] > 128:
        return f"head dims {q.shape[-1]}/{k.shape[-1]}/{v.shape[-1]} (equal and <= 128 needed)"
    return None


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
              key_mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(c) + bias + mask) v, returns [*, H, Q, c]; Triton or reference."""
    qc, kc, vc = dispatch.autocast_operands(q, k, v)
    tensors = [t for t in (qc, kc, vc, bias, key_mask) if t is not None]
    kernel = dispatch.kernel_for("attention", "attention_triton", tensors, _unsupported(qc, kc, vc))
    if kernel is not None:
        return kernel.flash_attention(qc, kc, vc, bias, key_mask, _mask_value(qc.dtype))
    return attention_reference(q, k, v, bias, key_mask)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
                        key_mask: Tensor | None = None) -> Tensor:
    """The PyTorch reference: scaled_dot_product_attention with the mask as a finite bias.

    Why the reshapes: PyTorch's fused (flash) CPU kernel only takes 4-D inputs; 5-D and 6-D
    ones (triangle attention, windowed atom attention) fall back to the unfused path, which
    writes the whole logits tensor and is ~7x slower at 256 tokens. So the leading dims are
    flattened into one and the bias is kept at its broadcast shape (never expanded to the
    logits' size). An all-True key mask adds nothing and is dropped.
    """
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    attn_bias = bias.to(q.dtype) if bias is not None else None
    if key_mask is not None:
        masked = mask_to_bias(key_mask, q.dtype)[..., None, None, :]      # [*, 1, 1, K]
        attn_bias = masked if attn_bias is None else attn_bias + masked
    lead = q.shape[:-3]                                                   # [*] before H, Q, c
    if len(lead) == 1 and k.shape[:-3] == lead:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
    heads, n_q, n_k = q.shape[-3], q.shape[-2], k.shape[-2]
    q4 = q.reshape(-1, heads, n_q, q.shape[-1])
    k4 = k.expand(*lead, *k.shape[-3:]).reshape(-1, heads, n_k, k.shape[-1])
    v4 = v.expand(*lead, *v.shape[-3:]).reshape(-1, heads, n_k, v.shape[-1])
    if attn_bias is not None:
        attn_bias = _flatten_bias(attn_bias, lead, (heads, n_q, n_k))
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=attn_bias)
    return out.reshape(*lead, heads, n_q, v.shape[-1])


def _flatten_bias(bias: Tensor, lead: torch.Size, tail: tuple[int, int, int]) -> Tensor:
    """A bias broadcastable to [*lead, H, Q, K] as one broadcastable to [prod(lead), H, Q, K]:
    no copy when every leading dim is 1 (shared bias) or full size; else expanded."""
    bias = bias.reshape((1,) * (len(lead) + 3 - bias.dim()) + tuple(bias.shape))
    bias_lead, bias_tail = bias.shape[:len(lead)], bias.shape[len(lead):]
    if all(b == 1 for b in bias_lead):
        return bias.reshape(1, *bias_tail)
    if tuple(bias_lead) != tuple(lead):
        bias = bias.expand(*lead, *bias_tail)
    return bias.reshape(-1, *bias_tail)
