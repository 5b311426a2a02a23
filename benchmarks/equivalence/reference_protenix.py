"""Run the Protenix reference model on foldray's features, module by module.

Runs INSIDE the reference virtual environment (protenix from PyPI, installed --no-deps, no
foldray): it builds Protenix (`protenix_base_default_v1.0.0`'s architecture) resized to the
CPU-small config that `tiny-protenix` mirrors, draws random weights for every parameter
(zero-initialised ones included, so no path hides behind a zero), adapts foldray's feature
dict to Protenix's input dict, and saves weights (safetensors), inputs and per-module
outputs (npz) for `run_equivalence.py` to compare against foldray. Protenix's CUDA layer norm
is switched off (LAYERNORM_TYPE=torch) and the triangle kernels set to "torch".

Usage: python reference_protenix.py FEATURES.npz OUT_DIR [--seed N] [--cycles N]
       python reference_protenix.py - OUT_DIR --full-shapes
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")   # before protenix is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

MODEL_NAME = "protenix_base_default_v1.0.0"
# Sizes of foldray's `tiny-protenix` (Protenix hard-codes its triangle, OPM and MSA-averaging
# widths and the confidence Pairformer's 16 heads, so those stay at the released values).
TINY = {"c_s": 48, "c_z": 24, "c_s_inputs": 32 + 65, "c_atom": 32, "c_atompair": 8,
        "c_token": 32, "n_blocks": 2,
        "model": {"N_cycle": 2, "template_embedder": {"c": 16, "n_blocks": 1},
                  "msa_module": {"c_m": 16, "n_blocks": 2},
                  "pairformer": {"n_heads": 16},
                  "diffusion_module": {"c_token": 56, "atom_encoder": {"n_blocks": 3, "n_heads": 4},
                                       "transformer": {"n_blocks": 2, "n_heads": 4},
                                       "atom_decoder": {"n_blocks": 3, "n_heads": 4}},
                  "confidence_head": {"n_blocks": 1}}}
CPU = {"triangle_multiplicative": "torch", "triangle_attention": "torch"}


def _deep_update(d: dict, u: Mapping) -> dict:
    for k, v in u.items():
        if isinstance(v, Mapping) and isinstance(d.get(k), Mapping):
            _deep_update(d[k], v)
        else:
            d[k] = v
    return d


def depth_override(depth: Mapping[str, int]) -> dict:
    """Protenix config keys for a block count per stack (benchmarks/model_forward.py's depth
    names); the input embedder's atom encoder keeps Protenix's hard-coded 3 blocks."""
    atom = {"n_blocks": depth["atom"]}
    return {"model": {"pairformer": {"n_blocks": depth["pairformer"]},
                      "msa_module": {"n_blocks": depth["msa"]},
                      "template_embedder": {"n_blocks": depth["template"]},
                      "diffusion_module": {"transformer": {"n_blocks": depth["diffusion"]},
                                           "atom_encoder": atom, "atom_decoder": dict(atom)},
                      "confidence_head": {"n_blocks": depth["confidence"]}}}


def build_config(tiny: bool = True, depth: Mapping[str, int] | None = None):
    """Protenix's inference config for MODEL_NAME, resized to TINY when `tiny`, with the block
    counts of `depth` when given."""
    from configs.configs_base import configs as configs_base
    from configs.configs_data import data_configs
    from configs.configs_inference import inference_configs
    from configs.configs_model_type import model_configs
    from protenix.config.config import parse_configs

    base = copy.deepcopy({**configs_base, "data": data_configs, **inference_configs})
    _deep_update(base, copy.deepcopy(model_configs[MODEL_NAME]))
    _deep_update(base, copy.deepcopy(CPU))
    if tiny:
        _deep_update(base, copy.deepcopy(TINY))
    if depth is not None:
        _deep_update(base, depth_override(depth))
    return parse_configs(base, fill_required_with_null=True)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter: matrices ~ N(0, 1/fan_in), norms' scales ~ 1 + N(0, 0.2^2),
    other vectors ~ N(0, 0.2^2), each rounded to the nearest float16 value (still used in fp32:
    the weights then store losslessly as float16, halving the CI fixture). Constants stored as
    frozen parameters keep their values (Fourier w, b; the confidence head's distance bins)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() >= 2:
                value = noise / math.sqrt(p.shape[-2] if p.dim() == 3 else p.shape[-1])
            elif name.endswith("weight"):
                value = 1.0 + 0.2 * noise
            else:
                value = 0.2 * noise
            p.copy_(value.half().float())


def compact(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float16 for tensors whose values it holds exactly (the randomized ones), else float32."""
    return {k: v.half() if torch.equal(v.half().float(), v) else v for k, v in weights.items()}


