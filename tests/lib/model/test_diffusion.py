"""Algorithms 18-21 and the SI 3.7.1 training inputs (foldray.model.diffusion).

The sampler and augmentation are tested on their own math (toy denoisers, real target
coordinates from 1l2y); the DiffusionModule on a real featurized protein-ligand input.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from foldray.features.batch import collate, pad_features
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.model.config import DiffusionConfig, ModelConfig
from foldray.model.diffusion import (
    DiffusionModule,
    centre_random_augmentation,
    diffusion_training_inputs,
    masked_centre,
    noise_schedule,
    sample_diffusion,
    sample_training_noise,
    uniform_random_rotation,
)
from tests.data_paths import INPUTS, STRUCTURES


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kabsch_align(p: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rigidly move p [*, N, 3] onto q [*, N, 3] over the atoms in mask [*, N] (proper rotation)."""
    w = mask.unsqueeze(-1).to(p.dtype)
    n = w.sum(-2, keepdim=True).clamp_min(1.0)
    p_c, q_c = (p * w).sum(-2, keepdim=True) / n, (q * w).sum(-2, keepdim=True) / n
    h = ((p - p_c) * w).transpose(-1, -2) @ ((q - q_c) * w)                 # [*, 3, 3]
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    rot = vh.transpose(-1, -2) @ fix @ u.transpose(-1, -2)                  # p -> q
    return ((p - p_c) @ rot.transpose(-1, -2) + q_c) * w


