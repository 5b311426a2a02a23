"""Attention with pair bias and the conditioned transformer (SI 3.7, Algorithms 23-25).

Used by the Pairformer (unconditioned, s=None), the Diffusion Transformer and, with
sequence-local key windows, the Atom Transformer (Algorithm 7).

Shapes: a [*, N, c_a]; s [*, N, c_s] or None; z [*, N, N, c_z]; beta [*, N, N] additive;
mask [*, N] bool (True = real token/atom).
Windowed (local) mode: queries are split into blocks of n_q, block b attends to the keys
`key_index[b]` ([n_block, n_k] long); then z is [*, n_block, n_q, n_k, c_z], beta
[*, n_block, n_q, n_k], mask [*, N].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foldray import kernels
from foldray.model.primitives import AdaLN, LayerNorm, Linear, LinearNoBias


class AttentionPairBias(nn.Module):
    """Algorithm 24: gated multi-head attention biased by the pair representation."""

    def __init__(self, c_a: int, c_s: int | None, c_z: int, n_head: int, *,
                 separate_key_norm: bool = False, chained_key_norm: bool = False) -> None:
        super().__init__()
        if c_a % n_head:
            raise ValueError(f"c_a={c_a} is not divisible by n_head={n_head}")
        self.n_head, self.c = n_head, c_a // n_head
        self.ada_ln = AdaLN(c_a, c_s) if c_s is not None else None           # lines 1-2
        self.norm_a = LayerNorm(c_a) if c_s is None else None             # line 4
        self.q = Linear(c_a, c_a)                                            # line 6
        self.k = LinearNoBias(c_a, c_a)                                      # line 7
        self.v = LinearNoBias(c_a, c_a)
        self.norm_z = LayerNorm(c_z)                                      # line 8
        self.z_bias = LinearNoBias(c_z, n_head)
        self.gate = LinearNoBias(c_a, c_a)                                   # line 9
        self.out = LinearNoBias(c_a, c_a)                                    # line 11
        self.s_gate = Linear(c_s, c_a, bias_init=-2.0) if c_s is not None else None  # line 13
        # OpenFold3 (AtomAttentionConfig.separate_key_norm): keys/values of the windowed atom
        # attention read their own AdaLN of a; queries and the gate use `ada_ln`.
        self.ada_ln_k = AdaLN(c_a, c_s) if separate_key_norm and c_s is not None else None
        self.chained_key_norm = chained_key_norm   # Protenix: ada_ln_k reads ada_ln's output

    def _heads(self, x: Tensor) -> Tensor:
        """[*, N, H*c] -> [*, H, N, c]."""
        return x.unflatten(-1, (self.n_head, self.c)).transpose(-2, -3)

    def pair_bias(self, z: Tensor, beta: Tensor | None = None) -> Tensor:
        """Lines 8 (+ beta): [*, H, N, N] or [*, B, H, q, k]. It depends on z and beta only, so a
        caller that runs this block many times on one z (the sampler) computes it once."""
        bias = self.z_bias(self.norm_z(z)).movedim(-1, -3)
        return bias if beta is None else bias + beta.unsqueeze(-3)

    def forward(self, a: Tensor, s: Tensor | None, z: Tensor | None, beta: Tensor | None = None,
                mask: Tensor | None = None, key_index: Tensor | None = None, *,
                bias: Tensor | None = None) -> Tensor:
        """`bias`: this block's precomputed `pair_bias(z, beta)`; then z and beta are unused."""
        if (mask is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and bool(mask.all())):
            mask = None        # inference: an all-real mask adds exactly 0; skip its [*, H, N, N] bias
        a_k = self.ada_ln_k(a, s) if self.ada_ln_k is not None and not self.chained_key_norm else None
        a = self.ada_ln(a, s) if self.ada_ln is not None else self.norm_a(a)
        if self.ada_ln_k is not None and self.chained_key_norm:
            a_k = self.ada_ln_k(a, s)
        if bias is None:
            if z is None:
                raise ValueError("AttentionPairBias: give z or a precomputed bias")
            bias = self.pair_bias(z, beta)                     # [*, H, N, N] or [*, B, H, q, k]
        gate = torch.sigmoid(self.gate(a))
        if key_index is None:
            kv = a if a_k is None else a_k
            q, k, v = self._heads(self.q(a)), self._heads(self.k(kv)), self._heads(self.v(kv))
            o = kernels.attention(q, k, v, bias, mask)                     # [*, H, N, c]
            o = o.transpose(-2, -3).flatten(-2)                             # [*, N, H*c]
        else:
            o = self._local(a, bias, mask, key_index, a if a_k is None else a_k)
        out = self.out(gate * o)
        if self.s_gate is not None:
            out = torch.sigmoid(self.s_gate(s)) * out
        return out

    def _local(self, a: Tensor, bias: Tensor, mask: Tensor | None, key_index: Tensor,
               a_k: Tensor) -> Tensor:
        """Sequence-local attention: block b of queries attends to keys key_index[b]."""
        n_block, n_k = key_index.shape
        n = a.shape[-2]
        n_q = n // n_block
        q = self.q(a).unflatten(-2, (n_block, n_q))                         # [*, B, q, c_a]
        # project keys/values once per atom, then gather the (4x overlapping) windows
        flat = key_index.flatten()
        k = self.k(a_k)[..., flat, :].unflatten(-2, (n_block, n_k))         # [*, B, k, c_a]
        v = self.v(a_k)[..., flat, :].unflatten(-2, (n_block, n_k))
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        key_mask = None
        if mask is not None:
            key_mask = mask[..., key_index.flatten()].unflatten(-1, (n_block, n_k))  # [*, B, k]
        o = kernels.attention(q, k, v, bias, key_mask)                      # [*, B, H, q, c]
        return o.transpose(-2, -3).flatten(-2).flatten(-3, -2)              # [*, N, H*c]


