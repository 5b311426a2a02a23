"""Protenix state dict -> foldray state dict (for a `with_protenix_behaviour` config).

Why: Protenix (ByteDance, Apache-2.0 code and weights) is a PyTorch AF3; its parameter names
follow its own modules (`linear_no_bias_*`, `layernorm_*`, OpenFold-style triangle layers).
Reading, the missing/extra checks and writing live in `foldray.io.import_weights`; this
module only says which Protenix tensor becomes which foldray tensor. Deviations from the SI
that change the computation are model flags (`ModelConfig.full_protenix`), not mapping tricks:
z_init from s_init, the atom transformer's chained key AdaLN, the confidence head's s_trunk
LayerNorm, raw-distance term and PDE symmetrisation, the distogram bias, and the
sampler's last noise level 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from foldray.io.import_weights import _Mapper, gated_attention
from foldray.io.weights import WeightsError
from foldray.model.config import ModelConfig


def _transition(m: _Mapper, f: str, r: str) -> None:
    m.norm(f"{f}.norm", f"{r}.layernorm1")
    m.linear(f"{f}.a", f"{r}.linear_no_bias_a")
    m.linear(f"{f}.b", f"{r}.linear_no_bias_b")
    m.linear(f"{f}.out", f"{r}.linear_no_bias")


def _adaln(m: _Mapper, f: str, r: str) -> None:
    m.put(f"{f}.norm_s.weight", m.take(f"{r}.layernorm_s.weight"))
    m.linear(f"{f}.scale", f"{r}.linear_s")
    m.linear(f"{f}.shift", f"{r}.linear_nobias_s")


def _pair_block(m: _Mapper, f: str, r: str) -> None:
    """Triangle updates + pair transition (Algorithm 17 lines 2-6)."""
    for side in ("out", "in"):
        ff, rr = f"{f}.tri_mul_{side}", f"{r}.tri_mul_{side}"
        m.norm(f"{ff}.norm_in", f"{rr}.layer_norm_in")
        m.cat(f"{ff}.ab_gate.weight", [f"{rr}.linear_a_g.weight", f"{rr}.linear_b_g.weight"], 0)
        m.cat(f"{ff}.ab.weight", [f"{rr}.linear_a_p.weight", f"{rr}.linear_b_p.weight"], 0)
        m.linear(f"{ff}.gate", f"{rr}.linear_g")
        m.norm(f"{ff}.norm_out", f"{rr}.layer_norm_out")
        m.linear(f"{ff}.out", f"{rr}.linear_z")
    for node in ("start", "end"):   # Protenix's ending node runs the starting one on z^T (b_ki)
        ff, rr = f"{f}.tri_att_{node}", f"{r}.tri_att_{node}"
        m.norm(f"{ff}.norm", f"{rr}.layer_norm")
        m.linear(f"{ff}.bias", f"{rr}.linear")
        gated_attention(m, ff, f"{rr}.mha")
    _transition(m, f"{f}.pair_transition", f"{r}.pair_transition")


def _pairformer(m: _Mapper, f: str, r: str, n_block: int, single: bool = True) -> None:
    for i in range(n_block):
        fb, rb = f"{f}.blocks.{i}", f"{r}.blocks.{i}"
        _pair_block(m, fb, rb)
        if single:
            a = f"{rb}.attention_pair_bias"
            m.norm(f"{fb}.attention.norm_a", f"{a}.layernorm_a")
            m.norm(f"{fb}.attention.norm_z", f"{a}.layernorm_z")
            m.linear(f"{fb}.attention.z_bias", f"{a}.linear_nobias_z")
            gated_attention(m, f"{fb}.attention", f"{a}.attention")
            _transition(m, f"{fb}.single_transition", f"{rb}.single_transition")


def _diffusion_transformer(m: _Mapper, f: str, r: str, n_block: int, local: bool) -> None:
    """Algorithm 23, or the atom transformer's (local: its cross-attention key AdaLN)."""
    for i in range(n_block):
        fa, ra = f"{f}.attention.{i}", f"{r}.blocks.{i}.attention_pair_bias"
        _adaln(m, f"{fa}.ada_ln", f"{ra}.layernorm_a")
        if local:
            _adaln(m, f"{fa}.ada_ln_k", f"{ra}.layernorm_kv")
        m.norm(f"{fa}.norm_z", f"{ra}.layernorm_z", ref_has_bias=False)
        m.linear(f"{fa}.z_bias", f"{ra}.linear_nobias_z")
        gated_attention(m, fa, f"{ra}.attention")
        m.linear(f"{fa}.s_gate", f"{ra}.linear_a_last")
        ft, rt = f"{f}.transition.{i}", f"{r}.blocks.{i}.conditioned_transition_block"
        _adaln(m, f"{ft}.ada_ln", f"{rt}.adaln")
        m.linear(f"{ft}.a", f"{rt}.linear_nobias_a1")
        m.linear(f"{ft}.b", f"{rt}.linear_nobias_a2")
        m.linear(f"{ft}.s_gate", f"{rt}.linear_s")
        m.linear(f"{ft}.out", f"{rt}.linear_nobias_b")