def _rmsd_after_alignment(p: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    aligned = _kabsch_align(p, q, mask)
    w = mask.to(p.dtype)
    return (((aligned - q) ** 2).sum(-1) * w).sum(-1).div(w.sum(-1)).sqrt()


@functools.cache
def _ground_truth() -> tuple[torch.Tensor, torch.Tensor]:
    """Trp-cage (1l2y) heavy atoms: coords [N_atom, 3] float64, mask [N_atom] bool (resolved)."""
    path = STRUCTURES / "1l2y.cif"
    job = job_from_structure_file(path.read_text(), source=str(path))
    targets = featurize_job(job).targets
    return torch.from_numpy(targets.coords).double(), torch.from_numpy(targets.mask)


# ---------------------------------------------------------------------------------------------
# Algorithm 19


def _rotation_from(x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least-squares linear map R with x_out = R x_in over the masked atoms (both centred)."""
    a, b = x_in[mask], x_out[mask]
    return torch.linalg.lstsq(a, b).solution.T


def test_augmentation_gives_proper_rotations_per_sample_about_the_masked_centre():
    torch.manual_seed(0)
    n_sample, n_real, n_pad = 6, 17, 5
    x = torch.randn(2, n_sample, n_real + n_pad, 3, dtype=torch.float64) * 10 + 3
    mask = torch.ones(2, n_real + n_pad, dtype=torch.bool)
    mask[1, n_real:] = False
    out = centre_random_augmentation(x, mask, s_trans=0.0, generator=_gen(1))
    assert out.shape == x.shape
    centred = x - masked_centre(x, mask)
    assert masked_centre(out, mask).abs().max() < 1e-10                 # centred on the real atoms
    assert (out[1, :, n_real:] == 0).all()                              # padding zeroed
    rotations = []
    for b in range(2):
        for s in range(n_sample):
            rot = _rotation_from(centred[b, s], out[b, s], mask[b])
            assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=rot.dtype), atol=1e-9)
            assert torch.linalg.det(rot) == pytest.approx(1.0, abs=1e-9)
            assert torch.allclose(rot @ centred[b, s][mask[b]].T, out[b, s][mask[b]].T, atol=1e-9)
            rotations.append(rot)
    for i in range(len(rotations)):
        for j in range(i):
            assert not torch.allclose(rotations[i], rotations[j], atol=1e-3)


def test_augmentation_ignores_padding_atoms():
    torch.manual_seed(0)
    n_real = 9
    x = torch.randn(1, 4, n_real, 3)
    mask = torch.ones(1, n_real, dtype=torch.bool)
    padded = torch.cat([x, 1e3 * torch.randn(1, 4, 6, 3)], dim=-2)     # far-away junk
    padded_mask = torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)], dim=-1)
    alone = centre_random_augmentation(x, mask, generator=_gen(3))
    with_pad = centre_random_augmentation(padded, padded_mask, generator=_gen(3))
    assert torch.allclose(with_pad[..., :n_real, :], alone, atol=1e-5)
    assert (with_pad[..., n_real:, :] == 0).all()


def test_augmentation_translation_and_rotation_distributions():
    n = 20000
    x = torch.randn(1, 1, 8, 3).expand(1, n, 8, 3)
    mask = torch.ones(1, 8, dtype=torch.bool)
    out = centre_random_augmentation(x, mask, s_trans=2.5, generator=_gen(5))
    trans = masked_centre(out, mask)[0, :, 0]                           # [n, 3]
    assert trans.mean(0).abs().max() < 0.1
    assert trans.std(0).sub(2.5).abs().max() < 0.1
    # Haar measure on SO(3): E[R] = 0 and E[R_ij^2] = 1/3; a biased sampler (e.g. small angles,
    # or unnormalised quaternions mapped naively) fails one of these.
    rot = uniform_random_rotation((n,), _gen(6))
    assert rot.mean(0).abs().max() < 0.03
    assert (rot ** 2).mean(0).sub(1 / 3).abs().max() < 0.02
    assert torch.allclose(torch.linalg.det(rot), torch.ones(n), atol=1e-5)


def test_augmentation_is_deterministic_for_a_generator():
    x = torch.randn(2, 3, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    a = centre_random_augmentation(x, mask, generator=_gen(7))
    b = centre_random_augmentation(x, mask, generator=_gen(7))
    c = centre_random_augmentation(x, mask, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------------------------
# Noise levels


def test_noise_schedule_endpoints_and_monotone():
    config = DiffusionConfig()
    levels = noise_schedule(200, config, dtype=torch.float64)
    assert levels.shape == (201,)
    assert levels[0].item() == pytest.approx(config.sigma_data * config.s_max, rel=1e-12)
    assert levels[-1].item() == pytest.approx(config.sigma_data * config.s_min, rel=1e-9)
    assert (levels[1:] < levels[:-1]).all()
    # eq. (7) at t = 1/2, written out
    mid = noise_schedule(2, config, dtype=torch.float64)[1].item()
    p = config.rho
    expected = config.sigma_data * ((config.s_max ** (1 / p) + config.s_min ** (1 / p)) / 2) ** p
    assert mid == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        noise_schedule(0, config)


def test_training_noise_is_log_normal():
    config = DiffusionConfig()
    t = sample_training_noise((200, 100), config, _gen(0))
    log_t = torch.log(t / config.sigma_data)
    assert t.shape == (200, 100) and (t > 0).all()
    assert log_t.mean().item() == pytest.approx(config.train_p_mean, abs=0.05)
    assert log_t.std().item() == pytest.approx(config.train_p_std, abs=0.05)


def test_training_inputs_are_rigid_copies_plus_scaled_noise():
    x_gt, mask = _ground_truth()
    x_gt, mask = x_gt[None], mask[None]                                 # [1, N_atom, 3]
    config = DiffusionConfig()
    n_copies = 48
    out = diffusion_training_inputs(x_gt, mask, n_copies, config, _gen(2))
    assert out.x_gt_augmented.shape == out.x_noisy.shape == (1, n_copies, x_gt.shape[-2], 3)
    assert out.t.shape == (1, n_copies)
    # every copy is the ground truth moved rigidly, each by a different motion
    rmsd = _rmsd_after_alignment(x_gt.expand_as(out.x_gt_augmented), out.x_gt_augmented,
                                 mask.expand(1, n_copies, -1))
    assert rmsd.max() < 1e-6
    assert not torch.allclose(out.x_gt_augmented[0, 0], out.x_gt_augmented[0, 1], atol=1.0)
    # the noise is N(0, t^2) per copy
    eps = ((out.x_noisy - out.x_gt_augmented) / out.t[..., None, None])[:, :, mask[0]]
    assert eps.mean().abs() < 0.05
    assert eps.std().item() == pytest.approx(1.0, abs=0.05)
    again = diffusion_training_inputs(x_gt, mask, n_copies, config, _gen(2))
    assert torch.equal(again.x_noisy, out.x_noisy)


# ---------------------------------------------------------------------------------------------
# Algorithm 18 with toy denoisers


def _aligned_target_denoiser(target: torch.Tensor, mask: torch.Tensor, calls: list):
    """The ideal denoiser for a data set holding one structure up to rigid motion: the target
    optimally superposed onto the noisy input. Records the noise levels it is called with."""
    def denoise_fn(x_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t.clone())
        m = mask.unsqueeze(-2).expand(x_noisy.shape[:-1])
        return _kabsch_align(target.unsqueeze(-3).expand_as(x_noisy), x_noisy, m)
    return denoise_fn


def test_sampler_converges_to_the_target_up_to_rigid_motion():
    coords, real = _ground_truth()
    n_atom = coords.shape[0]
    # batch of two: the real structure, and a copy with its last 30 atoms as padding
    target = torch.stack([coords, coords]).float()
    mask = torch.stack([real, real.clone()])
    mask[1, n_atom - 30:] = False
    target = target * mask[..., None]
    config = DiffusionConfig()
    calls: list = []
    x = sample_diffusion(_aligned_target_denoiser(target, mask, calls), None, 3, config,
                         _gen(11), atom_mask=mask)
    assert x.shape == (2, 3, n_atom, 3)
    rmsd = _rmsd_after_alignment(target.unsqueeze(1).expand_as(x), x, mask.unsqueeze(1).expand(2, 3, -1))
    assert rmsd.max() < 0.05, rmsd
    assert (x[1, :, n_atom - 30:] == 0).all()
    # samples end in different frames (independent augmentations)
    assert not torch.allclose(x[0, 0], x[0, 1], atol=1.0)
    # the denoiser saw t_hat = c_{tau-1} (1 + gamma) for each step, for all samples at once
    levels = noise_schedule(config.n_step, config).tolist()
    assert len(calls) == config.n_step
    for step, t in enumerate(calls):
        c_prev, c = levels[step], levels[step + 1]
        gamma = config.gamma_0 if c > config.gamma_min else 0.0
        assert t.shape == (2, 3)
        assert torch.allclose(t, torch.full((2, 3), c_prev * (1 + gamma)), rtol=1e-6)


def test_sampler_step_matches_algorithm_18_by_hand():
    """One step, denoiser returning 0: x_noisy = A x0 + noise, x1 = x_noisy (1 + eta (c1 - t_hat) / t_hat)."""
    # s_min / gamma_min chosen so the single step has gamma > 0 (extra noise is injected)
    config = dataclasses.replace(DiffusionConfig(), s_min=0.1, gamma_min=0.5)
    mask = torch.ones(1, 5, dtype=torch.bool)
    seen = {}

    def zero_denoiser(x_noisy, t):
        seen["x_noisy"] = x_noisy.clone()
        return torch.zeros_like(x_noisy)

    x1 = sample_diffusion(zero_denoiser, None, 2, config, _gen(4), atom_mask=mask, n_step=1)
    c0, c1 = noise_schedule(1, config).tolist()
    t_hat = c0 * (1 + (config.gamma_0 if c1 > config.gamma_min else 0.0))
    expected = seen["x_noisy"] * (1 + config.step_scale * (c1 - t_hat) / t_hat)
    assert c1 > config.gamma_min
    assert torch.allclose(x1, expected, rtol=1e-5, atol=1e-2)
    # and the injected noise has the right scale: x_noisy - x_aug ~ lambda sqrt(t_hat^2 - c0^2)
    g = _gen(4)
    x0 = c0 * torch.randn((1, 2, 5, 3), generator=g)
    x_aug = centre_random_augmentation(x0, mask, config.augment_translation, g)
    noise = config.noise_scale * (t_hat ** 2 - c0 ** 2) ** 0.5 * torch.randn((1, 2, 5, 3), generator=g)
    assert torch.allclose(seen["x_noisy"], x_aug + noise, rtol=1e-5, atol=1e-2)


def test_sampler_is_deterministic_for_a_generator():
    coords, real = _ground_truth()
    target, mask = coords[None].float(), real[None]
    config = dataclasses.replace(DiffusionConfig(), n_step=20)
    run = functools.partial(sample_diffusion, _aligned_target_denoiser(target, mask, []), None, 2,
                            config, atom_mask=mask)
    assert torch.equal(run(_gen(1)), run(_gen(1)))
    assert not torch.allclose(run(_gen(1)), run(_gen(2)))


# ---------------------------------------------------------------------------------------------
# DiffusionModule (Algorithms 20-21) on a real protein-ligand input


def _features(name: str):
    path = INPUTS / name
    (job,) = parse_af3_json(path.read_text(), source=str(path))
    return featurize_job(job).features


@functools.cache
def _ligand_features():
    return _features("tiny_protein_ligand_smiles.json")


def _batch(features, **pads):
    features = pad_features(features, **pads) if pads else features
    return collate([features], token_buckets=None, atom_buckets=None)


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers hide every other layer; move all weights off init."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module


def _trunk(config: ModelConfig, n_token: int, seed: int = 0):
    g = _gen(seed)
    s_inputs = torch.randn(1, n_token, config.c_s_inputs, generator=g)
    s_trunk = torch.randn(1, n_token, config.c_s, generator=g)
    z_trunk = torch.randn(1, n_token, n_token, config.c_z, generator=g)
    return s_inputs, s_trunk, z_trunk


def _module(config: ModelConfig | None = None) -> DiffusionModule:
    torch.manual_seed(0)
    return _perturbed(DiffusionModule(config or ModelConfig.tiny())).eval()


def _float64(module: DiffusionModule, batch: dict, *tensors: torch.Tensor):
    """The module, batch and tensors in float64, for comparisons that float32 rounding (different
    reduction orders for different sizes) would blur. The pre-hooks cast Linear inputs because
    RelativePositionEncoding builds its one-hot in float32 whatever the module's dtype."""
    module = module.double()
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.register_forward_pre_hook(lambda mod, args: tuple(a.to(mod.weight.dtype) for a in args))
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    return module, batch, *(v.double() for v in tensors)


def test_diffusion_module_shapes_and_conditioning():
    config = ModelConfig.tiny()
    module = _module(config)
    batch = _batch(_ligand_features())
    n_token, n_atom = batch["token_mask"].shape[-1], batch["atom_mask"].shape[-1]
    s_inputs, s_trunk, z_trunk = _trunk(config, n_token)
    x = 10 * torch.randn(1, 3, n_atom, 3)
    t = torch.tensor([[0.5, 5.0, 50.0]])
    out = module(x, t, batch, s_inputs, s_trunk, z_trunk)
    assert out.shape == (1, 3, n_atom, 3)
    assert torch.isfinite(out).all()
    # the output depends on the noise level, the trunk single and pair representations
    assert not torch.allclose(out, module(x, t * 2, batch, s_inputs, s_trunk, z_trunk))
    assert not torch.allclose(out, module(x, t, batch, s_inputs, s_trunk + 1, z_trunk))
    assert not torch.allclose(out, module(x, t, batch, s_inputs, s_trunk, z_trunk + 1))
    # precomputed trunk conditioning == computed inside
    cond = module.trunk_conditioning(batch, s_trunk, z_trunk)
    assert torch.allclose(out, module(x, t, batch, s_inputs, s_trunk, trunk_cond=cond), atol=1e-6)
    # a scalar t is broadcast over samples
    same_t = module(x, torch.full((1, 3), 5.0), batch, s_inputs, s_trunk, trunk_cond=cond)
    assert torch.allclose(same_t, module(x, 5.0, batch, s_inputs, s_trunk, trunk_cond=cond), atol=1e-6)


def test_diffusion_module_output_is_the_edm_combination(monkeypatch):
    """Line 8 with a known decoder update r: x_out = sd^2/(sd^2+t^2) x + sd t/sqrt(sd^2+t^2) r."""
    config = ModelConfig.tiny()
    module = _module(config)
    features = _ligand_features()
    n_atom = features["ref_pos"].shape[0]
    batch = _batch(features, n_token=features["restype"].shape[0] + 2, n_atom=n_atom + 4)
    s_inputs, s_trunk, z_trunk = _trunk(config, batch["token_mask"].shape[-1])
    x = torch.randn(1, 2, n_atom + 4, 3)
    r = torch.randn(1, 2, n_atom + 4, 3)
    seen = {}

    def fake_decoder(a, q_skip, c_skip, p_skip, feats, pair_biases=None):
        seen["a"] = a
        return r

    monkeypatch.setattr(module.decoder, "forward", fake_decoder)
    t = torch.tensor([[3.0, 30.0]])
    out = module(x, t, batch, s_inputs, s_trunk, z_trunk)
    sd = config.diffusion.sigma_data
    tt = t[..., None, None]
    expected = sd ** 2 / (sd ** 2 + tt ** 2) * x + sd * tt / (sd ** 2 + tt ** 2).sqrt() * r
    assert torch.allclose(out[..., :n_atom, :], expected[..., :n_atom, :], atol=1e-5)
    assert (out[..., n_atom:, :] == 0).all()                           # padding atoms write 0
    assert seen["a"].shape == (1, 2, batch["token_mask"].shape[-1], config.diffusion.c_token)


def test_diffusion_module_padding_invariance():
    config = ModelConfig.tiny()
    module = _module(config)
    features = _ligand_features()
    small = _batch(features)
    n_token, n_atom = small["token_mask"].shape[-1], small["atom_mask"].shape[-1]
    big = _batch(features, n_token=n_token + 7, n_atom=n_atom + 13)
    s_inputs, s_trunk, z_trunk = _trunk(config, n_token)
    g = _gen(9)
    pad_s_inputs = torch.cat([s_inputs, torch.randn(1, 7, config.c_s_inputs, generator=g)], 1)
    pad_s_trunk = torch.cat([s_trunk, torch.randn(1, 7, config.c_s, generator=g)], 1)
    pad_z = torch.randn(1, n_token + 7, n_token + 7, config.c_z, generator=g)
    pad_z[:, :n_token, :n_token] = z_trunk
    x = 10 * torch.randn(1, 2, n_atom, 3)
    pad_x = torch.cat([x, 100 * torch.randn(1, 2, 13, 3, generator=g)], 2)
    t = torch.tensor([[2.0, 40.0]])
    alone = module(x, t, small, s_inputs, s_trunk, z_trunk)
    padded = module(pad_x, t, big, pad_s_inputs, pad_s_trunk, pad_z)
    assert torch.allclose(padded[..., :n_atom, :], alone, atol=1e-5), \
        (padded[..., :n_atom, :] - alone).abs().max()
    assert (padded[..., n_atom:, :] == 0).all()
    # and exactly (up to float64 rounding): nothing leaks from the padding
    module, small, s_inputs, s_trunk, z_trunk, x, t = _float64(module, small, s_inputs, s_trunk,
                                                               z_trunk, x, t)
    big, pad_s_inputs, pad_s_trunk, pad_z, pad_x = _float64(module, big, pad_s_inputs, pad_s_trunk,
                                                            pad_z, pad_x)[1:]
    alone = module(x, t, small, s_inputs, s_trunk, z_trunk)
    padded = module(pad_x, t, big, pad_s_inputs, pad_s_trunk, pad_z)
    assert torch.allclose(padded[..., :n_atom, :], alone, atol=1e-10)


def test_diffusion_module_sample_chunks_match_and_checkpointing_keeps_gradients():
    """In float64, so float32 reduction-order noise cannot hide (or fake) a difference."""
    config = ModelConfig.tiny()
    batch = _batch(_ligand_features())
    n_token, n_atom = batch["token_mask"].shape[-1], batch["atom_mask"].shape[-1]
    x = 10 * torch.randn(1, 5, n_atom, 3)
    t = torch.tensor([[0.3, 1.0, 8.0, 30.0, 200.0]])
    module, batch, s_inputs, s_trunk, z_trunk, x, t = _float64(
        _module(config), batch, *_trunk(config, n_token), x, t)
    full = module(x, t, batch, s_inputs, s_trunk, z_trunk)
    for chunk in (1, 2, 5, 8):
        chunked = module(x, t, batch, s_inputs, s_trunk, z_trunk, diffusion_chunk=chunk)
        assert torch.allclose(chunked, full, atol=1e-10), chunk
    # a sample's output does not depend on the other samples
    assert torch.allclose(module(x[:, 2:3], t[:, 2:3], batch, s_inputs, s_trunk, z_trunk),
                          full[:, 2:3], atol=1e-10)

    def grads(**kwargs):
        module.zero_grad()
        module(x, t, batch, s_inputs, s_trunk, z_trunk, **kwargs).square().mean().backward()
        return {n: p.grad.clone() for n, p in module.named_parameters()}

    plain = grads()
    checkpointed = grads(diffusion_chunk=2, checkpoint_chunks=True)
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], rtol=1e-8, atol=1e-10), name


