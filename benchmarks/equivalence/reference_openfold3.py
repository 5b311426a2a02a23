"""Run the OpenFold3 reference model on foldray's features, module by module.

Runs INSIDE the reference virtual environment (openfold3 from PyPI, no foldray): it builds
OpenFold3 in the CPU-small config that `tiny-openfold3` mirrors, draws random weights for
every parameter (zero-initialised ones included, so no path hides behind a zero), adapts
foldray's feature dict to OpenFold3's input batch, and saves weights (safetensors), inputs
and per-module outputs (npz) for `run_equivalence.py` to compare against foldray.

Usage: python reference_openfold3.py FEATURES.npz OUT_DIR [--seed N] [--cycles N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

N_TEMPLATE_SLOTS = 4   # OpenFold3's inference pipeline pads templates to 4 slots
N_STEP = 8             # sampler steps of the fixed-noise full-model comparison


def full_config():
    """OpenFold3's released config (foldray `full-openfold3`), kernels off for CPU."""
    from openfold3.projects.of3_all_atom.config.model_config import model_config

    cfg = copy.deepcopy(model_config)
    cfg.settings.memory.eval.use_triton_triangle_kernels = False
    cfg.settings.memory.eval.tune_chunk_size = False
    return cfg


def tiny_config():
    """OpenFold3's model config resized to foldray's `tiny-openfold3` (same widths)."""
    from openfold3.projects.of3_all_atom.config.model_config import model_config

    cfg = copy.deepcopy(model_config)
    a = cfg.architecture
    a.shared.c_s, a.shared.c_z, a.shared.c_s_input = 40, 24, 32 + 65
    for enc in (a.input_embedder.atom_attn_enc, a.diffusion_module.atom_attn_enc):
        enc.c_atom, enc.c_atom_pair, enc.c_hidden, enc.no_heads, enc.no_blocks = 32, 8, 16, 2, 1
    a.input_embedder.atom_attn_enc.c_token = 32
    a.diffusion_module.atom_attn_enc.c_token = 48
    dec = a.diffusion_module.atom_attn_dec
    dec.c_atom, dec.c_atom_pair, dec.c_token, dec.c_hidden, dec.no_heads, dec.no_blocks = (
        32, 8, 48, 16, 2, 1)
    t = a.template
    t.c_t = 16
    t.template_pair_embedder.c_out = 16
    t.template_pair_stack.c_t, t.template_pair_stack.c_hidden_tri_att = 16, 4
    t.template_pair_stack.c_hidden_tri_mul, t.template_pair_stack.no_blocks = 16, 1
    e = a.msa.msa_module_embedder
    e.c_m = 16
    m = a.msa.msa_module
    m.c_m, m.c_hidden_msa_att, m.no_heads_msa, m.c_hidden_opm = 16, 4, 2, 8
    m.c_hidden_mul, m.c_hidden_pair_att, m.no_heads_pair, m.no_blocks = 16, 8, 2, 2
    for p, n_block in ((a.pairformer, 2), (a.heads.pairformer_embedding.pairformer, 1)):
        p.c_hidden_pair_bias, p.no_heads_pair_bias, p.c_hidden_mul = 10, 4, 16
        p.c_hidden_pair_att, p.no_heads_pair, p.no_blocks = 8, 2, n_block
    d = a.diffusion_module
    d.diffusion_module.c_token = 48
    d.diffusion_conditioning.c_fourier_emb = 32
    dt = d.diffusion_transformer
    dt.c_a, dt.c_hidden, dt.no_heads, dt.no_blocks = 48, 12, 4, 2
    cfg.settings.memory.eval.use_triton_triangle_kernels = False
    cfg.settings.memory.eval.tune_chunk_size = False
    return cfg


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter: matrices ~ N(0, 1/fan_in), norms' scales ~ 1 + N(0, 0.2^2),
    other vectors (biases) ~ N(0, 0.2^2). Buffers (Fourier w, b) keep the reference's values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def to_openfold3_batch(f: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """foldray features (Table 5 names, unbatched) -> OpenFold3's input batch [1, ...].

    Differences bridged here: foldray's ref_element one-hot is indexed by atomic number Z
    (128 classes, 0 = unknown), OpenFold3's by Z - 1 (119 classes, 118 = unknown); foldray
    stores msa / template_restype as class indices, OpenFold3 as one-hots; OpenFold3 also
    reads token/atom masks, atom_to_token_index, num_atoms_per_token, start_atom_index and
    is_atomized (per-atom tokens), which foldray derives inside the model or not at all.
    Templates: OpenFold3 pads to 4 slots; foldray's zero templates become 4 empty slots.
    """
    def t(x, dtype=torch.float32):
        return torch.as_tensor(np.asarray(x)).to(dtype)[None]

    n_token = f["restype"].shape[0]
    n_atom = f["ref_pos"].shape[0]
    atom_to_token = torch.as_tensor(f["atom_to_token"]).long()
    counts = torch.bincount(atom_to_token, minlength=n_token)
    start = torch.cumsum(counts, 0) - counts
    element = torch.as_tensor(f["ref_element"])
    element119 = torch.zeros(n_atom, 119)
    element119[:, :118] = element[:, 1:119]
    element119[:, 118] = element[:, 0] + element[:, 119:].sum(-1)
    msa = torch.nn.functional.one_hot(torch.as_tensor(f["msa"]).long(), 32).float()
    n_templ = f["template_restype"].shape[0]
    if n_templ:
        raise NotImplementedError("template features: only template-free inputs are adapted")
    batch = {
        "token_mask": torch.ones(1, n_token), "atom_mask": torch.ones(1, n_atom),
        "residue_index": t(f["residue_index"], torch.long), "token_index": t(f["token_index"], torch.long),
        "asym_id": t(f["asym_id"], torch.long), "entity_id": t(f["entity_id"], torch.long),
        "sym_id": t(f["sym_id"], torch.long),
        "restype": t(f["restype"]), "is_protein": t(f["is_protein"]), "is_rna": t(f["is_rna"]),
        "is_dna": t(f["is_dna"]), "is_ligand": t(f["is_ligand"]),
        "is_atomized": t(f["is_ligand"]),
        "ref_pos": t(f["ref_pos"]), "ref_mask": t(f["ref_mask"]), "ref_element": element119[None],
        "ref_charge": t(f["ref_charge"]), "ref_atom_name_chars": t(f["ref_atom_name_chars"]),
        "ref_space_uid": t(f["ref_space_uid"], torch.long),
        "msa": msa[None], "has_deletion": t(f["has_deletion"]), "deletion_value": t(f["deletion_value"]),
        "msa_mask": torch.ones(1, *f["msa"].shape), "num_paired_seqs": torch.zeros(1, dtype=torch.long),
        "profile": t(f["profile"]), "deletion_mean": t(f["deletion_mean"]),
        "template_restype": torch.zeros(1, N_TEMPLATE_SLOTS, n_token, 32),
        "template_pseudo_beta_mask": torch.zeros(1, N_TEMPLATE_SLOTS, n_token),
        "template_backbone_frame_mask": torch.zeros(1, N_TEMPLATE_SLOTS, n_token),
        "template_distogram": torch.zeros(1, N_TEMPLATE_SLOTS, n_token, n_token, 39),
        "template_unit_vector": torch.zeros(1, N_TEMPLATE_SLOTS, n_token, n_token, 3),
        "token_bonds": t(f["token_bonds"]),
        "atom_to_token_index": atom_to_token[None], "num_atoms_per_token": counts[None],
        "start_atom_index": start[None],
    }
    return batch


def fixed_noise(n_step: int, n_sample: int, n_atom: int, seed: int) -> dict[str, torch.Tensor]:
    """Every random draw of Algorithm 18, drawn up front so both samplers can be fed the same:
    x0 [S, A, 3], and per step a rotation [S, 3, 3], a translation [S, 3], a noise [S, A, 3]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_step, n_sample, 3, 3, generator=g))
    rot = q * torch.sign(torch.linalg.det(q))[..., None, None]                 # proper rotations
    return {"x0": torch.randn(1, n_sample, n_atom, 3, generator=g), "rot": rot[:, None],
            "trans": torch.randn(n_step, 1, n_sample, 3, generator=g),
            "eps": torch.randn(n_step, 1, n_sample, n_atom, 3, generator=g)}


