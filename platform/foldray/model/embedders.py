"""Input embeddings (SI 3.1, Algorithms 2-4) and the noise-level Fourier embedding (Algorithm 22).

Shapes: features are the collated batch (`foldray.features.batch.collate`, leading axes *);
s_inputs [*, N_token, c_s_inputs]; relative position encoding [*, N_token, N_token, c_z];
Fourier embedding t [*] -> [*, c].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foldray.model.atom_attention import AtomAttentionEncoder
from foldray.model.config import ModelConfig
from foldray.model.primitives import LinearNoBias


def one_hot(x: Tensor, v_bins: Tensor) -> Tensor:
    """Algorithm 4: one-hot of the nearest bin. x [*], v_bins [N_bins] -> [*, N_bins] (x's float dtype).

    For integer x and bins 0..n-1 this is F.one_hot(x, n); ties go to the lower bin.
    """
    nearest = (x[..., None].to(v_bins.dtype) - v_bins).abs().argmin(dim=-1)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return F.one_hot(nearest, v_bins.shape[0]).to(dtype)


class InputFeatureEmbedder(nn.Module):
    """Algorithm 2 (SI 3.1.1): per-atom features through the AtomAttentionEncoder (no trunk,
    no coordinates), concatenated with restype, profile and deletion_mean per token.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = AtomAttentionEncoder(config.atom.input_embedder(),        # line 1
                                            c_token=config.c_token_inputs)
        self.c_s_inputs = config.c_s_inputs

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """-> s_inputs [*, N_token, c_s_inputs]."""
        a, _, _, _ = self.encoder(features)                                    # [*, N_token, c_token]
        s = torch.cat([a, features["restype"].to(a.dtype), features["profile"].to(a.dtype),  # line 2
                       features["deletion_mean"].to(a.dtype)[..., None]], dim=-1)
        if s.shape[-1] != self.c_s_inputs:
            raise ValueError(f"InputFeatureEmbedder: s_inputs has width {s.shape[-1]}, the config "
                             f"says c_s_inputs={self.c_s_inputs} (restype/profile must be 32 wide)")
        return s


class RelativePositionEncoding(nn.Module):
    """Algorithm 3 (SI 3.1.2): relative residue, token and chain encodings of token pairs.

    SI deviation: line 8 buckets the relative sym_id for pairs of the SAME ENTITY (other pairs
    get 2 s_max + 1), as AlphaFold 3's released code and Protenix do; the SI's pseudo-code says
    "if not same_chain". So copies of one entity are told apart by sym_id, a chain with itself
    lands in bucket s_max, and different entities share the last bucket.
    """

    def __init__(self, c_z: int, r_max: int = 32, s_max: int = 2, *, project: bool = True) -> None:
        """`project=False` leaves out line 10's Linear: forward returns the one-hot features
        (OpenFold3's diffusion conditioning concatenates them raw)."""
        super().__init__()
        self.r_max, self.s_max = r_max, s_max
        self.register_buffer("pos_bins", torch.arange(2 * r_max + 2, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("chain_bins", torch.arange(2 * s_max + 2, dtype=torch.float32),
                             persistent=False)
        self.n_features = 2 * (2 * r_max + 2) + 1 + (2 * s_max + 2)
        self.linear = LinearNoBias(self.n_features, c_z) if project else None        # line 10

    @classmethod
    def from_config(cls, config: ModelConfig) -> RelativePositionEncoding:
        return cls(config.c_z, config.r_max, config.s_max)

    def encode(self, features: dict[str, Tensor], rows: slice | None = None) -> Tensor:
        """The concatenated one-hot features [*, N_token, N_token, 4 r_max + 2 s_max + 7];
        `rows` keeps only those rows i, [*, R, N_token, .] (a row-sharded pair, foldray.parallel)."""
        def pairwise(name: str) -> tuple[Tensor, Tensor]:
            x = features[name].long()
            return x[..., slice(None) if rows is None else rows, None], x[..., None, :]

        asym_i, asym_j = pairwise("asym_id")
        res_i, res_j = pairwise("residue_index")
        ent_i, ent_j = pairwise("entity_id")
        tok_i, tok_j = pairwise("token_index")
        sym_i, sym_j = pairwise("sym_id")
        same_chain = asym_i == asym_j                                            # line 1
        same_residue = res_i == res_j                                            # line 2
        same_entity = ent_i == ent_j                                             # line 3
        r_max, s_max = self.r_max, self.s_max
        far = torch.tensor(2 * r_max + 1, device=same_chain.device)
        d_residue = torch.where(same_chain, (res_i - res_j + r_max).clamp(0, 2 * r_max), far)  # 4
        d_token = torch.where(same_chain & same_residue,                          # line 6
                              (tok_i - tok_j + r_max).clamp(0, 2 * r_max), far)
        d_chain = torch.where(same_entity, (sym_i - sym_j + s_max).clamp(0, 2 * s_max),  # line 8
                              torch.tensor(2 * s_max + 1, device=same_chain.device))
        return torch.cat([one_hot(d_residue, self.pos_bins),                     # line 5
                          one_hot(d_token, self.pos_bins),                       # line 7
                          same_entity[..., None].float(),
                          one_hot(d_chain, self.chain_bins)], dim=-1)           # line 9

    def forward(self, features: dict[str, Tensor], rows: slice | None = None) -> Tensor:
        """-> p [*, N_token, N_token, c_z] (the raw features without the projection)."""
        if self.linear is None:
            return self.encode(features, rows)
        return self.linear(self.encode(features, rows).to(self.linear.weight.dtype))   # line 10


class FourierEmbedding(nn.Module):
    """Algorithm 22 (SI 3.7): cos(2 pi (t w + b)) with w, b ~ N(0, I_c) drawn once.

    w and b come from a private generator seeded with `seed` (the global RNG is untouched), so
    every instance with the same (c, seed) is identical; they are persistent buffers, saved and
    loaded with the weights, and never trained.
    """

    def __init__(self, c: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(c, generator=generator))
        self.register_buffer("b", torch.randn(c, generator=generator))

    def forward(self, t: Tensor) -> Tensor:
        """t [*] (already transformed noise level, e.g. 1/4 log(t_hat / sigma_data)) -> [*, c]."""
        return torch.cos(2 * math.pi * (t[..., None].to(self.w.dtype) * self.w + self.b))
