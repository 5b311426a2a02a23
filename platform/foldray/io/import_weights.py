"""Import reference checkpoints (OpenFold3, Protenix) into foldray's `AlphaFold3`.

Why: training AF3 costs hundreds of GPU-days; OpenFold3 and Protenix publish Apache-2.0
weights. A checkpoint is read safely (safetensors, or a torch zip file through
`torch.load(weights_only=True)`; legacy pickles are refused), every reference tensor is
mapped by hand onto foldray's parameter names (renames, fused projections, split
per-feature linears concatenated, transposed head layouts), and the result must cover
foldray's state dict exactly: anything left over on either side is an `ImportMismatch`
(counts and the first names; all of them in `details()`). The foldray config is read from
the checkpoint itself (`foldray.io.infer_config`: depths from the names, widths from the
shapes) unless one is named. Where the reference deviates from the SI, the family's config
(`full-openfold3`, `full-protenix`) switches on the model flags that reproduce it;
benchmarks/equivalence proves the pair numerically.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Mapping

import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor

from foldray.features.config import FeaturizationConfig
from foldray.io import storage
from foldray.io.families import SOURCES
from foldray.io.infer_config import FAMILY_CONFIGS, describe, infer_config, refuse_unsupported
from foldray.io.weights import WeightsError, save_weights
from foldray.model.config import NAMED_CONFIGS, ModelConfig

# The featurization each family's weights were trained on (foldray.features.config,
# docs/parity.md): written into every imported checkpoint, whatever config was chosen.
FAMILY_FEATURIZATION: dict[str, Callable[[], FeaturizationConfig]] = {
    "openfold3": FeaturizationConfig.openfold3, "protenix": FeaturizationConfig.protenix}
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's (default since 1.6) zip container
# Wrappers training frameworks put around a model's state dict, most specific first.
WRAPPER_KEYS = ("ema", "params", "state_dict", "model", "module")
SHOWN_NAMES = 10       # tensor names an import error shows; ImportMismatch.details() has all


# --------------------------------------------------------------------------------- reading

def read_reference_checkpoint(url: str) -> dict[str, Tensor]:
    """A reference checkpoint's tensors by name. Accepts safetensors and torch zip
    checkpoints (loaded with weights_only=True: plain tensors and containers, no code);
    anything else, including pre-1.6 pickle files, is refused."""
    data = storage.read_bytes(url)
    if data[:4] == ZIP_MAGIC:
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:   # torch raises UnpicklingError for disallowed globals
            raise WeightsError(f"{url}: torch.load(weights_only=True) refused this checkpoint "
                               f"({type(err).__name__}: {str(err).splitlines()[0]}); only plain "
                               "tensor state dicts are imported") from None
        return _state_dict_in(obj, url)
    if _looks_like_safetensors(data):
        return dict(load_safetensors(data))
    raise WeightsError(f"{url}: not a safetensors file or a torch zip checkpoint; pickle files "
                       "are refused (they can run code). Re-save it with "
                       "torch.save(state_dict) or safetensors")


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 9:
        return False
    n = int.from_bytes(data[:8], "little")
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def _state_dict_in(obj: object, url: str) -> dict[str, Tensor]:
    """The tensor dict inside a loaded checkpoint (unwrapping ema/state_dict/model keys and
    a common 'model.' prefix, as Lightning writes them)."""
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            tensors = dict(obj)
            for prefix in ("model.", "module."):
                if all(k.startswith(prefix) for k in tensors):
                    tensors = {k[len(prefix):]: v for k, v in tensors.items()}
            return tensors
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise WeightsError(f"{url}: no state dict of tensors found (looked under "
                       f"{', '.join(WRAPPER_KEYS)})")


# --------------------------------------------------------------------------------- mapping

class _Mapper:
    """Collects foldray tensors from reference tensors and remembers what was used."""

    def __init__(self, ref: Mapping[str, Tensor], expected: Mapping[str, torch.Size]) -> None:
        self.ref, self.expected = ref, expected
        self.used: set[str] = set()
        self.missing_ref: list[str] = []
        self.out: dict[str, Tensor] = {}

    def take(self, key: str) -> Tensor:
        if key not in self.ref:
            self.missing_ref.append(key)
            return torch.zeros(0)
        self.used.add(key)
        return self.ref[key].detach().to("cpu", torch.float32)

    def put(self, key: str, value: Tensor) -> None:
        self.out[key] = value.contiguous()

    def linear(self, f: str, r: str) -> None:
        """Weight, and bias when foldray's layer has one (the reference must have it too)."""
        self.put(f"{f}.weight", self.take(f"{r}.weight"))
        if f"{f}.bias" in self.expected:
            self.put(f"{f}.bias", self.take(f"{r}.bias"))

    def norm(self, f: str, r: str, *, ref_has_bias: bool = True) -> None:
        """LayerNorm; `ref_has_bias=False` where the reference norm has no offset by design
        and foldray's has one (then it is zero)."""
        weight = self.take(f"{r}.weight")
        self.put(f"{f}.weight", weight)
        if f"{f}.bias" in self.expected:
            self.put(f"{f}.bias", self.take(f"{r}.bias") if ref_has_bias else torch.zeros_like(weight))

    def cat(self, f: str, parts: list[str], dim: int) -> None:
        self.put(f, torch.cat([self.take(p) for p in parts], dim=dim))


