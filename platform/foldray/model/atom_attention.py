"""Sequence-local atom attention (SI 3.2, Algorithms 5-7).

Atoms are a flat list l = 0..N_atom-1 (Table 5 order); `atom_to_token[l]` is the SI's tok_idx(l).
Queries come in blocks of n_queries = 32 atoms; block b attends to the n_keys = 128 atoms
centred on it (SI subset centres 15.5, 47.5, ...: keys 32b - 48 .. 32b + 79).

Shapes: q, c [*, N_atom, c_atom] (q may carry a sample axis: [*, N_sample, N_atom, c_atom]);
p [*, n_block, n_queries, n_keys, c_atompair] (the "blocked" pair layout: p[b, i, j] is the pair
(32b + i, key_index[b, j])); a [*, (N_sample,) N_token, c_token]; atom_mask [*, N_atom] bool.
N_atom is padded inside to n_block * n_queries and sliced back; the caller never sees it.

Key windows: slots that fall outside [0, N_atom) or on a padded atom are MASKED (an additive
-1e9 bias), never clamped onto a real atom, which would count that atom twice in the softmax.
The gather index of such a slot is clamped only to stay in bounds; its weight is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foldray import kernels
from foldray.model.config import AtomAttentionConfig
from foldray.model.primitives import LayerNorm, LinearNoBias
from foldray.model.transformer import DiffusionTransformer

# Algorithm 5 line 1 input: ref_pos 3, ref_charge 1, ref_mask 1, ref_element 128,
# ref_atom_name_chars 4 x 64 (foldray.features.featurize NUM_ELEMENTS, NAME_CHARS x NAME_CHAR_CLASSES).
REF_FEATURES_WIDTH = 3 + 1 + 1 + 128 + 4 * 64


# --------------------------------------------------------------------------------------------
# Layout helpers: key windows, atom <-> token gathers.
# --------------------------------------------------------------------------------------------

def _pad_axis(x: Tensor, size: int, dim: int) -> Tensor:
    """Zero-pad (False for bool) axis `dim` of x up to `size`."""
    extra = size - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


@dataclass(frozen=True, eq=False)
class AtomWindows:
    """Sequence-local query blocks and key windows for N_atom atoms (Algorithm 7).

    key_index [n_block, n_keys] long: atom index of each key slot, clamped into
    [0, n_pad) so gathers stay in bounds; key_valid [n_block, n_keys] bool: False where the
    SI window leaves [0, N_atom) (those slots must be masked).
    """

    n_atom: int
    n_queries: int
    n_keys: int
    key_index: Tensor
    key_valid: Tensor

    @classmethod
    def build(cls, n_atom: int, n_queries: int = 32, n_keys: int = 128,
              device: torch.device | str | None = None, *, shifted: bool = False,
              ) -> AtomWindows:
        """`shifted` (AtomAttentionConfig.shifted_windows): a window that overhangs either
        end of [0, N_atom) moves inside it (AF3's released code, OpenFold3) rather than
        masking the overhang; only windows longer than N_atom keep masked slots."""
        if n_atom <= 0:
            raise ValueError(f"AtomWindows: need at least one atom, got N_atom={n_atom}")
        if n_keys < n_queries or (n_keys - n_queries) % 2:
            raise ValueError(f"AtomWindows: n_keys={n_keys} must be >= n_queries={n_queries} "
                             f"with an even difference, so windows centre on query blocks")
        n_block = -(-n_atom // n_queries)
        start = torch.arange(n_block, device=device) * n_queries - (n_keys - n_queries) // 2
        index = start[:, None] + torch.arange(n_keys, device=device)          # [n_block, n_keys]
        if shifted:
            under = (-index[:, 0]).clamp(min=0)
            over = (index[:, -1] - (n_atom - 1)).clamp(min=0)
            index = index + torch.where(under > 0, under, -over)[:, None]
        valid = (index >= 0) & (index < n_atom)
        index = index.clamp(0, n_block * n_queries - 1)
        return cls(n_atom, n_queries, n_keys, index, valid)

    @property
    def n_block(self) -> int:
        return self.key_index.shape[0]

    @property
    def n_pad(self) -> int:
        return self.n_block * self.n_queries

    def pad(self, x: Tensor, dim: int = -2) -> Tensor:
        """[*, N_atom, ...] -> [*, n_pad, ...] along `dim` (the atom axis)."""
        return _pad_axis(x, self.n_pad, dim)

    def queries(self, x: Tensor, dim: int = -2) -> Tensor:
        """Atom axis `dim` -> (n_block, n_queries): [*, N_atom, c] -> [*, n_block, n_q, c]."""
        return self.pad(x, dim).unflatten(dim, (self.n_block, self.n_queries))

    def keys(self, x: Tensor, dim: int = -2) -> Tensor:
        """Atom axis `dim` -> (n_block, n_keys) key windows (invalid slots hold clamped copies)."""
        flat = self.pad(x, dim).index_select(dim, self.key_index.flatten())
        return flat.unflatten(dim, (self.n_block, self.n_keys))

    def key_mask(self, atom_mask: Tensor) -> Tensor:
        """[*, N_atom] bool -> [*, n_block, n_keys]: real atoms inside the SI window."""
        return self.keys(atom_mask, dim=-1) & self.key_valid

    def pair_mask(self, atom_mask: Tensor) -> Tensor:
        """[*, N_atom] bool -> [*, n_block, n_queries, n_keys]: real query and valid key."""
        return self.queries(atom_mask, dim=-1)[..., :, None] & self.key_mask(atom_mask)[..., None, :]


def gather_atoms(x: Tensor, index: Tensor) -> Tensor:
    """x [*, N, c], index [*, M] long -> x[..., index, :] [*, M, c].

    Leading dims broadcast (x may carry a sample axis that index lacks, as [*, 1, M]).
    """
    batch = torch.broadcast_shapes(x.shape[:-2], index.shape[:-1])
    x = x.expand(*batch, *x.shape[-2:])
    index = index.expand(*batch, index.shape[-1])
    return torch.gather(x, -2, index[..., None].expand(*index.shape, x.shape[-1]))


def tokens_to_atoms(x: Tensor, atom_to_token: Tensor, atom_mask: Tensor) -> Tensor:
    """Broadcast token activations to their atoms: [*, N_token, c] -> [*, N_atom, c], 0 on padding.

    x may carry an extra sample axis ([*, N_sample, N_token, c]); the features do not.
    """
    if x.dim() == atom_to_token.dim() + 2:
        atom_to_token, atom_mask = atom_to_token.unsqueeze(-2), atom_mask.unsqueeze(-2)
    return gather_atoms(x, atom_to_token.long()) * atom_mask[..., None].to(x.dtype)


def atoms_to_tokens(x: Tensor, atom_to_token: Tensor, atom_mask: Tensor, n_token: int) -> Tensor:
    """Mean over each token's real atoms: [*, N_atom, c] -> [*, N_token, c] (0 for empty tokens).

    x may carry an extra sample axis ([*, N_sample, N_atom, c]); the features do not.
    """
    if x.dim() == atom_to_token.dim() + 2:
        atom_to_token, atom_mask = atom_to_token.unsqueeze(-2), atom_mask.unsqueeze(-2)
    batch = torch.broadcast_shapes(x.shape[:-2], atom_to_token.shape[:-1])
    weight = atom_mask[..., None].to(x.dtype).expand(*batch, x.shape[-2], 1)
    index = atom_to_token.long()[..., None].expand(*batch, x.shape[-2], 1)
    total = x.new_zeros(*batch, n_token, x.shape[-1]).scatter_add(
        -2, index.expand(*batch, x.shape[-2], x.shape[-1]), x.expand(*batch, *x.shape[-2:]) * weight)
    count = x.new_zeros(*batch, n_token, 1).scatter_add(-2, index, weight)
    return total / count.clamp(min=1.0)


def gather_token_pairs(z: Tensor, token_q: Tensor, token_k: Tensor) -> Tensor:
    """z [*, N_token, N_token, c] -> z[tok(l), tok(m)] in the blocked layout.

    token_q [*, n_block, n_q], token_k [*, n_block, n_k] long -> [*, n_block, n_q, n_k, c].
    """
    n_token = z.shape[-2]
    pair = token_q[..., :, None] * n_token + token_k[..., None, :]            # [*, B, q, k]
    out = gather_atoms(z.flatten(-3, -2), pair.flatten(-3))                   # [*, B*q*k, c]
    return out.unflatten(-2, pair.shape[-3:])


# --------------------------------------------------------------------------------------------
# Algorithms 5-7.
# --------------------------------------------------------------------------------------------

class AtomTransformer(nn.Module):
    """Algorithm 7 (SI 3.2): DiffusionTransformer over atoms with sequence-local key windows.

    The SI writes the window as a bias beta_lm = -1e10 outside the blocks on a full N_atom x
    N_atom matrix; here only the realised blocks are computed (`AtomWindows`), and key slots
    outside [0, N_atom) or on padded atoms get the kernels' mask bias.
    """

    def __init__(self, c_atom: int, c_atompair: int, n_block: int, n_head: int,
                 n_queries: int = 32, n_keys: int = 128, *, shifted_windows: bool = False,
                 separate_key_norm: bool = False, chained_key_norm: bool = False) -> None:
        super().__init__()
        self.n_queries, self.n_keys = n_queries, n_keys
        self.shifted_windows = shifted_windows
        self.transformer = DiffusionTransformer(c_atom, c_atom, c_atompair, n_block, n_head,
                                                separate_key_norm=separate_key_norm,
                                                chained_key_norm=chained_key_norm)

    @classmethod
    def from_config(cls, atom: AtomAttentionConfig) -> AtomTransformer:
        return cls(atom.c_atom, atom.c_atompair, atom.n_block, atom.n_head, atom.n_queries,
                   atom.n_keys, shifted_windows=atom.shifted_windows,
                   separate_key_norm=atom.separate_key_norm,
                   chained_key_norm=atom.chained_key_norm)

    def windows(self, n_atom: int, device: torch.device | str | None = None) -> AtomWindows:
        return AtomWindows.build(n_atom, self.n_queries, self.n_keys, device,
                                 shifted=self.shifted_windows)

    def pair_biases(self, p: Tensor, atom_mask: Tensor) -> list[Tensor]:
        """Each block's attention bias [*, B, H, n_q, n_k] from p and the window key mask.

        Both are fixed for a trunk output, so the sampler computes these once instead of
        normalizing p in every block of every step; with n_head * n_block <= c_atompair
        (3 x 4 <= 16 in AF3) they also take less memory than p itself.
        """
        windows = self.windows(atom_mask.shape[-1], p.device)
        if p.shape[-4:-1] != (windows.n_block, self.n_queries, self.n_keys):
            raise ValueError(f"AtomTransformer: p has blocked shape {tuple(p.shape[-4:-1])}, expected "
                             f"{(windows.n_block, self.n_queries, self.n_keys)} for "
                             f"N_atom={atom_mask.shape[-1]}")
        key_mask = windows.key_mask(atom_mask)                                 # [*, B, n_k]
        beta = kernels.mask_to_bias(key_mask, p.dtype)[..., None, :]          # [*, B, 1, n_k]
        return self.transformer.pair_biases(p, beta)

    def forward(self, q: Tensor, c: Tensor, p: Tensor | None, atom_mask: Tensor, *,
                biases: list[Tensor] | None = None) -> Tensor:
        """q [*, (N_sample,) N_atom, c_atom], c [*, N_atom, c_atom] (or with q's sample axis),
        p [*, n_block, n_q, n_k, c_atompair], atom_mask [*, N_atom] -> q, same shape.
        `biases`: `pair_biases(p, atom_mask)` computed beforehand (p is then unused)."""
        n_atom = q.shape[-2]
        windows = self.windows(n_atom, q.device)
        if biases is None:
            if p is None:
                raise ValueError("AtomTransformer: give p or precomputed biases")
            biases = self.pair_biases(p, atom_mask)
        if q.dim() > atom_mask.dim() + 1:                                      # sample axis
            biases = [b.unsqueeze(-5) for b in biases]
            if c.dim() < q.dim():
                c = c.unsqueeze(-3)
        q = self.transformer(windows.pad(q), windows.pad(c), None, key_index=windows.key_index,
                             biases=biases)
        return q[..., :n_atom, :]


class AtomAttentionEncoder(nn.Module):
    """Algorithm 5 (SI 3.2): embed atoms, run the AtomTransformer, average atoms into tokens.

    With c_s / c_z None this is the input embedder's encoder (Algorithm 2: no trunk, no
    coordinates); with both given it is the diffusion module's (Algorithm 20 line 3) and
    forward needs r_noisy, s_trunk and z_trunk.

    SI deviations (all follow AlphaFold 3's released code and Protenix, for weight import):
    - line 1: ref_charge enters as arcsinh(ref_charge), and c_l is multiplied by ref_mask.
    - line 11: q_l = c_l + LinearNoBias(r_l) uses c_l *after* the trunk single term of line 9
      (the SI initialises q_l = c_l before line 9).
    - lines 9-10: the LayerNorms have no offset (bias) and the two projections start at zero.
    - line 14: the MLP's last layer starts at zero; lines 15-16: q_l is zeroed on padded atoms.
    - p_lm exists only in the blocked layout (the pairs the AtomTransformer uses), not as a
      full N_atom x N_atom tensor; v_lm is also False for pairs with a padded or out-of-window
      atom, so their offset/valid terms are 0 (they are masked in attention anyway).
    Released-code differences we do NOT copy: AlphaFold 3 compares ref_space_uid of queries
    and keys in mismatched layouts (its issue #730: v_lm mostly False), and it shifts the
    first/last key window to stay inside [0, N_atom) instead of masking; we keep the SI's
    centred windows, which also keeps outputs independent of padding.
    OpenFold3 switches (AtomAttentionConfig, default off): `shifted_windows` (its windows
    shift like AF3's), `separate_key_norm` (its keys get their own AdaLN) and
    `mask_ref_embedding=False` (it does not multiply c_l by ref_mask).
    """

    def __init__(self, atom: AtomAttentionConfig, c_token: int, c_s: int | None = None,
                 c_z: int | None = None) -> None:
        super().__init__()
        if (c_s is None) != (c_z is None):
            raise ValueError("AtomAttentionEncoder: give both c_s and c_z (diffusion) or neither "
                             f"(input embedder), got c_s={c_s}, c_z={c_z}")
        c_atom, c_pair = atom.c_atom, atom.c_atompair
        self.has_trunk = c_s is not None
        self.embed_ref = LinearNoBias(REF_FEATURES_WIDTH, c_atom)                 # line 1
        self.embed_offsets = LinearNoBias(3, c_pair)                              # line 4
        self.embed_distances = LinearNoBias(1, c_pair)                            # line 5
        self.embed_valid = LinearNoBias(1, c_pair)                                # line 6
        if c_s is not None and c_z is not None:
            self.norm_s = LayerNorm(c_s, bias=False)                           # line 9
            self.embed_s = LinearNoBias(c_s, c_atom, zero_init=True)
            self.norm_z = LayerNorm(c_z, bias=False)                           # line 10
            self.embed_z = LinearNoBias(c_z, c_pair, zero_init=True)
            self.embed_r = LinearNoBias(3, c_atom)                                # line 11
        self.single_to_pair_row = LinearNoBias(c_atom, c_pair)                    # line 13
        self.single_to_pair_col = LinearNoBias(c_atom, c_pair)
        self.pair_mlp = nn.Sequential(                                            # line 14
            nn.ReLU(), LinearNoBias(c_pair, c_pair), nn.ReLU(), LinearNoBias(c_pair, c_pair),
            nn.ReLU(), LinearNoBias(c_pair, c_pair, zero_init=True))
        self.transformer = AtomTransformer.from_config(atom)                      # line 15
        self.mask_ref_embedding = atom.mask_ref_embedding
        self.to_token = LinearNoBias(c_atom, c_token)                             # line 16

    def conditioning(self, features: dict[str, Tensor], s_trunk: Tensor | None = None,
                     z_trunk: Tensor | None = None, *,
                     z_pairs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Lines 1-10, 13-14: c [*, N_atom, c_atom] and blocked p [*, n_block, n_q, n_k, c_atompair].

        They do not depend on r_noisy, so a sampler may compute them once per trunk output
        and pass them to every denoising step (`forward(..., conditioning=...)`). `z_pairs`:
        line 10's term (blocked, from `trunk_pair_tokens`) given instead of z_trunk, by a
        caller that never holds z whole (foldray.parallel: z sharded by rows).
        """
        self._check_trunk(s_trunk, z_trunk if z_pairs is None else z_pairs)
        ref_pos = features["ref_pos"]
        atom_mask = features["atom_mask"]
        atom_to_token = features["atom_to_token"].long()
        dtype = ref_pos.dtype
        ref_mask = features["ref_mask"].to(dtype)[..., None]                    # [*, N_atom, 1]
        f = torch.cat([ref_pos, torch.arcsinh(features["ref_charge"].to(dtype))[..., None], ref_mask,
                       features["ref_element"].to(dtype),
                       features["ref_atom_name_chars"].to(dtype).flatten(-2)], dim=-1)
        c = self.embed_ref(f)                                                    # [*, N_atom, c_atom]
        if self.mask_ref_embedding:
            c = c * ref_mask

        windows = self.transformer.windows(ref_pos.shape[-2], ref_pos.device)
        uid = features["ref_space_uid"]
        same_space = windows.queries(uid, -1)[..., :, None] == windows.keys(uid, -1)[..., None, :]
        v = (same_space & windows.pair_mask(atom_mask)).to(dtype)[..., None]    # [*, B, q, k, 1]
        d = windows.queries(ref_pos)[..., :, None, :] - windows.keys(ref_pos)[..., None, :, :]
        p = self.embed_offsets(d) * v                                            # line 4
        p = p + self.embed_distances(1.0 / (1.0 + d.square().sum(-1, keepdim=True))) * v  # line 5
        p = p + self.embed_valid(v) * v                                          # line 6

        if self.has_trunk:
            assert s_trunk is not None
            s = self.embed_s(self.norm_s(s_trunk))                              # [*, N_token, c_atom]
            c = c + tokens_to_atoms(s, atom_to_token, atom_mask)                # line 9
            if z_pairs is None:
                assert z_trunk is not None
                z = self.embed_z(self.norm_z(z_trunk))                          # [*, N_tok, N_tok, c_p]
                z_pairs = gather_token_pairs(z, *self.trunk_pair_tokens(features))
            p = p + z_pairs                                                      # line 10
        relu_c = F.relu(c)
        p = (p + windows.queries(self.single_to_pair_row(relu_c))[..., :, None, :]   # line 13
             + windows.keys(self.single_to_pair_col(relu_c))[..., None, :, :])
        return c, p + self.pair_mlp(p)                                           # line 14

    def trunk_pair_tokens(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The token pairs line 10 reads, (tok(l) [*, n_block, n_q], tok(m) [*, n_block, n_k])."""
        atom_to_token = features["atom_to_token"].long()
        windows = self.transformer.windows(atom_to_token.shape[-1], atom_to_token.device)
        return windows.queries(atom_to_token, -1), windows.keys(atom_to_token, -1)

    def forward(self, features: dict[str, Tensor], r_noisy: Tensor | None = None,
                s_trunk: Tensor | None = None, z_trunk: Tensor | None = None,
                conditioning: tuple[Tensor, Tensor] | None = None,
                pair_biases: list[Tensor] | None = None,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> a [*, (N_sample,) N_token, c_token], q_skip [*, (N_sample,) N_atom, c_atom],
        c_skip [*, N_atom, c_atom], p_skip [*, n_block, n_q, n_k, c_atompair].

        r_noisy [*, N_atom, 3] or [*, N_sample, N_atom, 3]; c_skip and p_skip are shared by
        the samples. `conditioning` is a cached `self.conditioning(features, s_trunk, z_trunk)`,
        `pair_biases` a cached `self.transformer.pair_biases(p, atom_mask)`.
        """
        if self.has_trunk != (r_noisy is not None):
            raise ValueError("AtomAttentionEncoder: r_noisy is required with a trunk (c_s, c_z) "
                             "and not accepted without one")
        c, p = conditioning if conditioning is not None else self.conditioning(
            features, s_trunk, z_trunk)
        atom_mask = features["atom_mask"]
        mask = atom_mask[..., None].to(c.dtype)                                 # [*, N_atom, 1]
        q = c                                                                    # line 7
        if r_noisy is not None:
            if r_noisy.dim() == c.dim() + 1:                                     # sample axis
                mask, c_q = mask.unsqueeze(-3), c.unsqueeze(-3)
            else:
                c_q = c
            q = c_q + self.embed_r(r_noisy) * mask                               # line 11
        q = self.transformer(q, c, p, atom_mask, biases=pair_biases) * mask       # line 15
        n_token = features["token_mask"].shape[-1]
        a = atoms_to_tokens(F.relu(self.to_token(q)), features["atom_to_token"], atom_mask,
                            n_token)                                             # line 16
        return a, q, c, p

    def _check_trunk(self, s_trunk: Tensor | None, z_trunk: Tensor | None) -> None:
        given = (s_trunk is not None, z_trunk is not None)
        if given != (self.has_trunk, self.has_trunk):
            want = "s_trunk and z_trunk" if self.has_trunk else "neither s_trunk nor z_trunk"
            raise ValueError(f"AtomAttentionEncoder built with c_s/c_z "
                             f"{'set' if self.has_trunk else 'None'} needs {want}")


class AtomAttentionDecoder(nn.Module):
    """Algorithm 6 (SI 3.2): broadcast tokens to atoms, AtomTransformer, project to r_update.

    SI deviation (AlphaFold 3's released code, Protenix): the final LayerNorm has no offset,
    the output projection starts at zero, and q_l / r_update are zeroed on padded atoms.
    """

    def __init__(self, atom: AtomAttentionConfig, c_token: int) -> None:
        super().__init__()
        self.embed_a = LinearNoBias(c_token, atom.c_atom)                           # line 1
        self.transformer = AtomTransformer.from_config(atom)                        # line 2
        self.norm = LayerNorm(atom.c_atom, bias=False)                         # line 3
        self.out = LinearNoBias(atom.c_atom, 3, zero_init=True)

    def forward(self, a: Tensor, q_skip: Tensor, c_skip: Tensor, p_skip: Tensor,
                features: dict[str, Tensor], pair_biases: list[Tensor] | None = None) -> Tensor:
        """a [*, (N_sample,) N_token, c_token] -> r_update [*, (N_sample,) N_atom, 3].
        `pair_biases`: a cached `self.transformer.pair_biases(p_skip, atom_mask)`."""
        atom_mask = features["atom_mask"]
        mask = atom_mask[..., None].to(q_skip.dtype)
        if q_skip.dim() == atom_mask.dim() + 2:
            mask = mask.unsqueeze(-3)
        q = tokens_to_atoms(self.embed_a(a), features["atom_to_token"], atom_mask) + q_skip  # line 1
        q = self.transformer(q * mask, c_skip, p_skip, atom_mask, biases=pair_biases) * mask  # line 2
        return self.out(self.norm(q)) * mask                                          # line 3
