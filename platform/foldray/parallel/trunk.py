"""The trunk (SI Algorithm 1 lines 1-14) on a row-sharded pair representation.

`run_trunk_sharded` mirrors `AlphaFold3.run_trunk` (inference) reading the single-device
modules' parameters, so any checkpoint runs sharded. What each rank holds and computes:

- input embedding and s: the whole single track, identical on every rank (small);
- z_init: rows i of this rank only (z_init_i of its rows + z_init_j of all tokens, the
  relative position encoding and token bonds of its rows); recycling norms are row-local;
- template embedder (Alg. 16): template pair features of this rank's rows, the template
  Pairformer via `pair_stack.pairformer_stack`;
- MSA module (Alg. 8): m is small (N_msa x N x c_m), held whole and updated identically on
  every rank; the outer product mean computes this rank's rows i against all j; the
  pair-weighted averaging's bias [N, N, H] is gathered (heads, not c_z); the pair stacks
  are sharded;
- Pairformer: `pair_stack.pairformer_stack`.

Features must have N_token a multiple of the world size (pad with masked tokens:
`pad_tokens`). Inference only (no dropout, no MSA row sampling).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from foldray.features.constraints import CONSTRAINT_FEATURES
from foldray.kernels import mask_to_bias
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.msa import MsaBlock, MsaModule, MSAPairWeightedAveraging, OuterProductMean
from foldray.model.templates import TEMPLATE_PAIR_LAYOUT, TemplateEmbedder
from foldray.model.triangle import chunked_rows
from foldray.parallel.pair_stack import pair_mask_rows, pairformer_block, pairformer_stack
from foldray.parallel.shard import PairShard, padded_size

Features = Mapping[str, Tensor]


class ShardedTrunk(NamedTuple):
    """The trunk's output on one rank: s_inputs and s whole (equal on every rank), z by rows."""

    s_inputs: Tensor   # [B, N_token, c_s_inputs]
    s: Tensor          # [B, N_token, c_s]
    z_rows: Tensor     # [B, R, N_token, c_z], rows `shard.row_slice`


def pad_tokens(features: Mapping[str, np.ndarray], world: int) -> dict[str, np.ndarray]:
    """One featurized (unbatched) sample padded with masked tokens to a multiple of `world`
    (foldray.features.batch.pad_features, the collate padding): collate it afterwards with
    token_buckets=None."""
    from foldray.features.batch import ATOM, TOKEN, feature_sizes, pad_features

    sizes = feature_sizes(features)
    return pad_features(features, n_token=padded_size(sizes[TOKEN], world), n_atom=sizes[ATOM])


# Token-pair input features, [.., N_token (i), N_token (j), ..]: the row axis counted from the end.
PAIR_FEATURES = {"token_bonds": -2, "template_distogram": -3, "template_unit_vector": -3,
                 **{name: -3 for name in CONSTRAINT_FEATURES}}


def local_rows(features: Features, shard: PairShard) -> dict[str, Tensor]:
    """The features with the token-pair ones cut to this rank's rows (views, no copy): the
    template distogram alone is 39 T values per pair, more than z, so a worker moves only its
    rows to its device. The sharded trunk reads either form."""
    return {name: _rows_of(name, x, shard) if name in PAIR_FEATURES else x for name, x in features.items()}


def _rows_of(name: str, x: Tensor, shard: PairShard) -> Tensor:
    """This rank's rows of a token-pair feature, whole or already cut (`local_rows`)."""
    axis = x.dim() + PAIR_FEATURES[name]
    if x.shape[axis] == shard.n_token:
        return x.narrow(axis, shard.rank * shard.rows, shard.rows)
    if x.shape[axis] != shard.rows:
        raise ValueError(f"{name} has {x.shape[axis]} rows, expected {shard.n_token} or {shard.rows}")
    return x


# ---------------------------------------------------------------------------- templates (Alg. 16)


