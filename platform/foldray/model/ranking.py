"""Confidence metrics and sample ranking from the confidence head (SI 4.3, 5.9).

Follows AlphaFold 3's released `model/confidences.py` and `confidence_head.py`, which the
output JSONs (foldray.io.confidences) mirror. This is the only implementation of the SI 5.9
metrics: foldray.io only rounds and serialises them, and where it must derive a metric from
one stored sample (numpy) it calls the `*_np` entries at the end, which run these same
functions in float64. Shapes: logits carry the sample dim,
pae_logits [*, N_sample, N_token, N_token, 64], plddt_logits [*, N_sample, N_atom, 50];
token features [*, N_token] without it (they broadcast). Chain-level metrics take one
structure (token features 1-D) and keep any sample dims of the logits; chains are ordered
by asym_id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from foldray.model.confidence import EXACT, atom_name_is
from foldray.model.config import ConfidenceConfig
from foldray.residues import RESTYPES

# SI 5.9.3 / AF3 get_ranking_score
IPTM_WEIGHT = 0.8
DISORDER_WEIGHT = 0.5
CLASH_PENALTY = 100.0
RASA_DISORDER_CUTOFF = 0.581     # AF3 fraction_disordered
RASA_WINDOW = 25                 # AF3 windowed_solvent_accessible_area

# Sander & Rost 1994 maximal accessible areas (AF3 MAX_ACCESSIBLE_SURFACE_AREA); others: ALA.
MAX_ASA = {"ALA": 106.0, "ARG": 248.0, "ASN": 157.0, "ASP": 163.0, "CYS": 135.0, "GLN": 198.0,
           "GLU": 194.0, "GLY": 84.0, "HIS": 184.0, "ILE": 169.0, "LEU": 164.0, "LYS": 205.0,
           "MET": 188.0, "PHE": 197.0, "PRO": 136.0, "SER": 130.0, "THR": 142.0, "TRP": 227.0,
           "TYR": 222.0, "VAL": 142.0}
# DSSP (used by AF3 through mkdssp) atom radii and water probe, Å.
DSSP_RADII = {"N": 1.65, "CA": 1.87, "C": 1.76, "O": 1.4}
DSSP_SIDE_CHAIN_RADIUS = 1.8
WATER_RADIUS = 1.4


# ---------------------------------------------------------------------------- expectations


def error_bin_centres(n_bins: int, max_error_bin: float, device: torch.device | None = None) -> Tensor:
    """PAE/PDE bin centres: 0.25, 0.75, ..., 31.75 Å for 64 bins over 0..32 Å (AF3)."""
    width = max_error_bin / n_bins
    return (torch.arange(n_bins, device=device, dtype=torch.float32) + 0.5) * width


def expected_error(logits: Tensor, max_error_bin: float) -> Tensor:
    """PAE_ij / PDE_ij (SI eq. 11, 13): sum_b p_b centre_b, in Å."""
    return _expected_error_from_probs(logits.float().softmax(-1), max_error_bin)


def _expected_error_from_probs(probs: Tensor, max_error_bin: float) -> Tensor:
    centres = error_bin_centres(probs.shape[-1], max_error_bin, probs.device)
    return (probs * centres).sum(-1)


def expected_plddt(plddt_logits: Tensor) -> Tensor:
    """Per-atom pLDDT 0-100: expectation over 50 bins centred 0.01 .. 0.99, times 100."""
    n_bins = plddt_logits.shape[-1]
    centres = (torch.arange(n_bins, device=plddt_logits.device, dtype=torch.float32) + 0.5) / n_bins
    return 100.0 * (plddt_logits.float().softmax(-1) * centres).sum(-1)


def tm_d0(n_tokens: Tensor | float) -> Tensor:
    """TM-score d0(N) = 1.24 (max(N, 19) - 15)^(1/3) - 1.8 (SI 5.9.1; N clamped at 19)."""
    n = torch.as_tensor(n_tokens, dtype=torch.float32).clamp(min=19.0)
    return 1.24 * (n - 15.0) ** (1.0 / 3.0) - 1.8


def tm_adjusted_pae(pae_logits: Tensor, n_tokens: Tensor | float, max_error_bin: float) -> Tensor:
    """E_b[1 / (1 + (Δ_b / d0)^2)] per pair; n_tokens broadcasts to [*, N, N] (or a scalar)."""
    return _tm_adjusted_from_probs(pae_logits.float().softmax(-1), n_tokens, max_error_bin)


def _tm_adjusted_from_probs(probs: Tensor, n_tokens: Tensor | float, max_error_bin: float) -> Tensor:
    """tm_adjusted_pae from softmaxed PAE logits (summary_confidences softmaxes once)."""
    centres = error_bin_centres(probs.shape[-1], max_error_bin, probs.device)
    d0 = tm_d0(n_tokens).to(probs.device)
    tm_per_bin = 1.0 / (1.0 + (centres / d0[..., None]) ** 2)
    return (probs * tm_per_bin).sum(-1)


def _tm_from_adjusted(tm_pae: Tensor, pair_mask: Tensor) -> Tensor:
    """max_i mean_j over the masked pairs; NaN where no pair counts (AF3 predicted_tm_score)."""
    pair_mask = pair_mask.to(tm_pae.dtype)
    per_frame = (tm_pae * pair_mask).sum(-1) / (pair_mask.sum(-1) + 1e-8)
    score = per_frame.max(-1).values
    return torch.where(pair_mask.flatten(-2).sum(-1) > 0, score, torch.nan)


def predicted_tm_score(pae_logits: Tensor, token_mask: Tensor, frame_mask: Tensor,
                       asym_id: Tensor | None = None, *, interface: bool = False,
                       max_error_bin: float = 32.0) -> Tensor:
    """pTM (SI eq. 17) or, with interface=True, ipTM (eq. 18) -> [*, N_sample].

    Rows i need a valid frame, columns j are all real tokens; d0 uses all real tokens
    (AF3 tmscore_adjusted_pae_global, also used for the full-complex ipTM). ipTM counts
    only pairs in different chains and is NaN for a single chain.
    """
    n = token_mask.bool().sum(-1).float()[..., None, None, None]            # [*, 1, 1, 1]
    tm = tm_adjusted_pae(pae_logits, n, max_error_bin)                      # [*, S, N, N]
    return _tm_from_adjusted(tm, _tm_pairs(token_mask, frame_mask, asym_id, interface)[..., None, :, :])


def _tm_pairs(token_mask: Tensor, frame_mask: Tensor, asym_id: Tensor | None, interface: bool) -> Tensor:
    """pTM / ipTM pairs: rows with a valid frame, real columns, other chains for ipTM."""
    token_mask, frame_mask = token_mask.bool(), frame_mask.bool()
    pair = (frame_mask & token_mask)[..., :, None] & token_mask[..., None, :]
    if interface:
        if asym_id is None:
            raise ValueError("predicted_tm_score: interface=True needs asym_id")
        pair = pair & (asym_id[..., :, None] != asym_id[..., None, :])
    return pair


def chain_pair_iptm(pae_logits: Tensor, token_mask: Tensor, frame_mask: Tensor, asym_id: Tensor,
                    max_error_bin: float = 32.0) -> tuple[Tensor, Tensor]:
    """[..., N_chain, N_chain] chain-pair ipTM of one structure; diagonal = per-chain pTM.

    AF3 chain_pairwise_predicted_tm_scores with tmscore_adjusted_pae_interface: for chains
    A != B, pTM over tokens of A and B counting only A-B pairs with d0(N_A + N_B); for A = B
    the chain's pTM with d0(N_A). Symmetric; NaN where no row has a valid frame.
    Token tensors are 1-D [N_token]; returns (matrix, chain asym ids).
    """
    return _chain_pair_iptm(pae_logits.float().softmax(-1), token_mask, frame_mask, asym_id, max_error_bin)


def _chain_pair_iptm(probs: Tensor, token_mask: Tensor, frame_mask: Tensor, asym_id: Tensor,
                     max_error_bin: float) -> tuple[Tensor, Tensor]:
    """chain_pair_iptm from softmaxed PAE logits."""
    real = token_mask.bool()
    chains = torch.unique(asym_id[real])
    sample_shape = probs.shape[:-3]
    out = probs.new_full((*sample_shape, len(chains), len(chains)), torch.nan, dtype=torch.float32)
    member = [(asym_id == c) & real for c in chains]
    for a in range(len(chains)):
        for b in range(a, len(chains)):
            keep = (member[a] | member[b]).nonzero().flatten()
            sub = probs[..., keep[:, None], keep[None, :], :]
            n = float(member[a].sum() + (member[b].sum() if a != b else 0))
            tm = _tm_adjusted_from_probs(sub, n, max_error_bin)
            pair = frame_mask.bool()[keep][:, None] & torch.ones_like(keep, dtype=torch.bool)[None, :]
            if a != b:
                pair = pair & (asym_id[keep][:, None] != asym_id[keep][None, :])
            out[..., a, b] = out[..., b, a] = _tm_from_adjusted(tm, pair)
    return out, chains


def chain_iptm(pair_iptm: Tensor) -> Tensor:
    """[..., N_chain] mean ipTM of each chain with the others (AF3 get_iptm_xchain)."""
    n = pair_iptm.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=pair_iptm.device)
    masked = torch.where(off, pair_iptm, torch.nan)
    by_row, by_col = masked.nanmean(-1), masked.nanmean(-2)
    return torch.stack([by_row, by_col]).nanmean(0)


def chain_pair_pae_min(pae: Tensor, token_mask: Tensor, frame_mask: Tensor, asym_id: Tensor) -> Tensor:
    """[..., N_chain, N_chain] lowest expected PAE over frames i in chain A, tokens j in chain B.

    pae [..., N_token, N_token] in Å (expected_error); NaN where A has no valid frame (AF3).
    Not symmetric: row = the chain whose frames align.
    """
    real = token_mask.bool()
    chains = torch.unique(asym_id[real])
    member = torch.stack([(asym_id == c) & real for c in chains])           # [C, N]
    rows = member & frame_mask.bool()
    big = torch.finfo(pae.dtype).max
    row_min = torch.stack([pae.masked_fill(~r[:, None], big).amin(-2) for r in rows], -2)  # [..., C, N]
    out = torch.stack([row_min.masked_fill(~m, big).amin(-1) for m in member], -1)     # [..., C, C]
    return torch.where(rows.any(-1)[:, None], out, torch.nan)


# ---------------------------------------------------------------------------- clashes (SI 5.9.2)


def has_clash(x: Tensor, atom_mask: Tensor, is_polymer_atom: Tensor, atom_chain: Tensor,
              atom_residue: Tensor, cutoff: float = 1.1, max_clashes: int = 100,
              max_fraction: float = 0.5, chunk: int = 2048) -> Tensor:
    """AF3 has_clash: a polymer chain with > 100 clashing atoms or > 50% of its atoms clashing.

    An atom clashes if another polymer atom lies within 1.1 Å and is in another chain or
    more than one residue away (AF3's released definition; the SI counts chain pairs).
    x [..., N_atom, 3] (any sample dims); per-atom tensors 1-D. Returns bool [...].
    """
    keep = (atom_mask.bool() & is_polymer_atom.bool()).nonzero().flatten()
    if keep.numel() == 0:
        return torch.zeros(x.shape[:-2], dtype=torch.bool, device=x.device)
    xp, chain, res = x[..., keep, :].float(), atom_chain[keep], atom_residue[keep]
    clashing = []
    for start in range(0, len(keep), chunk):
        sl = slice(start, start + chunk)
        near = torch.cdist(xp[..., sl, :], xp, compute_mode=EXACT) < cutoff  # [..., n, M]
        apart = (chain[sl, None] != chain[None, :]) | ((res[sl, None] - res[None, :]).abs() > 1)
        clashing.append((near & apart).any(-1))
    clashing = torch.cat(clashing, -1)                                       # [..., M]
    result = torch.zeros(x.shape[:-2], dtype=torch.bool, device=x.device)
    for c in torch.unique(chain):
        in_chain = chain == c
        count = clashing[..., in_chain].sum(-1)
        result |= (count > max_clashes) | (count / in_chain.sum() > max_fraction)
    return result


# ---------------------------------------------------------------------------- disorder (RASA)


def _sphere_points(n: int, device: torch.device) -> Tensor:
    """[n, 3] near-uniform unit vectors (golden-section spiral)."""
    k = torch.arange(n, device=device, dtype=torch.float32) + 0.5
    polar = torch.acos(1 - 2 * k / n)
    azimuth = math.pi * (1 + 5 ** 0.5) * k
    return torch.stack([torch.cos(azimuth) * torch.sin(polar), torch.sin(azimuth) * torch.sin(polar),
                        torch.cos(polar)], -1)


# Shrake-Rupley work sizes: distance elements per neighbour search ([samples, rows, N]) and
# elements per dot block (the one [rows, K, dots] float temporary). CPU: a sweep of 2^16..2^20
# on 102m (1220 atoms) was fastest at 2^18..2^19 (stays in cache); CUDA: large launches (not
# yet measured on a GPU). Both bound memory, whatever N is.
SASA_PAIR_ELEMENTS = 1 << 24
SASA_BLOCK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 24}


def _neighbour_lists(x: Tensor, r: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Atoms touching atoms start:stop (d < r_i + r_k, not itself), left-packed.

    x [B, N, 3] -> (nb [B * c, K] atom indices, -1 past each row's count; counts [B * c]).
    Rows are (sample, atom) pairs, sample-major.
    """
    n_sample, rows = x.shape[0], stop - start
    d = torch.cdist(x[:, start:stop], x)                                     # [B, c, N]
    touching = d < r[start:stop, None] + r[None, :]
    own = torch.arange(start, stop, device=x.device)
    touching[:, own - start, own] = False
    counts = touching.sum(-1).flatten()                                      # [B * c]
    b, i, j = touching.nonzero(as_tuple=True)                                # row-major: packed per row
    row = b * rows + i
    pos = torch.arange(len(j), device=x.device) - (counts.cumsum(0) - counts)[row]
    nb = torch.full((n_sample * rows, max(int(counts.max()), 1)), -1, dtype=torch.long, device=x.device)
    nb[row, pos] = j
    return nb, counts


def shrake_rupley_sasa(x: Tensor, radii: Tensor, n_points: int = 200, probe: float = WATER_RADIUS,
                       chunk: int | None = None, block: int | None = None) -> Tensor:
    """Solvent accessible surface area per atom (Å^2), Shrake-Rupley. x [..., N, 3], radii [N].

    A dot u on atom i's sphere is buried by neighbour k when
    |x_i - x_k|^2 + r_i^2 + 2 r_i u.(x_i - x_k) < r_k^2. Neighbour lists come from `chunk`
    distance rows at a time (bounded memory for large N); (sample, atom) rows are sorted by
    neighbour count and the dots of `block` elements at a time are tested with one matmul,
    padding only to the largest list in the block.
    """
    shape, n = x.shape, x.shape[-2]
    if n == 0 or x.numel() == 0:
        return x.new_zeros(shape[:-1])
    x = x.reshape(-1, n, 3)
    n_sample = x.shape[0]
    r = radii.to(x.dtype) + probe                                            # [N]
    points = _sphere_points(n_points, x.device).to(x.dtype)                  # [P, 3]
    chunk = chunk or max(1, SASA_PAIR_ELEMENTS // max(n_sample * n, 1))
    block = block or SASA_BLOCK_ELEMENTS.get(x.device.type, SASA_BLOCK_ELEMENTS["cuda"])
    exposed = x.new_ones(n_sample, n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        nb, counts = _neighbour_lists(x, r, start, stop)
        order = counts.argsort(descending=True)
        sorted_counts = counts[order].tolist()                               # one sync per chunk
        p = 0
        while p < len(order) and sorted_counts[p] > 0:                       # no neighbour: all exposed
            k = sorted_counts[p]
            q = min(p + max(1, block // (k * n_points)), len(order))
            rows = order[p:q]
            sample, atom = rows // (stop - start), rows % (stop - start) + start
            nb_rows = nb[rows, :k]                                           # [m, k]
            valid = nb_rows >= 0
            nb_rows = nb_rows.clamp(min=0)
            offset = x[sample, atom][:, None, :] - x[sample[:, None], nb_rows]    # [m, k, 3]
            r_i = r[atom]
            base = (offset ** 2).sum(-1) + r_i[:, None] ** 2                  # |o|^2 + r_i^2
            r_k2 = torch.where(valid, r[nb_rows] ** 2, -torch.inf)
            dist2 = torch.matmul(offset, points.T)                           # [m, k, P]: u.o
            dist2.mul_((2 * r_i)[:, None, None]).add_(base[..., None]).sub_(r_k2[..., None])
            buried = dist2.amin(-2) < 0                                      # [m, P]
            exposed[sample, atom] = 1.0 - buried.to(x.dtype).mean(-1)
            p = q
    return (exposed * 4 * math.pi * r ** 2).reshape(*shape[:-2], n)


def _reflect_window_mean(values: Tensor, window: int) -> Tensor:
    """numpy.pad(mode='reflect') + moving average of `window` (odd) along the last axis."""
    n, half = values.shape[-1], (window - 1) // 2
    pos = torch.arange(-half, n + half, device=values.device)
    if n == 1:
        idx = torch.zeros_like(pos)
    else:
        period = 2 * (n - 1)
        m = pos.remainder(period)
        idx = torch.where(m < n, m, period - m)
    padded = values[..., idx]
    return padded.unfold(-1, window, 1).mean(-1)


def fraction_disordered(x: Tensor, batch: Mapping[str, Tensor], n_points: int = 200) -> Tensor:
    """AF3 fraction_disordered: share of protein residues with windowed RASA > 0.581.

    One structure: x [..., N_atom, 3] (sample dims kept), batch features unbatched
    ([N_token] / [N_atom]). As AF3 (via DSSP): SASA of each protein chain on its own with
    DSSP radii and a 1.4 Å probe, per residue over the max ASA of Sander & Rost (unknown
    residues as ALA), capped at 1, then averaged over a 25-residue window (reflect padding).
    SI deviation: Shrake-Rupley with `n_points` dots instead of DSSP's surface dots, so
    values differ slightly from mkdssp's. Returns [...], 0 when there is no protein.
    """
    atom_to_token = batch["atom_to_token"].long()
    atom_mask = batch["atom_mask"].bool()
    element = batch["ref_element"].argmax(-1)
    protein_atom = atom_mask & batch["is_protein"].bool()[atom_to_token] & (element != 1)
    radii = torch.full(atom_mask.shape, DSSP_SIDE_CHAIN_RADIUS, device=x.device)
    for name, radius in DSSP_RADII.items():
        radii = torch.where(atom_name_is(batch["ref_atom_name_chars"], name), radius, radii)
    restype = batch["restype"].argmax(-1)
    max_asa_table = torch.tensor([MAX_ASA.get(name, MAX_ASA["ALA"]) for name in RESTYPES],
                                 device=x.device)
    asym, residue = batch["asym_id"][atom_to_token], batch["residue_index"][atom_to_token]
    rasa_all = []
    for chain in torch.unique(asym[protein_atom]):
        atoms = (protein_atom & (asym == chain)).nonzero().flatten()
        sasa = shrake_rupley_sasa(x[..., atoms, :].float(), radii[atoms], n_points)   # [..., A]
        res_ids, res_of_atom = torch.unique(residue[atoms], return_inverse=True)
        per_res = sasa.new_zeros(*sasa.shape[:-1], len(res_ids)).index_add(-1, res_of_atom, sasa)
        first_atom = torch.full((len(res_ids),), len(atoms), device=x.device).scatter_reduce(
            0, res_of_atom, torch.arange(len(atoms), device=x.device), reduce="amin")
        max_asa = max_asa_table[restype[atom_to_token[atoms[first_atom]]]]
        rasa = (per_res.round() / max_asa).clamp(max=1.0)                   # DSSP ACC is an integer
        rasa_all.append(_reflect_window_mean(rasa, RASA_WINDOW))
    if not rasa_all:
        return torch.zeros(x.shape[:-2], device=x.device)
    return (torch.cat(rasa_all, -1) > RASA_DISORDER_CUTOFF).float().mean(-1)


# ---------------------------------------------------------------------------- ranking (SI 5.9.3)


def ranking_score(ptm: Tensor, iptm: Tensor, disorder: Tensor, clash: Tensor) -> Tensor:
    """0.8 ipTM + 0.2 pTM + 0.5 disorder - 100 has_clash; pTM alone where ipTM is NaN (1 chain)."""
    base = torch.where(torch.isnan(iptm), ptm, IPTM_WEIGHT * iptm + (1 - IPTM_WEIGHT) * ptm)
    return base + DISORDER_WEIGHT * disorder - CLASH_PENALTY * clash.float()


@torch.no_grad()
def summary_confidences(plddt_logits: Tensor, pae_logits: Tensor, x: Tensor,
                        batch: Mapping[str, Tensor], frame_mask: Tensor,
                        config: ConfidenceConfig | None = None) -> dict[str, Tensor]:
    """Every SI 5.9 metric of one structure's samples (AF3 summary_confidences keys).

    plddt_logits [S, N_atom, 50], pae_logits [S, N_token, N_token, 64], x [S, N_atom, 3],
    batch features and frame_mask unbatched. Values per sample: atom_plddts [S, N_atom],
    pae [S, N_token, N_token], ptm, iptm, fraction_disordered, has_clash, ranking_score [S],
    chain_pair_iptm / chain_pair_pae_min [S, C, C], chain_ptm / chain_iptm [S, C],
    chain_asym_ids [C].
    """
    config = config or ConfidenceConfig()
    token_mask, atom_mask = batch["token_mask"].bool(), batch["atom_mask"].bool()
    asym = batch["asym_id"]
    probs = pae_logits.float().softmax(-1)                                  # once for every PAE metric
    pae = _expected_error_from_probs(probs, config.max_error_bin)
    tm = _tm_adjusted_from_probs(probs, token_mask.sum(-1).float()[..., None, None, None],
                                 config.max_error_bin)                      # pTM and ipTM share d0
    ptm = _tm_from_adjusted(tm, _tm_pairs(token_mask, frame_mask, asym, False)[..., None, :, :])
    iptm = _tm_from_adjusted(tm, _tm_pairs(token_mask, frame_mask, asym, True)[..., None, :, :])
    pair_iptm, chains = _chain_pair_iptm(probs, token_mask, frame_mask, asym, config.max_error_bin)
    atom_to_token = batch["atom_to_token"].long()
    polymer = atom_mask & ~batch["is_ligand"].bool()[atom_to_token]
    clash = has_clash(x, atom_mask, polymer, asym[atom_to_token], batch["residue_index"][atom_to_token])
    disorder = fraction_disordered(x, batch)
    return {
        "atom_plddts": expected_plddt(plddt_logits), "pae": pae, "ptm": ptm, "iptm": iptm,
        "chain_pair_iptm": pair_iptm, "chain_ptm": pair_iptm.diagonal(dim1=-2, dim2=-1),
        "chain_iptm": chain_iptm(pair_iptm),
        "chain_pair_pae_min": chain_pair_pae_min(pae, token_mask, frame_mask, asym),
        "fraction_disordered": disorder, "has_clash": clash,
        "ranking_score": ranking_score(ptm, iptm, disorder, clash), "chain_asym_ids": chains,
    }


# ---------------------------------------------------------------------------- one stored sample
# foldray.io holds one sample's metrics as floats / numpy arrays (SamplePrediction, a summary
# without a precomputed score). These entries run the functions above on them in float64.


def _f64(value: float | np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(value, np.float64))


def ranking_score_np(*, ptm: float, iptm: float, fraction_disordered: float, has_clash: bool) -> float:
    """`ranking_score` of one sample from plain floats (NaN ipTM: one chain, pTM alone)."""
    return float(ranking_score(_f64(ptm), _f64(iptm), _f64(fraction_disordered),
                               torch.tensor(bool(has_clash))))


def chain_iptm_np(chain_pair_iptm: np.ndarray) -> np.ndarray:
    """`chain_iptm` of one sample's [N_chain, N_chain] matrix -> [N_chain] float64."""
    return chain_iptm(_f64(chain_pair_iptm)).numpy()


def chain_pair_pae_min_np(pae: np.ndarray, token_chain: np.ndarray, n_chain: int,
                          token_frame_mask: np.ndarray | None = None) -> np.ndarray:
    """`chain_pair_pae_min` of one sample: pae [N_token, N_token] in Å (may be padded past
    len(token_chain)), token_chain [N_token] chain index 0..n_chain-1, frame mask None = all
    valid -> [n_chain, n_chain] float64 (NaN rows for chains without a valid frame)."""
    token_chain = torch.as_tensor(np.asarray(token_chain, np.int64))
    n = len(token_chain)
    frames = torch.ones(n, dtype=torch.bool) if token_frame_mask is None else \
        torch.as_tensor(np.asarray(token_frame_mask, bool)[:n])
    matrix = chain_pair_pae_min(_f64(np.asarray(pae)[:n, :n]), torch.ones(n, dtype=torch.bool),
                                frames, token_chain).numpy()
    out = np.full((n_chain, n_chain), np.nan)
    present = torch.unique(token_chain).numpy()
    out[np.ix_(present, present)] = matrix
    return out