def exact_cdist(x1: torch.Tensor, x2: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """torch.cdist without the |a|^2 + |b|^2 - 2ab expansion torch uses for > 25 points: same
    distances, without its ~1e-5 Å rounding, which flips the one-hot distance bin of a pair
    lying that close to a bin edge (foldray computes distances this way)."""
    kwargs["compute_mode"] = "donot_use_mm_for_euclid_dist"
    return _CDIST(x1, x2, *args, **kwargs)


_CDIST = torch.cdist


def to_protenix_features(f: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """foldray features (Table 5 names, unbatched) -> Protenix's input_feature_dict.

    Bridged here: Protenix's ref_element column is Z - 1 (foldray's is Z, 0 = unknown, which
    Protenix keeps in its last column: a cyclic shift); msa stays class indices; Protenix also
    reads atom_to_token_idx, atom_to_tokatom_idx (atom position in its token), the
    representative-atom mask, and precomputed relp / d_lm / v_lm. Templates: the 4 empty
    slots its inference pipeline makes for a job without templates
    (InferenceTemplateFeaturizer: slot 0 all gap, slots 1-3 restype 0, every other template
    feature zero); its template embedder runs its stack on each of them (foldray:
    TemplateConfig.padded_slots / empty_slot_restype_*).
    """
    from protenix.model.modules.embedders import RelativePositionEncoding
    from protenix.model.protenix import update_input_feature_dict

    def t(name, dtype=torch.float32):
        return torch.as_tensor(np.asarray(f[name])).to(dtype)

    atom_to_token = t("atom_to_token", torch.long)
    n_atom = atom_to_token.shape[0]
    first = torch.zeros(n_atom, dtype=torch.long)
    first[1:] = (atom_to_token[1:] != atom_to_token[:-1]).long()
    start = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.long), first[1:]])).flatten()
    counts = torch.bincount(atom_to_token)
    tokatom = torch.arange(n_atom) - torch.repeat_interleave(start, counts)
    rep = torch.zeros(n_atom, dtype=torch.long)
    rep[t("token_rep_atom", torch.long)] = 1
    feats = {
        "atom_to_token_idx": atom_to_token, "atom_to_tokatom_idx": tokatom,
        "distogram_rep_atom_mask": rep,
        "ref_pos": t("ref_pos"), "ref_charge": t("ref_charge"), "ref_mask": t("ref_mask"),
        "ref_element": torch.roll(t("ref_element"), -1, dims=-1),
        "ref_atom_name_chars": t("ref_atom_name_chars"), "ref_space_uid": t("ref_space_uid", torch.long),
        "restype": t("restype"), "profile": t("profile"), "deletion_mean": t("deletion_mean"),
        "residue_index": t("residue_index", torch.long), "token_index": t("token_index", torch.long),
        "asym_id": t("asym_id", torch.long), "entity_id": t("entity_id", torch.long),
        "sym_id": t("sym_id", torch.long), "token_bonds": t("token_bonds"),
        "msa": t("msa", torch.long), "has_deletion": t("has_deletion"),
        "deletion_value": t("deletion_value"),
        "is_protein": t("is_protein"), "is_rna": t("is_rna"), "is_dna": t("is_dna"),
        "is_ligand": t("is_ligand"),
    }
    if f["template_restype"].shape[0]:
        raise NotImplementedError("template features: only template-free inputs are adapted")
    n_token = feats["restype"].shape[0]
    aatype = torch.zeros(4, n_token, dtype=torch.long)
    aatype[0] = 31                                                   # gap
    feats.update({"template_aatype": aatype,
                  "template_distogram": torch.zeros(4, n_token, n_token, 39),
                  "template_pseudo_beta_mask": torch.zeros(4, n_token, n_token),
                  "template_unit_vector": torch.zeros(4, n_token, n_token, 3),
                  "template_backbone_frame_mask": torch.zeros(4, n_token, n_token)})
    feats = RelativePositionEncoding().generate_relp(feats)
    return update_input_feature_dict(feats)


