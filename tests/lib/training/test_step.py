"""One training step (SI 3.7.1, 4, 5.3) on real structures, and the all-atom lDDT metric.

1l2y (Trp-cage, whole) and 102m (myoglobin + heme, cropped to 64 tokens around the
ligand interface) with ModelConfig.tiny() and 4 diffusion copies, on CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from foldray.features.batch import collate
from foldray.features.pipeline import CropSettings, featurize_job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.training import lddt, train_step, training_sample
from tests.data_paths import STRUCTURES

CONFIG = ModelConfig.tiny()
N_COPIES = 4
DISTANCE_LOWER = np.linspace(3.25, 50.75, 39)   # template distogram bins (AF3 / Protenix)


@functools.cache
def _featurized(name: str, crop: int | None):
    path = STRUCTURES / f"{name}.cif"
    return featurize_job(job_from_structure_file(path.read_text(), source=str(path)),
                         crop=None if crop is None else CropSettings(size=crop))


def _self_template(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One template made from the ground truth's token centre atoms, so the template
    embedder runs (the structure files carry no template search). Unit vectors are taken
    in the global frame: enough to exercise the embedder, not a faithful SI 2.8 feature."""
    centre = sample["token_centre_atom"]
    x, ok = sample["gt_coords"][centre], sample["gt_mask"][centre].astype(np.float32)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    bins = np.clip(np.searchsorted(DISTANCE_LOWER, d) - 1, 0, 38)
    distogram = np.eye(39, dtype=np.float32)[bins] * (d >= DISTANCE_LOWER[0])[..., None]
    v = x[None] - x[:, None]
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
    return {**sample, "template_restype": sample["restype"].argmax(-1).astype(np.int8)[None],
            "template_pseudo_beta_mask": ok[None], "template_backbone_frame_mask": ok[None],
            "template_distogram": distogram[None], "template_unit_vector": v.astype(np.float32)[None]}


def _batch(name: str, crop: int | None = None, template: bool = False) -> dict[str, torch.Tensor]:
    sample = training_sample(_featurized(name, crop))
    return collate([_self_template(sample) if template else sample], token_buckets=None,
                   atom_buckets=None)


def _model(seed: int = 0) -> AlphaFold3:
    torch.manual_seed(seed)
    return AlphaFold3(CONFIG).train()


