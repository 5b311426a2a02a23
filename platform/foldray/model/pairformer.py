"""The Pairformer stack (SI 3.6, Algorithm 17) and the shared dropout helpers.

Shapes: s [*, N_token, c_s] or None (pair-only stacks: template embedder, MSA module);
z [*, N_token, N_token, c_z]; token_mask [*, N_token] bool; pair_mask [*, N_token, N_token]
bool = token_mask_i & token_mask_j.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from foldray.model.config import PairformerConfig
from foldray.model.primitives import Transition
from foldray.model.transformer import AttentionPairBias
from foldray.model.triangle import (
    TriangleAttentionEndingNode,
    TriangleAttentionStartingNode,
    TriangleMultiplicationIncoming,
    TriangleMultiplicationOutgoing,
    chunked_rows,
)


def shared_dropout(x: Tensor, p: float, training: bool, shared_dim: int) -> Tensor:
    """Dropout whose mask is shared along `shared_dim` (AF2's DropoutRowwise/Columnwise).

    DropoutRowwise: shared_dim=-3 (one mask [N_j, c] reused for every row i, or every MSA
    row s); DropoutColumnwise: shared_dim=-2. Identity outside training or with p = 0.
    """
    if not training or p == 0.0:
        return x
    shape = list(x.shape)
    shape[shared_dim] = 1
    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def dropout_rowwise(x: Tensor, p: float, training: bool) -> Tensor:
    return shared_dropout(x, p, training, shared_dim=-3)


def dropout_columnwise(x: Tensor, p: float, training: bool) -> Tensor:
    return shared_dropout(x, p, training, shared_dim=-2)


# Transient copies of the triangle attention's [rows, H, N, N] logits alive at once
# (bias + mask, scores, softmax) in the PyTorch attention path.
ATTENTION_COPIES = 3
# Lean default: the O(N^3) transient may use at most this many times the pair representation.
LEAN_TRANSIENT_FACTOR = 4


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free for new tensors now: CUDA free memory, or MemAvailable (Linux) on CPU."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_chunk_size(n_token: int, c_z: int, n_head: int, *, n_batch: int = 1, dtype_bytes: int = 4,
                    budget_bytes: int | None = None, device: torch.device | str | None = None,
                    ) -> int | None:
    """Pair-stack rows per chunk when RuntimeConfig.chunk_size is None: None (no chunking) when
    the unchunked pass fits, else the largest power of two that does (at least 1).

    Why: the pair stack's peak is not z (N^2 c_z values) but the triangle attention's
    logits, ATTENTION_COPIES x n_head x N^3 values per batch element; chunking R rows cuts
    that to R/N of it without changing results. The transient may use at most
    min(budget_bytes, LEAN_TRANSIENT_FACTOR x the pair representation's bytes), where
    budget_bytes defaults to a quarter of `available_memory(device)`: long inputs chunk
    before they run out of memory, and short ones stay a small multiple of z (chunks of
    N^2 c_z-sized work still keep the matrix products efficient).
    """
    if budget_bytes is None:
        budget_bytes = available_memory(device) // 4
    pair_bytes = n_batch * n_token * n_token * c_z * dtype_bytes
    budget = min(budget_bytes, LEAN_TRANSIENT_FACTOR * pair_bytes)
    per_row = ATTENTION_COPIES * n_batch * n_head * n_token * n_token * dtype_bytes
    if per_row * n_token <= budget:
        return None
    rows = max(1, budget // per_row)
    return 1 << (rows.bit_length() - 1)


def pair_mask_from(token_mask: Tensor) -> Tensor:
    """[*, N] bool -> [*, N, N] bool, True where both tokens are real."""
    return token_mask[..., :, None] & token_mask[..., None, :]


def _transition_in_place(transition: nn.Module, z: Tensor, chunk_size: int | None) -> None:
    """z += transition(z), `chunk_size` rows at a time (inference only): each row's update
    reads only that row, so no full-size update tensor is ever held."""
    n = z.shape[-3]
    step = n if chunk_size is None else max(1, chunk_size)
    for start in range(0, n, step):
        rows = z[..., start:start + step, :, :]
        rows += transition(rows)


class PairformerBlock(nn.Module):
    """Algorithm 17 (SI 3.6) lines 2-8: one Pairformer block (pair stack, then the single track).

    With c_s=None only the pair stack (lines 2-6) exists; this is also the pair stack of
    the MSA module (Algorithm 8 lines 9-13) and the template embedder (Algorithm 16 line 9).
    """

    def __init__(self, c_s: int | None, c_z: int, config: PairformerConfig) -> None:
        super().__init__()
        self.dropout = config.dropout
        self.tri_mul_out = TriangleMultiplicationOutgoing(c_z, config.c_hidden_mul)       # line 2
        self.tri_mul_in = TriangleMultiplicationIncoming(c_z, config.c_hidden_mul)        # line 3
        self.tri_att_start = TriangleAttentionStartingNode(                               # line 4
            c_z, config.c_hidden_tri_att, config.n_head_tri)
        self.tri_att_end = TriangleAttentionEndingNode(                                   # line 5
            c_z, config.c_hidden_tri_att, config.n_head_tri, bias_ik=config.tri_att_end_bias_ik)
        self.pair_transition = Transition(c_z, config.transition_n)                      # line 6
        self.attention = None
        self.single_transition = None
        if c_s is not None:
            self.attention = AttentionPairBias(c_s, None, c_z, config.n_head)             # line 7
            self.single_transition = Transition(c_s)                                      # line 8

    def forward(self, s: Tensor | None, z: Tensor, token_mask: Tensor, pair_mask: Tensor,
                chunk_size: int | None = None) -> tuple[Tensor | None, Tensor]:
        p, training = self.dropout, self.training
        z = z + dropout_rowwise(self.tri_mul_out(z, pair_mask, chunk_size), p, training)
        if torch.is_grad_enabled():
            z = z + dropout_rowwise(self.tri_mul_in(z, pair_mask, chunk_size), p, training)
            z = z + dropout_rowwise(self.tri_att_start(z, pair_mask, chunk_size), p, training)
            z = z + dropout_columnwise(self.tri_att_end(z, pair_mask, chunk_size), p, training)
            z = z + chunked_rows(lambda i, j: self.pair_transition(z[..., i:j, :, :]),
                                 z.shape[-3], chunk_size)
        else:   # inference: z is our own tensor now (line 2 made it), so update it in place
            z += dropout_rowwise(self.tri_mul_in(z, pair_mask, chunk_size), p, training)
            z += dropout_rowwise(self.tri_att_start(z, pair_mask, chunk_size), p, training)
            z += dropout_columnwise(self.tri_att_end(z, pair_mask, chunk_size), p, training)
            _transition_in_place(self.pair_transition, z, chunk_size)
        if self.attention is not None and s is not None:
            s = s + self.attention(s, None, z, mask=token_mask)
            s = s + self.single_transition(s)
        return s, z


class PairformerStack(nn.Module):
    """Algorithm 17 (SI 3.6): n_block Pairformer blocks over (s, z).

    `n_block` overrides config.n_block (the template embedder's 2-block stack). Dropout
    (config.dropout, row-wise; column-wise for the ending-node attention) is active only
    in training mode.
    """

    def __init__(self, c_s: int | None, c_z: int, config: PairformerConfig,
                 n_block: int | None = None) -> None:
        super().__init__()
        n_block = config.n_block if n_block is None else n_block
        self.blocks = nn.ModuleList(PairformerBlock(c_s, c_z, config) for _ in range(n_block))

    def forward(self, s: Tensor | None, z: Tensor, token_mask: Tensor | None = None,
                chunk_size: int | None = None,
                checkpoint_activations: bool = False) -> tuple[Tensor | None, Tensor]:
        """Returns (s, z) after all blocks; s stays None when given None.

        token_mask None means every token is real. `checkpoint_activations` recomputes each
        block in the backward pass (torch.utils.checkpoint) instead of storing it.
        """
        if token_mask is None:
            token_mask = torch.ones(z.shape[:-2], dtype=torch.bool, device=z.device)
        pair_mask = pair_mask_from(token_mask)
        for block in self.blocks:
            if checkpoint_activations and torch.is_grad_enabled():
                s, z = checkpoint(block, s, z, token_mask, pair_mask, chunk_size,
                                  use_reentrant=False)
            else:
                s, z = block(s, z, token_mask, pair_mask, chunk_size)
        return s, z
