"""Adaptive LayerNorm (SI Algorithm 26): the dispatching op and its PyTorch reference.

    a_hat = LN(a)                         # [*, c_a], no affine parameters
    s_n   = LN_s(s)                       # [*, c_s], weight (and optional bias)
    out   = sigmoid(s_n @ W_scale^T + b_scale) * a_hat + s_n @ W_shift^T     # [*, c_a]

The two Linear layers and LN_s stay torch matmuls / the `layer_norm` op (they act on the
conditioning s); `ada_layer_norm_triton.py` fuses LN(a) with the sigmoid, scale and shift
into one pass over each row of a (and the backward into one more), so a_hat and
sigmoid(scale) are never written. The reference computes exactly what `AdaLN` always did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from foldray.kernels import dispatch
from foldray.kernels.layer_norm import layer_norm

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _unsupported(a: Tensor, s: Tensor) -> str | None:
    if a.dtype not in _KERNEL_DTYPES or s.dtype != a.dtype:
        return f"dtypes {a.dtype}/{s.dtype}"
    if a.shape[-1] > 8192:
        return f"c_a={a.shape[-1]} > 8192"
    try:
        if torch.broadcast_shapes(a.shape[:-1], s.shape[:-1]) != a.shape[:-1]:
            return f"s {tuple(s.shape)} broadcasts a {tuple(a.shape)} to a larger shape"
    except RuntimeError:
        return f"s {tuple(s.shape)} does not broadcast to a {tuple(a.shape)}"
    return None


def ada_layer_norm(a: Tensor, s: Tensor, norm_s_weight: Tensor | None, norm_s_bias: Tensor | None,
                   scale_weight: Tensor, scale_bias: Tensor | None, shift_weight: Tensor,
                   shift_bias: Tensor | None = None, eps_a: float = 1e-5, eps_s: float = 1e-5
                   ) -> Tensor:
    """Algorithm 26 on a [*, c_a] conditioned by s [*, c_s] (leading dims broadcast to a's);
    weights as nn.Linear/nn.LayerNorm hold them. Returns [*, c_a]; Triton or reference."""
    a_k, s_k = dispatch.autocast_operands(a, s)
    tensors = [t for t in (a_k, s_k, norm_s_weight, norm_s_bias, scale_weight, scale_bias, shift_weight,
                           shift_bias) if t is not None]
    kernel = dispatch.kernel_for("ada_layer_norm", "ada_layer_norm_triton", tensors, _unsupported(a_k, s_k))
    if kernel is None:
        return ada_layer_norm_reference(a, s, norm_s_weight, norm_s_bias, scale_weight, scale_bias,
                                        shift_weight, shift_bias, eps_a, eps_s)
    s_n = layer_norm(s_k, norm_s_weight, norm_s_bias, eps_s)                            # [*, c_s]
    scale, shift = dispatch.autocast_operands(F.linear(s_n, scale_weight, scale_bias),  # [*, c_a]
                                              F.linear(s_n, shift_weight, shift_bias))
    a_k, scale, shift = (t.to(a_k.dtype) for t in (a_k, scale, shift))
    return kernel.fused_ada_layer_norm(a_k, scale, shift, eps_a)


def ada_layer_norm_reference(a: Tensor, s: Tensor, norm_s_weight: Tensor | None,
                             norm_s_bias: Tensor | None, scale_weight: Tensor, scale_bias: Tensor | None,
                             shift_weight: Tensor, shift_bias: Tensor | None = None,
                             eps_a: float = 1e-5, eps_s: float = 1e-5) -> Tensor:
    """The PyTorch reference (AdaLN.forward before this op existed)."""
    a = F.layer_norm(a, a.shape[-1:], None, None, eps_a)
    s = F.layer_norm(s, s.shape[-1:], norm_s_weight, norm_s_bias, eps_s)
    return torch.sigmoid(F.linear(s, scale_weight, scale_bias)) * a + F.linear(s, shift_weight, shift_bias)