def test_diffusion_module_gradients_reach_every_parameter():
    config = ModelConfig.tiny()
    module = _module(config).train()
    batch = _batch(_ligand_features())
    s_inputs, s_trunk, z_trunk = _trunk(config, batch["token_mask"].shape[-1])
    s_trunk.requires_grad_(True)
    z_trunk.requires_grad_(True)
    x = 10 * torch.randn(1, 2, batch["atom_mask"].shape[-1], 3)
    module(x, torch.tensor([[1.0, 20.0]]), batch, s_inputs, s_trunk, z_trunk).square().mean().backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert s_trunk.grad.abs().sum() > 0 and z_trunk.grad.abs().sum() > 0


def test_sample_diffusion_with_the_module_is_deterministic_and_batched():
    config = ModelConfig.tiny()
    module = _module(config)
    batch = _batch(_ligand_features())
    s_inputs, s_trunk, z_trunk = _trunk(config, batch["token_mask"].shape[-1])
    with torch.no_grad():
        denoise = module.denoiser(batch, s_inputs, s_trunk, z_trunk)
        run = functools.partial(sample_diffusion, denoise, batch, 3, config.diffusion, n_step=4)
        a, b, c = run(_gen(0)), run(_gen(0)), run(_gen(1))
        chunked = sample_diffusion(module.denoiser(batch, s_inputs, s_trunk, z_trunk, diffusion_chunk=2),
                                   batch, 3, config.diffusion, _gen(0), n_step=4)
    assert a.shape == (1, 3, batch["atom_mask"].shape[-1], 3)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.allclose(a, chunked, atol=1e-4)


