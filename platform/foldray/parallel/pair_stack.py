"""The Pairformer stack (SI Algorithm 17) on a row-sharded pair representation.

Every function takes the single-device module itself and reads its parameters, so any
checkpoint runs sharded with no conversion, and each op mirrors that module's `forward`
line for line (model/triangle.py, model/pairformer.py):

- triangle update, outgoing (Alg. 12): a_ik for local rows i, b_jk arriving block by block
  from every rank (`PairShard.ring`), p_ij = sum_k a_ik b_jk; output LayerNorm, projection
  and gate are row-local;
- triangle update, incoming (Alg. 13): the same on z^T (one all-to-all): a_ki for local i is
  row i of z^T's projection, so the output lands in z's own row layout with no transpose back;
- triangle attention, starting node (Alg. 14): row-local but for the bias b_jk over all j,
  gathered (N^2 x heads, small); ending node (Alg. 15): the starting-node computation on
  rows of z^T, transposed back;
- pair transition: row-local; single-track attention (Alg. 24): its pair bias [H, N, N] is
  gathered and every rank updates the (small) single representation identically.

Peak memory per worker: z's rows, the projections of local rows and one ring block, i.e.
O(N^2 c / P), plus the attention logits of a row chunk. Pair masks must be
token_mask_i & token_mask_j (symmetric, as the model builds them). Inference only: dropout
would need a mask shared across workers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from foldray import kernels
from foldray.model.pairformer import PairformerBlock, PairformerStack
from foldray.model.triangle import _TriangleAttention, _TriangleMultiplication, chunked_rows
from foldray.parallel.shard import PairShard


def pair_mask_rows(token_mask: Tensor, shard: PairShard) -> Tensor:
    """[*, N] -> this rank's rows of the pair mask, [*, R, N]."""
    return token_mask[..., shard.row_slice, None] & token_mask[..., None, :]


def triangle_multiplication(module: _TriangleMultiplication, z_rows: Tensor, mask_rows: Tensor,
                            shard: PairShard) -> Tensor:
    """Algorithm 12/13 update of this rank's rows, [*, R, N, c_z]."""
    z_n = module.norm_in(z_rows)                                        # [*, R, N, c_z]
    source = z_n if module.outgoing else shard.transpose(z_n)           # LayerNorm is per pair
    ab = kernels.gated_linear(source, module.ab_gate.weight, module.ab.weight, mask_rows,
                              feature_dim=-3)                           # [*, 2c, R, N]
    a, b = ab.chunk(2, dim=-3)                                          # [*, c, R (i | j), N (k)]
    p = a.new_empty(*a.shape[:-1], shard.n_token)                      # [*, c, R_i, N_j]
    for source, block in shard.ring(b):                                 # block: b of rank `source`
        p[..., source * shard.rows:(source + 1) * shard.rows] = a @ block.transpose(-1, -2)
    p = p.movedim(-3, -1)                                               # [*, R, N, c]
    return kernels.gated_norm_linear(p, z_n, module.norm_out.weight, module.norm_out.bias,
                                     module.out.weight, module.gate.weight, module.norm_out.eps)


def triangle_attention(module: _TriangleAttention, z_rows: Tensor, mask_rows: Tensor,
                       shard: PairShard, chunk_size: int | None = None) -> Tensor:
    """Algorithm 14/15 update of this rank's rows, [*, R, N, c_z]."""
    z_n = module.norm(z_rows)
    if not module.starting:
        z_n = shard.transpose(z_n)                                      # rows of z^T
    bias = shard.gather_rows(module.bias(z_n), dim=-3)                  # [*, N, N, H]
    bias = bias.movedim(-1, -3).unsqueeze(-4)                           # [*, 1, H, N, N]
    if module.bias_ik and not module.starting:
        bias = bias.transpose(-1, -2)

    def rows(start: int, stop: int) -> Tensor:
        x = z_n[..., start:stop, :, :]
        q, k, v = module._heads(module.q(x)), module._heads(module.k(x)), module._heads(module.v(x))
        o = kernels.attention(q, k, v, bias, mask_rows[..., start:stop, :])
        o = o.transpose(-2, -3).flatten(-2)
        return module.out(torch.sigmoid(module.gate(x)) * o)

    out = chunked_rows(rows, z_n.shape[-3], chunk_size)
    return out if module.starting else shard.transpose(out)


def pairformer_block(block: PairformerBlock, s: Tensor | None, z_rows: Tensor, token_mask: Tensor,
                     shard: PairShard, chunk_size: int | None = None) -> tuple[Tensor | None, Tensor]:
    """Algorithm 17 lines 2-8 on this rank's rows; s (if any) comes back equal on every rank."""
    if block.training and block.dropout > 0:
        raise NotImplementedError("sharded Pairformer blocks run in inference only (dropout off)")
    mask_rows = pair_mask_rows(token_mask, shard)
    z_rows = z_rows + triangle_multiplication(block.tri_mul_out, z_rows, mask_rows, shard)
    z_rows = z_rows + triangle_multiplication(block.tri_mul_in, z_rows, mask_rows, shard)
    z_rows = z_rows + triangle_attention(block.tri_att_start, z_rows, mask_rows, shard, chunk_size)
    z_rows = z_rows + triangle_attention(block.tri_att_end, z_rows, mask_rows, shard, chunk_size)
    z_rows = z_rows + chunked_rows(lambda i, j: block.pair_transition(z_rows[..., i:j, :, :]),
                                   z_rows.shape[-3], chunk_size)
    if block.attention is not None and s is not None:
        bias = shard.gather_rows(block.attention.pair_bias(z_rows), dim=-2)   # [*, H, N, N]
        s = s + block.attention(s, None, None, mask=token_mask, bias=bias)
        s = s + block.single_transition(s)
    return s, z_rows


def pairformer_stack(stack: PairformerStack, s: Tensor | None, z_rows: Tensor, token_mask: Tensor,
                     shard: PairShard, chunk_size: int | None = None) -> tuple[Tensor | None, Tensor]:
    """`PairformerStack.forward` on a row-sharded z: returns (s, this rank's rows of z)."""
    for block in stack.blocks:
        s, z_rows = pairformer_block(block, s, z_rows, token_mask, shard, chunk_size)
    return s, z_rows
