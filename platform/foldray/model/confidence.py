"""Confidence and distogram heads, token frames and aligned errors (SI 4.3-4.4, Algorithms 29-31).

Shapes: s_inputs [*, N_token, c_s_inputs]; s [*, N_token, c_s]; z [*, N_token, N_token, c_z];
x [*, N_sample, N_atom, 3] (every sample is scored in one batch); token_mask [*, N_token],
atom_mask [*, N_atom] bool. Index features as in foldray.features.featurize: atom_to_token
[*, N_atom], token_rep_atom / token_centre_atom [*, N_token] (atom indices, padding -> 0).
Metrics computed from these logits (pLDDT, PAE, pTM, ipTM, ranking) live in
foldray.model.ranking; the losses in foldray.model.losses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foldray.model.config import ConfidenceConfig, PairformerConfig
from foldray.model.pairformer import PairformerStack
from foldray.model.primitives import LayerNorm, Linear, LinearNoBias

# SI 4.3.2 frame atoms of polymer tokens; everything else uses nearest neighbours.
PROTEIN_FRAME_ATOMS = ("N", "CA", "C")
NUCLEIC_FRAME_ATOMS = ("C1'", "C3'", "C4'")
# AF3 (features.Frames): a ligand frame is colinear if 1 - |cos(angle abc)| < 0.0937 (25 deg).
COLINEAR_TOLERANCE = 0.0937
EXACT = "donot_use_mm_for_euclid_dist"   # torch.cdist without the |a|^2 + |b|^2 - 2ab expansion


# ---------------------------------------------------------------------------- gathers


def batched_gather(x: Tensor, index: Tensor, n_feature_dims: int = 1) -> Tensor:
    """x [*, N, *F], index [*, M] (leading dims broadcast, right-aligned) -> [*, M, *F]."""
    feat = x.shape[x.dim() - n_feature_dims:]
    lead = torch.broadcast_shapes(x.shape[:x.dim() - n_feature_dims - 1], index.shape[:-1])
    x = x.expand(*lead, x.shape[x.dim() - n_feature_dims - 1], *feat)
    m = index.shape[-1]
    index = index.long().expand(*lead, m).reshape(*lead, m, *([1] * n_feature_dims))
    return torch.gather(x, len(lead), index.expand(*lead, m, *feat))


def atoms_per_token(atom_to_token: Tensor, atom_mask: Tensor, n_token: int) -> Tensor:
    """[*, N_token] number of real atoms in each token."""
    counts = atom_mask.new_zeros(*atom_mask.shape[:-1], n_token, dtype=torch.long)
    return counts.scatter_add(-1, atom_to_token.long(), atom_mask.long())


def atom_index_in_token(atom_to_token: Tensor, atom_mask: Tensor, n_token: int) -> Tensor:
    """[*, N_atom] position of each atom inside its token (atoms of a token are contiguous)."""
    n_atom = atom_to_token.shape[-1]
    position = torch.arange(n_atom, device=atom_to_token.device).expand_as(atom_to_token)
    first = torch.full((*atom_to_token.shape[:-1], n_token), n_atom, dtype=torch.long,
                       device=atom_to_token.device)
    first = first.scatter_reduce(-1, atom_to_token.long(), torch.where(atom_mask, position, n_atom),
                                 reduce="amin")
    index = position - batched_gather(first[..., None], atom_to_token, 1)[..., 0]
    return torch.where(atom_mask, index, 0)


def _name_codes(name: str) -> list[int]:
    """Atom name -> the 4 character classes of Table 5 ref_atom_name_chars (ord(c) - 32)."""
    return [ord(ch) - 32 for ch in name.ljust(4)]


def atom_name_is(ref_atom_name_chars: Tensor, name: str) -> Tensor:
    """[*, N_atom] bool: the atom is called `name` (decoded from the one-hot name feature)."""
    codes = ref_atom_name_chars.argmax(-1)                                  # [*, N_atom, 4]
    target = torch.tensor(_name_codes(name), device=codes.device)
    return (codes == target).all(-1) & (ref_atom_name_chars.sum((-1, -2)) > 0)


# ---------------------------------------------------------------------------- frames (SI 4.3.2)


def token_frames(batch: Mapping[str, Tensor], chunk: int = 256) -> tuple[Tensor, Tensor]:
    """SI 4.3.2 token frames (a_i, b_i, c_i) as atom indices, and which frames are valid.

    Protein tokens use (N, CA, C); DNA/RNA tokens (C1', C3', C4'). Every other token (ligand
    atoms, atoms of per-atom tokenized modified residues) has one atom b; a is the closest
    and c the second-closest atom of the same ligand residue (same ref_space_uid), measured
    in the reference conformer like AF3 and Protenix. A frame is invalid when an atom is
    missing, the residue has fewer than 3 atoms (ions) or a-b-c is colinear within 25 deg.
    Uses batch keys ref_atom_name_chars, ref_pos, ref_mask, ref_space_uid, atom_to_token,
    token_centre_atom, is_protein/is_rna/is_dna, token_mask and atom_mask.
    Returns frame_atom_index [*, N_token, 3] long and frame_mask [*, N_token] bool.
    For training targets also require the three atoms to be resolved (see losses.pae_loss).
    """
    token_mask, atom_mask = batch["token_mask"].bool(), batch["atom_mask"].bool()
    atom_to_token = batch["atom_to_token"].long()
    n_token, n_atom = token_mask.shape[-1], atom_mask.shape[-1]
    names = batch["ref_atom_name_chars"]
    position = torch.arange(n_atom, device=atom_mask.device).expand_as(atom_to_token)

    def token_atom(name: str) -> Tensor:                                    # [*, N_token], -1 = none
        found = atom_name_is(names, name) & atom_mask
        out = torch.full_like(token_mask, -1, dtype=torch.long)
        return out.scatter_reduce(-1, atom_to_token, torch.where(found, position, -1), reduce="amax")

    protein = batch["is_protein"].bool()
    nucleic = batch["is_rna"].bool() | batch["is_dna"].bool()
    polymer = (protein | nucleic) & (atoms_per_token(atom_to_token, atom_mask, n_token) > 1)
    prot_idx = torch.stack([token_atom(n) for n in PROTEIN_FRAME_ATOMS], -1)   # [*, N_token, 3]
    nuc_idx = torch.stack([token_atom(n) for n in NUCLEIC_FRAME_ATOMS], -1)
    poly_idx = torch.where(protein[..., None], prot_idx, nuc_idx)
    poly_ok = polymer & (poly_idx >= 0).all(-1)

    lig_idx, lig_ok = _ligand_frames(batch, chunk)
    index = torch.where(polymer[..., None], poly_idx, lig_idx).clamp(min=0)
    frame_mask = token_mask & torch.where(polymer, poly_ok, lig_ok)
    return index, frame_mask


def _ligand_frames(batch: Mapping[str, Tensor], chunk: int) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour frames around each token centre atom, from the reference conformer."""
    ref_pos = batch["ref_pos"].float()
    usable = batch["atom_mask"].bool() & batch["ref_mask"].bool()
    uid = batch["ref_space_uid"].long()
    b = batch["token_centre_atom"].long()                                  # [*, N_token]
    n_atom = ref_pos.shape[-2]
    pieces = []
    for start in range(0, b.shape[-1], chunk):
        b_c = b[..., start:start + chunk]
        b_pos = batched_gather(ref_pos, b_c)                                # [*, n, 3]
        same = batched_gather(uid[..., None], b_c, 1)[..., 0][..., None] == uid[..., None, :]
        not_self = b_c[..., None] != torch.arange(n_atom, device=b.device)
        ok = same & not_self & usable[..., None, :]                         # [*, n, N_atom]
        dist = torch.cdist(b_pos, ref_pos, compute_mode=EXACT).masked_fill(~ok, float("inf"))
        k = min(2, n_atom)
        near_d, near = dist.topk(k, dim=-1, largest=False)                 # [*, n, 2]
        if k < 2:
            near_d, near = near_d.expand(*near_d.shape[:-1], 2), near.expand(*near.shape[:-1], 2)
        pieces.append((near, torch.isfinite(near_d).all(-1)))
    near = torch.cat([p[0] for p in pieces], -2)
    found = torch.cat([p[1] for p in pieces], -1)
    index = torch.stack([near[..., 0], b, near[..., 1]], -1)               # (a, b, c)
    pos = frame_coordinates(ref_pos, index)                                 # [*, N_token, 3, 3]
    v1, v2 = pos[..., 0, :] - pos[..., 1, :], pos[..., 2, :] - pos[..., 1, :]
    n1, n2 = v1.norm(dim=-1), v2.norm(dim=-1)
    cos = (v1 * v2).sum(-1) / (n1 * n2).clamp(min=1e-12)
    straight = 1 - cos.abs() < COLINEAR_TOLERANCE
    ok = found & (n1 > 1e-4) & (n2 > 1e-4) & ~straight & batched_gather(usable[..., None], b, 1)[..., 0]
    return index, ok