def _of3_transition(m: _Mapper, f: str, r: str) -> None:
    m.norm(f"{f}.norm", f"{r}.layer_norm")
    m.linear(f"{f}.a", f"{r}.swiglu.linear_a")
    m.linear(f"{f}.b", f"{r}.swiglu.linear_b")
    m.linear(f"{f}.out", f"{r}.linear_out")


def _of3_adaln(m: _Mapper, f: str, r: str) -> None:
    m.put(f"{f}.norm_s.weight", m.take(f"{r}.layer_norm_s.weight"))
    m.linear(f"{f}.scale", f"{r}.linear_g")
    m.linear(f"{f}.shift", f"{r}.linear_s")


def gated_attention(m: _Mapper, f: str, r: str) -> None:
    """Gated multi-head attention: OpenFold3 and Protenix name its projections alike."""
    for ours, theirs in (("q", "linear_q"), ("k", "linear_k"), ("v", "linear_v"),
                         ("gate", "linear_g"), ("out", "linear_o")):
        m.linear(f"{f}.{ours}", f"{r}.{theirs}")


def _of3_pair_block(m: _Mapper, f: str, r: str) -> None:
    """Triangle updates + pair transition (Algorithm 17 lines 2-6)."""
    for side in ("out", "in"):
        ff, rr = f"{f}.tri_mul_{side}", f"{r}.tri_mul_{side}"
        m.norm(f"{ff}.norm_in", f"{rr}.layer_norm_in")
        # OpenFold3's incoming update already sums a_ki b_kj (no swap, unlike AF3's code)
        m.cat(f"{ff}.ab_gate.weight", [f"{rr}.linear_a_g.weight", f"{rr}.linear_b_g.weight"], 0)
        m.cat(f"{ff}.ab.weight", [f"{rr}.linear_a_p.weight", f"{rr}.linear_b_p.weight"], 0)
        m.linear(f"{ff}.gate", f"{rr}.linear_g")
        m.norm(f"{ff}.norm_out", f"{rr}.layer_norm_out")
        m.linear(f"{ff}.out", f"{rr}.linear_z")
    for node in ("start", "end"):
        ff, rr = f"{f}.tri_att_{node}", f"{r}.tri_att_{node}"
        m.norm(f"{ff}.norm", f"{rr}.layer_norm")
        m.linear(f"{ff}.bias", f"{rr}.linear_z")
        gated_attention(m, ff, f"{rr}.mha")
    _of3_transition(m, f"{f}.pair_transition", f"{r}.pair_transition")


def _of3_pairformer(m: _Mapper, f: str, r: str, n_block: int) -> None:
    for i in range(n_block):
        fb, rb = f"{f}.blocks.{i}", f"{r}.blocks.{i}"
        _of3_pair_block(m, fb, f"{rb}.pair_stack")
        m.norm(f"{fb}.attention.norm_a", f"{rb}.attn_pair_bias.layer_norm_a")
        m.norm(f"{fb}.attention.norm_z", f"{rb}.attn_pair_bias.layer_norm_z")
        m.linear(f"{fb}.attention.z_bias", f"{rb}.attn_pair_bias.linear_z")
        gated_attention(m, f"{fb}.attention", f"{rb}.attn_pair_bias.mha")
        _of3_transition(m, f"{fb}.single_transition", f"{rb}.single_transition")


