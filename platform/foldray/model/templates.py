"""The template embedder (SI 3.5, Algorithm 16).

Shapes: z [*, N_token, N_token, c_z]; token_mask [*, N_token] bool. Template features
(Table 5, batched by foldray.features.batch): template_restype [*, N_templ, N_token] int
class indices (one-hot, 32 classes, inside the model); template_pseudo_beta_mask and
template_backbone_frame_mask [*, N_templ, N_token]; template_distogram
[*, N_templ, N_token, N_token, 39]; template_unit_vector [*, N_templ, N_token, N_token, 3];
template_mask [*, N_templ] bool; asym_id [*, N_token].
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foldray.model.config import PairformerConfig, TemplateConfig
from foldray.model.pairformer import PairformerStack, pair_mask_from
from foldray.model.primitives import LayerNorm, LinearNoBias
from foldray.residues import NUM_RESTYPES

DISTOGRAM_BINS = 39
# a_tij channel layout, in AF3's released order (SingleTemplateEmbedding.construct_input;
# Protenix uses the same): restype_j varies along j (the template restype of token j),
# restype_i along i.
TEMPLATE_PAIR_LAYOUT: tuple[tuple[str, int], ...] = (
    ("template_distogram", DISTOGRAM_BINS),
    ("template_pseudo_beta_mask", 1),
    ("template_restype_j", NUM_RESTYPES),
    ("template_restype_i", NUM_RESTYPES),
    ("template_unit_vector", 3),
    ("template_backbone_frame_mask", 1),
)
C_TEMPLATE_PAIR = sum(width for _, width in TEMPLATE_PAIR_LAYOUT)   # 108


def template_pair_config(config: TemplateConfig, tri_att_end_bias_ik: bool = False,
                         ) -> PairformerConfig:
    """The template stack's Pairformer sizes, derived from c_t as AF3's released code does."""
    c_mul = config.c_t if config.c_hidden_mul is None else config.c_hidden_mul
    c_att = config.c_t // config.n_head_tri if config.c_hidden_tri_att is None else config.c_hidden_tri_att
    return PairformerConfig(n_block=config.n_block, c_hidden_mul=c_mul,
                            c_hidden_tri_att=c_att,
                            n_head_tri=config.n_head_tri, transition_n=config.transition_n,
                            dropout=config.dropout, tri_att_end_bias_ik=tri_att_end_bias_ik)


def _masked_pair_parts(features: Mapping[str, Tensor], t: int, pair_mask: Tensor,
                       dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 16 lines 1-4 for template t: (distogram, pseudo-beta 2D mask, unit vector,
    backbone 2D mask), each zeroed outside `pair_mask` (real pairs of the same chain)."""
    keep = pair_mask.to(dtype)

    def mask_2d(name: str) -> Tensor:
        mask = features[name][..., t, :].to(dtype)                        # [*, N]
        return mask[..., :, None] * mask[..., None, :] * keep              # [*, N, N]

    pseudo_beta = mask_2d("template_pseudo_beta_mask")                     # line 2
    backbone = mask_2d("template_backbone_frame_mask")                     # line 1
    distogram = features["template_distogram"][..., t, :, :, :].to(dtype) * pseudo_beta[..., None]
    unit_vector = features["template_unit_vector"][..., t, :, :, :].to(dtype) * backbone[..., None]
    return distogram, pseudo_beta, unit_vector, backbone


def same_chain_pair_mask(asym_id: Tensor, token_mask: Tensor) -> Tensor:
    """[*, N, N] bool: both tokens real and in the same chain (line 4's asym_id restriction)."""
    return (asym_id[..., :, None] == asym_id[..., None, :]) & pair_mask_from(token_mask)


