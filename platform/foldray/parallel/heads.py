"""Diffusion sampling and the confidence head on a row-sharded trunk output.

- Diffusion (Alg. 18-20): the pair conditioning (Alg. 21 lines 1-5, per pair) is computed
  on this rank's rows and gathered once (the atom encoder reads token pairs anywhere), the
  rest of the noise-independent conditioning is built once per rank, and each rank
  denoises its own samples. The sampler itself runs unchanged on every
  rank with the same generator over *all* samples, so every draw (initial noise, rotations,
  translations, per-step noise) is the one the single-device sampler makes; each step only
  the denoiser is split (rank r denoises samples r*S/P..(r+1)*S/P) and the denoised
  coordinates (S x N_atom x 3, small) are all-gathered. Every rank ends with all samples.
- Confidence (Alg. 31): per sample, the head's Pairformer runs on this rank's rows of z
  (`pair_stack.pairformer_stack`); pLDDT and resolved come from s (whole on every rank);
  PAE / PDE logits are computed by rows (PDE's transpose via one all-to-all) and gathered on
  rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from foldray.model.alphafold3 import AlphaFold3, nucleotide_tokens
from foldray.model.confidence import EXACT, ConfidenceHead, ConfidenceOutput, batched_gather, distance_one_hot
from foldray.model.diffusion import (
    TOKEN_BIAS_CACHE_BYTES,
    DiffusionModule,
    TrunkConditioning,
    sample_diffusion,
)
from foldray.parallel.pair_stack import pair_mask_rows, pairformer_stack
from foldray.parallel.shard import PairShard
from foldray.parallel.trunk import ShardedTrunk

Features = Mapping[str, Tensor]


def gather_rows_to_root(x: Tensor, shard: PairShard, dim: int = -3) -> Tensor | None:
    """[.., R, ..] on every rank -> [.., N, ..] on rank 0 (None elsewhere): big outputs
    (PAE / PDE logits) are never held whole by the other ranks."""
    if shard.world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(shard.world)] if shard.rank == 0 else None
    root = 0 if shard.group is None else dist.get_global_rank(shard.group, 0)
    dist.gather(x, parts, dst=root, group=shard.group)
    return torch.cat(parts, dim=dim) if parts is not None else None


def sample_slice(n_sample: int, shard: PairShard) -> slice:
    """The samples rank `shard.rank` denoises (n_sample must be a multiple of the world)."""
    if n_sample % shard.world:
        raise ValueError(f"n_sample={n_sample} is not a multiple of the {shard.world} workers")
    per = n_sample // shard.world
    return slice(shard.rank * per, (shard.rank + 1) * per)


def trunk_conditioning(module: DiffusionModule, features: Features, s_trunk: Tensor, z_rows: Tensor,
                       shard: PairShard) -> TrunkConditioning:
    """`DiffusionModule.trunk_conditioning` from this rank's rows of z: Algorithm 21's pair
    part (per pair; its transitions' 4 c_z-wide hidden layer is the peak) runs on the rows,
    and only its c_z-wide result is gathered, once, for the atom encoder and the biases."""
    cond = module.conditioning
    p = cond.relative_position(features, rows=shard.row_slice).to(z_rows.dtype)
    z = cond.proj_z(cond.norm_z(torch.cat([z_rows, p], dim=-1)))
    for transition in cond.transition_z:
        z = z + transition(z)
    z = shard.gather_rows(z, dim=-3)                                        # [B, N, N, c_z]
    c_atom, p_atom = module.encoder.conditioning(features, s_trunk, z)      # as trunk_conditioning
    atom_mask = features["atom_mask"]
    n_head = [block.n_head for block in module.transformer.attention]
    bias_bytes = sum(n_head) * z[..., 0].numel() * z.element_size()
    token_biases = (module.transformer.pair_biases(z)
                    if bias_bytes <= max(TOKEN_BIAS_CACHE_BYTES, z.numel() * z.element_size()) else None)
    return TrunkConditioning(z, c_atom, p_atom, token_biases,
                             module.encoder.transformer.pair_biases(p_atom, atom_mask),
                             module.decoder.transformer.pair_biases(p_atom, atom_mask))


@torch.no_grad()
def sample_sharded(model: AlphaFold3, features: Features, trunk: ShardedTrunk, shard: PairShard, *,
                   n_sample: int, n_step: int | None = None, generator: torch.Generator | None = None,
                   diffusion_chunk: int | None = None) -> Tensor:
    """`AlphaFold3.sample` with the samples split over the ranks: x [B, n_sample, N_atom, 3]
    on every rank, equal to the single-device sampler's with the same generator state."""
    module = model.diffusion_module
    trunk_cond = trunk_conditioning(module, features, trunk.s, trunk.z_rows, shard)
    mine = sample_slice(n_sample, shard)

    def denoise_mine(x_noisy: Tensor, t: Tensor) -> Tensor:
        local = module(x_noisy[..., mine, :, :], t[..., mine], features, trunk.s_inputs, trunk.s,
                       trunk_cond=trunk_cond, diffusion_chunk=diffusion_chunk)
        return shard.gather_rows(local, dim=-3)                             # all samples, every rank

    return sample_diffusion(denoise_mine, features, n_sample, model.config.diffusion, generator,
                            n_step=n_step)


def _score_sample(head: ConfidenceHead, s: Tensor, z_rows: Tensor, x: Tensor, features: Features,
                  shard: PairShard, chunk_size: int | None,
                  shift: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    """ConfidenceHead._score for one sample x [B, N_atom, 3]: (pLDDT, PAE or None, PDE or
    None, resolved); PAE / PDE [B, N, N, bins] on rank 0."""
    token_mask, atom_mask = features["token_mask"].bool(), features["atom_mask"].bool()
    atom_to_token = features["atom_to_token"]
    rows = shard.row_slice
    x_rep = batched_gather(x.float(), features["token_rep_atom"])            # [B, N, 3]
    d = torch.cdist(x_rep[..., rows, :], x_rep, compute_mode=EXACT)          # [B, R, N]
    mask = pair_mask_rows(token_mask, shard)
    z = z_rows + head.distance((distance_one_hot(d, head.distance_lower) * mask[..., None]).to(z_rows.dtype))
    if head.distance_raw is not None:
        z = z + head.distance_raw((d * mask)[..., None].to(z.dtype))
    s, z = pairformer_stack(head.pairformer, s, z, token_mask, shard, chunk_size)
    s, z = s.float(), z.float()
    pae = gather_rows_to_root(head.pae(head.pae_norm(z)), shard)
    if head.config.pde_symmetric_input:
        pde_rows = head.pde(head.pde_norm(z + shard.transpose(z)))
    else:
        pde_rows = head.pde(head.pde_norm(z))
        pde_rows = pde_rows + shard.transpose(pde_rows)
    pde = gather_rows_to_root(pde_rows, shard)
    plddt = head._per_atom(head.plddt_norm(s), head.plddt_weight, atom_to_token, atom_mask, shift)
    resolved = head._per_atom(head.resolved_norm(s), head.resolved_weight, atom_to_token, atom_mask, shift)
    return plddt, pae, pde, resolved


@torch.no_grad()
def confidence_sharded(model: AlphaFold3, features: Features, trunk: ShardedTrunk, x: Tensor,
                       shard: PairShard, chunk_size: int | None = None) -> ConfidenceOutput | None:
    """`AlphaFold3.confidence` (inference, one sample at a time) on this rank's rows of z:
    the ConfidenceOutput on rank 0, None on the others. Every rank passes the same x."""
    head = model.confidence_head
    s = trunk.s
    if head.norm_s_trunk is not None:
        s = head.norm_s_trunk(s.clamp(-512.0, 512.0))
    s_inputs = trunk.s_inputs
    z_rows = (trunk.z_rows + head.s_i(s_inputs[..., shard.row_slice, :])[..., :, None, :]
              + head.s_j(s_inputs)[..., None, :, :])
    shift = None
    if head.config.nucleotide_slot_shift:
        shift = nucleotide_tokens(features).long() * head.config.nucleotide_slot_shift
    parts = [_score_sample(head, s, z_rows, x[..., i, :, :], features, shard, chunk_size, shift)
             for i in range(x.shape[-3])]
    if shard.rank != 0:
        return None
    plddt, pae, pde, resolved = zip(*parts, strict=True)     # per-atom ones keep a sample axis
    plddt, resolved = torch.cat(plddt, dim=-3), torch.cat(resolved, dim=-3)
    pae, pde = torch.stack(pae, dim=-4), torch.stack(pde, dim=-4)
    return ConfidenceOutput(plddt_logits=plddt, pae_logits=pae, pde_logits=pde, resolved_logits=resolved)


@torch.no_grad()
def distogram_sharded(model: AlphaFold3, trunk: ShardedTrunk, shard: PairShard) -> Tensor | None:
    """DistogramHead (h + h^T) by rows: [B, N, N, bins] on rank 0, None elsewhere."""
    h = model.distogram_head.linear(trunk.z_rows)
    return gather_rows_to_root(h + shard.transpose(h), shard)