def _step(model, batch, seed=0, **kwargs):
    model.zero_grad(set_to_none=True)
    kwargs.setdefault("diffusion_batch", N_COPIES)
    loss, metrics = train_step(model, batch, generator=torch.Generator().manual_seed(seed), **kwargs)
    loss.backward()
    return loss.detach(), metrics, {n: p.grad for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------- ground truth


def test_training_sample_carries_ground_truth_through_padding():
    featurized = _featurized("1l2y", None)
    sample = training_sample(featurized)
    n_atom = featurized.targets.mask.shape[0]
    assert sample["gt_coords"].shape == (n_atom, 3) and sample["gt_coords"].dtype == np.float32
    assert sample["gt_mask"].dtype == bool and sample["gt_mask"].all()
    batch = collate([sample, training_sample(_featurized("102m", 64))])   # bucketed to 256 atoms
    assert batch["gt_coords"].shape == (2, 256, 3) and batch["gt_mask"].shape == (2, 256)
    assert torch.equal(batch["gt_coords"][0, :n_atom], torch.from_numpy(featurized.targets.coords))
    assert not batch["gt_mask"][0, n_atom:].any() and (batch["gt_coords"][0, n_atom:] == 0).all()
    assert torch.equal(batch["gt_mask"] & ~batch["atom_mask"], torch.zeros_like(batch["gt_mask"]))
    with pytest.raises(ValueError, match="no ground truth"):
        training_sample(dataclasses.replace(featurized, targets=None))


# ---------------------------------------------------------------------------- the step


def test_step_on_trp_cage_gives_finite_loss_metrics_and_gradients():
    model = _model()
    loss, metrics, grads = _step(model, _batch("1l2y"), n_cycle=2)
    assert loss.ndim == 0 and torch.isfinite(loss)
    expected = {"mse", "bond", "smooth_lddt", "diffusion", "distogram", "plddt", "pde", "resolved",
                "pae", "loss", "n_cycle", "t_mean", "lddt_rollout"}
    assert set(metrics) == expected
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert metrics["loss"] == pytest.approx(float(loss), rel=1e-6)
    w = CONFIG.loss   # SI eq. 15 with the initial-stage weights (alpha_pae = 0)
    assert metrics["loss"] == pytest.approx(
        w.alpha_diffusion * metrics["diffusion"] + w.alpha_distogram * metrics["distogram"]
        + w.alpha_confidence * (metrics["plddt"] + metrics["pde"] + metrics["resolved"]), rel=1e-5)
    assert 0.0 <= metrics["lddt_rollout"] <= 1.0 and metrics["n_cycle"] == 2.0
    # Without templates (N_templ = 0) the template embedder returns zeros without running:
    # its parameters structurally get no gradient. Everything else does, finite.
    for name, grad in grads.items():
        if name.startswith("template_embedder."):
            assert grad is None or grad.abs().sum() == 0, name
        else:
            assert grad is not None and torch.isfinite(grad).all(), name


def test_every_parameter_learns_and_confidence_weights_only_from_their_term():
    """102m crop (protein + heme, 64 tokens) with a self-template, from the real init.

    AF3's zero-initialised output layers (diffusion decoder output, distogram and confidence
    projections, Alg 5/20 zero-init projections) make every upstream gradient exactly 0 on
    the very first step, so the check is made after two Adam steps. pae uses alpha_pae = 1
    (SI Table 6 fine-tuning stage 3); with the initial alpha_pae = 0 its head gets exactly
    zero gradient, by design.
    """
    model, batch = _model(), _batch("102m", crop=64, template=True)
    stage3 = dataclasses.replace(CONFIG.loss, alpha_pae=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for seed in range(2):
        _, _, grads = _step(model, batch, seed=seed, n_cycle=2, loss=stage3)
        assert all(grad is not None for grad in grads.values())   # no unused parameter
        optimizer.step()
    _, _, with_conf = _step(model, batch, seed=5, n_cycle=2, loss=stage3)
    _, _, no_conf = _step(model, batch, seed=5, n_cycle=2,
                          loss=dataclasses.replace(stage3, alpha_confidence=0.0))
    silent = [n for n, g in with_conf.items() if not (torch.isfinite(g).all() and g.abs().sum() > 0)]
    assert silent == []
    for name, grad in with_conf.items():
        if name.startswith("confidence_head."):
            # only the confidence term reaches the head ...
            assert no_conf[name].abs().sum() == 0, name
        else:
            # ... and it reaches nothing else (SI 4.3.5 stop-gradient into trunk and structure)
            torch.testing.assert_close(no_conf[name], grad, rtol=1e-5, atol=1e-9, msg=name)


def test_bond_loss_and_the_resolution_filter_reach_the_step():
    """Fine-tuning weights (alpha_bond 1): the batch's gt_bonds enter the bond loss; the
    confidence terms count only for 0.1-4 Å structures (1l2y is NMR: resolution 0)."""
    model, batch = _model(), dict(_batch("1l2y"))
    finetune = dataclasses.replace(CONFIG.loss, alpha_bond=1.0)
    lookup = _featurized("1l2y", None).tokens.atom_lookup()
    pairs = [[lookup[("A", 5, "CA")], lookup[("A", 5, "CB")]],
             [lookup[("A", 5, "N")], lookup[("A", 5, "CA")]]]
    batch["gt_bonds"] = torch.tensor([pairs], dtype=torch.int32)
    batch["bond_mask"] = torch.tensor([[True, True]])
    with torch.no_grad():
        _, with_bonds = train_step(model, batch, generator=torch.Generator().manual_seed(0),
                                   n_cycle=1, diffusion_batch=2, loss=finetune)
        batch["bond_mask"] = torch.tensor([[False, False]])
        _, masked = train_step(model, batch, generator=torch.Generator().manual_seed(0),
                               n_cycle=1, diffusion_batch=2, loss=finetune)
        batch["gt_resolution"] = torch.tensor([2.0])
        _, resolved = train_step(model, batch, generator=torch.Generator().manual_seed(0),
                                 n_cycle=1, diffusion_batch=2, loss=finetune)
    assert with_bonds["bond"] > 0 and masked["bond"] == 0.0
    assert with_bonds["diffusion"] > masked["diffusion"]      # the same draws, plus the bond term
    assert with_bonds["plddt"] == with_bonds["pde"] == with_bonds["resolved"] == 0.0
    assert resolved["plddt"] > 0 and resolved["pde"] > 0 and resolved["resolved"] > 0


def test_diffusion_batch_is_the_number_of_noised_copies():
    model, batch = _model(), _batch("1l2y")
    calls = []
    model.diffusion_module.register_forward_hook(
        lambda module, args, out: calls.append((tuple(args[0].shape), torch.is_grad_enabled())))
    with torch.no_grad():
        train_step(model, batch, generator=torch.Generator().manual_seed(0), n_cycle=1,
                   diffusion_batch=3)
    n_atom = batch["atom_mask"].shape[-1]
    # the mini-rollout first (1 sample per sampler step; SI 4.2 renames the truth to match
    # it), then one training call on 3 copies
    steps = CONFIG.loss.mini_rollout_steps
    assert [shape for shape, _ in calls[:steps]] == [(1, 1, n_atom, 3)] * steps
    assert [shape for shape, _ in calls[steps:]] == [(1, 3, n_atom, 3)]
    calls.clear()
    with torch.no_grad():
        train_step(model, batch, generator=torch.Generator().manual_seed(0), n_cycle=1)
    assert calls[-1][0][1] == CONFIG.loss.diffusion_batch                # default: the config's
    # the rollout runs without gradient even while training
    calls.clear()
    train_step(model, batch, generator=torch.Generator().manual_seed(0), n_cycle=1)
    assert calls[-1][1] and not any(grad for _, grad in calls[:-1])


def test_recycles_are_drawn_uniformly_from_one_to_n_cycle(monkeypatch):
    model, batch = _model(), _batch("1l2y")
    drawn = []

    class Stop(Exception):
        pass

    def run_trunk(features, *, n_cycle=None, **kwargs):
        drawn.append(n_cycle)
        raise Stop

    monkeypatch.setattr(model, "run_trunk", run_trunk)
    for seed in range(24):
        with pytest.raises(Stop):
            train_step(model, batch, generator=torch.Generator().manual_seed(seed))
    assert set(drawn) == set(range(1, CONFIG.n_cycle + 1))
    with pytest.raises(Stop):
        train_step(model, batch, generator=torch.Generator().manual_seed(0), n_cycle=7)
    assert drawn[-1] == 7


def test_step_is_deterministic_for_a_fixed_generator_and_keeps_the_global_rng():
    model, batch = _model(), _batch("1l2y")
    assert CONFIG.pairformer.dropout > 0 and model.training      # dropout is part of the draw
    rng_before = torch.get_rng_state()
    loss_a, metrics_a, grads_a = _step(model, batch, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    grads_a = {n: g.clone() for n, g in grads_a.items() if g is not None}
    torch.manual_seed(1234)                                       # the global RNG plays no part
    loss_b, metrics_b, grads_b = _step(model, batch, seed=3)
    assert torch.equal(loss_a, loss_b) and metrics_a == metrics_b
    for name, grad in grads_a.items():
        assert torch.equal(grad, grads_b[name]), name
    loss_c, _, _ = _step(model, batch, seed=4, n_cycle=int(metrics_a["n_cycle"]))
    assert not torch.equal(loss_a, loss_c)


# ---------------------------------------------------------------------------- lDDT


def _truth():
    fj = _featurized("1l2y", None)
    return torch.from_numpy(fj.targets.coords), torch.from_numpy(fj.targets.mask), \
        torch.from_numpy(fj.features["atom_to_token"])


def test_lddt_is_one_for_rigid_motions_and_falls_with_noise():
    x, mask, _ = _truth()
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    moved = x @ (q * torch.linalg.det(q)).T + torch.tensor([5.0, -3.0, 1.0])
    assert float(lddt(moved, x, mask)) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    noisy = x + torch.stack([s * torch.randn(x.shape, generator=g) for s in (0.1, 0.5, 1.0, 3.0)])
    scores = lddt(noisy, x, mask)                               # [4] (leading dims broadcast)
    assert scores.shape == (4,) and (scores[:-1] > scores[1:]).all() and scores[-1] < 0.5
    # a mirror image keeps every distance: lDDT cannot see chirality
    assert float(lddt(-x, x, mask)) == pytest.approx(1.0)


def test_lddt_counts_pairs_inside_the_radius_and_thresholds_exactly():
    x_true = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [20.0, 0, 0]])
    mask = torch.tensor([True, True, True])
    # only pair (0, 1) is within 15 Å; stretch it by 0.75 Å: passes 1, 2, 4 -> 3/4
    x_pred = torch.tensor([[0.0, 0, 0], [3.75, 0, 0], [20.0, 0, 0]])
    assert float(lddt(x_pred, x_true, mask)) == pytest.approx(0.75)
    assert float(lddt(x_pred, x_true, mask, radius=25.0)) == pytest.approx(
        (0.75 * 2 + 1.0 * 2 + 0.75 * 2) / 6)                   # (1,2) moved 0.75 Å too
    assert float(lddt(x_pred, x_true, torch.tensor([True, False, True]))) == 0.0   # no pair
    # pairs inside one token are left out with atom_to_token
    same = torch.tensor([0, 0, 1])
    assert float(lddt(x_pred, x_true, mask, radius=25.0, atom_to_token=same)) == pytest.approx(
        (1.0 * 2 + 0.75 * 2) / 4)


def test_lddt_ignores_masked_atoms_and_padding():
    x, mask, atom_to_token = _truth()
    g = torch.Generator().manual_seed(2)
    pred = x + 0.7 * torch.randn(x.shape, generator=g)
    base = lddt(pred, x, mask, atom_to_token=atom_to_token)
    pad = torch.full((7, 3), 99.0)
    padded = lddt(torch.cat([pred, pad]), torch.cat([x, -pad]), torch.cat([mask, torch.zeros(7, dtype=bool)]),
                  atom_to_token=torch.cat([atom_to_token, torch.zeros(7, dtype=atom_to_token.dtype)]))
    torch.testing.assert_close(padded, base)
    assert 0.0 < float(base) < 1.0