@contextlib.contextmanager
def injected(noise: dict[str, torch.Tensor]):
    """OpenFold3's sampler with its random draws replaced, in the order it makes them:
    torch.randn (x0), then per step sample_rotations, torch.randn (translation) and
    torch.randn_like (noise). Any other draw fails loudly."""
    from openfold3.core.model.structure import augmentation

    queue = [noise["x0"]]
    for k in range(noise["rot"].shape[0]):
        queue += [noise["trans"][k], noise["eps"][k]]
    rotations = list(noise["rot"])

    def pop(shape):
        value = queue.pop(0)
        if tuple(value.shape) != tuple(shape):
            raise AssertionError(f"injected noise {tuple(value.shape)} asked as {tuple(shape)}")
        return value.clone()

    saved = torch.randn, torch.randn_like, augmentation.sample_rotations
    torch.randn = lambda *shape, **kw: pop(shape[0] if len(shape) == 1 else shape)
    torch.randn_like = lambda x, **kw: pop(x.shape)
    augmentation.sample_rotations = lambda shape, dtype, device: rotations.pop(0).reshape(*shape, 3, 3)
    try:
        yield
    finally:
        torch.randn, torch.randn_like, augmentation.sample_rotations = saved
    if queue or rotations:
        raise AssertionError(f"{len(queue) + len(rotations)} injected draws were not used")


