"""Diffusion sampling (SI Algorithms 18-25) on a row-sharded trunk output.

The token-pair inputs of the diffusion module never exist whole on one worker:
- the pair conditioning (Alg. 21 lines 1-5) is computed on this rank's rows of z, in row
  chunks (its transitions' hidden layer is 4 c_z wide);
- the atom encoder's trunk-pair term (Alg. 5 line 10: z[tok(l), tok(m)] for the atom pairs
  of its key windows) is gathered by the rank that holds row tok(l) and summed over the
  ranks (atom-sized, O(N_atom), not O(N_token^2));
- the Diffusion Transformer's attention biases (Alg. 24 line 8) are this rank's rows
  [H, R, N], computed once per trunk output (or per step above the cache budget, as on one
  device), and each block's attention runs this rank's query rows against all keys.

Samples: the sampler runs unchanged on every rank with the same generator over *all*
samples, so every draw is the one the single-device sampler makes. Per denoising step the
atom encoder and decoder (atom-level) run on this rank's share of the samples; the Diffusion
Transformer runs every sample on this rank's token rows, with the token activations
(S x N x c_token, small) all-gathered after each block; the denoised coordinates of all
samples are all-gathered at the end of the step. Per-rank memory: z's rows, the bias rows,
atom-level tensors for its samples and S x N x c_token activations; no N x N x c tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from foldray import kernels
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.atom_attention import AtomAttentionEncoder, gather_token_pairs
from foldray.model.diffusion import (
    TOKEN_BIAS_CACHE_BYTES,
    DiffusionConditioning,
    DiffusionModule,
    sample_diffusion,
)
from foldray.model.transformer import AttentionPairBias, DiffusionTransformer
from foldray.model.triangle import chunked_rows
from foldray.parallel.shard import PairShard
from foldray.parallel.trunk import ShardedTrunk

Features = Mapping[str, Tensor]


class ShardedConditioning(NamedTuple):
    """`diffusion.TrunkConditioning` on one rank: pair tensors by rows, atom-level ones whole."""

    z_rows: Tensor                      # [B, R, N, c_z] pair conditioning, this rank's rows
    c_atom: Tensor                      # [B, N_atom, c_atom]
    p_atom: Tensor                      # [B, n_block, n_q, n_k, c_atompair]
    token_bias_rows: list[Tensor] | None   # per block [B, H, R, N]; None: from z_rows each step
    encoder_biases: list[Tensor]
    decoder_biases: list[Tensor]


def sample_slice(n_sample: int, shard: PairShard) -> slice:
    """The samples rank `shard.rank` denoises (n_sample must be a multiple of the world)."""
    if n_sample % shard.world:
        raise ValueError(f"n_sample={n_sample} is not a multiple of the {shard.world} workers")
    per = n_sample // shard.world
    return slice(shard.rank * per, (shard.rank + 1) * per)


def pair_conditioning_rows(cond: DiffusionConditioning, features: Features, z_rows: Tensor,
                           shard: PairShard, chunk_size: int | None = None) -> Tensor:
    """`DiffusionConditioning.pair` for this rank's rows, `chunk_size` rows at a time."""
    first = shard.rank * shard.rows

    def rows(start: int, stop: int) -> Tensor:
        p = cond.relative_position(features, rows=slice(first + start, first + stop)).to(z_rows.dtype)
        z = cond.proj_z(cond.norm_z(torch.cat([z_rows[..., start:stop, :, :], p], dim=-1)))
        for transition in cond.transition_z:
            z = z + transition(z)
        return z

    return chunked_rows(rows, shard.rows, chunk_size)


