"""Attention with an additive bias and a key mask: the reference (PyTorch) implementation.

Shapes: q [*, H, Q, c], k and v [*, H, K, c], bias broadcastable to [*, H, Q, K],
key_mask [*, K] bool (True = real). Masks become a *finite* bias that fits the compute
dtype, so a fully padded row gives a uniform softmax instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mask_to_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """bool mask (True = keep) -> additive bias: 0 where kept, a large finite negative else."""
    big = 3e4 if dtype == torch.float16 else 1e9
    return (~mask).to(dtype) * -big


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
              key_mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(c) + bias + mask) v, returns [*, H, Q, c]."""
    attn_bias = bias
    if key_mask is not None:
        masked = mask_to_bias(key_mask, q.dtype)[..., None, None, :]      # [*, 1, 1, K]
        attn_bias = masked if attn_bias is None else attn_bias + masked
    if attn_bias is not None:
        attn_bias = attn_bias.to(q.dtype).expand(*q.shape[:-1], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
