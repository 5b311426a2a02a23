"""Attention with an additive bias and a key mask: the dispatching op and its PyTorch reference.

Shapes: q [*, H, Q, c], k and v [*, H, K, c], bias broadcastable to [*, H, Q, K],
key_mask [*, K] bool (True = real). Masks become a *finite* bias that fits the compute
dtype, so a fully padded row gives a uniform softmax instead of NaN.
`attention` runs the Triton kernel (`attention_triton.py`) when `dispatch` picks it.
"""

from __future__ import annotations

import itertools
import math

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
    flattened into one and the bias is kept at its broadcast shape, never expanded to the
    logits' size: a bias shared over some leading dims only (a batch of padded jobs: [B, 1, ...])
    runs one call per outer index (`_split_dims`), and a key mask that varies over the rows a
    bias is shared by is folded into it (`_attend_shared`). An all-True key mask adds nothing.
    """
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    lead = q.shape[:-3]                                                   # [*] before H, Q, c
    n = len(lead)
    if bias is not None:
        bias = bias.to(q.dtype)
        bias = bias.reshape((1,) * (n + 3 - bias.dim()) + tuple(bias.shape))
    if key_mask is not None:
        key_mask = key_mask.reshape((1,) * (n + 1 - key_mask.dim()) + tuple(key_mask.shape))
    k = k.expand(*lead, *k.shape[-3:])
    v = v.expand(*lead, *v.shape[-3:])
    split = 0 if bias is None else _split_dims(lead, bias.shape[:n])
    if split == 0:
        return _attend(q, k, v, bias, key_mask)
    outs = [_attend(*(_at(t, index) for t in (q, k, v, bias, key_mask)))
            for index in itertools.product(*(range(d) for d in lead[:split]))]
    return torch.stack(outs).reshape(*lead, *outs[0].shape[-3:])


def _at(t: Tensor | None, index: tuple[int, ...]) -> Tensor | None:
    """t at the outer `index` (a dim of size 1 broadcasts)."""
    if t is None:
        return None
    return t[tuple(i if d > 1 else 0 for i, d in zip(index, t.shape, strict=False))]


# above this many calls, a bias shared over inner dims only is expanded instead (one call)
_MAX_SPLIT_CALLS = 1024
# a mask whose rows switch between real and padding more often than this gathers them instead
_MAX_RUNS = 16


def _split_dims(lead: torch.Size, bias_lead: torch.Size) -> int:
    """How many outer dims to run one SDPA call each, so that the bias over the remaining
    leading dims is either shared (all 1) or full size: then one 4-D call takes it uncopied."""
    for split in range(len(lead) + 1):
        inner, outer = bias_lead[split:], lead[split:]
        if all(b == 1 for b in inner) or tuple(inner) == tuple(outer):
            break
    if split and not 0 < math.prod(lead[:split]) <= _MAX_SPLIT_CALLS:
        return 0
    return split


def _attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, key_mask: Tensor | None) -> Tensor:
    """Attention with q, k, v [*, H, Q/K, c], bias [*, H, Q, K] (as many dims, each leading dim
    1 or full) and key_mask [*, K] (as many dims), as one 4-D SDPA call (or two, see below)."""
    lead = q.shape[:-3]
    if key_mask is not None:
        shared = bias is not None and all(d == 1 for d in bias.shape[:-3])
        if shared and any(d > 1 for d in key_mask.shape[:-1]):
            folded = _attend_shared(q, k, v, bias, key_mask)
            if folded is not None:
                return folded
        masked = mask_to_bias(key_mask, q.dtype)[..., None, None, :]      # [*, 1, 1, K]
        bias = masked if bias is None else bias + masked
    if bias is not None:
        bias = _flatten_bias(bias, lead)
    out = _sdpa(q.reshape(-1, *q.shape[-3:]), k.reshape(-1, *k.shape[-3:]),
                v.reshape(-1, *v.shape[-3:]), bias)
    return out.reshape(*lead, *out.shape[-3:])


def _flatten_bias(bias: Tensor, lead: torch.Size) -> Tensor:
    """A bias [*, H, Q, K] with as many leading dims as `lead` as [1 or prod(lead), H, Q, K]:
    no copy when its leading dims are all 1 (shared) or all full size; else expanded."""
    bias_lead, tail = bias.shape[:len(lead)], bias.shape[len(lead):]
    if all(b == 1 for b in bias_lead):
        return bias.reshape(1, *tail)
    if tuple(bias_lead) != tuple(lead):
        bias = bias.expand(*lead, *tail)
    return bias.reshape(-1, *tail)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """4-D scaled_dot_product_attention (PyTorch's fused CPU kernel takes only 4-D)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _attend_shared(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, key_mask: Tensor) -> Tensor | None:
    """A bias shared by every leading index with a key mask that is not: when each mask row
    is either one common key vector (triangle attention's pair mask, tok[i] & tok[k]) or all
    False (a padding row), the common vector is folded into the shared bias, and the all-False
    rows get the bias plus a fully masked one, as the materialized sum gives them. Else None."""
    lead, n_k = q.shape[:-3], key_mask.shape[-1]
    rows = key_mask.expand(*lead, n_k).reshape(-1, n_k)                  # [M, K]
    if not rows.shape[0]:
        return None
    real = rows.any(dim=-1)                                              # [M]
    real_index = real.nonzero().squeeze(-1)
    common = rows[real_index[0]] if len(real_index) else rows[0]
    if not bool((rows[real_index] == common).all()):
        return None
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    bias = bias.reshape(1, *bias.shape[-3:])                              # [1, H, Q, K]
    real_bias = bias + mask_to_bias(common, q.dtype)                      # [1, H, Q, K]: no row dim
    if len(real_index) == len(rows):
        out = _sdpa(q4, k4, v4, real_bias)
        return out.reshape(*lead, *out.shape[-3:])
    pad_bias = bias + mask_to_bias(torch.zeros_like(common), q.dtype)    # all keys masked
    starts = [0, *((real[1:] != real[:-1]).nonzero().squeeze(-1) + 1).tolist(), len(rows)]
    if len(starts) <= _MAX_RUNS:      # runs of real / padding rows (padding: the last rows): views
        parts = [_sdpa(q4[a:b], k4[a:b], v4[a:b], real_bias if bool(real[a]) else pad_bias)
                 for a, b in zip(starts[:-1], starts[1:], strict=True)]
        out = torch.cat(parts)
    else:
        pad_index = (~real).nonzero().squeeze(-1)
        parts = [_sdpa(q4[i], k4[i], v4[i], b) for i, b in ((real_index, real_bias), (pad_index, pad_bias))]
        out = torch.cat(parts)[torch.cat([real_index, pad_index]).argsort()]
    return out.reshape(*lead, *out.shape[-3:])

