"""Training losses (SI 3.7.1, 4.1-4.4, 5.3; Algorithms 27-28).

Shapes: x_denoised / x_rollout [*, N_sample, N_atom, 3]; x_gt [*, N_atom, 3] (after chain and
atom permutation resolution, SI 4.2: not done here); gt_mask [*, N_atom] bool, True where
the experiment resolved the atom (padding False). Token features as in
foldray.features.featurize, batched [*, ...] with token_mask / atom_mask.
Every loss returns one value per example [*] (samples averaged); `total_loss` averages
the batch. Unresolved atoms and padding never contribute, except as the negative class
of the experimentally-resolved head, where padding is still excluded.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from foldray.model.confidence import (
    EXACT,
    ConfidenceOutput,
    atoms_per_token,
    batched_gather,
    compute_alignment_error,
    distogram_breaks,
    frame_coordinates,
    token_frames,
)
from foldray.model.config import ConfidenceConfig, LossConfig

LDDT_CUTOFFS = (0.5, 1.0, 2.0, 4.0)
RADIUS_PROTEIN = 15.0        # SI 4.3.1 / Algorithm 27 inclusion radii
RADIUS_NUCLEOTIDE = 30.0


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    """Exact pairwise distances (no matmul expansion: Å-precision matters for bins/LDDT)."""
    return torch.cdist(a, b, compute_mode=EXACT)


def _masked_mean(value: Tensor, mask: Tensor, dims: tuple[int, ...]) -> Tensor:
    mask = mask.to(value.dtype)
    return (value * mask).sum(dims) / mask.sum(dims).clamp(min=1.0)


def _token_to_atom(batch: Mapping[str, Tensor], name: str) -> Tensor:
    """Token feature [*, N_token] -> per atom [*, N_atom]."""
    return batched_gather(batch[name][..., None], batch["atom_to_token"], 1)[..., 0]


# ---------------------------------------------------------------------------- Algorithm 28


def weighted_rigid_align(x: Tensor, x_target: Tensor, weight: Tensor) -> Tensor:
    """Algorithm 28: x rigidly moved onto x_target minimising sum_l w_l |R x_l + t - y_l|^2.

    x, x_target [*, N, 3] and weight [*, N] broadcast (e.g. x_gt [*, 1, N, 3] onto samples
    [*, S, N, 3]); zero weights (masked atoms) do not affect the fit. The rotation is proper
    (det R = +1: a reflection is replaced by the best rotation, lines 7-10). No gradient
    flows through the result (line 12). Computed in float64; returns x's dtype.
    """
    with torch.no_grad():
        w = weight.double()[..., None]                                       # [*, N, 1]
        xs, ys = x.double(), x_target.double()
        w_sum = w.sum(-2, keepdim=True).clamp(min=1e-12)
        mu_x = (w * xs).sum(-2, keepdim=True) / w_sum                        # line 1
        mu_y = (w * ys).sum(-2, keepdim=True) / w_sum                        # line 2
        xc, yc = xs - mu_x, ys - mu_y                                        # lines 3-4
        h = (w * xc).transpose(-1, -2) @ yc                                  # line 5: sum w x y^T
        u, _, vh = torch.linalg.svd(h)
        v = vh.transpose(-1, -2)
        sign = torch.where(torch.linalg.det(v @ u.transpose(-1, -2)) < 0, -1.0, 1.0)
        fix = torch.ones(*sign.shape, 3, dtype=sign.dtype, device=sign.device)
        fix[..., 2] = sign                                                   # lines 7-10
        rot = v @ (fix[..., None] * u.transpose(-1, -2))                     # R = V F U^T
        aligned = xc @ rot.transpose(-1, -2) + mu_y                          # line 11
    return aligned.to(x.dtype)


# ---------------------------------------------------------------------------- diffusion (SI 3.7.1)


def smooth_lddt_loss(x_pred: Tensor, x_gt: Tensor, is_nucleotide: Tensor, mask: Tensor,
                     sample_chunk: int | None = None) -> Tensor:
    """Algorithm 27 -> [*]: 1 - smooth LDDT, averaged over samples.

    x_pred [*, S, N_atom, 3]; is_nucleotide [*, N_atom] (DNA or RNA atom l widens its
    inclusion radius from 15 to 30 Å, line 6); mask [*, N_atom] resolved atoms.
    `sample_chunk`: samples per chunk, each recomputed in the backward pass (activation
    checkpointing) so only one chunk's [N_atom, N_atom] intermediates live at a time;
    None = all samples at once. Same result either way.
    """
    if sample_chunk is None:
        return _smooth_lddt(x_pred, x_gt, is_nucleotide, mask).mean(-1)
    parts = [checkpoint(_smooth_lddt, x_pred[..., i:i + sample_chunk, :, :], x_gt, is_nucleotide, mask,
                        use_reentrant=False) for i in range(0, x_pred.shape[-3], sample_chunk)]
    return torch.cat(parts, -1).mean(-1)


def _smooth_lddt(x_pred: Tensor, x_gt: Tensor, is_nucleotide: Tensor, mask: Tensor) -> Tensor:
    """Per-sample 1 - smooth LDDT [*, S]."""
    d_pred = _cdist(x_pred, x_pred)                                          # line 1, [*, S, N, N]
    d_gt = _cdist(x_gt, x_gt)[..., None, :, :]                               # line 2
    delta = (d_gt - d_pred).abs()                                            # line 3
    eps = sum(torch.sigmoid(c - delta) for c in LDDT_CUTOFFS) / len(LDDT_CUTOFFS)  # line 4
    nuc = is_nucleotide.bool()[..., None, :, None]                           # line 5 (atom l)
    radius = torch.where(nuc, RADIUS_NUCLEOTIDE, RADIUS_PROTEIN)
    n = mask.shape[-1]
    pair = mask[..., :, None] & mask[..., None, :] & ~torch.eye(n, dtype=torch.bool, device=mask.device)
    c = (d_gt < radius) & pair[..., None, :, :]                              # line 6, l != m
    return 1.0 - _masked_mean(eps, c, (-1, -2))                              # lines 7-8


def diffusion_atom_weights(batch: Mapping[str, Tensor], config: LossConfig) -> Tensor:
    """SI eq. 4: w_l = 1 + 5 is_dna + 5 is_rna + 10 is_ligand -> [*, N_atom]."""
    return (1.0 + config.weight_dna * _token_to_atom(batch, "is_dna").float()
            + config.weight_rna * _token_to_atom(batch, "is_rna").float()
            + config.weight_ligand * _token_to_atom(batch, "is_ligand").float())


def diffusion_mse_loss(x_denoised: Tensor, x_gt: Tensor, atom_weight: Tensor, mask: Tensor) -> Tensor:
    """SI eqs. 2-3 -> [*, S]: (1/3) mean_l w_l |x_l - x_l^GT-aligned|^2 over resolved atoms.

    The ground truth is aligned onto each denoised sample with the same weights (eq. 2).
    """
    w = atom_weight * mask
    gt_aligned = weighted_rigid_align(x_gt[..., None, :, :], x_denoised, w[..., None, :])
    se = ((x_denoised - gt_aligned) ** 2).sum(-1)                            # [*, S, N]
    return (w[..., None, :] * se).sum(-1) / (3.0 * mask.sum(-1, keepdim=True).clamp(min=1))


def bond_loss(x_denoised: Tensor, x_gt: Tensor, bond_index: Tensor, bond_mask: Tensor,
              gt_mask: Tensor) -> Tensor:
    """SI eq. 5 -> [*, S]: mean over bonds (l, m) of (|x_l - x_m| - |x_l^GT - x_m^GT|)^2.

    bond_index [*, N_bond, 2] atom indices of the polymer-ligand bonds (incl. bonded
    glycans), bond_mask [*, N_bond]; bonds with an unresolved atom are skipped.
    """
    ok = bond_mask.bool() & batched_gather(gt_mask[..., None], bond_index.flatten(-2), 1)[..., 0] \
        .unflatten(-1, (-1, 2)).all(-1)

    def length(x: Tensor, index: Tensor) -> Tensor:
        ends = batched_gather(x, index.flatten(-2)).unflatten(-2, (-1, 2))   # [..., N_bond, 2, 3]
        return (ends[..., 0, :] - ends[..., 1, :]).norm(dim=-1)

    err = (length(x_denoised, bond_index[..., None, :, :]) - length(x_gt, bond_index)[..., None, :]) ** 2
    return _masked_mean(err, ok[..., None, :], (-1,))


def edm_loss_weight(t_hat: Tensor, sigma_data: float) -> Tensor:
    """EDM weight (t^2 + sigma_data^2) / (t sigma_data)^2 of SI eq. 6.

    SI deviation: the SI prints (t^2 + s^2) / (t + s)^2, a typo for Karras et al.'s EDM
    weight, which Protenix, Boltz and OpenFold3 use (it makes the loss O(1) across noise).
    """
    return (t_hat ** 2 + sigma_data ** 2) / (t_hat * sigma_data) ** 2


def diffusion_loss(x_denoised: Tensor, t_hat: Tensor, x_gt: Tensor, gt_mask: Tensor,
                   batch: Mapping[str, Tensor], config: LossConfig, sigma_data: float, *,
                   bond_index: Tensor | None = None, bond_mask: Tensor | None = None,
                   sample_chunk: int | None = None) -> dict[str, Tensor]:
    """SI eq. 6 -> {"mse", "bond", "smooth_lddt", "diffusion"} each [*].

    L = mean_samples[w(t) (L_mse + alpha_bond L_bond)] + alpha_smooth_lddt L_smooth_lddt;
    t_hat [*, S] is each noised copy's noise level.
    """
    weight_t = edm_loss_weight(t_hat, sigma_data)                            # [*, S]
    mse = diffusion_mse_loss(x_denoised, x_gt, diffusion_atom_weights(batch, config), gt_mask)
    bond = torch.zeros_like(mse)
    if bond_index is not None and bond_index.shape[-2] > 0:
        bond = bond_loss(x_denoised, x_gt, bond_index, bond_mask, gt_mask)
    is_nucleotide = _token_to_atom(batch, "is_dna").bool() | _token_to_atom(batch, "is_rna").bool()
    lddt = smooth_lddt_loss(x_denoised, x_gt, is_nucleotide, gt_mask, sample_chunk)
    total = (weight_t * (mse + config.alpha_bond * bond)).mean(-1) + config.alpha_smooth_lddt * lddt
    return {"mse": mse.mean(-1), "bond": bond.mean(-1), "smooth_lddt": lddt, "diffusion": total}


# ---------------------------------------------------------------------------- distogram (SI 4.4)


def distogram_loss(logits: Tensor, x_gt: Tensor, gt_mask: Tensor, batch: Mapping[str, Tensor],
                   config: ConfidenceConfig) -> Tensor:
    """SI 4.4 -> [*]: cross-entropy of the true representative-atom distance bin, mean over
    pairs of real tokens whose representative atoms were both resolved (diagonal incl., AF2)."""
    rep = batch["token_rep_atom"]
    ok = batch["token_mask"].bool() & batched_gather(gt_mask[..., None], rep, 1)[..., 0]
    x_rep = batched_gather(x_gt, rep)
    d = _cdist(x_rep, x_rep)
    target = (d[..., None] > distogram_breaks(config, d.device)).sum(-1)     # [*, N, N] in 0..63
    ce = _binned_ce(logits, target)
    return _masked_mean(ce, ok[..., :, None] & ok[..., None, :], (-1, -2))


# ---------------------------------------------------------------------------- confidence (SI 4.3)


def _binned_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of integer targets along the last logits axis, any leading shape."""
    return -logits.float().log_softmax(-1).gather(-1, target[..., None].long())[..., 0]