def frame_coordinates(x: Tensor, frame_atom_index: Tensor) -> Tensor:
    """x [*, N_atom, 3], frame_atom_index [*, N_token, 3] -> frames [*, N_token, 3 (a,b,c), 3]."""
    flat = batched_gather(x, frame_atom_index.flatten(-2))                  # [*, 3 N_token, 3]
    return flat.unflatten(-2, (frame_atom_index.shape[-2], 3))


def express_coordinates_in_frame(x: Tensor, frames: Tensor, eps: float = 1e-8) -> Tensor:
    """Algorithm 29 (SI 4.3.2): x [*, N, 3] in the basis of each frame [*, N_frame, 3, 3].

    Returns [*, N_frame, N, 3]; b is the origin, e1 bisects (a-b, c-b).
    """
    a, b, c = frames.unbind(-2)                                             # line 1
    w1 = F.normalize(a - b, dim=-1, eps=eps)                                # line 2
    w2 = F.normalize(c - b, dim=-1, eps=eps)                                # line 3
    e1 = F.normalize(w1 + w2, dim=-1, eps=eps)                              # line 4
    e2 = F.normalize(w2 - w1, dim=-1, eps=eps)                              # line 5
    e3 = torch.linalg.cross(e1, e2, dim=-1)                                 # line 6
    d = x[..., None, :, :] - b[..., :, None, :]                             # line 7, [*, N_frame, N, 3]
    basis = torch.stack([e1, e2, e3], -2)                                   # [*, N_frame, 3, 3]
    return torch.einsum("...fnk,...fek->...fne", d, basis)                 # line 8