def trunk_pair_term(encoder: AtomAttentionEncoder, features: Features, z_rows: Tensor,
                    shard: PairShard) -> Tensor:
    """Algorithm 5 line 10 in the blocked layout [B, n_block, n_q, n_k, c_atompair], equal on
    every rank: each rank fills the atom pairs whose query token is one of its rows, the
    others are zero, and one all-reduce sums them (adding zeros: exact)."""
    token_q, token_k = encoder.trunk_pair_tokens(features)
    z = encoder.embed_z(encoder.norm_z(z_rows))                             # [B, R, N, c_atompair]
    first = shard.rank * shard.rows
    mine = (token_q >= first) & (token_q < first + shard.rows)
    term = gather_token_pairs(z, (token_q - first).clamp(0, shard.rows - 1), token_k)
    term = torch.where(mine[..., :, None, None], term, torch.zeros((), dtype=term.dtype, device=term.device))
    if shard.world > 1:
        dist.all_reduce(term, group=shard.group)
    return term


def trunk_conditioning(module: DiffusionModule, features: Features, s_trunk: Tensor, z_rows: Tensor,
                       shard: PairShard, chunk_size: int | None = None) -> ShardedConditioning:
    """`DiffusionModule.trunk_conditioning` from this rank's rows of z, never holding z whole."""
    z = pair_conditioning_rows(module.conditioning, features, z_rows, shard, chunk_size)
    c_atom, p_atom = module.encoder.conditioning(
        features, s_trunk, z_pairs=trunk_pair_term(module.encoder, features, z, shard))
    atom_mask = features["atom_mask"]
    n_head = [block.n_head for block in module.transformer.attention]
    bias_bytes = sum(n_head) * z[..., 0].numel() * z.element_size()       # the same rule as one device
    token_biases = (module.transformer.pair_biases(z)
                    if bias_bytes <= max(TOKEN_BIAS_CACHE_BYTES, z.numel() * z.element_size()) else None)
    return ShardedConditioning(z, c_atom, p_atom, token_biases,
                               module.encoder.transformer.pair_biases(p_atom, atom_mask),
                               module.decoder.transformer.pair_biases(p_atom, atom_mask))


def attention_rows(attention: AttentionPairBias, a: Tensor, s: Tensor, bias_rows: Tensor,
                   mask: Tensor | None, shard: PairShard) -> Tensor:
    """`AttentionPairBias.forward` for this rank's query rows: a [*, N, c], s [*, N, c_s],
    bias_rows [*, H, R, N] -> [*, R, c] (keys and values from every token)."""
    if mask is not None and bool(mask.all()):
        mask = None
    a_k = (attention.ada_ln_k(a, s)
           if attention.ada_ln_k is not None and not attention.chained_key_norm else None)
    a = attention.ada_ln(a, s) if attention.ada_ln is not None else attention.norm_a(a)
    if attention.ada_ln_k is not None and attention.chained_key_norm:
        a_k = attention.ada_ln_k(a, s)
    kv = a if a_k is None else a_k
    x = a[..., shard.row_slice, :]
    q = attention._heads(attention.q(x))
    k, v = attention._heads(attention.k(kv)), attention._heads(attention.v(kv))
    o = kernels.attention(q, k, v, bias_rows, mask).transpose(-2, -3).flatten(-2)   # [*, R, H*c]
    out = attention.out(torch.sigmoid(attention.gate(x)) * o)
    if attention.s_gate is not None:
        out = torch.sigmoid(attention.s_gate(s[..., shard.row_slice, :])) * out
    return out


def transformer_rows(transformer: DiffusionTransformer, a: Tensor, s: Tensor, cond: ShardedConditioning,
                     mask: Tensor, shard: PairShard) -> Tensor:
    """`DiffusionTransformer.forward` (a [B, S, N, c], s [B, S, N, c_s]) with each block
    updating this rank's token rows and the rows all-gathered after it: a whole, every rank."""
    rows = shard.row_slice
    for i, (attention, transition) in enumerate(zip(transformer.attention, transformer.transition,
                                                    strict=True)):
        bias = (attention.pair_bias(cond.z_rows) if cond.token_bias_rows is None
                else cond.token_bias_rows[i]).unsqueeze(-4)                  # [B, 1, H, R, N]
        a_rows = a[..., rows, :] + attention_rows(attention, a, s, bias, mask, shard)
        a_rows = a_rows + transition(a_rows, s[..., rows, :])
        a = shard.gather_rows(a_rows, dim=-2)
    return a