def _template_parts(features: Features, t: int, pair_mask: Tensor, shard: PairShard,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """templates._masked_pair_parts for rows i of template t."""
    keep, rows = pair_mask.to(dtype), shard.row_slice

    def mask_2d(name: str) -> Tensor:
        mask = features[name][..., t, :].to(dtype)                         # [*, N]
        return mask[..., rows, None] * mask[..., None, :] * keep           # [*, R, N]

    pseudo_beta = mask_2d("template_pseudo_beta_mask")
    backbone = mask_2d("template_backbone_frame_mask")
    distogram = _rows_of("template_distogram", features["template_distogram"], shard)[..., t, :, :, :]
    unit_vector = _rows_of("template_unit_vector", features["template_unit_vector"], shard)[..., t, :, :, :]
    distogram = distogram.to(dtype) * pseudo_beta[..., None]
    unit_vector = unit_vector.to(dtype) * backbone[..., None]
    return distogram, pseudo_beta, unit_vector, backbone


def _embed_template_rows(module: TemplateEmbedder, features: Features, t: int, pair_mask: Tensor,
                         shard: PairShard, dtype: torch.dtype) -> Tensor:
    """TemplateEmbedder._embed_template for rows i: [*, R, N, c_t]."""
    rows = shard.row_slice
    distogram, pseudo_beta, unit_vector, backbone = _template_parts(features, t, pair_mask, shard, dtype)
    w_dgram, w_pb, w_rj, w_ri, w_unit, w_bb = module.embed_a.weight.split(
        [width for _, width in TEMPLATE_PAIR_LAYOUT], dim=-1)
    restype = features["template_restype"][..., t, :].long()              # [*, N]
    a = F.linear(distogram, w_dgram) + F.linear(unit_vector, w_unit)
    a = a + pseudo_beta[..., None] * w_pb[:, 0] + backbone[..., None] * w_bb[:, 0]
    a = a + F.embedding(restype, w_rj.T)[..., None, :, :]                 # restype of j
    return a + F.embedding(restype[..., rows], w_ri.T)[..., :, None, :]   # restype of i


def template_embedder(module: TemplateEmbedder, features: Features, z_rows: Tensor, token_mask: Tensor,
                      shard: PairShard, chunk_size: int | None = None) -> Tensor:
    """`TemplateEmbedder.forward` (both its plain and padded-slot paths) on this rank's rows."""
    template_mask = features["template_mask"]                              # [*, N_templ]
    if not len(module.pairformer.blocks):
        return torch.zeros_like(z_rows)
    padded = module.padded_slots > 0
    if not padded and (template_mask.shape[-1] == 0 or not bool(template_mask.any())):
        return torch.zeros_like(z_rows)
    asym = features["asym_id"]
    pair_mask = (asym[..., shard.row_slice, None] == asym[..., None, :]) & pair_mask_rows(token_mask, shard)
    z_t = module.embed_z(module.norm_z(z_rows))                            # [*, R, N, c_t]
    u = torch.zeros_like(z_t)

    def stack(v: Tensor) -> Tensor:
        return module.norm_v(pairformer_stack(module.pairformer, None, v, token_mask, shard, chunk_size)[1])

    for t in range(template_mask.shape[-1]):
        real = template_mask[..., t]
        if not bool(real.any()):
            continue
        v = z_t + _embed_template_rows(module, features, t, pair_mask, shard, z_rows.dtype)
        u = u + stack(v) * real[..., None, None, None].to(v.dtype)
    if not padded:
        n_real = template_mask.sum(dim=-1).clamp(min=1).to(u.dtype)
        return module.out(torch.relu(u / n_real[..., None, None, None]))
    n_slots = max(module.padded_slots, template_mask.shape[-1])
    n_real = template_mask.sum(dim=-1)
    n_empty = (n_slots - n_real).to(u.dtype)
    empty_first = getattr(module, "empty_restype_first", None)
    empty_pad = getattr(module, "empty_restype_pad", None)
    if empty_pad is None:
        kinds = [(None, n_empty)]
    else:
        first = (n_real == 0).to(u.dtype) if empty_first is not None else 0 * n_empty
        kinds = [(empty_first, first), (empty_pad, n_empty - first)]
    for restype, count in kinds:
        if not bool((count > 0).any()):
            continue
        v = z_t if restype is None else z_t + module._empty_restype(restype)
        u = u + stack(v) * count[..., None, None, None]
    return module.out(torch.relu(u / n_slots))


# ---------------------------------------------------------------------------- MSA module (Alg. 8-10)


def outer_product_mean(module: OuterProductMean, m: Tensor, msa_mask: Tensor, shard: PairShard,
                       chunk_size: int | None = None) -> Tensor:
    """Algorithm 9 for rows i of this rank: [*, R, N, c_z] (m and msa_mask whole)."""
    mask = msa_mask[..., None].to(m.dtype)
    m = module.norm(m)
    a, b = module.a(m) * mask, module.b(m) * mask                          # [*, S, N, c]
    a, mask_i = a[..., shard.row_slice, :], mask[..., shard.row_slice, 0]
    count = torch.einsum("...si,...sj->...ij", mask_i, mask[..., 0])        # [*, R, N]

    def rows(start: int, stop: int) -> Tensor:
        o = torch.einsum("...sic,...sjd->...ijcd", a[..., start:stop, :], b)
        o = module.out(o.flatten(-2))
        return o / (1e-3 + count[..., start:stop, :, None])

    return chunked_rows(rows, shard.rows, chunk_size)


def pair_weighted_averaging(module: MSAPairWeightedAveraging, m: Tensor, z_rows: Tensor,
                            token_mask: Tensor, shard: PairShard) -> Tensor:
    """Algorithm 10 with the bias b_ij [*, N, N, H] gathered from the rows: the update of the
    whole m, identical on every rank."""
    m = module.norm_m(m)
    v = module.v(m).unflatten(-1, (module.n_head, module.c))               # [*, S, N, H, c]
    b = shard.gather_rows(module.bias(module.norm_z(z_rows)), dim=-3)       # [*, N, N, H]
    b = b + mask_to_bias(token_mask, b.dtype)[..., None, :, None]
    w = torch.softmax(b, dim=-2)
    o = torch.einsum("...ijh,...sjhc->...sihc", w, v)
    g = torch.sigmoid(module.gate(m))
    return module.out(g * o.flatten(-2))


def msa_block(block: MsaBlock, m: Tensor, z_rows: Tensor, msa_mask: Tensor, token_mask: Tensor,
              shard: PairShard, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    z_rows = z_rows + outer_product_mean(block.opm, m, msa_mask, shard, chunk_size)
    if block.pair_weighted_averaging is not None and block.msa_transition is not None:
        m = m + pair_weighted_averaging(block.pair_weighted_averaging, m, z_rows, token_mask, shard)
        m = m + block.msa_transition(m)
    _, z_rows = pairformer_block(block.pair_stack, None, z_rows, token_mask, shard, chunk_size)
    return m, z_rows


def msa_module(module: MsaModule, features: Features, z_rows: Tensor, s_inputs: Tensor,
               token_mask: Tensor, shard: PairShard, chunk_size: int | None = None) -> Tensor:
    """`MsaModule.forward` with every MSA row (inference) on this rank's rows of z."""
    if module.training:
        raise NotImplementedError("the sharded MSA module runs in inference only")
    m = module.embed(features, s_inputs)
    for block in module.blocks:
        m, z_rows = msa_block(block, m, z_rows, features["msa_mask"], token_mask, shard, chunk_size)
    return z_rows


# ---------------------------------------------------------------------------- the trunk


def z_init_rows(model: AlphaFold3, features: Features, s_inputs: Tensor, s_init: Tensor,
                shard: PairShard) -> Tensor:
    """Algorithm 1 lines 3-5 for this rank's rows: [B, R, N, c_z]."""
    rows = shard.row_slice
    z_in = s_init if model.config.z_init_from_s_init else s_inputs
    z = model.z_init_i(z_in[..., rows, :])[..., :, None, :] + model.z_init_j(z_in)[..., None, :, :]
    z = z + model.relative_position(features, rows=rows)
    bonds = _rows_of("token_bonds", features["token_bonds"], shard)
    z = z + model.token_bonds(bonds[..., None].to(z.dtype))
    restraints = {name: _rows_of(name, features[name], shard)
                  for name in CONSTRAINT_FEATURES if name in features}
    if model.constraint_embedder is not None:          # as AlphaFold3.run_trunk, on this rank's rows
        return model.constraint_embedder(restraints, z)
    if any(bool(x.any()) for x in restraints.values()):
        raise ValueError("the features carry restraints but this model has no constraint embedder "
                         "(ModelConfig.constraint_embedder); they would be ignored")
    return z


@torch.no_grad()
def run_trunk_sharded(model: AlphaFold3, features: Features, shard: PairShard,
                      n_cycle: int | None = None, chunk_size: int | None = None) -> ShardedTrunk:
    """`AlphaFold3.run_trunk` (inference) on this rank's rows of z; every rank calls it with
    the same features (N_token = shard.n_token) and gets the same s."""
    n_cycle = model.config.n_cycle if n_cycle is None else n_cycle
    if n_cycle < 1:
        raise ValueError(f"n_cycle must be >= 1, got {n_cycle}")
    token_mask = features["token_mask"]
    if token_mask.shape[-1] != shard.n_token:
        raise ValueError(f"features have {token_mask.shape[-1]} tokens, the shard {shard.n_token}: "
                         "pad them to a multiple of the world size (pad_tokens)")
    s_inputs = model.input_embedder(features)
    s_init = model.s_init(s_inputs)
    z_init = z_init_rows(model, features, s_inputs, s_init, shard)
    s_hat, z_hat = torch.zeros_like(s_init), torch.zeros_like(z_init)
    for _ in range(n_cycle):
        z = z_init + model.z_recycle(model.z_recycle_norm(z_hat))
        z = z + template_embedder(model.template_embedder, features, z, token_mask, shard, chunk_size)
        z = msa_module(model.msa_module, features, z, s_inputs, token_mask, shard, chunk_size)
        s = s_init + model.s_recycle(model.s_recycle_norm(s_hat))
        s, z = pairformer_stack(model.pairformer, s, z, token_mask, shard, chunk_size)
        s_hat, z_hat = s, z
    return ShardedTrunk(s_inputs=s_inputs, s=s, z_rows=z)