def compute_alignment_error(x_pred: Tensor, x_true: Tensor, frames_pred: Tensor, frames_true: Tensor,
                            eps: float = 1e-8) -> Tensor:
    """Algorithm 30: e_ij, the error of token j when aligned on the frame of token i.

    x_* [*, N_token, 3] token (centre atom) positions, frames_* [*, N_token, 3, 3].
    Returns [*, N_frame, N_token] in Å.
    """
    x_hat = express_coordinates_in_frame(x_pred, frames_pred)               # line 1
    x_hat_true = express_coordinates_in_frame(x_true, frames_true)          # line 2
    return torch.sqrt(((x_hat - x_hat_true) ** 2).sum(-1) + eps)            # line 3


# ---------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class ConfidenceOutput:
    """Logits of Algorithm 31 for every sample of x_pred."""

    plddt_logits: Tensor      # [*, N_sample, N_atom, n_bins_plddt]
    pae_logits: Tensor        # [*, N_sample, N_token, N_token, n_bins_pae]
    pde_logits: Tensor        # [*, N_sample, N_token, N_token, n_bins_pde]
    resolved_logits: Tensor   # [*, N_sample, N_atom, 2]


def distance_one_hot(d: Tensor, lower: Tensor) -> Tensor:
    """One-hot of d in bins [lower_k, lower_k+1); the last bin is open, d < lower_0 is all zeros."""
    upper = torch.cat([lower[1:], lower.new_tensor([float("inf")])])
    return ((d[..., None] > lower) & (d[..., None] < upper)).to(d.dtype)


