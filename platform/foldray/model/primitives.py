"""Building blocks shared by every module: linear layers with the SI's initialisations,
the SwiGLU Transition (Algorithm 11) and Adaptive LayerNorm (Algorithm 26).

Shapes: x [*, c]; s [*, c_s] conditioning.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from foldray import kernels


class LinearNoBias(nn.Linear):
    """The SI's LinearNoBias. `zero_init` for output projections that start as identity updates."""

    def __init__(self, c_in: int, c_out: int, *, zero_init: bool = False) -> None:
        super().__init__(c_in, c_out, bias=False)
        if zero_init:
            nn.init.zeros_(self.weight)


class Linear(nn.Linear):
    """Linear with bias; `bias_init` as in Algorithms 24-25 (adaLN-Zero gates start at -2)."""

    def __init__(self, c_in: int, c_out: int, *, bias_init: float = 0.0,
                 zero_init: bool = False) -> None:
        super().__init__(c_in, c_out, bias=True)
        nn.init.constant_(self.bias, bias_init)
        if zero_init:
            nn.init.zeros_(self.weight)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state_dict names) computed by `kernels.layer_norm`,
    so the fused Triton kernel runs on CUDA."""

    def forward(self, x: Tensor) -> Tensor:
        if len(self.normalized_shape) != 1:
            return super().forward(x)
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class Transition(nn.Module):
    """Algorithm 11: LayerNorm, SwiGLU with expansion n, projection back to c."""

    def __init__(self, c: int, n: int = 4) -> None:
        super().__init__()
        self.norm = LayerNorm(c)                        # line 1
        self.a = LinearNoBias(c, n * c)                 # line 2
        self.b = LinearNoBias(c, n * c)                 # line 3
        self.out = LinearNoBias(n * c, c)               # line 4

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.out(F.silu(self.a(x)) * self.b(x))


class AdaLN(nn.Module):
    """Algorithm 26: LayerNorm of a whose scale and shift come from the conditioning s."""

    def __init__(self, c_a: int, c_s: int) -> None:
        super().__init__()
        self.norm_a = LayerNorm(c_a, elementwise_affine=False)         # line 1
        self.norm_s = LayerNorm(c_s, bias=False)                        # line 2
        self.scale = Linear(c_s, c_a)                                   # line 3
        self.shift = LinearNoBias(c_s, c_a)

    def forward(self, a: Tensor, s: Tensor) -> Tensor:
        """a [*, c_a], s [*, c_s] -> [*, c_a]; LN(a), sigmoid-scale and shift fused on CUDA."""
        return kernels.ada_layer_norm(a, s, self.norm_s.weight, self.norm_s.bias, self.scale.weight,
                                      self.scale.bias, self.shift.weight, self.shift.bias,
                                      self.norm_a.eps, self.norm_s.eps)