def _of3_diffusion_transformer(m: _Mapper, f: str, r: str, n_block: int, local: bool) -> None:
    """Algorithm 23 (token level) or the atom transformer's (local: separate key AdaLN).
    OpenFold3 normalises z once per transformer (offset-free); foldray per block."""
    z_norm = m.take(f"{r}.layer_norm_z.weight")
    for i in range(n_block):
        fa, ra = f"{f}.attention.{i}", f"{r}.blocks.{i}.attention_pair_bias"
        if local:
            _of3_adaln(m, f"{fa}.ada_ln", f"{ra}.layer_norm_a_q")
            _of3_adaln(m, f"{fa}.ada_ln_k", f"{ra}.layer_norm_a_k")
        else:
            _of3_adaln(m, f"{fa}.ada_ln", f"{ra}.layer_norm_a")
        m.put(f"{fa}.norm_z.weight", z_norm.clone())
        m.put(f"{fa}.norm_z.bias", torch.zeros_like(z_norm))
        m.linear(f"{fa}.z_bias", f"{ra}.linear_z")
        gated_attention(m, fa, f"{ra}.mha")
        m.linear(f"{fa}.s_gate", f"{ra}.linear_ada_out")
        ft, rt = f"{f}.transition.{i}", f"{r}.blocks.{i}.conditioned_transition"
        _of3_adaln(m, f"{ft}.ada_ln", f"{rt}.layer_norm")
        m.linear(f"{ft}.a", f"{rt}.swiglu.linear_a")
        m.linear(f"{ft}.b", f"{rt}.swiglu.linear_b")
        m.linear(f"{ft}.s_gate", f"{rt}.linear_g")
        m.linear(f"{ft}.out", f"{rt}.linear_out")


def _of3_element_columns(weight: Tensor, n_elements: int = 128) -> Tensor:
    """OpenFold3 one-hot: column Z - 1 for Z = 1..118, column 118 unknown. foldray: column Z
    (0 = unknown), 128 columns; elements past 118 have no OpenFold3 weight (zero)."""
    out = weight.new_zeros(weight.shape[0], n_elements)
    out[:, 1:119] = weight[:, :118]
    out[:, 0] = weight[:, 118]
    return out


def _of3_atom_encoder(m: _Mapper, f: str, r: str, config: ModelConfig, trunk: bool) -> None:
    e = f"{r}.ref_atom_feature_embedder"
    element = _of3_element_columns(m.take(f"{e}.linear_ref_element.weight"))
    m.put(f"{f}.embed_ref.weight", torch.cat([
        m.take(f"{e}.linear_ref_pos.weight"), m.take(f"{e}.linear_ref_charge.weight"),
        m.take(f"{e}.linear_ref_mask.weight"), element,
        m.take(f"{e}.linear_ref_atom_chars.weight")], dim=1))
    m.linear(f"{f}.embed_offsets", f"{e}.linear_ref_offset")
    m.linear(f"{f}.embed_distances", f"{e}.linear_inv_sq_dists")
    m.linear(f"{f}.embed_valid", f"{e}.linear_valid_mask")
    if trunk:
        n = f"{r}.noisy_position_embedder"
        m.put(f"{f}.norm_s.weight", m.take(f"{n}.layer_norm_s.weight"))
        m.linear(f"{f}.embed_s", f"{n}.linear_s")
        m.put(f"{f}.norm_z.weight", m.take(f"{n}.layer_norm_z.weight"))
        m.linear(f"{f}.embed_z", f"{n}.linear_z")
        m.linear(f"{f}.embed_r", f"{n}.linear_r")
    m.linear(f"{f}.single_to_pair_row", f"{r}.linear_l")
    m.linear(f"{f}.single_to_pair_col", f"{r}.linear_m")
    for i in (1, 3, 5):
        m.linear(f"{f}.pair_mlp.{i}", f"{r}.pair_mlp.{i}")
    n_block = config.atom.n_block if trunk else config.atom.input_embedder().n_block
    _of3_diffusion_transformer(m, f"{f}.transformer.transformer", f"{r}.atom_transformer",
                               n_block, local=True)
    m.linear(f"{f}.to_token", f"{r}.linear_q.0")


