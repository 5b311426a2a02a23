"""One AlphaFold 3 training step (SI 3.7.1, 4.1-4.4, 5.3) and the all-atom lDDT metric.

Shapes: `batch` is collated training samples (`training_sample` -> foldray.features.batch
.collate): the Table 5 features with token_mask [B, N_token] / atom_mask [B, N_atom], plus
the ground truth gt_coords [B, N_atom, 3] (Å) and gt_mask [B, N_atom] bool (resolved in the
experiment; padding False). x [B, N_sample, N_atom, 3].

One step (SI 3.7.1 "the trunk runs once, the diffusion module many times"):
  1. the trunk with n_cycle recycles, n_cycle ~ U{1..config.n_cycle} per step (the AF2
     SI 1.10 recycling scheme, which the AF3 SI does not restate; Protenix does the same),
     gradients only through the last cycle (AlphaFold3.run_trunk);
  2. the diffusion module on `diffusion_batch` (48) copies of the ground truth, each randomly
     rotated / translated (Algorithm 19) and noised at its own level t ~ sigma_data
     exp(N(-1.2, 1.5^2)), denoised in one batch;
  3. the mini-rollout (SI 4.1): `mini_rollout_steps` (20) sampler steps without gradient,
     whose structure the confidence head scores (the head itself stops gradients into the
     trunk, SI 4.3.5);
  4. the distogram head on the trunk pair representation;
  5. `total_loss` with the SI 5.3 / Table 6 weights of LossConfig.
The mini-rollout runs before the diffusion copies are drawn because SI 4.2 renames the
ground truth (chain copies, symmetric atoms) to match the rollout structure, and every
loss then uses the renamed truth. The bond loss reads the batch's gt_bonds (weight
alpha_bond: 0 initially, 1 when fine-tuning); the confidence losses only count for
structures resolved at 0.1-4 Å (gt_resolution). Batches with only gt_coords / gt_mask
skip what they lack. Ray is never imported: Ray train workers call `train_step`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from foldray.features.pipeline import FeaturizedJob
from foldray.features.targets import training_targets
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.confidence import EXACT, token_frames
from foldray.model.config import LossConfig, RuntimeConfig
from foldray.model.diffusion import diffusion_training_inputs
from foldray.model.losses import LDDT_CUTOFFS, RADIUS_PROTEIN, total_loss
from foldray.training.permutation import permute_ground_truth

TrainBatch = Mapping[str, Tensor]


def training_sample(featurized: FeaturizedJob) -> dict[str, np.ndarray]:
    """Features + training targets of one featurized (usually cropped) structure, ready
    for `collate`: gt_coords [N_atom, 3], gt_mask [N_atom], and what the bond loss, the
    resolution filter and the permutation alignment need (foldray.features.targets)."""
    if featurized.targets is None:
        raise ValueError(f"training_sample: job {featurized.job.name!r} has no ground truth "
                         f"(featurize a structure file, e.g. job_from_structure_file)")
    return {**featurized.features, **training_targets(featurized)}


def confidence_mask(batch: TrainBatch, config: LossConfig) -> Tensor | None:
    """[B] bool: SI 4.3 trains the confidence head only on structures resolved at 0.1-4 Å
    (NMR and unknown resolution excluded). None when the batch has no resolution."""
    if "gt_resolution" not in batch:
        return None
    resolution = batch["gt_resolution"].float()
    low, high = config.confidence_resolution
    return (resolution >= low) & (resolution <= high)


# ---------------------------------------------------------------------------- metric


def lddt(x_pred: Tensor, x_true: Tensor, mask: Tensor, *, radius: float = RADIUS_PROTEIN,
         cutoffs: tuple[float, ...] = LDDT_CUTOFFS, atom_to_token: Tensor | None = None) -> Tensor:
    """All-atom lDDT (Mariani et al. 2013) in 0..1 -> [*], no gradient.

    x_pred [*, N_atom, 3] and x_true [*, N_atom, 3] broadcast (e.g. samples [B, S, N, 3]
    against the truth [B, 1, N, 3]); mask [*, N_atom] the atoms scored (real and resolved).
    Pairs (l, m), l != m, both in mask and closer than `radius` in the truth; each pair
    scores the fraction of `cutoffs` (0.5, 1, 2, 4 Å) that |d_pred - d_true| stays under;
    the result is the mean over pairs (the global form SI 4.3.1 / Algorithm 27 smooth). With
    `atom_to_token` [*, N_atom], pairs inside one token (residue) are left out, as in the
    original lDDT; by default every pair counts. No pair at all gives 0.
    """
    with torch.no_grad():
        x_pred, x_true = x_pred.float(), x_true.float()
        d_pred = torch.cdist(x_pred, x_pred, compute_mode=EXACT)              # [*, N, N]
        d_true = torch.cdist(x_true, x_true, compute_mode=EXACT)
        mask = mask.bool()
        n = mask.shape[-1]
        pair = mask[..., :, None] & mask[..., None, :] & ~torch.eye(n, dtype=torch.bool,
                                                                    device=mask.device)
        if atom_to_token is not None:
            pair = pair & (atom_to_token[..., :, None] != atom_to_token[..., None, :])
        pair = pair & (d_true < radius)
        delta = (d_pred - d_true).abs()
        score = sum((delta < c).float() for c in cutoffs) / len(cutoffs)
        pair = pair.float()
        return (score * pair).sum((-1, -2)) / pair.sum((-1, -2)).clamp(min=1.0)


# ---------------------------------------------------------------------------- the step


@contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Dropout inside the model draws from torch's global RNG: seed it from the step's
    generator, and restore the caller's RNG state afterwards."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def train_step(model: AlphaFold3, batch: TrainBatch, *, generator: torch.Generator,
               runtime: RuntimeConfig | None = None, n_cycle: int | None = None,
               diffusion_batch: int | None = None, msa_rows: int | None = None,
               loss: LossConfig | None = None) -> tuple[Tensor, dict[str, float]]:
    """SI 3.7.1 / 4 / 5.3: one forward pass of every training loss -> (loss [], metrics).

    Call `loss.backward()` (and the optimizer) outside; set `model.train()` for dropout.
    `generator` drives every random choice (recycle count, augmentations, noise levels,
    rollout noise, and - through a forked, seeded global RNG - dropout), so a fixed
    generator state gives the same loss and gradients. n_cycle None draws it uniformly
    from 1..config.n_cycle; diffusion_batch None uses config.loss.diffusion_batch (48);
    msa_rows subsamples MSA rows per recycle (None keeps them all). `loss` replaces
    config.loss (the loss weights of another training stage, SI Table 6).
    Metrics are floats: each loss term of `total_loss` (batch means), "loss", "n_cycle",
    "t_mean" (mean training noise level, Å) and "lddt_rollout" (all-atom lDDT of the
    mini-rollout structure against the truth).
    """
    config = model.config
    loss_config = config.loss if loss is None else loss
    runtime = runtime or RuntimeConfig()
    n_copies = loss_config.diffusion_batch if diffusion_batch is None else diffusion_batch
    if n_copies < 1:
        raise ValueError(f"train_step: diffusion_batch must be >= 1, got {n_copies}")
    gen_device = generator.device
    if n_cycle is None:
        n_cycle = int(torch.randint(1, config.n_cycle + 1, (), generator=generator, device=gen_device))
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator, device=gen_device))
    device = batch["token_mask"].device
    autocast = runtime.precision == "bf16" and device.type == "cuda"

    with _seeded_global_rng(seed, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            trunk = model.run_trunk(batch, n_cycle=n_cycle, runtime=runtime,   # Alg 1 lines 1-14
                                    msa_rows=msa_rows, generator=generator)
            with torch.no_grad():                                             # SI 4.1 mini-rollout
                x_rollout = model.sample(batch, trunk, n_sample=1,
                                         n_step=loss_config.mini_rollout_steps,
                                         generator=generator, runtime=runtime)
            # SI 4.2: the truth renamed (chains, then symmetric atoms) to match the rollout
            x_gt, gt_mask = permute_ground_truth(x_rollout[:, 0], batch)      # [B, N_atom, 3]
            noised = diffusion_training_inputs(x_gt, gt_mask, n_copies,       # SI 3.7.1
                                               config.diffusion, generator)
            x_denoised = model.diffusion_module(                              # [B, n_copies, N_atom, 3]
                noised.x_noisy, noised.t, batch, trunk.s_inputs, trunk.s, trunk.z,
                diffusion_chunk=runtime.diffusion_chunk,
                checkpoint_chunks=runtime.checkpoint_activations)
            distogram_logits = model.distogram_head(trunk.z)                  # SI 4.4
            confidence = model.confidence(batch, trunk, x_rollout, runtime)  # stop-gradient inside
        total, terms = total_loss(
            batch, x_gt=x_gt, gt_mask=gt_mask, config=loss_config,
            confidence_config=config.confidence, sigma_data=config.diffusion.sigma_data,
            x_denoised=x_denoised, t_hat=noised.t, distogram_logits=distogram_logits,
            confidence=confidence, x_rollout=x_rollout, frames=token_frames(batch),
            bond_index=batch.get("gt_bonds"), bond_mask=batch.get("bond_mask"),
            confidence_mask=confidence_mask(batch, loss_config),
            sample_chunk=runtime.diffusion_chunk)

    metrics = {name: float(value) for name, value in terms.items()}
    metrics["n_cycle"] = float(n_cycle)
    metrics["t_mean"] = float(noised.t.float().mean())
    metrics["lddt_rollout"] = float(lddt(x_rollout, x_gt[:, None], gt_mask[:, None]).mean())
    return total, metrics