def denoise_sharded(module: DiffusionModule, x_noisy: Tensor, t: Tensor, features: Features,
                    s_inputs: Tensor, s_trunk: Tensor, cond: ShardedConditioning, shard: PairShard,
                    diffusion_chunk: int | None = None) -> Tensor:
    """`DiffusionModule.forward` for all samples x_noisy [B, S, N_atom, 3], t [B, S]: this
    rank denoises its share (`diffusion_chunk` at a time) and every rank gets all of them."""
    mine = sample_slice(x_noisy.shape[-3], shard)
    per = mine.stop - mine.start
    step = per if diffusion_chunk is None else max(1, diffusion_chunk)
    m_atom = features["atom_mask"].unsqueeze(-2).unsqueeze(-1).to(x_noisy.dtype)  # [B, 1, N_atom, 1]
    token_mask = features["token_mask"].bool().unsqueeze(-2)                # [B, 1, N]
    x_noisy = x_noisy * m_atom
    t2 = (t * t).unsqueeze(-1).unsqueeze(-1)                                # [B, S, 1, 1]
    sd2 = module.sigma_data ** 2
    s = module.conditioning.single(t, s_inputs, s_trunk)                    # [B, S, N, c_s], all samples
    out = []
    for start in range(mine.start, mine.stop, step):   # the same number of groups on every rank
        group = slice(start, min(start + step, mine.stop))
        everyone = torch.cat([torch.arange(group.start, group.stop) - mine.start + r * per
                              for r in range(shard.world)]).to(s.device)   # the group of every rank
        x, t2_g = x_noisy[..., group, :, :], t2[..., group, :, :]
        a, q_skip, c_skip, p_skip = module.encoder(
            features, x / torch.sqrt(t2_g + sd2), conditioning=(cond.c_atom, cond.p_atom),
            pair_biases=cond.encoder_biases)
        a = a + module.proj_s(module.norm_s(s[..., group, :, :]))
        a = shard.gather_rows(a, dim=-3)                                    # the group of every rank
        a = transformer_rows(module.transformer, a, s.index_select(-3, everyone), cond, token_mask, shard)
        a = module.norm_a(a[..., shard.rank * a.shape[-3] // shard.world:
                            (shard.rank + 1) * a.shape[-3] // shard.world, :, :])
        r_update = module.decoder(a, q_skip, c_skip, p_skip, features, pair_biases=cond.decoder_biases)
        c_skip_t = sd2 / (sd2 + t2_g)
        c_out_t = module.sigma_data * torch.sqrt(t2_g) / torch.sqrt(sd2 + t2_g)
        out.append((c_skip_t * x + c_out_t * r_update) * m_atom)
    mine_out = out[0] if len(out) == 1 else torch.cat(out, dim=-3)
    return shard.gather_rows(mine_out, dim=-3)                              # all samples, every rank


@torch.no_grad()
def sample_sharded(model: AlphaFold3, features: Features, trunk: ShardedTrunk, shard: PairShard, *,
                   n_sample: int, n_step: int | None = None, generator: torch.Generator | None = None,
                   diffusion_chunk: int | None = None, chunk_size: int | None = None) -> Tensor:
    """`AlphaFold3.sample` on this rank: x [B, n_sample, N_atom, 3] on every rank, equal to
    the single-device sampler's with the same generator state. `chunk_size`: rows per chunk
    of the pair conditioning."""
    module = model.diffusion_module
    sample_slice(n_sample, shard)                                           # fail early
    cond = trunk_conditioning(module, features, trunk.s, trunk.z_rows, shard, chunk_size)

    def denoise(x_noisy: Tensor, t: Tensor) -> Tensor:
        return denoise_sharded(module, x_noisy, t, features, trunk.s_inputs, trunk.s, cond, shard,
                               diffusion_chunk)

    return sample_diffusion(denoise, features, n_sample, model.config.diffusion, generator, n_step=n_step)