@torch.no_grad()
def run(features: dict[str, np.ndarray], seed: int, n_cycle: int,
        full: bool = False) -> tuple[dict, dict, dict]:
    from protenix.model.protenix import Protenix

    torch.manual_seed(seed)
    config = build_config(tiny=not full)
    model = Protenix(config).eval()
    randomize(model, seed)
    f = to_protenix_features(features)
    out: dict[str, torch.Tensor] = {}
    kw = {"triangle_multiplicative": "torch", "triangle_attention": "torch"}

    s_inputs = model.input_embedder(f)                                          # input embedder
    s_init = model.linear_no_bias_sinit(s_inputs)
    z_init = model.linear_no_bias_zinit1(s_init)[..., None, :] + model.linear_no_bias_zinit2(
        s_init)[..., None, :, :]
    z_init = z_init + model.relative_position_encoding(f["relp"])
    z_init = z_init + model.linear_no_bias_token_bond(f["token_bonds"].unsqueeze(-1))
    out.update({"input_embedder.s_inputs": s_inputs, "input_embedder.s_init": s_init,
                "input_embedder.z_init": z_init})

    msa_module = model.msa_module                                               # one MSA block
    msa = torch.nn.functional.one_hot(f["msa"], 32).float()
    m = torch.cat([msa, f["has_deletion"][..., None], f["deletion_value"][..., None]], dim=-1)
    m = msa_module.linear_no_bias_m(m) + msa_module.linear_no_bias_s(s_inputs)
    m_out, z_out = msa_module.blocks[0](m.clone(), z_init.clone(), pair_mask=None, **kw)  # in place
    out.update({"msa_embed.m": m, "msa_block.m": m_out, "msa_block.z": z_out})

    s_pf, z_pf = model.pairformer_stack.blocks[0](s_init, z_init, pair_mask=None, **kw)
    out.update({"pairformer_block.s": s_pf, "pairformer_block.z": z_pf})

    s_inputs_t, s_trunk, z_trunk = model.get_pairformer_output(f, N_cycle=n_cycle)  # trunk
    out.update({"trunk.s_inputs": s_inputs_t, "trunk.s": s_trunk, "trunk.z": z_trunk})

    generator = torch.Generator().manual_seed(seed + 1)                         # one denoising call
    n_atom = f["ref_pos"].shape[0]
    t_hat = torch.tensor([4.0, 40.0])                                            # [n_sample]
    x_noisy = torch.randn(2, n_atom, 3, generator=generator) * t_hat[:, None, None]
    x_denoised = model.diffusion_module(
        x_noisy=x_noisy, t_hat_noise_level=t_hat, input_feature_dict=f, s_inputs=s_inputs_t,
        s_trunk=s_trunk, z_trunk=z_trunk, pair_z=None, p_lm=None, c_l=None)
    out["diffusion.x_denoised"] = x_denoised

    n_token = s_trunk.shape[-2]                                                  # confidence head
    x_pred = x_denoised[:1]                     # one sample: the logits are the largest outputs
    torch.cdist = exact_cdist
    try:
        plddt, pae, pde, resolved = model.confidence_head(
            input_feature_dict=f, s_inputs=s_inputs_t, s_trunk=s_trunk, z_trunk=z_trunk,
            pair_mask=torch.ones(n_token, n_token), x_pred_coords=x_pred, **kw)
    finally:
        torch.cdist = _CDIST
    out["heads.x_pred"] = x_pred
    out.update({"heads.plddt_logits": plddt, "heads.pae_logits": pae, "heads.pde_logits": pde,
                "heads.experimentally_resolved_logits": resolved,
                "heads.distogram_logits": model.distogram_head(z_trunk)[None]})   # sample axis
    out = {k: v[None] for k, v in out.items()}              # foldray's batch axis
    # the sampler's noise levels (Algorithm 18 input) for an 8-step run
    out["sampler.noise_schedule"] = model.inference_noise_scheduler(N_step=8)
    inputs = {"x_noisy": x_noisy[None], "t_hat": t_hat[None]}
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return weights, inputs, out


def full_shapes(path: str) -> None:
    """Names and shapes of Protenix's full (released) model (built on the CPU: its drop-path
    schedule calls .item(), which the meta device refuses; ~1.5 GB for a minute)."""
    import json

    from protenix.model.protenix import Protenix

    model = Protenix(build_config(tiny=False))
    Path(path).write_text(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the released (full) config")
    parser.add_argument("--full-shapes", action="store_true",
                        help="only write OUT_DIR/protenix_full_shapes.json")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.full_shapes:
        full_shapes(str(out_dir / "protenix_full_shapes.json"))
        return
    features = dict(np.load(args.features))
    weights, inputs, out = run(features, args.seed, args.cycles, full=args.full)
    save_file(compact(weights), str(out_dir / "protenix_weights.safetensors"))
    np.savez(out_dir / "protenix_inputs.npz", **{k: v.numpy() for k, v in inputs.items()})
    np.savez(out_dir / "protenix_outputs.npz", **{k: v.float().numpy() for k, v in out.items()})
    print(f"wrote {len(weights)} tensors and {len(out)} outputs to {out_dir}")


if __name__ == "__main__":
    main()