def _of3_per_atom_head(m: _Mapper, f_norm: str, f_weight: str, r: str, n_slot: int) -> None:
    """OpenFold3: Linear(c_s, n_slot * bins) read as [n_slot, bins]; foldray [n_slot, c_s, bins]."""
    m.norm(f_norm, f"{r}.layer_norm")
    w = m.take(f"{r}.linear.weight")                                    # [n_slot * bins, c_s]
    m.put(f_weight, w.unflatten(0, (n_slot, -1)).transpose(1, 2))


def map_openfold3(ref: Mapping[str, Tensor], config: ModelConfig,
                  expected: Mapping[str, torch.Size]) -> tuple[dict[str, Tensor], _Mapper]:
    """OpenFold3 state dict -> foldray state dict (for a `with_openfold3_behaviour` config)."""
    m = _Mapper(ref, expected)
    _of3_atom_encoder(m, "input_embedder.encoder", "input_embedder.atom_attn_enc", config, False)
    for ours, theirs in (("s_init", "linear_s"), ("z_init_i", "linear_z_i"),
                         ("z_init_j", "linear_z_j"), ("relative_position.linear", "linear_relpos"),
                         ("token_bonds", "linear_token_bonds")):
        m.linear(ours, f"input_embedder.{theirs}")
    m.norm("z_recycle_norm", "layer_norm_z")
    m.linear("z_recycle", "linear_z")
    m.norm("s_recycle_norm", "layer_norm_s")
    m.linear("s_recycle", "linear_s")

    t, te = "template_embedder", "template_embedder.template_pair_embedder"
    m.norm(f"{t}.norm_z", f"{te}.layer_norm_z")
    m.linear(f"{t}.embed_z", f"{te}.linear_z")
    m.cat(f"{t}.embed_a.weight", [f"{te}.{name}.weight" for name in (     # TEMPLATE_PAIR_LAYOUT
        "dgram_linear", "pseudo_beta_mask_linear", "aatype_linear_2", "aatype_linear_1",
        "x_linear", "y_linear", "z_linear", "backbone_mask_linear")], dim=1)
    for i in range(config.template.n_block):
        _of3_pair_block(m, f"{t}.pairformer.blocks.{i}",
                        f"template_embedder.template_pair_stack.blocks.{i}")
    m.norm(f"{t}.norm_v", "template_embedder.template_pair_stack.layer_norm")
    m.linear(f"{t}.out", "template_embedder.linear_t")

    m.linear("msa_module.embed_msa", "msa_module_embedder.linear_m")
    m.linear("msa_module.embed_s", "msa_module_embedder.linear_s_input")
    for i in range(config.msa.n_block):
        f, r = f"msa_module.blocks.{i}", f"msa_module.blocks.{i}"
        m.norm(f"{f}.opm.norm", f"{r}.outer_product_mean.layer_norm")
        m.linear(f"{f}.opm.a", f"{r}.outer_product_mean.linear_1")
        m.linear(f"{f}.opm.b", f"{r}.outer_product_mean.linear_2")
        m.linear(f"{f}.opm.out", f"{r}.outer_product_mean.linear_out")
        if i < config.msa.n_block - 1:     # the last block has no MSA stack in either model
            p, rp = f"{f}.pair_weighted_averaging", f"{r}.msa_att_row"
            m.norm(f"{p}.norm_m", f"{rp}.layer_norm_m")
            m.norm(f"{p}.norm_z", f"{rp}.layer_norm_z")
            for ours, theirs in (("bias", "linear_z"), ("v", "linear_v"), ("gate", "linear_g"),
                                 ("out", "linear_o")):
                m.linear(f"{p}.{ours}", f"{rp}.{theirs}")
            _of3_transition(m, f"{f}.msa_transition", f"{r}.msa_transition")
        _of3_pair_block(m, f"{f}.pair_stack", f"{r}.pair_stack")

    _of3_pairformer(m, "pairformer", "pairformer_stack", config.pairformer.n_block)

    d, rd = "diffusion_module", "diffusion_module"
    c, rc = f"{d}.conditioning", f"{rd}.diffusion_conditioning"
    for ours, theirs in (("norm_z", "layer_norm_z"), ("norm_s", "layer_norm_s"),
                         ("norm_n", "layer_norm_n")):
        m.put(f"{c}.{ours}.weight", m.take(f"{rc}.{theirs}.weight"))
    for ours, theirs in (("proj_z", "linear_z"), ("proj_s", "linear_s"), ("proj_n", "linear_n")):
        m.linear(f"{c}.{ours}", f"{rc}.{theirs}")
    for k in range(2):
        _of3_transition(m, f"{c}.transition_z.{k}", f"{rc}.transition_z.{k}")
        _of3_transition(m, f"{c}.transition_s.{k}", f"{rc}.transition_s.{k}")
    m.put(f"{c}.fourier.w", m.take(f"{rc}.fourier_emb.w"))
    m.put(f"{c}.fourier.b", m.take(f"{rc}.fourier_emb.b"))
    _of3_atom_encoder(m, f"{d}.encoder", f"{rd}.atom_attn_enc", config, True)
    m.put(f"{d}.norm_s.weight", m.take(f"{rd}.layer_norm_s.weight"))
    m.linear(f"{d}.proj_s", f"{rd}.linear_s")
    _of3_diffusion_transformer(m, f"{d}.transformer", f"{rd}.diffusion_transformer",
                               config.diffusion.n_block, local=False)
    m.put(f"{d}.norm_a.weight", m.take(f"{rd}.layer_norm_a.weight"))
    m.linear(f"{d}.decoder.embed_a", f"{rd}.atom_attn_dec.linear_q_in")
    _of3_diffusion_transformer(m, f"{d}.decoder.transformer.transformer",
                               f"{rd}.atom_attn_dec.atom_transformer", config.atom.n_block,
                               local=True)
    m.put(f"{d}.decoder.norm.weight", m.take(f"{rd}.atom_attn_dec.layer_norm.weight"))
    m.linear(f"{d}.decoder.out", f"{rd}.atom_attn_dec.linear_q_out")

    h, pe = "confidence_head", "aux_heads.pairformer_embedding"
    m.linear(f"{h}.s_i", f"{pe}.linear_i")
    m.linear(f"{h}.s_j", f"{pe}.linear_j")
    m.linear(f"{h}.distance", f"{pe}.linear_distance")
    _of3_pairformer(m, f"{h}.pairformer", f"{pe}.pairformer_stack", config.confidence.n_block)
    for name in ("pae", "pde"):
        m.norm(f"{h}.{name}_norm", f"aux_heads.{name}.layer_norm")
        m.linear(f"{h}.{name}", f"aux_heads.{name}.linear")
    n_slot = config.confidence.max_atoms_per_token
    _of3_per_atom_head(m, f"{h}.plddt_norm", f"{h}.plddt_weight", "aux_heads.plddt", n_slot)
    _of3_per_atom_head(m, f"{h}.resolved_norm", f"{h}.resolved_weight",
                       "aux_heads.experimentally_resolved", n_slot)
    m.linear("distogram_head.linear", "aux_heads.distogram.linear")
    _check_openfold3_extras(m)
    return m.out, m