class ConditionedTransitionBlock(nn.Module):
    """Algorithm 25: SwiGLU transition with adaptive LayerNorm and an adaLN-Zero gate."""

    def __init__(self, c_a: int, c_s: int, n: int = 2) -> None:
        super().__init__()
        self.ada_ln = AdaLN(c_a, c_s)
        self.a = LinearNoBias(c_a, n * c_a)
        self.b = LinearNoBias(c_a, n * c_a)
        self.s_gate = Linear(c_s, c_a, bias_init=-2.0)
        self.out = LinearNoBias(n * c_a, c_a)

    def forward(self, a: Tensor, s: Tensor) -> Tensor:
        a = self.ada_ln(a, s)                                               # line 1
        b = torch.nn.functional.silu(self.a(a)) * self.b(a)                 # line 2
        return torch.sigmoid(self.s_gate(s)) * self.out(b)                  # line 3


class DiffusionTransformer(nn.Module):
    """Algorithm 23: n_block x (attention with pair bias, then conditioned transition).

    SI deviation: the SI's line 3 (a <- b + Transition(a)) drops the residual of a; AlphaFold 3's
    released code, OpenFold3 and Protenix all use pre-norm residuals, a += Attn(a) then
    a += Transition(a). We follow the released models so their weights run unchanged.
    """

    def __init__(self, c_a: int, c_s: int, c_z: int, n_block: int, n_head: int, *,
                 separate_key_norm: bool = False, chained_key_norm: bool = False) -> None:
        super().__init__()
        self.attention = nn.ModuleList(
            AttentionPairBias(c_a, c_s, c_z, n_head, separate_key_norm=separate_key_norm,
                              chained_key_norm=chained_key_norm)
            for _ in range(n_block))
        self.transition = nn.ModuleList(
            ConditionedTransitionBlock(c_a, c_s) for _ in range(n_block))

    def pair_biases(self, z: Tensor, beta: Tensor | None = None) -> list[Tensor]:
        """Every block's attention bias from (z, beta): what `forward(..., biases=)` takes."""
        return [attention.pair_bias(z, beta) for attention in self.attention]

    def forward(self, a: Tensor, s: Tensor, z: Tensor | None, beta: Tensor | None = None,
                mask: Tensor | None = None, key_index: Tensor | None = None, *,
                biases: list[Tensor] | None = None) -> Tensor:
        """`biases`: `pair_biases(z, beta)` computed beforehand (z and beta then unused); the
        sampler reuses them across its steps instead of re-normalizing z in every block."""
        if biases is None:
            biases = [None] * len(self.attention)
        for attention, transition, bias in zip(self.attention, self.transition, biases, strict=True):
            a = a + attention(a, s, z, beta, mask, key_index, bias=bias)   # line 2
            a = a + transition(a, s)                                        # line 3
        return a