@torch.no_grad()
def run(features: dict[str, np.ndarray], seed: int, n_cycle: int,
        full: bool = False) -> tuple[dict, dict, dict]:
    from openfold3.core.model.structure.diffusion_module import create_noise_schedule
    from openfold3.projects.of3_all_atom.model import OpenFold3

    torch.manual_seed(seed)
    config = full_config() if full else tiny_config()
    model = OpenFold3(config).eval()
    randomize(model, seed)
    batch = to_openfold3_batch(features)
    pair_mask = batch["token_mask"][..., None] * batch["token_mask"][..., None, :]
    out: dict[str, torch.Tensor] = {}

    s_inputs, s_init, z_init = model.input_embedder(batch=batch)               # input embedder
    out.update({"input_embedder.s_inputs": s_inputs, "input_embedder.s_init": s_init,
                "input_embedder.z_init": z_init})

    out["template_embedder.u"] = model.template_embedder(batch=batch, z=z_init, pair_mask=pair_mask)

    m, msa_mask = model.msa_module_embedder(batch=batch, s_input=s_inputs)      # one MSA block
    m_out, z_out = model.msa_module.blocks[0](m, z_init, msa_mask=msa_mask, pair_mask=pair_mask)
    out.update({"msa_embed.m": m, "msa_block.m": m_out, "msa_block.z": z_out})

    s_pf, z_pf = model.pairformer_stack.blocks[0](                             # one Pairformer block
        s_init, z_init, single_mask=batch["token_mask"], pair_mask=pair_mask)
    out.update({"pairformer_block.s": s_pf, "pairformer_block.z": z_pf})

    s_inputs_t, s_trunk, z_trunk = model.run_trunk(batch, num_cycles=n_cycle)  # trunk
    out.update({"trunk.s_inputs": s_inputs_t, "trunk.s": s_trunk, "trunk.z": z_trunk})

    generator = torch.Generator().manual_seed(seed + 1)                        # one denoising call
    n_atom = batch["atom_mask"].shape[-1]
    t_hat = torch.tensor([[4.0, 40.0]])                                         # [1, n_sample]
    x_noisy = torch.randn(1, 2, n_atom, 3, generator=generator) * t_hat[..., None, None]
    sbatch = {k: v.unsqueeze(1) for k, v in batch.items()}   # sample axis, as OpenFold3.forward
    s_inputs_1, s_trunk_1, z_trunk_1 = s_inputs_t[:, None], s_trunk[:, None], z_trunk[:, None]
    x_denoised = model.diffusion_module(
        batch=sbatch, xl_noisy=x_noisy, token_mask=sbatch["token_mask"],
        atom_mask=sbatch["atom_mask"], t=t_hat, si_input=s_inputs_1, si_trunk=s_trunk_1,
        zij_trunk=z_trunk_1, use_conditioning=True)
    out["diffusion.x_denoised"] = x_denoised

    heads = model.aux_heads(batch=sbatch, si_input=s_inputs_1,                  # confidence head
                            output={"si_trunk": s_trunk_1, "zij_trunk": z_trunk_1,
                                    "atom_positions_predicted": x_denoised},
                            use_zij_trunk_embedding=True)
    for key in ("plddt_logits", "pae_logits", "pde_logits", "experimentally_resolved_logits",
                "distogram_logits"):
        out[f"heads.{key}"] = heads[key]

    noise = fixed_noise(N_STEP, 2, n_atom, seed + 2)                             # full model
    schedule = create_noise_schedule(no_rollout_steps=N_STEP, dtype=torch.float32,
                                     device=torch.device("cpu"),
                                     **config.architecture.noise_schedule)
    with injected(noise):
        x_sampled = model.sample_diffusion(batch=sbatch, si_input=s_inputs_1, si_trunk=s_trunk_1,
                                           zij_trunk=z_trunk_1, noise_schedule=schedule,
                                           no_rollout_samples=2)
    heads = model.aux_heads(batch=sbatch, si_input=s_inputs_1,
                            output={"si_trunk": s_trunk_1, "zij_trunk": z_trunk_1,
                                    "atom_positions_predicted": x_sampled},
                            use_zij_trunk_embedding=True)
    out["full_model.x"] = x_sampled
    out["full_model.plddt_logits"] = heads["plddt_logits"]
    out["full_model.pae_logits"] = heads["pae_logits"]

    inputs = {"x_noisy": x_noisy, "t_hat": t_hat, **{f"noise.{k}": v for k, v in noise.items()}}
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return weights, inputs, out


def full_shapes(path: str) -> None:
    """Names and shapes of OpenFold3's full (released) model, built on the meta device, so
    the importer's full-size mapping can be checked without weights or memory."""
    import json

    from openfold3.projects.of3_all_atom.config.model_config import model_config
    from openfold3.projects.of3_all_atom.model import OpenFold3

    with torch.device("meta"):
        model = OpenFold3(model_config)
    Path(path).write_text(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the released (full) config")
    parser.add_argument("--full-shapes", action="store_true",
                        help="only write OUT_DIR/openfold3_full_shapes.json")
    args = parser.parse_args()
    if args.full_shapes:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        full_shapes(str(Path(args.out_dir) / "openfold3_full_shapes.json"))
        return
    features = dict(np.load(args.features))
    weights, inputs, out = run(features, args.seed, args.cycles, full=args.full)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "openfold3_weights.safetensors"))
    np.savez(out_dir / "openfold3_inputs.npz", **{k: v.numpy() for k, v in inputs.items()})
    np.savez(out_dir / "openfold3_outputs.npz", **{k: v.float().numpy() for k, v in out.items()})
    print(f"wrote {len(weights)} tensors and {len(out)} outputs to {out_dir}")


if __name__ == "__main__":
    main()