def _check_openfold3_extras(m: _Mapper) -> None:
    """Tensors OpenFold3 saves that carry no weights of their own: its sampler holds the
    diffusion module a second time (`sample_diffusion.diffusion_module.*`, must be equal)
    and `version_tensor` is metadata."""
    for key, value in m.ref.items():
        if key == "version_tensor":
            m.used.add(key)
        elif key.startswith("sample_diffusion.diffusion_module."):
            twin = key[len("sample_diffusion."):]
            if twin in m.ref and torch.equal(m.ref[twin], value):
                m.used.add(key)


def _map_protenix(ref: Mapping[str, Tensor], config: ModelConfig,
                  expected: Mapping[str, torch.Size]) -> tuple[dict[str, Tensor], _Mapper]:
    from foldray.io.import_protenix import map_protenix  # it imports this module's helpers

    return map_protenix(ref, config, expected)


MAPPERS: dict[str, Callable[..., tuple[dict[str, Tensor], _Mapper]]] = {
    "openfold3": map_openfold3, "protenix": _map_protenix,
}
DEFAULT_CONFIGS = FAMILY_CONFIGS    # the family's switches; sizes come from the checkpoint


# --------------------------------------------------------------------------------- checking

def expected_state(config: ModelConfig) -> dict[str, torch.Size]:
    """foldray's parameter and buffer shapes for `config` (built on the meta device: free)."""
    from foldray.model.alphafold3 import AlphaFold3

    with torch.device("meta"):
        model = AlphaFold3(config)
    return {k: v.shape for k, v in model.state_dict().items()}


