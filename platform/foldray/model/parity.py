"""foldray's side of the module equivalence check: the same modules, fed the reference's inputs.

Each module gets the reference's own upstream tensors (the MSA block gets OpenFold3's m
and z, the diffusion module its trunk outputs, ...), so an error is located in the module
that makes it; the input embedder and the trunk run end to end from the features. Used by
benchmarks/equivalence/run_equivalence.py (against a live reference) and by
tests/lib/io/test_import_weights.py (against the committed fixtures), so it lives in the
package: tests never import benchmarks. No reference package needed here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from foldray.features.batch import collate
from foldray.model import diffusion
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.pairformer import pair_mask_from

# Reference output name -> what the comparison calls it (also the JSON keys).
MODULES = {
    "input_embedder": ("input_embedder.s_inputs", "input_embedder.s_init", "input_embedder.z_init"),
    "template_embedder": ("template_embedder.u",),
    "msa_embedder": ("msa_embed.m",),
    "msa_block": ("msa_block.m", "msa_block.z"),
    "pairformer_block": ("pairformer_block.s", "pairformer_block.z"),
    "trunk": ("trunk.s_inputs", "trunk.s", "trunk.z"),
    "diffusion_module": ("diffusion.x_denoised",),
    "confidence_head": ("heads.plddt_logits", "heads.pae_logits", "heads.pde_logits",
                        "heads.experimentally_resolved_logits"),
    "distogram_head": ("heads.distogram_logits",),
    "full_model_fixed_noise": ("full_model.x", "full_model.plddt_logits", "full_model.pae_logits"),
}


@torch.no_grad()
def run_foldray(model: AlphaFold3, features: Mapping[str, np.ndarray],
                ref_inputs: Mapping[str, np.ndarray], ref_out: Mapping[str, np.ndarray],
                n_cycle: int, full_model: bool = True) -> dict[str, Tensor]:
    """foldray's outputs under the reference's names (see MODULES), fp32 on CPU;
    `full_model=False` skips the fixed-noise sampler run (the slowest part)."""
    model = model.eval()
    f = collate([dict(features)], token_buckets=None, atom_buckets=None)
    ref = {k: torch.as_tensor(np.asarray(v)) for k, v in ref_out.items()}
    token_mask = f["token_mask"]
    pair_mask = pair_mask_from(token_mask)
    out: dict[str, Tensor] = {}

    s_inputs = model.input_embedder(f)
    out["input_embedder.s_inputs"] = s_inputs
    out["input_embedder.s_init"] = s_init = model.s_init(s_inputs)
    z_in = s_init if model.config.z_init_from_s_init else s_inputs      # Protenix: from s_init
    z_init = model.z_init_i(z_in)[..., :, None, :] + model.z_init_j(z_in)[..., None, :, :]
    z_init = z_init + model.relative_position(f)
    out["input_embedder.z_init"] = z_init + model.token_bonds(f["token_bonds"][..., None].float())

    z_ref, s_ref = ref["input_embedder.z_init"], ref["input_embedder.s_init"]
    out["template_embedder.u"] = model.template_embedder(f, z_ref, token_mask)

    out["msa_embed.m"] = model.msa_module.embed(f, ref["input_embedder.s_inputs"])
    m, z = model.msa_module.blocks[0](ref["msa_embed.m"], z_ref, f["msa_mask"], token_mask,
                                      pair_mask)
    out["msa_block.m"], out["msa_block.z"] = m, z

    s, z = model.pairformer.blocks[0](s_ref, z_ref, token_mask, pair_mask)
    out["pairformer_block.s"], out["pairformer_block.z"] = s, z

    trunk = model.run_trunk(f, n_cycle=n_cycle)
    out["trunk.s_inputs"], out["trunk.s"], out["trunk.z"] = trunk.s_inputs, trunk.s, trunk.z

    s_inputs_r, s_r, z_r = ref["trunk.s_inputs"], ref["trunk.s"], ref["trunk.z"]
    x_noisy = torch.as_tensor(np.asarray(ref_inputs["x_noisy"]))
    t_hat = torch.as_tensor(np.asarray(ref_inputs["t_hat"]))
    out["diffusion.x_denoised"] = model.diffusion_module(x_noisy, t_hat, f, s_inputs_r, s_r, z_r)

    x_conf = ref.get("heads.x_pred", ref["diffusion.x_denoised"])   # Protenix: one sample
    conf = model.confidence_head(
        s_inputs_r, s_r, z_r, x_conf, atom_to_token=f["atom_to_token"],
        token_rep_atom=f["token_rep_atom"], token_mask=token_mask, atom_mask=f["atom_mask"])
    out["heads.plddt_logits"] = conf.plddt_logits
    out["heads.pae_logits"] = conf.pae_logits
    out["heads.pde_logits"] = conf.pde_logits
    out["heads.experimentally_resolved_logits"] = conf.resolved_logits
    out["heads.distogram_logits"] = model.distogram_head(z_r)[:, None]

    noise = {k[len("noise."):]: torch.as_tensor(np.asarray(v)) for k, v in ref_inputs.items()
             if k.startswith("noise.")}
    if noise and full_model:   # end to end on foldray's own trunk, the reference's random draws injected
        n_step, n_sample = noise["rot"].shape[0], noise["x0"].shape[1]
        with injected(noise):
            x = model.sample(f, trunk, n_sample=n_sample, n_step=n_step)
        conf = model.confidence(f, trunk, x)
        out["full_model.x"] = x
        out["full_model.plddt_logits"] = conf.plddt_logits
        out["full_model.pae_logits"] = conf.pae_logits
    return out


@contextlib.contextmanager
def injected(noise: Mapping[str, Tensor]) -> Iterator[None]:
    """foldray's sampler (Algorithm 18) fed pre-drawn randomness, in the order it draws:
    x0, then per step a rotation, a translation and the noise (reference_openfold3.py feeds
    OpenFold3 the same tensors)."""
    queue = [noise["x0"]]
    for k in range(noise["rot"].shape[0]):
        queue += [noise["trans"][k], noise["eps"][k]]
    rotations = list(noise["rot"])

    def randn(shape, generator, like):
        value = queue.pop(0)
        assert tuple(value.shape) == tuple(shape), (tuple(value.shape), tuple(shape))
        return value.to(like.dtype)

    def rotation(shape, generator=None, like=None):
        return rotations.pop(0).reshape(*shape, 3, 3)

    saved = diffusion._randn, diffusion.uniform_random_rotation
    diffusion._randn, diffusion.uniform_random_rotation = randn, rotation
    try:
        yield
    finally:
        diffusion._randn, diffusion.uniform_random_rotation = saved
    assert not queue and not rotations, "injected draws left unused"


def errors(ours: Mapping[str, Tensor], theirs: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per module: max |ours - ref|, and that over max |ref| (the relative error), per tensor
    and the module's worst."""
    report: dict[str, dict] = {}
    for module, names in MODULES.items():
        if not all(name in ours and name in theirs for name in names):
            continue   # a module the reference run did not record (Protenix: no templates)
        tensors = {}
        for name in names:
            a = ours[name].double()
            b = torch.as_tensor(np.asarray(theirs[name])).double()
            if a.shape != b.shape:
                raise ValueError(f"{name}: foldray shape {tuple(a.shape)} != reference {tuple(b.shape)}")
            max_abs = float((a - b).abs().max())
            scale = float(b.abs().max())
            tensors[name] = {"max_abs": max_abs, "max_ref": scale,
                             "rel": max_abs / scale if scale > 0 else max_abs}
        report[module] = {"max_abs": max(t["max_abs"] for t in tensors.values()),
                          "rel": max(t["rel"] for t in tensors.values()), "tensors": tensors}
    return report