def _atom_encoder(m: _Mapper, f: str, r: str, config: ModelConfig, trunk: bool) -> None:
    """Algorithm 5. Protenix embeds ref_pos, arcsinh(ref_charge) and [ref_mask, ref_element,
    name chars] separately; its element column is Z - 1 with unknown last, foldray's is Z
    with unknown first (a cyclic shift of the 128 columns)."""
    feats = m.take(f"{r}.linear_no_bias_f.weight")                      # [c_atom, 1 + 128 + 256]
    pos = m.take(f"{r}.linear_no_bias_ref_pos.weight")
    charge = m.take(f"{r}.linear_no_bias_ref_charge.weight")
    if feats.dim() == pos.dim() == charge.dim() == 2:     # else missing: reported by convert()
        element = torch.roll(feats[:, 1:129], 1, dims=1)
        m.put(f"{f}.embed_ref.weight", torch.cat([pos, charge, feats[:, :1], element, feats[:, 129:]],
                                                 dim=1))
    m.linear(f"{f}.embed_offsets", f"{r}.linear_no_bias_d")
    m.linear(f"{f}.embed_distances", f"{r}.linear_no_bias_invd")
    m.linear(f"{f}.embed_valid", f"{r}.linear_no_bias_v")
    if trunk:
        m.put(f"{f}.norm_s.weight", m.take(f"{r}.layernorm_s.weight"))
        m.linear(f"{f}.embed_s", f"{r}.linear_no_bias_s")
        m.put(f"{f}.norm_z.weight", m.take(f"{r}.layernorm_z.weight"))
        m.linear(f"{f}.embed_z", f"{r}.linear_no_bias_z")
        m.linear(f"{f}.embed_r", f"{r}.linear_no_bias_r")
    m.linear(f"{f}.single_to_pair_row", f"{r}.linear_no_bias_cl")
    m.linear(f"{f}.single_to_pair_col", f"{r}.linear_no_bias_cm")
    for i in (1, 3, 5):
        m.linear(f"{f}.pair_mlp.{i}", f"{r}.small_mlp.{i}")
    n_block = config.atom.n_block if trunk else config.atom.input_embedder().n_block
    _diffusion_transformer(m, f"{f}.transformer.transformer",
                           f"{r}.atom_transformer.diffusion_transformer", n_block, True)
    m.linear(f"{f}.to_token", f"{r}.linear_no_bias_q")


def _trunk(m: _Mapper, config: ModelConfig) -> None:
    _atom_encoder(m, "input_embedder.encoder", "input_embedder.atom_attention_encoder", config, False)
    for ours, theirs in (("s_init", "linear_no_bias_sinit"), ("z_init_i", "linear_no_bias_zinit1"),
                         ("z_init_j", "linear_no_bias_zinit2"),
                         ("relative_position.linear", "relative_position_encoding.linear_no_bias"),
                         ("token_bonds", "linear_no_bias_token_bond"),
                         ("z_recycle", "linear_no_bias_z_cycle"), ("s_recycle", "linear_no_bias_s")):
        m.linear(ours, theirs)
    m.norm("z_recycle_norm", "layernorm_z_cycle")
    m.norm("s_recycle_norm", "layernorm_s")

    t = "template_embedder"
    m.norm(f"{t}.norm_z", f"{t}.layernorm_z")
    m.linear(f"{t}.embed_z", f"{t}.linear_no_bias_z")
    m.linear(f"{t}.embed_a", f"{t}.linear_no_bias_a")    # same column layout as TEMPLATE_PAIR_LAYOUT
    _pairformer(m, f"{t}.pairformer", f"{t}.pairformer_stack", config.template.n_block, single=False)
    m.norm(f"{t}.norm_v", f"{t}.layernorm_v")
    m.linear(f"{t}.out", f"{t}.linear_no_bias_u")

    m.linear("msa_module.embed_msa", "msa_module.linear_no_bias_m")
    m.linear("msa_module.embed_s", "msa_module.linear_no_bias_s")
    for i in range(config.msa.n_block):
        f = r = f"msa_module.blocks.{i}"
        o = f"{r}.outer_product_mean_msa"
        m.norm(f"{f}.opm.norm", f"{o}.layer_norm")
        m.linear(f"{f}.opm.a", f"{o}.linear_1")
        m.linear(f"{f}.opm.b", f"{o}.linear_2")
        m.linear(f"{f}.opm.out", f"{o}.linear_out")
        if i < config.msa.n_block - 1:     # the last block has no MSA stack in either model
            p, rp = f"{f}.pair_weighted_averaging", f"{r}.msa_stack.msa_pair_weighted_averaging"
            m.norm(f"{p}.norm_m", f"{rp}.layernorm_m")
            m.norm(f"{p}.norm_z", f"{rp}.layernorm_z")
            for ours, theirs in (("v", "linear_no_bias_mv"), ("bias", "linear_no_bias_z"),
                                 ("gate", "linear_no_bias_mg"), ("out", "linear_no_bias_out")):
                m.linear(f"{p}.{ours}", f"{rp}.{theirs}")
            _transition(m, f"{f}.msa_transition", f"{r}.msa_stack.transition_m")
        _pair_block(m, f"{f}.pair_stack", f"{r}.pair_stack")
    _pairformer(m, "pairformer", "pairformer_stack", config.pairformer.n_block)