def template_pair_features(features: Mapping[str, Tensor], t: int, token_mask: Tensor,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """Algorithm 16 lines 1-5 for template t, materialised: a_tij [*, N, N, 108] in
    TEMPLATE_PAIR_LAYOUT order. TemplateEmbedder computes the same projection without
    building this tensor; this is the readable reference."""
    pair_mask = same_chain_pair_mask(features["asym_id"], token_mask)
    distogram, pseudo_beta, unit_vector, backbone = _masked_pair_parts(features, t, pair_mask,
                                                                       dtype)
    restype = F.one_hot(features["template_restype"][..., t, :].long(), NUM_RESTYPES).to(dtype)
    n = restype.shape[-2]
    restype_j = restype[..., None, :, :].expand(*restype.shape[:-2], n, n, NUM_RESTYPES)
    restype_i = restype[..., :, None, :].expand(*restype.shape[:-2], n, n, NUM_RESTYPES)
    return torch.cat([distogram, pseudo_beta[..., None], restype_j, restype_i, unit_vector,
                      backbone[..., None]], dim=-1)


class TemplateEmbedder(nn.Module):
    """Algorithm 16 (SI 3.5): each template's pair features plus the (normalised) pair
    representation go through a small Pairformer (pair only); the LayerNorm'd results
    are averaged over templates and projected to c_z after a ReLU.

    SI deviation (concatenation order): a_tij follows AF3's released channel order
    (TEMPLATE_PAIR_LAYOUT), not the SI's lines 3-5, so AF3's per-feature weights map onto
    one LinearNoBias by concatenation.
    SI deviation (averaging): we average over the *real* templates (template_mask), so
    padding templates do not change the result; AF3's released code divides by the padded
    template count. Identical when every template slot is filled. A batch element with no
    real template gets exactly zero; with none in the whole batch (N_templ = 0 or
    template_mask all False) forward returns zeros without running the stack. OpenFold3
    pads to 4 slots and averages over all of them: TemplateConfig.padded_slots does that.
    SI deviation (line 9): v <- PairformerStack(v), as AF3's released code; the SI's
    "v += PairformerStack(v)" would add v twice, the stack's blocks already being residual.
    The template stack is a PairformerStack(c_s=None) sized by `template_pair_config`.
    """

    def __init__(self, c_z: int, config: TemplateConfig, tri_att_end_bias_ik: bool = False,
                 ) -> None:
        super().__init__()
        c_t = config.c_t
        self.padded_slots = config.padded_slots
        self.empty_restype_first = config.empty_slot_restype_first
        self.empty_restype_pad = config.empty_slot_restype_pad
        self.norm_z = LayerNorm(c_z)                                    # line 8
        self.embed_z = LinearNoBias(c_z, c_t)
        self.embed_a = LinearNoBias(C_TEMPLATE_PAIR, c_t)
        self.pairformer = PairformerStack(                                     # line 9
            None, c_t, template_pair_config(config, tri_att_end_bias_ik))
        self.norm_v = LayerNorm(c_t)                                    # line 10
        self.out = LinearNoBias(c_t, c_z)                                  # line 13

    def _embed_template(self, features: Mapping[str, Tensor], t: int, pair_mask: Tensor,
                        dtype: torch.dtype) -> Tensor:
        """LinearNoBias(a_tij) [*, N, N, c_t] from weight slices: the restype one-hots
        become per-token lookups broadcast over the other axis."""
        distogram, pseudo_beta, unit_vector, backbone = _masked_pair_parts(
            features, t, pair_mask, dtype)
        w_dgram, w_pb, w_rj, w_ri, w_unit, w_bb = self.embed_a.weight.split(
            [width for _, width in TEMPLATE_PAIR_LAYOUT], dim=-1)
        restype = features["template_restype"][..., t, :].long()          # [*, N]
        a = F.linear(distogram, w_dgram) + F.linear(unit_vector, w_unit)
        a = a + pseudo_beta[..., None] * w_pb[:, 0] + backbone[..., None] * w_bb[:, 0]
        a = a + F.embedding(restype, w_rj.T)[..., None, :, :]             # restype of j
        return a + F.embedding(restype, w_ri.T)[..., :, None, :]          # restype of i

    def forward(self, features: Mapping[str, Tensor], z: Tensor, token_mask: Tensor,
                chunk_size: int | None = None,
                checkpoint_activations: bool = False) -> Tensor:
        """Returns the template update u [*, N_token, N_token, c_z] (to be added to z)."""
        template_mask = features["template_mask"]                          # [*, N_templ]
        if not len(self.pairformer.blocks):   # a 0-block stack = templates off (Protenix v0.5)
            return torch.zeros_like(z)
        if self.padded_slots > 0:
            return self._forward_padded(features, z, token_mask, chunk_size,
                                        checkpoint_activations)
        if template_mask.shape[-1] == 0 or not bool(template_mask.any()):
            return torch.zeros_like(z)
        pair_mask = same_chain_pair_mask(features["asym_id"], token_mask)
        z_t = self.embed_z(self.norm_z(z))                                 # [*, N, N, c_t]
        u = torch.zeros_like(z_t)                                          # line 6
        for t in range(template_mask.shape[-1]):                           # line 7
            real = template_mask[..., t]                                   # [*]
            if not bool(real.any()):
                continue
            v = z_t + self._embed_template(features, t, pair_mask, z.dtype)  # line 8
            _, v = self.pairformer(None, v, token_mask, chunk_size,          # line 9
                                   checkpoint_activations)
            u = u + self.norm_v(v) * real[..., None, None, None].to(v.dtype)  # line 10
        n_real = template_mask.sum(dim=-1).clamp(min=1).to(u.dtype)
        u = u / n_real[..., None, None, None]                              # line 12
        return self.out(torch.relu(u))                                     # line 13

    def _forward_padded(self, features: Mapping[str, Tensor], z: Tensor, token_mask: Tensor,
                        chunk_size: int | None, checkpoint_activations: bool) -> Tensor:
        """TemplateConfig.padded_slots (OpenFold3, Protenix): the mean runs over
        max(padded_slots, N_templ) slots; every slot without a real template is an empty
        template (all template features zero, so v = the projected z alone, plus with
        Protenix's empty_slot_restype_* its restype one-hots), computed once per kind and
        weighted by how many slots are of that kind."""
        template_mask = features["template_mask"]                          # [*, N_templ]
        pair_mask = same_chain_pair_mask(features["asym_id"], token_mask)
        n_slots = max(self.padded_slots, template_mask.shape[-1])
        z_t = self.embed_z(self.norm_z(z))
        u = torch.zeros_like(z_t)
        for t in range(template_mask.shape[-1]):
            real = template_mask[..., t]
            if not bool(real.any()):
                continue
            v = z_t + self._embed_template(features, t, pair_mask, z.dtype)
            _, v = self.pairformer(None, v, token_mask, chunk_size, checkpoint_activations)
            u = u + self.norm_v(v) * real[..., None, None, None].to(v.dtype)
        n_real = template_mask.sum(dim=-1)
        n_empty = (n_slots - n_real).to(u.dtype)                             # [*]
        if self.empty_restype_pad is None:
            kinds = [(None, n_empty)]
        else:          # Protenix: a job without templates: 1 gap slot, the rest restype-0 slots
            first = (n_real == 0).to(u.dtype) if self.empty_restype_first is not None else 0 * n_empty
            kinds = [(self.empty_restype_first, first), (self.empty_restype_pad, n_empty - first)]
        for restype, count in kinds:
            if not bool((count > 0).any()):
                continue
            v = z_t if restype is None else z_t + self._empty_restype(restype)
            _, v = self.pairformer(None, v, token_mask, chunk_size, checkpoint_activations)
            u = u + self.norm_v(v) * count[..., None, None, None]
        return self.out(torch.relu(u / n_slots))

    def _empty_restype(self, restype: int) -> Tensor:
        """LinearNoBias(a_tij) of an empty template whose every token has `restype`: its
        restype one-hot columns for i and j (all other template features are zero) [c_t]."""
        _, _, w_rj, w_ri, _, _ = self.embed_a.weight.split(
            [width for _, width in TEMPLATE_PAIR_LAYOUT], dim=-1)
        return w_rj[:, restype] + w_ri[:, restype]