def test_protein_dna_batch_matches_single_inputs():
    """Two different real inputs collated together give each one's own output."""
    config = ModelConfig.tiny()
    feats = [_ligand_features(), _features("tiny_protein_dna.json")]
    batch = collate(feats, token_buckets=None, atom_buckets=None)
    n_tok = batch["token_mask"].shape[-1]
    g = _gen(3)
    s_inputs = torch.randn(2, n_tok, config.c_s_inputs, generator=g)
    s_trunk = torch.randn(2, n_tok, config.c_s, generator=g)
    z_trunk = torch.randn(2, n_tok, n_tok, config.c_z, generator=g)
    x = 10 * torch.randn(2, 2, batch["atom_mask"].shape[-1], 3, generator=g)
    t = torch.tensor([[1.0, 9.0], [4.0, 60.0]])
    module, batch, s_inputs, s_trunk, z_trunk, x, t = _float64(
        _module(config), batch, s_inputs, s_trunk, z_trunk, x, t)
    both = module(x, t, batch, s_inputs, s_trunk, z_trunk)
    for i, f in enumerate(feats):
        one = _float64(module, _batch(f))[1]
        nt, na = one["token_mask"].shape[-1], one["atom_mask"].shape[-1]
        alone = module(x[i:i + 1, :, :na], t[i:i + 1], one, s_inputs[i:i + 1, :nt],
                       s_trunk[i:i + 1, :nt], z_trunk[i:i + 1, :nt, :nt])
        assert torch.allclose(both[i:i + 1, :, :na], alone, atol=1e-10), i


def test_features_are_numpy_sized_as_expected():
    """Guards the fixture: the ligand input really has a ligand and unequal sizes."""
    f = _ligand_features()
    assert f["is_ligand"].sum() > 0
    assert len({f["restype"].shape[0], f["ref_pos"].shape[0], ModelConfig.tiny().c_z}) == 3
    assert isinstance(f["ref_pos"], np.ndarray)
