"""LayerNorm over the last dim: the dispatching op and its PyTorch reference.

Shapes: x [*, c]; weight, bias [c] or None. Same arguments and numerics as
`torch.nn.functional.layer_norm(x, (c,), weight, bias, eps)`; `layer_norm_triton.py` fuses
mean, variance, scale and shift into one pass over each row (and the backward into one more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from foldray.kernels import dispatch

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _unsupported(x: Tensor) -> str | None:
    if x.dtype not in _KERNEL_DTYPES:
        return f"dtype {x.dtype}"
    if x.shape[-1] > 8192:
        return f"c={x.shape[-1]} > 8192"
    return None


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim; Triton or reference."""
    tensors = [t for t in (x, weight, bias) if t is not None]
    kernel = dispatch.kernel_for("layer_norm", "layer_norm_triton", tensors, _unsupported(x))
    if kernel is not None:
        return kernel.fused_layer_norm(x, weight, bias, eps)
    return layer_norm_reference(x, weight, bias, eps)


def layer_norm_reference(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                         eps: float = 1e-5) -> Tensor:
    """The PyTorch reference (what nn.LayerNorm computes)."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
