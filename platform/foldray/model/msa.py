"""The MSA module (SI 3.3, Algorithms 8-10): the MSA updates the pair representation.

Shapes: m [*, N_msa, N_token, c_m]; msa_mask [*, N_msa, N_token] bool (real row and real
token); z [*, N_token, N_token, c_z]; s_inputs [*, N_token, c_s_inputs];
token_mask [*, N_token] bool. Features (Table 5, batched by foldray.features.batch):
msa [*, N_msa, N_token] int class indices (one-hot, 32 classes, inside the model),
has_deletion / deletion_value [*, N_msa, N_token] float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from foldray.kernels import mask_to_bias
from foldray.model.config import MsaModuleConfig, PairformerConfig
from foldray.model.pairformer import PairformerBlock, dropout_rowwise, pair_mask_from
from foldray.model.primitives import LayerNorm, Linear, LinearNoBias, Transition
from foldray.model.triangle import chunked_rows
from foldray.residues import NUM_RESTYPES

MSA_FEATURES = ("msa", "has_deletion", "deletion_value", "msa_mask")
OPM_EPS = 1e-3


class OuterProductMean(nn.Module):
    """Algorithm 9 (SI 3.3): z_ij = Linear(mean_s a_si (x) b_sj) over the real MSA rows.

    SI deviation: as in AF2/AF3's released code, the output Linear (with bias) is applied
    to the masked *sum* and the result divided by (1e-3 + number of rows where both i and
    j are real); the SI writes mean-then-Linear. The two differ only in that the bias is
    divided too; we follow the released code so AF3 weights import unchanged.
    """

    def __init__(self, c_m: int, c_z: int, c_hidden: int = 32) -> None:
        super().__init__()
        self.norm = LayerNorm(c_m)                                      # line 1
        self.a = LinearNoBias(c_m, c_hidden)                               # line 2
        self.b = LinearNoBias(c_m, c_hidden)
        self.out = Linear(c_hidden * c_hidden, c_z)                        # line 4

    def forward(self, m: Tensor, msa_mask: Tensor, chunk_size: int | None = None) -> Tensor:
        """Returns [*, N_token, N_token, c_z]; computed `chunk_size` rows i at a time."""
        mask = msa_mask[..., None].to(m.dtype)                             # [*, S, N, 1]
        m = self.norm(m)
        a, b = self.a(m) * mask, self.b(m) * mask                          # [*, S, N, c]
        count = torch.einsum("...si,...sj->...ij", mask[..., 0], mask[..., 0])  # [*, N, N]

        def rows(start: int, stop: int) -> Tensor:
            o = torch.einsum("...sic,...sjd->...ijcd", a[..., start:stop, :], b)  # line 3
            o = self.out(o.flatten(-2))                                    # [*, R, N, c_z]
            return o / (OPM_EPS + count[..., start:stop, :, None])

        return chunked_rows(rows, m.shape[-2], chunk_size)


class MSAPairWeightedAveraging(nn.Module):
    """Algorithm 10 (SI 3.3): each MSA row averages its columns j with weights
    softmax_j(b_ij) projected from the pair representation, gated per head.

    Keys j are masked by token_mask (AF3 masks with "any MSA row real in column j", the
    same thing for featurized inputs, whose query row is always present).
    """

    def __init__(self, c_m: int, c_z: int, c_hidden: int = 32, n_head: int = 8) -> None:
        super().__init__()
        self.n_head, self.c = n_head, c_hidden
        self.norm_m = LayerNorm(c_m)                                    # line 1
        self.v = LinearNoBias(c_m, n_head * c_hidden)                      # line 2
        self.norm_z = LayerNorm(c_z)                                    # line 3
        self.bias = LinearNoBias(c_z, n_head)
        self.gate = LinearNoBias(c_m, n_head * c_hidden)                   # line 4
        self.out = LinearNoBias(n_head * c_hidden, c_m)                    # line 7

    def forward(self, m: Tensor, z: Tensor, token_mask: Tensor) -> Tensor:
        m = self.norm_m(m)                                                 # [*, S, N, c_m]
        v = self.v(m).unflatten(-1, (self.n_head, self.c))                 # [*, S, N, H, c]
        b = self.bias(self.norm_z(z))                                      # [*, N, N, H]
        b = b + mask_to_bias(token_mask, b.dtype)[..., None, :, None]      # keys j
        w = torch.softmax(b, dim=-2)                                       # line 5, over j
        o = torch.einsum("...ijh,...sjhc->...sihc", w, v)                  # line 6
        g = torch.sigmoid(self.gate(m))                                    # [*, S, N, H*c]
        return self.out(g * o.flatten(-2))                                 # line 7


class MsaBlock(nn.Module):
    """Algorithm 8 (SI 3.3) lines 6-13: outer product mean, MSA stack, pair stack.

    The last block has no MSA stack (lines 7-8): its MSA output is never read, so AF3's
    released weights for it do not affect the result and we do not create them
    (Protenix does the same); every parameter then receives a gradient.
    """

    def __init__(self, c_z: int, config: MsaModuleConfig, pairformer: PairformerConfig,
                 last: bool) -> None:
        super().__init__()
        self.msa_dropout = config.msa_dropout
        self.opm = OuterProductMean(config.c_m, c_z, config.c_hidden_opm)  # line 6
        self.pair_weighted_averaging = None
        self.msa_transition = None
        if not last:
            self.pair_weighted_averaging = MSAPairWeightedAveraging(       # line 7
                config.c_m, c_z, config.c_hidden_pwa, config.n_head_pwa)
            self.msa_transition = Transition(config.c_m)                   # line 8
        pair_config = dataclasses.replace(pairformer, dropout=config.pair_dropout)
        self.pair_stack = PairformerBlock(None, c_z, pair_config)          # lines 9-13

    def forward(self, m: Tensor, z: Tensor, msa_mask: Tensor, token_mask: Tensor,
                pair_mask: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        z = z + self.opm(m, msa_mask, chunk_size)
        if self.pair_weighted_averaging is not None and self.msa_transition is not None:
            update = self.pair_weighted_averaging(m, z, token_mask)
            m = m + dropout_rowwise(update, self.msa_dropout, self.training)
            m = m + self.msa_transition(m)
        _, z = self.pair_stack(None, z, token_mask, pair_mask, chunk_size)
        return m, z


def sample_msa_rows(features: Mapping[str, Tensor], n_sample: int,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Algorithm 8 line 2: a uniform random subset of at most n_sample MSA rows.

    Rows with no real entry (padding) are taken only after every real row, as in AF3's
    `shuffle_msa`. Each batch element draws its own subset. Returns the four MSA features
    with N_msa = min(n_sample, N_msa).
    """
    msa_mask = features["msa_mask"]
    n_sample = min(n_sample, msa_mask.shape[-2])
    real = msa_mask.any(dim=-1)                                            # [*, S]
    score = torch.rand(real.shape, generator=generator, device=real.device)
    score = score + (~real).to(score.dtype) * 2.0                         # padding rows last
    index = score.argsort(dim=-1)[..., :n_sample, None]                    # [*, n, 1]
    return {name: torch.take_along_dim(features[name], index, dim=-2) for name in MSA_FEATURES}


