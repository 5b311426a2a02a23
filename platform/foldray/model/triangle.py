"""Triangle updates of the pair representation (SI 3.4, Algorithms 12-15).

Shapes: z [*, N_token, N_token, c_z]; pair_mask [*, N_token, N_token] bool (True = real pair).
Each module returns an *update* of z; PairformerBlock adds it with row/column-wise dropout.

`chunk_size` bounds peak memory on long inputs without changing the result: the
multiplicative updates compute their output `chunk_size` rows i at a time (einsum, output
LayerNorm, projection and gate), the attentions run `chunk_size` attention rows at a time
(the [*, rows, H, N, N] logits are the O(N^3) tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from foldray import kernels
from foldray.model.primitives import LayerNorm, LinearNoBias


def chunked_rows(fn: Callable[[int, int], Tensor], n: int, chunk_size: int | None,
                 dim: int = -3) -> Tensor:
    """fn(start, stop) for row blocks [start, stop) of n rows, concatenated along `dim`."""
    if chunk_size is None or chunk_size >= n:
        return fn(0, n)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    return torch.cat([fn(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)],
                     dim=dim)


class _TriangleMultiplication(nn.Module):
    """Algorithms 12-13 (SI 3.4): z~_ij = g_ij * Linear(LayerNorm(sum_k a_.. * b_..)).

    Masked pairs get a = b = 0 (AF3's released code multiplies the projections by the pair
    mask; the SI omits it), so padded tokens k never enter a real pair's sum.
    """

    outgoing: bool

    def __init__(self, c_z: int, c_hidden: int = 128) -> None:
        super().__init__()
        self.norm_in = LayerNorm(c_z)                                   # line 1
        self.ab_gate = LinearNoBias(c_z, 2 * c_hidden)                     # line 2: sigmoid(.)
        self.ab = LinearNoBias(c_z, 2 * c_hidden)                          #   (.) * Linear(z)
        self.gate = LinearNoBias(c_z, c_z)                                 # line 3
        self.norm_out = LayerNorm(c_hidden)                             # line 4
        self.out = LinearNoBias(c_hidden, c_z)

    def forward(self, z: Tensor, pair_mask: Tensor, chunk_size: int | None = None) -> Tensor:
        z = self.norm_in(z)                                                # [*, N, N, c_z]
        # line 2, fused: sigmoid(Linear(z)) * Linear(z) * mask, written channel-first
        ab = kernels.gated_linear(z, self.ab_gate.weight, self.ab.weight, pair_mask, feature_dim=-3)
        a, b = ab.chunk(2, dim=-3)                                         # [*, c, N, N] each
        if self.outgoing:   # sum_k a_ik b_jk
            left, right = a, b.transpose(-1, -2)                           # [*, c, i, k], [*, c, k, j]
        else:               # sum_k a_ki b_kj
            left, right = a.transpose(-1, -2), b

        def rows(start: int, stop: int) -> Tensor:
            p = (left[..., start:stop, :] @ right).movedim(-3, -1)         # [*, rows, N, c]
            # lines 3-4, fused: sigmoid(Linear(z)) * Linear(LayerNorm(p))  -> [*, rows, N, c_z]
            return kernels.gated_norm_linear(p, z[..., start:stop, :, :], self.norm_out.weight,
                                             self.norm_out.bias, self.out.weight, self.gate.weight,
                                             self.norm_out.eps)

        return chunked_rows(rows, z.shape[-3], chunk_size)


class TriangleMultiplicationOutgoing(_TriangleMultiplication):
    """Algorithm 12 (SI 3.4): triangular multiplicative update using "outgoing" edges,
    z~_ij from sum_k a_ik * b_jk."""

    outgoing = True


class TriangleMultiplicationIncoming(_TriangleMultiplication):
    """Algorithm 13 (SI 3.4): triangular multiplicative update using "incoming" edges,
    z~_ij from sum_k a_ki * b_kj.

    Note for weight import: AF3's released code writes this as einsum('kjc,kic->ijc', a, b),
    i.e. its `a` is the SI's b; swap the two halves of the projection when importing.
    """

    outgoing = False


class _TriangleAttention(nn.Module):
    """Algorithms 14-15 (SI 3.4): gated attention along rows of the pair representation."""

    starting: bool

    def __init__(self, c_z: int, c_hidden: int = 32, n_head: int = 4, *,
                 bias_ik: bool = False) -> None:
        super().__init__()
        self.n_head, self.c = n_head, c_hidden
        self.bias_ik = bias_ik      # ending node only: b_ik (OpenFold3) instead of b_ki
        self.norm = LayerNorm(c_z)                                      # line 1
        self.q = LinearNoBias(c_z, n_head * c_hidden)                      # line 2
        self.k = LinearNoBias(c_z, n_head * c_hidden)
        self.v = LinearNoBias(c_z, n_head * c_hidden)
        self.bias = LinearNoBias(c_z, n_head)                              # line 3
        self.gate = LinearNoBias(c_z, n_head * c_hidden)                   # line 4
        self.out = LinearNoBias(n_head * c_hidden, c_z)                    # line 7

    def _heads(self, x: Tensor) -> Tensor:
        """[*, R, N, H*c] -> [*, R, H, N, c]."""
        return x.unflatten(-1, (self.n_head, self.c)).transpose(-2, -3)

    def forward(self, z: Tensor, pair_mask: Tensor, chunk_size: int | None = None) -> Tensor:
        z = self.norm(z)                                                   # [*, N, N, c_z]
        if not self.starting:   # attend along columns: rows of the transposed pair
            z, pair_mask = z.transpose(-2, -3), pair_mask.transpose(-1, -2)
        bias = self.bias(z).movedim(-1, -3).unsqueeze(-4)                  # [*, 1, H, N, N]
        if self.bias_ik and not self.starting:
            bias = bias.transpose(-1, -2)

        def rows(start: int, stop: int) -> Tensor:
            x = z[..., start:stop, :, :]                                   # [*, R, N, c_z]
            q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
            o = kernels.attention(q, k, v, bias, pair_mask[..., start:stop, :])  # lines 5-6
            o = o.transpose(-2, -3).flatten(-2)                            # [*, R, N, H*c]
            return self.out(torch.sigmoid(self.gate(x)) * o)               # lines 6-7

        out = chunked_rows(rows, z.shape[-3], chunk_size)
        return out if self.starting else out.transpose(-2, -3)


class TriangleAttentionStartingNode(_TriangleAttention):
    """Algorithm 14 (SI 3.4): edge ij attends over edges ik, biased by jk.

    a_ijk = softmax_k(q_ij . k_ik / sqrt(c) + b_jk), keys k masked by pair_mask[i, k].
    """

    starting = True


class TriangleAttentionEndingNode(_TriangleAttention):
    """Algorithm 15 (SI 3.4): edge ij attends over edges kj; runs Algorithm 14's computation
    on the transposed pair (keys k masked by pair_mask[k, j]).

    The bias is b_ki, as in the SI, AF2 and Protenix. OpenFold3 biases by b_ik instead
    (its ending node runs the starting node on z^T with `transpose_bias=True`);
    PairformerConfig.tri_att_end_bias_ik reproduces that for its weights.
    """

    starting = False
