"""Read a reference checkpoint's architecture from the checkpoint itself.

Why: OpenFold3 and Protenix publish (and users train) variants of different depth and width;
naming a foldray config for each would fail on every checkpoint nobody listed. Block counts
come from the tensor names (`<stack>.blocks.<i>.`), channel and head sizes from the shapes,
and everything shapes cannot tell (the reference's deviations from the SI, recycling and
sampler settings) from the family's released config (`full-openfold3`, `full-protenix`).
A probe tensor that is absent leaves the family value; the importer then reports the
missing tensors, so inference never has to be complete to give a useful error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor

from foldray.io.families import FAMILY_CONFIGS
from foldray.io.weights import WeightsError
from foldray.model.config import NAMED_CONFIGS, ModelConfig

# Protenix's few-step presets (configs_model_type.py): recognised by their depths (pairformer,
# diffusion transformer, diffusion atom blocks, input-embedder atom blocks), they bring the
# recycling and sampler settings the reference runs them with.
PROTENIX_PRESETS = {
    (16, 8, 1, 3): ("protenix_mini_default_v0.5.0", dict(n_cycle=4, n_step=5, gamma_0=0.0, step_scale=1.0)),
    (8, 8, 1, 3): ("protenix_tiny_default_v0.5.0", dict(n_cycle=4, n_step=5, gamma_0=0.0, step_scale=1.0)),
}
# Reference modules foldray has no counterpart for: refused by name, not as a tensor list.
UNSUPPORTED = {
    "protenix": (("input_embedder.linear_esm.", "its ESM embedding input (an ESM-2 language model "
                  "feeds s_inputs); foldray does not compute ESM embeddings"),),
    "openfold3": (),
}


class Inferred(NamedTuple):
    config: ModelConfig
    matches: str          # the named config or published preset the sizes equal, else "custom"


class _Shapes:
    """Shape look-ups on a state dict; absent tensors give None."""

    def __init__(self, ref: Mapping[str, Tensor]) -> None:
        self.shapes = {k: tuple(v.shape) for k, v in ref.items()}

    def dim(self, name: str, axis: int = 0) -> int | None:
        shape = self.shapes.get(name)
        return shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None

    def blocks(self, prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.blocks\.(\d+)\.")
        found = {int(m.group(1)) for k in self.shapes if (m := pattern.match(k))}
        return max(found) + 1 if found else 0


def _div(a: int | None, b: int | None) -> int | None:
    return a // b if a is not None and b else None


def _set(obj, **values):
    """dataclasses.replace with the values that were found (None = keep the family's)."""
    return dataclasses.replace(obj, **{k: v for k, v in values.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class _Names:
    """Where one family keeps the tensors whose shapes carry each size."""

    c_s: str
    c_z: str
    c_s_inputs: str            # axis 1
    atom_input: str            # input embedder's atom encoder
    atom_enc: str              # diffusion module's atom encoder / decoder transformer stacks
    atom_dec: str
    atom_ref_pos: str          # under atom_input: c_atom (axis 0)
    atom_offsets: str          # under atom_input: c_atompair
    atom_stack: str            # under an atom encoder: the transformer stack
    ada_z: str                 # under a transformer block: pair-bias projection (heads)
    pairformer: str
    pair_z: str                # under a Pairformer block: pair-bias projection (heads)
    pair_block: str            # under a Pairformer block: its pair part ("" = the block)
    tri_mul: str
    tri_bias: str
    tri_q: str
    transition_a: str
    msa_c_m: str
    msa: str
    opm: str                   # under an MSA block
    pwa_bias: str
    pwa_v: str
    template_c_t: str          # axis 1
    template: str
    diffusion_c_token: str
    diffusion: str
    fourier: str
    confidence: str
    pae: str
    pde: str
    distance: str              # axis 1
    distogram: str


NAMES = {
    "openfold3": _Names(
        c_s="layer_norm_s.weight", c_z="layer_norm_z.weight", c_s_inputs="input_embedder.linear_s.weight",
        atom_input="input_embedder.atom_attn_enc", atom_enc="diffusion_module.atom_attn_enc",
        atom_dec="diffusion_module.atom_attn_dec",
        atom_ref_pos="ref_atom_feature_embedder.linear_ref_pos.weight",
        atom_offsets="ref_atom_feature_embedder.linear_ref_offset.weight",
        atom_stack="atom_transformer", ada_z="attention_pair_bias.linear_z.weight",
        pairformer="pairformer_stack", pair_z="attn_pair_bias.linear_z.weight", pair_block="pair_stack.",
        tri_mul="tri_mul_out.linear_a_p.weight", tri_bias="tri_att_start.linear_z.weight",
        tri_q="tri_att_start.mha.linear_q.weight", transition_a="pair_transition.swiglu.linear_a.weight",
        msa_c_m="msa_module_embedder.linear_m.weight", msa="msa_module",
        opm="outer_product_mean.linear_1.weight", pwa_bias="msa_att_row.linear_z.weight",
        pwa_v="msa_att_row.linear_v.weight", template_c_t="template_embedder.linear_t.weight",
        template="template_embedder.template_pair_stack",
        diffusion_c_token="diffusion_module.linear_s.weight",
        diffusion="diffusion_module.diffusion_transformer",
        fourier="diffusion_module.diffusion_conditioning.fourier_emb.w",
        confidence="aux_heads.pairformer_embedding.pairformer_stack", pae="aux_heads.pae.linear.weight",
        pde="aux_heads.pde.linear.weight", distance="aux_heads.pairformer_embedding.linear_distance.weight",
        distogram="aux_heads.distogram.linear.weight"),
    "protenix": _Names(
        c_s="layernorm_s.weight", c_z="layernorm_z_cycle.weight", c_s_inputs="linear_no_bias_sinit.weight",
        atom_input="input_embedder.atom_attention_encoder",
        atom_enc="diffusion_module.atom_attention_encoder",
        atom_dec="diffusion_module.atom_attention_decoder",
        atom_ref_pos="linear_no_bias_ref_pos.weight", atom_offsets="linear_no_bias_d.weight",
        atom_stack="atom_transformer.diffusion_transformer",
        ada_z="attention_pair_bias.linear_nobias_z.weight",
        pairformer="pairformer_stack", pair_z="attention_pair_bias.linear_nobias_z.weight", pair_block="",
        tri_mul="tri_mul_out.linear_a_p.weight", tri_bias="tri_att_start.linear.weight",
        tri_q="tri_att_start.mha.linear_q.weight", transition_a="pair_transition.linear_no_bias_a.weight",
        msa_c_m="msa_module.linear_no_bias_m.weight", msa="msa_module",
        opm="outer_product_mean_msa.linear_1.weight",
        pwa_bias="msa_stack.msa_pair_weighted_averaging.linear_no_bias_z.weight",
        pwa_v="msa_stack.msa_pair_weighted_averaging.linear_no_bias_mv.weight",
        template_c_t="template_embedder.linear_no_bias_u.weight",
        template="template_embedder.pairformer_stack",
        diffusion_c_token="diffusion_module.linear_no_bias_s.weight",
        diffusion="diffusion_module.diffusion_transformer",
        fourier="diffusion_module.diffusion_conditioning.fourier_embedding.w",
        confidence="confidence_head.pairformer_stack", pae="confidence_head.linear_no_bias_pae.weight",
        pde="confidence_head.linear_no_bias_pde.weight", distance="confidence_head.linear_no_bias_d.weight",
        distogram="distogram_head.linear.weight"),
}


def refuse_unsupported(source: str, ref: Mapping[str, Tensor]) -> None:
    """WeightsError naming a reference module foldray cannot run (before any tensor list)."""
    for prefix, what in UNSUPPORTED.get(source, ()):
        n = sum(k.startswith(prefix) for k in ref)
        if n:
            raise WeightsError(f"this {source} checkpoint has {what}: {n} tensors under "
                               f"'{prefix}*'. It cannot be imported; use a variant without it")


def _pair_sizes(s: _Shapes, n: _Names, block: str, c: int | None) -> dict[str, int | None]:
    """Triangle widths, heads and transition factor of one pair block (prefix ends with '.')."""
    n_head_tri = s.dim(block + n.tri_bias)
    return {"c_hidden_mul": s.dim(block + n.tri_mul), "n_head_tri": n_head_tri,
            "c_hidden_tri_att": _div(s.dim(block + n.tri_q), n_head_tri),
            "transition_n": _div(s.dim(block + n.transition_a), c)}


def infer_config(source: str, ref: Mapping[str, Tensor]) -> Inferred:
    """The foldray config of a reference checkpoint: the family's config (switches, recycling,
    sampler) with every size the checkpoint's names and shapes show."""
    if source not in NAMES:
        raise WeightsError(f"no config inference for {source!r} (available: {', '.join(NAMES)})")
    refuse_unsupported(source, ref)
    n, s = NAMES[source], _Shapes(ref)
    base = NAMED_CONFIGS[FAMILY_CONFIGS[source]]()
    c_s, c_z, c_s_inputs = s.dim(n.c_s), s.dim(n.c_z), s.dim(n.c_s_inputs, 1)
    c_z_ = c_z or base.c_z

    a_in, stack = n.atom_input, n.atom_stack
    n_input = s.blocks(f"{a_in}.{stack}")
    n_enc, n_dec = s.blocks(f"{n.atom_enc}.{stack}"), s.blocks(f"{n.atom_dec}.{stack}")
    if n_enc != n_dec:
        raise WeightsError(f"this {source} checkpoint's diffusion atom encoder has {n_enc} transformer "
                           f"blocks and its decoder {n_dec}; foldray needs them equal")
    atom = _set(base.atom, c_atom=s.dim(f"{a_in}.{n.atom_ref_pos}"),
                c_atompair=s.dim(f"{a_in}.{n.atom_offsets}"), n_block=n_enc or None,
                n_head=s.dim(f"{a_in}.{stack}.blocks.0.{n.ada_z}"))
    atom = dataclasses.replace(atom, n_block_input=n_input if n_input and n_input != atom.n_block else None)

    p = n.pairformer
    n_pf = s.blocks(p)
    pair_at = next((b for b in (f"{p}.blocks.0.{n.pair_block}", f"{n.msa}.blocks.0.pair_stack.",
                                f"{n.confidence}.blocks.0.{n.pair_block}") if s.dim(b + n.tri_mul)),
                   f"{p}.blocks.0.{n.pair_block}")
    pairformer = _set(base.pairformer, n_head=s.dim(f"{p}.blocks.0.{n.pair_z}")
                      or s.dim(f"{n.confidence}.blocks.0.{n.pair_z}"), **_pair_sizes(s, n, pair_at, c_z_))
    pairformer = dataclasses.replace(pairformer, n_block=n_pf)

    n_msa = s.blocks(n.msa)
    n_head_pwa = s.dim(f"{n.msa}.blocks.0.{n.pwa_bias}")
    msa = _set(base.msa, c_m=s.dim(n.msa_c_m), c_hidden_opm=s.dim(f"{n.msa}.blocks.0.{n.opm}"),
               n_head_pwa=n_head_pwa, c_hidden_pwa=_div(s.dim(f"{n.msa}.blocks.0.{n.pwa_v}"), n_head_pwa))
    msa = dataclasses.replace(msa, n_block=n_msa)

    c_t = s.dim(n.template_c_t, 1) or base.template.c_t
    t_sizes = _pair_sizes(s, n, f"{n.template}.blocks.0.", c_t)     # pair-only blocks
    template = _set(base.template, c_t=c_t, n_head_tri=t_sizes["n_head_tri"],
                    transition_n=t_sizes["transition_n"])
    mul, att = t_sizes["c_hidden_mul"], t_sizes["c_hidden_tri_att"]
    template = dataclasses.replace(   # None where AF3's rule (c_t, c_t / heads) gives the width
        template, n_block=s.blocks(n.template),
        c_hidden_mul=template.c_hidden_mul if mul is None else (None if mul == c_t else mul),
        c_hidden_tri_att=(template.c_hidden_tri_att if att is None
                          else None if att == c_t // template.n_head_tri else att))

    d = n.diffusion
    diffusion = _set(base.diffusion, c_token=s.dim(n.diffusion_c_token), n_block=s.blocks(d) or None,
                     n_head=s.dim(f"{d}.blocks.0.{n.ada_z}"), c_fourier=s.dim(n.fourier))
    confidence = _set(base.confidence, n_bins_pae=s.dim(n.pae), n_bins_pde=s.dim(n.pde),
                      n_distance_bins=s.dim(n.distance, 1), n_bins_distogram=s.dim(n.distogram))
    confidence = dataclasses.replace(confidence, n_block=s.blocks(n.confidence))
    confidence = _confidence_details(source, s, ref, confidence)

    config = _set(base, c_s=c_s, c_z=c_z, c_s_inputs=c_s_inputs)
    config = _constraint_switch(source, s, config)
    config = dataclasses.replace(config, atom=atom, pairformer=pairformer, msa=msa, template=template,
                                 diffusion=diffusion, confidence=confidence)
    return _recognise(source, config)


def _constraint_switch(source: str, s: _Shapes, config: ModelConfig) -> ModelConfig:
    """Protenix's constraint embedder: on when the checkpoint has it; the width of its
    substructure transformer (one layer, as Protenix's constraint model) from its projection."""
    prefix = "constraint_embedder."
    if source != "protenix" or not any(k.startswith(prefix) for k in s.shapes):
        return config
    sub = f"{prefix}substructure_z_embedder."
    hidden = s.dim(f"{sub}transformer.layers.0.linear1.weight", 1) or 0
    layers = {k.split(".")[4] for k in s.shapes if k.startswith(f"{sub}transformer.layers.")}
    if len(layers) > 1:
        raise WeightsError(f"this protenix checkpoint's substructure constraint transformer has "
                           f"{len(layers)} layers; foldray imports the released one-layer form only")
    return dataclasses.replace(config, constraint_embedder=True, constraint_substructure_hidden=hidden)


def _confidence_details(source: str, s: _Shapes, ref: Mapping[str, Tensor], confidence):
    """Per-atom head slots and bins; Protenix's stored distance bins."""
    if source == "openfold3":   # Linear(c_s, slots * bins): the 2-bin resolved head gives slots
        slots = _div(s.dim("aux_heads.experimentally_resolved.linear.weight"), 2)
        return _set(confidence, max_atoms_per_token=slots,
                    n_bins_plddt=_div(s.dim("aux_heads.plddt.linear.weight"), slots))
    shape = s.shapes.get("confidence_head.plddt_weight")
    confidence = _set(confidence, max_atoms_per_token=shape[0] if shape else None,
                      n_bins_plddt=shape[2] if shape and len(shape) == 3 else None)
    lower = ref.get("confidence_head.lower_bins")
    if lower is not None and lower.dim() == 1 and lower.numel() > 1 and lower.device.type != "meta":
        confidence = dataclasses.replace(confidence, distance_bins_min=round(float(lower[0]), 6),
                                         distance_bins_max=round(float(lower[-1]), 6),
                                         n_distance_bins=lower.numel())
    return confidence


def _recognise(source: str, config: ModelConfig) -> Inferred:
    """Name what the sizes match: a foldray named config, or a Protenix few-step preset (whose
    recycling and sampler settings then apply)."""
    if source == "protenix":
        depths = (config.pairformer.n_block, config.diffusion.n_block, config.atom.n_block,
                  config.atom.input_embedder().n_block)
        preset = PROTENIX_PRESETS.get(depths)
        full = NAMED_CONFIGS["full-protenix"]()
        same_widths = (config.c_s, config.c_z, config.diffusion.c_token) == (
            full.c_s, full.c_z, full.diffusion.c_token)
        if preset and same_widths:
            name, settings = preset
            sampler = {k: v for k, v in settings.items() if k != "n_cycle"}
            return Inferred(dataclasses.replace(config, n_cycle=settings["n_cycle"],
                                                diffusion=dataclasses.replace(config.diffusion, **sampler)),
                            f"{name} sizes")
    for name, make in NAMED_CONFIGS.items():
        if make() == config:
            return Inferred(config, name)
    return Inferred(config, "custom")


def describe(config: ModelConfig) -> str:
    """The sizes of a config in one line (for summaries and errors)."""
    a, p, m, t, d, c = (config.atom, config.pairformer, config.msa, config.template, config.diffusion,
                        config.confidence)
    atom_blocks = (f"{a.n_block}" if a.n_block_input is None
                   else f"{a.input_embedder().n_block} input / {a.n_block} diffusion")
    template = (f"{t.n_block} blocks c_t {t.c_t} tri {t.c_hidden_mul or t.c_t}/"
                f"{t.n_head_tri}x{t.c_hidden_tri_att or t.c_t // t.n_head_tri}")
    return (f"c_s {config.c_s}, c_z {config.c_z}, c_s_inputs {config.c_s_inputs}; "
            f"atom c {a.c_atom}/{a.c_atompair}, {atom_blocks} blocks, {a.n_head} heads; "
            f"pairformer {p.n_block} blocks, {p.n_head} heads, tri {p.c_hidden_mul}/"
            f"{p.n_head_tri}x{p.c_hidden_tri_att}, transition x{p.transition_n}; "
            f"msa {m.n_block} blocks c_m {m.c_m}; template {template}; "
            f"diffusion {d.n_block} blocks c_token {d.c_token} {d.n_head} heads; "
            f"confidence {c.n_block} blocks; {config.n_cycle} cycles, {d.n_step} steps")
