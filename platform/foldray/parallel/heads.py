"""The confidence head and the distogram on a row-sharded trunk output (diffusion: parallel/diffusion.py).

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
    n_sample = x.shape[-3]
    plddt, resolved, pae, pde = [], [], None, None
    for i in range(n_sample):
        plddt_i, pae_i, pde_i, resolved_i = _score_sample(head, s, z_rows, x[..., i, :, :], features, shard,
                                                          chunk_size, shift)
        plddt.append(plddt_i)
        resolved.append(resolved_i)
        if pae_i is not None and pde_i is not None:   # rank 0: written in place, not stacked at
            if pae is None or pde is None:            # the end (which held every sample twice)
                pae = pae_i.new_empty(*pae_i.shape[:-3], n_sample, *pae_i.shape[-3:])
                pde = pde_i.new_empty(*pde_i.shape[:-3], n_sample, *pde_i.shape[-3:])
            pae[..., i, :, :, :], pde[..., i, :, :, :] = pae_i, pde_i
        del pae_i, pde_i
    if shard.rank != 0:
        return None
    assert pae is not None and pde is not None
    return ConfidenceOutput(plddt_logits=torch.cat(plddt, dim=-3), pae_logits=pae, pde_logits=pde,
                            resolved_logits=torch.cat(resolved, dim=-3))   # per-atom: sample axis kept


@torch.no_grad()
def distogram_sharded(model: AlphaFold3, trunk: ShardedTrunk, shard: PairShard) -> Tensor | None:
    """DistogramHead (h + h^T) by rows: [B, N, N, bins] on rank 0, None elsewhere."""
    h = model.distogram_head.linear(trunk.z_rows)
    return gather_rows_to_root(h + shard.transpose(h), shard)