class ConfidenceHead(nn.Module):
    """Algorithm 31 (SI 4.3.5): pLDDT, PAE, PDE and resolved logits for a predicted structure.

    SI deviation (follows AF3's released confidence_head.py so its weights map 1:1):
    - the representative-atom distances are embedded with 39 bins whose lower edges run
      3.25 .. 50.75 Å (1.25 Å apart, last bin open-ended, < 3.25 Å all zeros), not the SI's
      "3 3/8 .. 21 3/8 Å"; Protenix uses the same bins;
    - each output projection is preceded by a LayerNorm (pae/pde/plddt/resolved);
    - PDE logits are symmetrised as W LN(z) + (W LN(z))^T instead of W (z + z^T);
    - line 4 replaces s, z by the PairformerStack output (its blocks are residual already);
    - the Pairformer runs without dropout (Protenix: pairformer_dropout 0.0);
    - output projections are zero-initialised (AF3 final_init), so an untrained head is uniform.
    pLDDT/resolved weights are indexed by the atom's position in its token (line 7-8):
    stored as [max_atoms_per_token, c_s, bins]; positions past the last slot share it.
    """

    def __init__(self, c_s: int, c_z: int, c_s_inputs: int, config: ConfidenceConfig,
                 pairformer: PairformerConfig) -> None:
        super().__init__()
        self.config = config
        self.s_i = LinearNoBias(c_s_inputs, c_z)                            # line 1
        self.s_j = LinearNoBias(c_s_inputs, c_z)
        lower = torch.linspace(config.distance_bins_min, config.distance_bins_max,
                               config.n_distance_bins)
        self.register_buffer("distance_lower", lower, persistent=False)
        self.distance = LinearNoBias(config.n_distance_bins, c_z)           # line 3
        # Protenix (ConfidenceConfig.raw_distance / norm_s_trunk): a term linear in d itself,
        # and LayerNorm(clamp(s_trunk, +-512)) as the Pairformer's single input
        self.distance_raw = LinearNoBias(1, c_z) if config.raw_distance else None
        self.norm_s_trunk = LayerNorm(c_s) if config.norm_s_trunk else None
        self.pairformer = PairformerStack(                                  # line 4
            c_s, c_z, dataclasses.replace(pairformer, dropout=config.pairformer_dropout),
            n_block=config.n_block)
        self.pae_norm = LayerNorm(c_z)
        self.pae = LinearNoBias(c_z, config.n_bins_pae, zero_init=True)     # line 5
        self.pde_norm = LayerNorm(c_z)
        self.pde = LinearNoBias(c_z, config.n_bins_pde, zero_init=True)     # line 6
        n_slot = config.max_atoms_per_token
        self.plddt_norm = LayerNorm(c_s)                                 # line 7
        self.plddt_weight = nn.Parameter(torch.zeros(n_slot, c_s, config.n_bins_plddt))
        self.resolved_norm = LayerNorm(c_s)                              # line 8
        self.resolved_weight = nn.Parameter(torch.zeros(n_slot, c_s, 2))

    def forward(self, s_inputs: Tensor, s: Tensor, z: Tensor, x_pred: Tensor, *,
                atom_to_token: Tensor, token_rep_atom: Tensor, token_mask: Tensor,
                atom_mask: Tensor, chunk_size: int | None = None,
                sample_chunk: int | None = None,
                checkpoint_activations: bool = False,
                token_nucleotide: Tensor | None = None) -> ConfidenceOutput:
        """x_pred [*, N_sample, N_atom, 3]. `sample_chunk` scores that many samples at a time
        (None = all at once); results are identical, only peak memory changes.
        `token_nucleotide` [*, N_token] bool marks standard (multi-atom) DNA/RNA tokens, whose
        per-atom slots ConfidenceConfig.nucleotide_slot_shift moves (Protenix).
        SI 4.3.5: no gradient reaches the trunk or the predicted structure."""
        s_inputs, s, z, x_pred = s_inputs.detach(), s.detach(), z.detach(), x_pred.detach()
        if self.norm_s_trunk is not None:
            s = self.norm_s_trunk(s.clamp(-512.0, 512.0))
        token_mask, atom_mask = token_mask.bool(), atom_mask.bool()
        z = z + self.s_i(s_inputs)[..., :, None, :] + self.s_j(s_inputs)[..., None, :, :]  # line 1
        n_sample = x_pred.shape[-3]
        step = n_sample if sample_chunk is None else sample_chunk
        shift = None
        if self.config.nucleotide_slot_shift and token_nucleotide is not None:
            shift = token_nucleotide.long() * self.config.nucleotide_slot_shift   # [*, N_token]
        parts = [self._score(s, z, x_pred[..., i:i + step, :, :], atom_to_token, token_rep_atom,
                             token_mask, atom_mask, chunk_size, checkpoint_activations, shift)
                 for i in range(0, n_sample, step)]
        plddt, pae, pde, resolved = zip(*parts, strict=True)
        return ConfidenceOutput(plddt_logits=torch.cat(plddt, -3), pae_logits=torch.cat(pae, -4),
                                pde_logits=torch.cat(pde, -4), resolved_logits=torch.cat(resolved, -3))

    def _score(self, s: Tensor, z: Tensor, x_pred: Tensor, atom_to_token: Tensor,
               token_rep_atom: Tensor, token_mask: Tensor, atom_mask: Tensor,
               chunk_size: int | None, checkpoint: bool,
               shift: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_token = token_mask.shape[-1]
        x_rep = batched_gather(x_pred.float(), token_rep_atom[..., None, :])  # [*, S, N_token, 3]
        d = torch.cdist(x_rep, x_rep, compute_mode=EXACT)                    # line 2
        pair_mask = token_mask[..., :, None] & token_mask[..., None, :]
        one_hot = distance_one_hot(d, self.distance_lower) * pair_mask[..., None, :, :, None]
        z = z[..., None, :, :, :] + self.distance(one_hot.to(z.dtype))      # line 3, [*, S, N, N, c_z]
        if self.distance_raw is not None:
            z = z + self.distance_raw((d * pair_mask[..., None, :, :])[..., None].to(z.dtype))
        s = s[..., None, :, :].expand(*z.shape[:-3], n_token, s.shape[-1])
        mask = token_mask[..., None, :].expand(*z.shape[:-3], n_token)
        lead = z.shape[:-3]
        s, z = self.pairformer(s.reshape(-1, *s.shape[-2:]), z.reshape(-1, *z.shape[-3:]),
                               mask.reshape(-1, n_token), chunk_size=chunk_size,
                               checkpoint_activations=checkpoint)                   # line 4
        s, z = s.reshape(*lead, *s.shape[-2:]).float(), z.reshape(*lead, *z.shape[-3:]).float()
        pae = self.pae(self.pae_norm(z))                                     # line 5
        if self.config.pde_symmetric_input:   # Protenix: W LN(z + z^T)
            pde = self.pde(self.pde_norm(z + z.transpose(-2, -3)))
        else:
            pde = self.pde(self.pde_norm(z))
            pde = pde + pde.transpose(-2, -3)                                # line 6
        plddt = self._per_atom(self.plddt_norm(s), self.plddt_weight, atom_to_token, atom_mask, shift)
        resolved = self._per_atom(self.resolved_norm(s), self.resolved_weight, atom_to_token, atom_mask,
                                  shift)
        return plddt, pae, pde, resolved

    def _per_atom(self, s: Tensor, weight: Tensor, atom_to_token: Tensor, atom_mask: Tensor,
                  shift: Tensor | None = None) -> Tensor:
        """Lines 7-8: LinearNoBias_{token_atom_idx(l)}(s_{tok(l)}) -> [*, S, N_atom, bins]."""
        n_slot, _, n_bin = weight.shape
        n_token = s.shape[-2]
        logits = torch.einsum("...nc,kcb->...nkb", s, weight)                # [*, S, N_token, slot, bins]
        slot = atom_index_in_token(atom_to_token.long(), atom_mask, n_token)
        if shift is not None:
            slot = slot + batched_gather(shift[..., None], atom_to_token.long(), 1)[..., 0]
        slot = slot.clamp(max=n_slot - 1)
        flat = atom_to_token.long() * n_slot + slot                          # [*, N_atom]
        return batched_gather(logits.flatten(-3, -2), flat[..., None, :])


class DistogramHead(nn.Module):
    """SI 4.4: binned representative-atom distances predicted from the trunk pair representation.

    Bins as AF2/AF3: 64 bins over distogram_min..distogram_max (2-22 Å), i.e. 63 breaks
    2.3125 .. 21.6875 Å; the first and last bin are open-ended.
    SI deviation (AF3 released distogram_head.py): no bias, zero-initialised; logits are
    symmetrised as h + h^T.
    """

    def __init__(self, c_z: int, config: ConfidenceConfig) -> None:
        super().__init__()
        linear = Linear if config.distogram_bias else LinearNoBias     # Protenix: with bias
        self.linear = linear(c_z, config.n_bins_distogram, zero_init=True)

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z)                                                   # [*, N, N, bins]
        return h + h.transpose(-2, -3)


def distogram_breaks(config: ConfidenceConfig, device: torch.device | None = None) -> Tensor:
    """[n_bins - 1] inner bin edges of the distogram (2.3125 .. 21.6875 Å by default)."""
    edges = torch.linspace(config.distogram_min, config.distogram_max, config.n_bins_distogram + 1,
                           device=device)
    return edges[1:-1]