def plddt_target(x_pred: Tensor, x_gt: Tensor, gt_mask: Tensor,
                 batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """SI eq. 8: per-atom LDDT of the prediction against polymer reference atoms m.

    m: the centre atom (CA / C1') of standard polymer-residue tokens, resolved, within
    15 Å (30 Å for a nucleotide m) of atom l in the ground truth, m != l.
    SI deviation (as Protenix): LDDT is averaged over the m in R (eq. 8 prints a sum, and
    |d - d_GT| < c where it prints d < c). Returns lddt [*, S, N_atom] in 0..1 and
    valid [*, N_atom] (l resolved and at least one m).
    """
    token_mask, atom_mask = batch["token_mask"].bool(), batch["atom_mask"].bool()
    centre = batch["token_centre_atom"]
    n_token = token_mask.shape[-1]
    standard = atoms_per_token(batch["atom_to_token"].long(), atom_mask, n_token) > 1
    m_ok = (token_mask & ~batch["is_ligand"].bool() & standard
            & batched_gather(gt_mask[..., None], centre, 1)[..., 0])      # [*, N_token]
    nuc_m = batch["is_dna"].bool() | batch["is_rna"].bool()
    d_gt = _cdist(x_gt, batched_gather(x_gt, centre))                      # [*, N_atom, N_token]
    d_pred = _cdist(x_pred, batched_gather(x_pred, centre[..., None, :]))  # [*, S, N_atom, N_token]
    radius = torch.where(nuc_m, RADIUS_NUCLEOTIDE, RADIUS_PROTEIN)[..., None, :]
    n_atom = gt_mask.shape[-1]
    not_self = centre[..., None, :] != torch.arange(n_atom, device=centre.device)[:, None]
    r = m_ok[..., None, :] & (d_gt < radius) & not_self & gt_mask[..., :, None]
    delta = (d_pred - d_gt[..., None, :, :]).abs()
    score = sum((delta < c).float() for c in LDDT_CUTOFFS) / len(LDDT_CUTOFFS)
    lddt = _masked_mean(score, r[..., None, :, :], (-1,))
    return lddt, atom_mask & gt_mask & r.any(-1)


def plddt_loss(logits: Tensor, lddt: Tensor, valid: Tensor) -> Tensor:
    """SI eq. 9 -> [*]: CE of the binned LDDT (50 bins over 0..1) over valid atoms."""
    n_bins = logits.shape[-1]
    target = (lddt * n_bins).floor().clamp(0, n_bins - 1)
    return _masked_mean(_binned_ce(logits, target), valid[..., None, :], (-1,)).mean(-1)


def resolved_loss(logits: Tensor, gt_mask: Tensor, atom_mask: Tensor) -> Tensor:
    """SI eq. 14 -> [*]: predict whether each real atom was resolved in the experiment."""
    ce = _binned_ce(logits, gt_mask.long()[..., None, :].expand(logits.shape[:-1]))
    return _masked_mean(ce, atom_mask[..., None, :], (-1,)).mean(-1)


def _error_bins(error: Tensor, n_bins: int, max_error_bin: float) -> Tensor:
    """0.5 Å bins from 0; errors past the end land in the last bin (SI 4.3.2)."""
    return (error / (max_error_bin / n_bins)).floor().clamp(0, n_bins - 1)


def pde_loss(logits: Tensor, x_pred: Tensor, x_gt: Tensor, gt_mask: Tensor,
             batch: Mapping[str, Tensor], config: ConfidenceConfig) -> Tensor:
    """SI eq. 12 -> [*]: e_ij = |d_pred - d_GT| of representative atoms, binned."""
    rep = batch["token_rep_atom"]
    ok = batch["token_mask"].bool() & batched_gather(gt_mask[..., None], rep, 1)[..., 0]
    x_rep = batched_gather(x_pred, rep[..., None, :])
    g_rep = batched_gather(x_gt, rep)
    error = (_cdist(x_rep, x_rep) - _cdist(g_rep, g_rep)[..., None, :, :]).abs()
    target = _error_bins(error, logits.shape[-1], config.max_error_bin)
    pair = (ok[..., :, None] & ok[..., None, :])[..., None, :, :]
    return _masked_mean(_binned_ce(logits, target), pair, (-1, -2)).mean(-1)


def pae_loss(logits: Tensor, x_pred: Tensor, x_gt: Tensor, gt_mask: Tensor,
             batch: Mapping[str, Tensor], config: ConfidenceConfig,
             frames: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """SI eq. 10 -> [*]: binned alignment error (Algorithm 30) of centre atom j in frame i.

    Rows need a valid frame whose three atoms were resolved; columns a resolved centre atom.
    `frames` = token_frames(batch) when precomputed.
    """
    frame_index, frame_mask = token_frames(batch) if frames is None else frames
    frame_ok = frame_mask & batched_gather(gt_mask[..., None], frame_index.flatten(-2), 1)[..., 0] \
        .unflatten(-1, (-1, 3)).all(-1)
    centre = batch["token_centre_atom"]
    centre_ok = batch["token_mask"].bool() & batched_gather(gt_mask[..., None], centre, 1)[..., 0]
    error = compute_alignment_error(
        batched_gather(x_pred, centre[..., None, :]), batched_gather(x_gt, centre)[..., None, :, :],
        frame_coordinates(x_pred, frame_index[..., None, :, :]),
        frame_coordinates(x_gt, frame_index)[..., None, :, :, :])           # [*, S, N, N]
    target = _error_bins(error, logits.shape[-1], config.max_error_bin)
    pair = (frame_ok[..., :, None] & centre_ok[..., None, :])[..., None, :, :]
    return _masked_mean(_binned_ce(logits, target), pair, (-1, -2)).mean(-1)


def confidence_losses(output: ConfidenceOutput, x_rollout: Tensor, x_gt: Tensor, gt_mask: Tensor,
                      batch: Mapping[str, Tensor], config: ConfidenceConfig,
                      frames: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """SI 4.3 -> {"plddt", "pde", "resolved", "pae"} each [*], targets from the mini-rollout
    x_rollout [*, S, N_atom, 3] (SI 4.1); no gradient reaches the structure."""
    x_rollout = x_rollout.detach()
    with torch.no_grad():
        lddt, valid = plddt_target(x_rollout, x_gt, gt_mask, batch)
    return {
        "plddt": plddt_loss(output.plddt_logits, lddt, valid),
        "pde": pde_loss(output.pde_logits, x_rollout, x_gt, gt_mask, batch, config),
        "resolved": resolved_loss(output.resolved_logits, gt_mask, batch["atom_mask"].bool()),
        "pae": pae_loss(output.pae_logits, x_rollout, x_gt, gt_mask, batch, config, frames),
    }


# ---------------------------------------------------------------------------- SI 5.3


def total_loss(batch: Mapping[str, Tensor], *, x_gt: Tensor, gt_mask: Tensor, config: LossConfig,
               confidence_config: ConfidenceConfig, sigma_data: float,
               x_denoised: Tensor | None = None, t_hat: Tensor | None = None,
               distogram_logits: Tensor | None = None, confidence: ConfidenceOutput | None = None,
               x_rollout: Tensor | None = None, bond_index: Tensor | None = None,
               bond_mask: Tensor | None = None, confidence_mask: Tensor | None = None,
               frames: tuple[Tensor, Tensor] | None = None,
               sample_chunk: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """SI eq. 15: a_conf (L_plddt + L_pde + L_resolved + a_pae L_pae) + a_diff L_diffusion
    + a_dist L_distogram, averaged over the batch. Returns (loss [], detached batch means).

    Parts whose inputs are None are skipped (fine-tuning stage 3 has no structure losses).
    confidence_mask [*] bool drops the confidence terms of examples outside the SI 4.3
    resolution range (0.1-4 Å) or from distillation sets. `sample_chunk` bounds the smooth
    LDDT memory (see smooth_lddt_loss; RuntimeConfig.diffusion_chunk is the natural value).
    """
    gt_mask = gt_mask.bool() & batch["atom_mask"].bool()
    x_gt = x_gt.float()
    terms: dict[str, Tensor] = {}
    loss = x_gt.new_zeros(x_gt.shape[:-2])
    if x_denoised is not None:
        terms.update(diffusion_loss(x_denoised.float(), t_hat.float(), x_gt, gt_mask, batch, config,
                                    sigma_data, bond_index=bond_index, bond_mask=bond_mask,
                                    sample_chunk=sample_chunk))
        loss = loss + config.alpha_diffusion * terms["diffusion"]
    if distogram_logits is not None:
        terms["distogram"] = distogram_loss(distogram_logits, x_gt, gt_mask, batch, confidence_config)
        loss = loss + config.alpha_distogram * terms["distogram"]
    if confidence is not None:
        conf = confidence_losses(confidence, x_rollout.float(), x_gt, gt_mask, batch,
                                 confidence_config, frames)
        keep = 1.0 if confidence_mask is None else confidence_mask.float()
        conf = {name: value * keep for name, value in conf.items()}
        terms.update(conf)
        loss = loss + config.alpha_confidence * (conf["plddt"] + conf["pde"] + conf["resolved"]
                                                 + config.alpha_pae * conf["pae"])
    metrics = {name: value.detach().mean() for name, value in terms.items()}
    metrics["loss"] = loss.detach().mean()
    return loss.mean(), metrics