class ImportMismatch(WeightsError):
    """A checkpoint whose tensors do not fit the foldray model: the message gives the counts,
    the first SHOWN_NAMES names and the sizes used; `details()` lists every name."""

    def __init__(self, source: str, sizes: str, missing: list[str], unexpected: list[str],
                 misshaped: list[str]) -> None:
        self.source, self.sizes = source, sizes
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        super().__init__(self._render(SHOWN_NAMES))

    def _groups(self) -> list[tuple[str, list[str]]]:
        return [(f"missing in the {self.source} checkpoint", self.missing),
                (f"unexpected in the {self.source} checkpoint (not mapped)", self.unexpected),
                ("misshaped (checkpoint != foldray)", self.misshaped)]

    def _render(self, limit: int | None) -> str:
        lines = [f"cannot import: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.misshaped)} misshaped tensors for the foldray model of sizes: {self.sizes}"]
        left = limit
        for label, names in self._groups():
            shown = names if left is None else names[:left]
            if shown:
                lines.append(f"  {label}: {', '.join(shown)}")
            if left is not None:
                left -= len(shown)
        hidden = sum(len(names) for _, names in self._groups()) - (limit or 0)
        if limit is not None and hidden > 0:
            lines.append(f"  ... and {hidden} more (--verbose lists them all)")
        return "\n".join(lines)

    def details(self) -> str:
        """Every mismatched tensor, by kind."""
        return self._render(None)


def convert(source: str, ref: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Map a reference state dict onto foldray's for `config`; every tensor on both sides
    must be accounted for, else ImportMismatch (foldray-side leftovers, a mapping or flag
    problem, are listed with a "foldray:" prefix)."""
    if source not in MAPPERS:
        raise WeightsError(f"importing from {source!r} is not implemented yet (available: "
                           f"{', '.join(MAPPERS)})")
    refuse_unsupported(source, ref)
    expected = expected_state(config)
    out, m = MAPPERS[source](ref, config, expected)
    missing = sorted(set(m.missing_ref)) + [f"foldray:{k}" for k in sorted(set(expected) - set(out))]
    unexpected = sorted(set(ref) - m.used) + [f"foldray:{k}" for k in sorted(set(out) - set(expected))]
    misshaped = [f"{k} {tuple(out[k].shape)} != {tuple(expected[k])}"
                 for k in sorted(set(out) & set(expected)) if out[k].shape != expected[k]]
    if missing or unexpected or misshaped:
        raise ImportMismatch(source, describe(config), missing, unexpected, misshaped)
    return out


def resolve_config(source: str, config: str | ModelConfig | None,
                   ref: Mapping[str, Tensor]) -> tuple[ModelConfig, str]:
    """The model config to import into and how it was chosen: given, named, or (None) read
    from the checkpoint's names and shapes."""
    if isinstance(config, ModelConfig):
        return config, "custom"
    if config is None:
        inferred = infer_config(source, ref)
        return inferred.config, f"inferred ({inferred.matches})"
    return NAMED_CONFIGS[config](), config


def import_checkpoint(source: str, src_url: str, dst_url: str,
                      config: str | ModelConfig | None = None) -> dict[str, object]:
    """Read `src_url`, convert, write a foldray checkpoint (weights + config) to `dst_url`.
    `config` None reads the architecture from the checkpoint (the usual case)."""
    if source not in SOURCES:
        raise WeightsError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
    if source not in MAPPERS:
        raise WeightsError(f"importing from {source!r} is not implemented yet (available: "
                           f"{', '.join(MAPPERS)})")
    if isinstance(config, str) and config not in NAMED_CONFIGS:
        raise WeightsError(f"unknown model config {config!r} (choose from {', '.join(NAMED_CONFIGS)})")
    ref = read_reference_checkpoint(src_url)
    model_config, how = resolve_config(source, config, ref)
    model_config = dataclasses.replace(model_config, featurization=FAMILY_FEATURIZATION[source]())
    state = convert(source, ref, model_config)
    del ref
    save_weights(dst_url, state, model_config,
                 extra_metadata={"foldray_imported_from": json.dumps(
                     {"source": source, "url": src_url, "config": how})})
    return {"source": source, "config": how, "sizes": describe(model_config),
            "featurization": model_config.featurization.to_dict(), "tensors": len(state),
            "parameters": int(sum(v.numel() for v in state.values())), "out": dst_url}
