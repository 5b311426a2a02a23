"""Training losses (SI 3.7.1, 4, 5.3; Algorithms 27-28) on real structures.

1ay7 (two protein chains) supplies the geometry; 102m (protein + heme) the ligand weights.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from foldray.model.confidence import ConfidenceOutput, distogram_breaks
from foldray.model.config import ModelConfig
from foldray.model.losses import (
    bond_loss,
    confidence_losses,
    diffusion_atom_weights,
    diffusion_mse_loss,
    distogram_loss,
    edm_loss_weight,
    pae_loss,
    pde_loss,
    plddt_loss,
    plddt_target,
    resolved_loss,
    smooth_lddt_loss,
    total_loss,
    weighted_rigid_align,
)
from tests.model_helpers import random_rotation, structure_batch

CONFIG = ModelConfig.tiny()




def _noise(shape, scale: float, seed: int) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _signed_volume(x: torch.Tensor) -> torch.Tensor:
    """Chirality of atoms 0, 10, 20, 30."""
    a, b, c = x[..., 10, :] - x[..., 0, :], x[..., 20, :] - x[..., 0, :], x[..., 30, :] - x[..., 0, :]
    return (torch.linalg.cross(a, b, dim=-1) * c).sum(-1)


# ---------------------------------------------------------------------------- Algorithm 28


def test_weighted_rigid_align_recovers_a_known_motion():
    _, x, mask = structure_batch("1ay7")
    rot, shift = random_rotation(0), torch.tensor([10.0, -4.0, 7.5])
    target = x @ rot.T + shift
    weight = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    aligned = weighted_rigid_align(x, target, weight)
    assert torch.allclose(aligned, target, atol=1e-4)
    # masked atoms (zero weight) may hold anything without changing the fit
    junk = x.clone()
    junk[:, :40] += 100.0
    w = weight.clone()
    w[:, :40] = 0.0
    assert torch.allclose(weighted_rigid_align(junk, target, w)[:, 40:], target[:, 40:], atol=1e-4)


def test_weighted_rigid_align_is_proper_for_reflected_targets_and_has_no_gradient():
    _, x, mask = structure_batch("1ay7")
    mirror = x * torch.tensor([-1.0, 1.0, 1.0])                      # a reflection: no rotation maps x on it
    x = x.clone().requires_grad_(True)
    aligned = weighted_rigid_align(x, mirror, mask.float())
    assert not aligned.requires_grad
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(aligned[0, :300], aligned[0, :300], compute_mode=exact),
                          torch.cdist(x[0, :300], x[0, :300], compute_mode=exact).detach(),
                          atol=1e-3)                                 # rigid
    assert torch.sign(_signed_volume(aligned)) == torch.sign(_signed_volume(x.detach()))
    assert torch.sign(_signed_volume(mirror)) != torch.sign(_signed_volume(x.detach()))
    # the sample dim: one ground truth aligned onto several samples at once
    samples = torch.stack([x.detach()[0] @ random_rotation(s).T for s in range(3)])[None]
    many = weighted_rigid_align(x.detach()[:, None], samples, mask.float()[:, None])
    assert many.shape == (1, 3, x.shape[1], 3) and torch.allclose(many, samples, atol=1e-4)


# ---------------------------------------------------------------------------- diffusion losses


def test_smooth_lddt_is_minimal_for_identical_structures_and_grows_with_noise():
    batch, x, mask = structure_batch("1ay7")
    nucleotide = torch.zeros_like(mask)
    moved = x @ random_rotation(2).T + 3.0
    losses = [smooth_lddt_loss((moved + _noise(x.shape, s, 3))[:, None], x, nucleotide, mask).item()
              for s in (0.0, 0.3, 1.0, 3.0)]
    floor = 1 - sum(torch.sigmoid(torch.tensor(c)) for c in (0.5, 1.0, 2.0, 4.0)).item() / 4
    assert abs(losses[0] - floor) < 1e-4                              # sigmoid smoothing: ~0.196
    assert losses == sorted(losses) and losses[-1] > 0.6
    # the 30 Å radius for nucleotides takes in more pairs -> a different value
    assert smooth_lddt_loss((x + _noise(x.shape, 1.0, 4))[:, None], x, ~nucleotide, mask).item() != \
        pytest.approx(smooth_lddt_loss((x + _noise(x.shape, 1.0, 4))[:, None], x, nucleotide, mask).item())


def test_smooth_lddt_sample_chunks_equal_one_pass_with_gradients():
    _, x, mask = structure_batch("1ay7")
    nucleotide = torch.zeros_like(mask)
    pred = torch.stack([x[0] + _noise(x[0].shape, s, 20 + i) for i, s in enumerate((0.2, 0.7, 1.5))])[None]
    whole = pred.clone().requires_grad_(True)
    chunked = pred.clone().requires_grad_(True)
    a = smooth_lddt_loss(whole, x, nucleotide, mask)
    b = smooth_lddt_loss(chunked, x, nucleotide, mask, sample_chunk=2)
    assert torch.allclose(a, b, atol=1e-6)
    a.sum().backward()
    b.sum().backward()
    assert torch.isfinite(whole.grad).all() and whole.grad.abs().sum() > 0
    assert torch.allclose(whole.grad, chunked.grad, atol=1e-7)


def test_diffusion_mse_is_zero_for_a_rigid_copy_and_weights_ligands():
    batch, x, mask = structure_batch("102m")
    weight = diffusion_atom_weights(batch, CONFIG.loss)
    ligand = batch["is_ligand"][0][batch["atom_to_token"][0].long()].bool()
    assert ligand.any() and (weight[0][ligand] == 11.0).all() and (weight[0][~ligand] == 1.0).all()
    moved = (x @ random_rotation(5).T + 2.0)[:, None]
    assert diffusion_mse_loss(moved, x, weight, mask).abs().max() < 1e-6
    noisy = torch.cat([moved + _noise(moved.shape, s, 6) for s in (0.5, 2.0)], 1)
    mse = diffusion_mse_loss(noisy, x, weight, mask)
    assert mse.shape == (1, 2) and 0 < mse[0, 0] < mse[0, 1]
    # only ligand atoms displaced: the loss counts them 11 times
    shifted = moved.clone()
    shifted[0, 0, ligand] += torch.tensor([0.0, 0.0, 1.0])
    unweighted = diffusion_mse_loss(shifted, x, torch.ones_like(weight), mask)
    assert diffusion_mse_loss(shifted, x, weight, mask) > 5 * unweighted


def test_edm_weight_and_bond_loss():
    t = torch.tensor([1.0, 16.0, 160.0])
    assert torch.allclose(edm_loss_weight(t, 16.0), (t ** 2 + 256) / (t * 16) ** 2)
    assert torch.isclose(edm_loss_weight(torch.tensor(16.0), 16.0), torch.tensor(2 / 256))
    _, x, mask = structure_batch("102m")
    bonds = torch.tensor([[[0, 1], [1, 2], [5, 6]]])
    ok = torch.tensor([[True, True, False]])
    moved = (x @ random_rotation(7).T)[:, None]
    assert bond_loss(moved, x, bonds, ok, mask).abs().max() < 1e-6
    stretched = moved.clone()
    stretched[0, 0, 0] += (x[0, 0] - x[0, 1]) @ random_rotation(7).T     # bond 0-1 doubled
    expected = (x[0, 0] - x[0, 1]).norm() ** 2 / 2                 # mean over the 2 valid bonds
    assert torch.allclose(bond_loss(stretched, x, bonds, ok, mask), expected[None, None], atol=1e-3)
    stretched[0, 0, 6] += 5.0                                       # a masked bond changes nothing
    assert torch.allclose(bond_loss(stretched, x, bonds, ok, mask), expected[None, None], atol=1e-3)


# ---------------------------------------------------------------------------- distogram and confidence


def _true_bin_logits(target: torch.Tensor, n_bins: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(target.long(), n_bins).float() * 20.0


def test_distogram_loss_is_lower_for_true_bins_than_shuffled():
    batch, x, mask = structure_batch("1ay7")
    rep = batch["token_rep_atom"][0].long()
    d = torch.cdist(x[0, rep], x[0, rep], compute_mode="donot_use_mm_for_euclid_dist")
    target = (d[..., None] > distogram_breaks(CONFIG.confidence)).sum(-1)
    good = _true_bin_logits(target, 64)[None]
    perm = torch.randperm(target.numel(), generator=torch.Generator().manual_seed(8))
    shuffled = _true_bin_logits(target.flatten()[perm].reshape(target.shape), 64)[None]
    loss_good = distogram_loss(good, x, mask, batch, CONFIG.confidence)
    loss_bad = distogram_loss(shuffled, x, mask, batch, CONFIG.confidence)
    assert loss_good < 1e-3 and loss_bad > 1.0
    assert abs(distogram_loss(torch.zeros_like(good), x, mask, batch, CONFIG.confidence).item()
               - torch.log(torch.tensor(64.0)).item()) < 1e-5


def test_plddt_targets_and_loss():
    batch, x, mask = structure_batch("1ay7")
    moved = (x @ random_rotation(9).T)[:, None]
    lddt, valid = plddt_target(moved, x, mask, batch)
    assert valid.sum() > 0.9 * mask.sum() and torch.allclose(lddt[..., valid[0]], torch.tensor(1.0))
    noisy = moved + _noise(moved.shape, 1.5, 10)
    lddt_noisy, _ = plddt_target(noisy, x, mask, batch)
    assert lddt_noisy[..., valid[0]].mean() < 0.8
    target = (lddt_noisy * 50).floor().clamp(max=49)
    good, bad = _true_bin_logits(target, 50), _true_bin_logits(49 - target, 50)
    assert plddt_loss(good, lddt_noisy, valid) < 1e-3 < plddt_loss(bad, lddt_noisy, valid)


def test_pae_pde_resolved_losses_prefer_the_truth():
    batch, x, mask = structure_batch("1ay7")
    n, a = batch["token_mask"].shape[-1], x.shape[-2]
    moved = (x @ random_rotation(11).T + 1.0)[:, None]
    zero_error = torch.zeros(1, 1, n, n, dtype=torch.long)
    perfect, wrong = _true_bin_logits(zero_error, 64), _true_bin_logits(zero_error + 40, 64)
    for loss in (pae_loss, pde_loss):
        assert loss(perfect, moved, x, mask, batch, CONFIG.confidence) < 1e-3
        assert loss(wrong, moved, x, mask, batch, CONFIG.confidence) > 10.0
    noisy = moved + _noise(moved.shape, 2.0, 12)
    assert pae_loss(perfect, noisy, x, mask, batch, CONFIG.confidence) > 1.0
    resolved = _true_bin_logits(mask.long()[:, None], 2)
    assert resolved_loss(resolved, mask, batch["atom_mask"]) < 1e-3
    assert resolved_loss(_true_bin_logits(1 - mask.long()[:, None], 2), mask, batch["atom_mask"]) > 5.0
    assert resolved.shape == (1, 1, a, 2)


def _random_confidence(n_token: int, n_atom: int, n_sample: int, seed: int) -> ConfidenceOutput:
    gen = torch.Generator().manual_seed(seed)
    return ConfidenceOutput(plddt_logits=torch.randn(1, n_sample, n_atom, 50, generator=gen),
                            pae_logits=torch.randn(1, n_sample, n_token, n_token, 64, generator=gen),
                            pde_logits=torch.randn(1, n_sample, n_token, n_token, 64, generator=gen),
                            resolved_logits=torch.randn(1, n_sample, n_atom, 2, generator=gen))


def _pad_confidence(out: ConfidenceOutput, n: int, a: int, pad_n: int, pad_a: int) -> ConfidenceOutput:
    def pad(t: torch.Tensor, dims: dict[int, int]) -> torch.Tensor:
        shape = list(t.shape)
        for d, extra in dims.items():
            shape[d] += extra
        big = torch.randn(shape)
        big[tuple(slice(0, s) for s in t.shape)] = t
        return big
    return ConfidenceOutput(plddt_logits=pad(out.plddt_logits, {2: pad_a}),
                            pae_logits=pad(out.pae_logits, {2: pad_n, 3: pad_n}),
                            pde_logits=pad(out.pde_logits, {2: pad_n, 3: pad_n}),
                            resolved_logits=pad(out.resolved_logits, {2: pad_a}))


def test_every_loss_ignores_padding_and_unresolved_atoms():
    batch, x, mask = structure_batch("102m")
    pbatch, px, pmask = structure_batch("102m", pad_tokens=7, pad_atoms=23)
    n, a = batch["token_mask"].shape[-1], x.shape[-2]
    px[:, a:] = 50.0 * torch.randn(1, 23, 3)                           # garbage in padding
    pred = (x + _noise(x.shape, 1.0, 13))[:, None].expand(1, 2, a, 3).clone()
    ppred = torch.cat([pred, 80.0 * torch.randn(1, 2, 23, 3)], -2)
    out = _random_confidence(n, a, 2, 14)
    pout = _pad_confidence(out, n, a, 7, 23)
    dist = torch.randn(1, n, n, 64)
    pdist = torch.randn(1, n + 7, n + 7, 64)
    pdist[:, :n, :n] = dist
    common = dict(config=CONFIG.loss, confidence_config=CONFIG.confidence, sigma_data=16.0,
                  t_hat=torch.tensor([[4.0, 30.0]]))
    _, m = total_loss(batch, x_gt=x, gt_mask=mask, x_denoised=pred, distogram_logits=dist,
                      confidence=out, x_rollout=pred, **common)
    _, pm = total_loss(pbatch, x_gt=px, gt_mask=pmask, x_denoised=ppred, distogram_logits=pdist,
                       confidence=pout, x_rollout=ppred, **common)
    assert set(m) == {"mse", "bond", "smooth_lddt", "diffusion", "distogram", "plddt", "pde",
                      "resolved", "pae", "loss"}
    for name in m:
        assert torch.allclose(m[name], pm[name], rtol=1e-4, atol=1e-5), name
    # an unresolved atom's coordinates do not matter
    hidden = mask.clone()
    hidden[0, 100] = False
    moved_gt = x.clone()
    moved_gt[0, 100] += 30.0
    _, h1 = total_loss(batch, x_gt=x, gt_mask=hidden, x_denoised=pred, distogram_logits=dist,
                       confidence=out, x_rollout=pred, **common)
    _, h2 = total_loss(batch, x_gt=moved_gt, gt_mask=hidden, x_denoised=pred, distogram_logits=dist,
                       confidence=out, x_rollout=pred, **common)
    for name in h1:
        assert torch.allclose(h1[name], h2[name], rtol=1e-5, atol=1e-6), name


def test_total_loss_weights_and_gradients():
    batch, x, mask = structure_batch("1ay7")
    n, a = batch["token_mask"].shape[-1], x.shape[-2]
    loss_config = dataclasses.replace(CONFIG.loss, alpha_pae=1.0, alpha_bond=0.0)
    pred = (x + _noise(x.shape, 1.0, 15))[:, None].expand(1, 2, a, 3).clone().requires_grad_(True)
    rollout = (x + _noise(x.shape, 2.0, 16))[:, None].requires_grad_(True)
    out = _random_confidence(n, a, 1, 17)
    logits = [t.requires_grad_(True) for t in vars(out).values()]
    dist = torch.randn(1, n, n, 64, requires_grad=True)
    t_hat = torch.tensor([[8.0, 20.0]])
    loss, m = total_loss(batch, x_gt=x, gt_mask=mask, config=loss_config,
                         confidence_config=CONFIG.confidence, sigma_data=16.0, x_denoised=pred,
                         t_hat=t_hat, distogram_logits=dist, confidence=out, x_rollout=rollout)
    expected = (4.0 * m["diffusion"] + 3e-2 * m["distogram"]
                + 1e-4 * (m["plddt"] + m["pde"] + m["resolved"] + m["pae"]))
    assert torch.allclose(loss, expected)
    weight_t = edm_loss_weight(t_hat, 16.0)
    conf = confidence_losses(out, rollout, x, mask, batch, CONFIG.confidence)
    assert torch.allclose(m["pae"], conf["pae"].mean())
    loss.backward()
    assert pred.grad.abs().sum() > 0 and dist.grad.abs().sum() > 0
    assert all(t.grad.abs().sum() > 0 for t in logits)
    assert rollout.grad is None                                       # no gradient into the rollout
    assert weight_t[0, 0] > weight_t[0, 1]
    off, m_off = total_loss(batch, x_gt=x, gt_mask=mask, config=loss_config,
                            confidence_config=CONFIG.confidence, sigma_data=16.0, x_denoised=pred,
                            t_hat=t_hat, distogram_logits=dist, confidence=out, x_rollout=rollout,
                            confidence_mask=torch.tensor([False]))
    assert m_off["plddt"] == 0 and torch.allclose(off, 4.0 * m["diffusion"] + 3e-2 * m["distogram"])


def test_loss_config_matches_the_si():
    loss = ModelConfig.full().loss
    assert (loss.alpha_confidence, loss.alpha_diffusion, loss.alpha_distogram) == (1e-4, 4.0, 3e-2)
    assert (loss.alpha_pae, loss.alpha_bond, loss.alpha_smooth_lddt) == (0.0, 0.0, 1.0)
    assert (loss.weight_dna, loss.weight_rna, loss.weight_ligand) == (5.0, 5.0, 10.0)
    assert (loss.diffusion_batch, loss.mini_rollout_steps) == (48, 20)
    breaks = distogram_breaks(ModelConfig.full().confidence)
    assert len(breaks) == 63 and breaks[0] == 2.3125 and breaks[-1] == 21.6875
