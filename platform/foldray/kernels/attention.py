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
    tensors = [t for t in (q, k, v, bias, key_mask) if t is not None]
    kernel = dispatch.kernel_for("attention", "attention_triton", tensors, _unsupported(q, k, v))
    if kernel is not None:
        return kernel.flash_attention(q, k, v, bias, key_mask, _mask_value(q.dtype))
    return attention_reference(q, k, v, bias, key_mask)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
                        key_mask: Tensor | None = None) -> Tensor:
    """The PyTorch reference: scaled_dot_product_attention with the mask as a finite bias."""
    attn_bias = bias
    if key_mask is not None:
        masked = mask_to_bias(key_mask, q.dtype)[..., None, None, :]      # [*, 1, 1, K]
        attn_bias = masked if attn_bias is None else attn_bias + masked
    if attn_bias is not None:
        attn_bias = attn_bias.to(q.dtype).expand(*q.shape[:-1], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