class MsaModule(nn.Module):
    """Algorithm 8 (SI 3.3): embed the MSA, then n_block MSA blocks; returns the new z.

    The MSA embedding is LinearNoBias over concat(one_hot(msa, 32), has_deletion,
    deletion_value) (34 features), computed as an embedding lookup plus two rank-1 terms so
    the [*, N_msa, N_token, 34] one-hot is never materialised. The pair stacks use the
    Pairformer's triangle sizes (`pairformer`) with config.pair_dropout.
    """

    def __init__(self, c_z: int, c_s_inputs: int, config: MsaModuleConfig,
                 pairformer: PairformerConfig) -> None:
        super().__init__()
        self.embed_msa = LinearNoBias(NUM_RESTYPES + 2, config.c_m)        # lines 1, 3
        self.embed_s = LinearNoBias(c_s_inputs, config.c_m)                # line 4
        self.blocks = nn.ModuleList(
            MsaBlock(c_z, config, pairformer, last=index == config.n_block - 1)
            for index in range(config.n_block))

    def embed(self, features: Mapping[str, Tensor], s_inputs: Tensor) -> Tensor:
        """Lines 1, 3-4: m [*, N_msa, N_token, c_m]."""
        weight = self.embed_msa.weight                                     # [c_m, 34]
        m = F.embedding(features["msa"].long(), weight[:, :NUM_RESTYPES].T)
        m = m + features["has_deletion"][..., None].to(m.dtype) * weight[:, NUM_RESTYPES]
        m = m + features["deletion_value"][..., None].to(m.dtype) * weight[:, NUM_RESTYPES + 1]
        return m + self.embed_s(s_inputs)[..., None, :, :]

    def forward(self, features: Mapping[str, Tensor], z: Tensor, s_inputs: Tensor,
                token_mask: Tensor, chunk_size: int | None = None, n_sample: int | None = None,
                generator: torch.Generator | None = None,
                checkpoint_activations: bool = False) -> Tensor:
        """Returns z [*, N_token, N_token, c_z].

        n_sample: keep a uniform random subset of at most that many MSA rows (line 2;
        the caller decides, e.g. a fresh subset per recycling iteration in training);
        None uses every row. Row order does not matter otherwise.
        """
        if n_sample is not None:
            features = {**features, **sample_msa_rows(features, n_sample, generator)}
        msa_mask = features["msa_mask"]
        m = self.embed(features, s_inputs)
        pair_mask = pair_mask_from(token_mask)
        for block in self.blocks:
            if checkpoint_activations and torch.is_grad_enabled():
                m, z = checkpoint(block, m, z, msa_mask, token_mask, pair_mask, chunk_size,
                                  use_reentrant=False)
            else:
                m, z = block(m, z, msa_mask, token_mask, pair_mask, chunk_size)
        return z