def _diffusion(m: _Mapper, config: ModelConfig) -> None:
    d = "diffusion_module"
    c, rc = f"{d}.conditioning", f"{d}.diffusion_conditioning"
    m.linear(f"{c}.relative_position.linear", f"{rc}.relpe.linear_no_bias")
    for ours, theirs in (("norm_z", "layernorm_z"), ("norm_s", "layernorm_s"), ("norm_n", "layernorm_n")):
        m.put(f"{c}.{ours}.weight", m.take(f"{rc}.{theirs}.weight"))
    for ours, theirs in (("proj_z", "linear_no_bias_z"), ("proj_s", "linear_no_bias_s"),
                         ("proj_n", "linear_no_bias_n")):
        m.linear(f"{c}.{ours}", f"{rc}.{theirs}")
    for k in range(2):
        _transition(m, f"{c}.transition_z.{k}", f"{rc}.transition_z{k + 1}")
        _transition(m, f"{c}.transition_s.{k}", f"{rc}.transition_s{k + 1}")
    m.put(f"{c}.fourier.w", m.take(f"{rc}.fourier_embedding.w"))
    m.put(f"{c}.fourier.b", m.take(f"{rc}.fourier_embedding.b"))
    _atom_encoder(m, f"{d}.encoder", f"{d}.atom_attention_encoder", config, True)
    m.put(f"{d}.norm_s.weight", m.take(f"{d}.layernorm_s.weight"))
    m.linear(f"{d}.proj_s", f"{d}.linear_no_bias_s")
    _diffusion_transformer(m, f"{d}.transformer", f"{d}.diffusion_transformer",
                           config.diffusion.n_block, local=False)
    m.put(f"{d}.norm_a.weight", m.take(f"{d}.layernorm_a.weight"))
    dec = f"{d}.atom_attention_decoder"
    m.linear(f"{d}.decoder.embed_a", f"{dec}.linear_no_bias_a")
    _diffusion_transformer(m, f"{d}.decoder.transformer.transformer",
                           f"{dec}.atom_transformer.diffusion_transformer", config.atom.n_block, True)
    m.put(f"{d}.decoder.norm.weight", m.take(f"{dec}.layernorm_q.weight"))
    m.linear(f"{d}.decoder.out", f"{dec}.linear_no_bias_out")


def _heads(m: _Mapper, config: ModelConfig) -> None:
    h = "confidence_head"
    m.linear(f"{h}.s_i", f"{h}.linear_no_bias_s2")      # Protenix's s1 is broadcast over i: j's
    m.linear(f"{h}.s_j", f"{h}.linear_no_bias_s1")
    m.linear(f"{h}.distance", f"{h}.linear_no_bias_d")
    m.linear(f"{h}.distance_raw", f"{h}.linear_no_bias_d_wo_onehot")
    m.norm(f"{h}.norm_s_trunk", f"{h}.input_strunk_ln")
    _pairformer(m, f"{h}.pairformer", f"{h}.pairformer_stack", config.confidence.n_block)
    for name in ("pae", "pde"):
        m.norm(f"{h}.{name}_norm", f"{h}.{name}_ln")
        m.linear(f"{h}.{name}", f"{h}.linear_no_bias_{name}")
    for name in ("plddt", "resolved"):
        m.norm(f"{h}.{name}_norm", f"{h}.{name}_ln")
        m.put(f"{h}.{name}_weight", m.take(f"{h}.{name}_weight"))     # [slot, c_s, bins] in both
    m.linear("distogram_head.linear", "distogram_head.linear")
    _check_distance_bins(m, config)


def _check_distance_bins(m: _Mapper, config: ModelConfig) -> None:
    """Protenix stores its confidence distance bins as frozen parameters: they must be the
    lower edges foldray's config computes (else the config does not match the checkpoint)."""
    c = config.confidence
    expected = torch.linspace(c.distance_bins_min, c.distance_bins_max, c.n_distance_bins)
    lower = m.take("confidence_head.lower_bins")
    upper = m.take("confidence_head.upper_bins")
    if lower.numel() and (lower.shape != expected.shape or not torch.allclose(lower, expected)):
        raise WeightsError(f"confidence_head.lower_bins {lower.tolist()} differ from the config's "
                           f"distance bins {expected.tolist()}")
    if lower.numel() and upper.numel() and not torch.equal(upper[:-1], lower[1:]):
        raise WeightsError("confidence_head.upper_bins are not the next lower bins")


CONSTRAINT = "constraint_embedder"


def map_constraints(m: _Mapper, config: ModelConfig) -> None:
    """Protenix's ConstraintEmbedder (model/constraint_embedder.py). A part the checkpoint
    leaves disabled (no tensors) adds nothing in Protenix: zeros here. Its substructure
    transformer runs on an all-"none" feature in foldray: only the value path, output
    projection, norms and feed-forward enter the result, the rest is read and dropped."""
    has = [k for k in m.ref if k.startswith(f"{CONSTRAINT}.")]
    if not config.constraint_embedder:
        if has:
            raise WeightsError(f"this protenix checkpoint has a constraint embedder ({len(has)} tensors "
                               f"under '{CONSTRAINT}.*') but the config has constraint_embedder off; "
                               "import without --config (the checkpoint's own is read) or switch it on")
        return
    for ours, theirs in (("pocket", "pocket_z_embedder"), ("contact", "contact_z_embedder"),
                         ("contact_atom", "contact_atom_z_embedder")):
        if f"{CONSTRAINT}.{theirs}.weight" in m.ref:
            m.linear(f"{CONSTRAINT}.{ours}", f"{CONSTRAINT}.{theirs}")
        else:
            m.put(f"{CONSTRAINT}.{ours}.weight", torch.zeros(m.expected[f"{CONSTRAINT}.{ours}.weight"]))
    r = f"{CONSTRAINT}.substructure_z_embedder"
    for k in has:
        if k.startswith(f"{r}.network.") or k == f"{r}.input_proj.weight":
            m.take(k)     # MLP variant (no biases: zero in, zero out) / projection of a zero input
    h = config.constraint_substructure_hidden
    if not h:
        return
    f, rl = f"{CONSTRAINT}.substructure", f"{r}.transformer.layers.0"
    in_w, in_b = m.take(f"{rl}.self_attn.in_proj_weight"), m.take(f"{rl}.self_attn.in_proj_bias")
    if in_w.shape == (3 * h, h) and in_b.shape == (3 * h,):
        m.put(f"{f}.layers.0.attn_v.weight", in_w[2 * h:])
        m.put(f"{f}.layers.0.attn_v.bias", in_b[2 * h:])
    for ours, theirs in (("attn_out", "self_attn.out_proj"), ("ff_in", "linear1"), ("ff_out", "linear2")):
        m.linear(f"{f}.layers.0.{ours}", f"{rl}.{theirs}")
    for norm in ("norm1", "norm2"):
        m.norm(f"{f}.layers.0.{norm}", f"{rl}.{norm}")
    m.linear(f"{f}.out", f"{r}.output_proj")


def map_protenix(ref: Mapping[str, Tensor], config: ModelConfig,
                 expected: Mapping[str, torch.Size]) -> tuple[dict[str, Tensor], _Mapper]:
    """Protenix state dict -> foldray state dict (for a `with_protenix_behaviour` config)."""
    m = _Mapper(ref, expected)
    _trunk(m, config)
    map_constraints(m, config)
    _diffusion(m, config)
    _heads(m, config)
    return m.out, m
