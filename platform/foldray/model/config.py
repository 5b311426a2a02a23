"""Model and runtime configuration (SI section 3 sizes; training values from section 5).

`ModelConfig` is what the model *is* (saved beside the weights); `RuntimeConfig` is how to
run it (kernels, chunking, precision), so one checkpoint runs on a laptop and on an H100.
Frozen, keyword-only dataclasses: change with `dataclasses.replace`, never by mutation.
Defaults are the published model; `ModelConfig.full()` returns it, `ModelConfig.tiny()`
keeps every code path at CPU size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from foldray.config_loader import ConfigError, apply_overrides, load_dataclass, merge, read_mapping, to_plain
from foldray.features.config import FeaturizationConfig


@dataclass(frozen=True, kw_only=True)
class AtomAttentionConfig:
    """Algorithms 5-7: sequence-local atom transformer widths and windows."""

    c_atom: int = 128
    c_atompair: int = 16
    n_block: int = 3
    n_head: int = 4
    n_queries: int = 32    # atoms per query block
    n_keys: int = 128      # atoms each block attends to
    # Reference-implementation switches (default off = foldray's SI-faithful behaviour):
    # shift edge key windows inside [0, N_atom) instead of masking their overhang
    # (AlphaFold 3's released code, OpenFold3); equal to the reference for unpadded atoms.
    shifted_windows: bool = False
    # keys get their own AdaLN in the atom transformer (OpenFold3's CrossAttentionPairBias)
    separate_key_norm: bool = False
    # c_l = Linear(f) * ref_mask (AF3 code, Protenix); OpenFold3 does not multiply
    mask_ref_embedding: bool = True
    # Protenix (with separate_key_norm): the keys' AdaLN reads the queries' AdaLN output
    # (its AttentionPairBias cross-attention mode normalises a twice for keys/values)
    chained_key_norm: bool = False
    # blocks of the input embedder's atom transformer when they differ from the diffusion
    # module's encoder/decoder (Protenix mini/tiny: 3 there, 1 here); None = n_block
    n_block_input: int | None = None

    def input_embedder(self) -> AtomAttentionConfig:
        """This config as the input embedder's encoder builds it (its own block count)."""
        if self.n_block_input is None:
            return self
        return dataclasses.replace(self, n_block=self.n_block_input, n_block_input=None)


@dataclass(frozen=True, kw_only=True)
class PairformerConfig:
    """Algorithm 17 (and 12-15, 24 inside it)."""

    n_block: int = 48
    n_head: int = 16            # single attention with pair bias (Algorithm 24)
    # ending-node triangle attention biased by b_ik (OpenFold3) instead of the SI's b_ki
    tri_att_end_bias_ik: bool = False
    c_hidden_mul: int = 128     # triangle multiplication (Algorithms 12-13)
    c_hidden_tri_att: int = 32  # triangle attention (Algorithms 14-15)
    n_head_tri: int = 4
    transition_n: int = 4       # Algorithm 11 expansion
    dropout: float = 0.25       # pair updates, row/column-wise


@dataclass(frozen=True, kw_only=True)
class MsaModuleConfig:
    """Algorithms 8-10 (the MSA module; genetic-search settings are foldray.msa.config)."""

    n_block: int = 4
    c_m: int = 64
    c_hidden_opm: int = 32      # outer product mean (Algorithm 9)
    n_head_pwa: int = 8         # pair-weighted averaging (Algorithm 10)
    c_hidden_pwa: int = 8
    msa_dropout: float = 0.15
    pair_dropout: float = 0.25


@dataclass(frozen=True, kw_only=True)
class TemplateConfig:
    """Algorithm 16: a small Pairformer over each template's pair features."""

    n_block: int = 2
    c_t: int = 64
    # The template Pairformer as in AF3's released code: triangle multiplication width c_t,
    # triangle attention n_head_tri heads of c_t // n_head_tri, pair transition n=2.
    n_head_tri: int = 4
    transition_n: int = 2
    dropout: float = 0.25       # not in Algorithm 16; the Pairformer's rate (as Protenix)
    # 0: average over real templates only (no template -> no update). N > 0: as OpenFold3,
    # whose pipeline pads to N template slots and averages over all of them, so absent
    # templates are empty slots that still run the stack on z (a nonzero update).
    padded_slots: int = 0
    # Template restypes of the padded empty slots (None: the slot has no restype, OpenFold3).
    # Protenix's pipeline gives a job without templates one all-gap template (31) and pads the
    # rest of its 4 slots with restype 0; the template stack runs on each of them.
    empty_slot_restype_first: int | None = None
    empty_slot_restype_pad: int | None = None
    # Template stack triangle widths; None derives them from c_t (AF3). Protenix keeps the
    # Pairformer's 128 / 32 per head for its 64-wide template stack.
    c_hidden_mul: int | None = None
    c_hidden_tri_att: int | None = None


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Algorithms 18-26: the denoiser and the sampler's noise schedule (SI 3.7)."""

    c_token: int = 768
    n_block: int = 24
    n_head: int = 16
    c_fourier: int = 256
    sigma_data: float = 16.0
    # sampler (Algorithm 18) and the EDM schedule
    n_step: int = 200
    s_max: float = 160.0
    s_min: float = 4e-4
    rho: float = 7.0            # the SI's p
    gamma_0: float = 0.8
    gamma_min: float = 1.0
    noise_scale: float = 1.003
    step_scale: float = 1.5
    # training (SI 3.7.1): noise level ~ sigma_data * exp(N(-1.2, 1.5^2))
    train_p_mean: float = -1.2
    train_p_std: float = 1.5
    augment_translation: float = 1.0   # Algorithm 19 s_trans (Å)
    # Algorithm 21 line 1 concatenates the *raw* one-hot relative-position features
    # (OpenFold3) instead of RelativePositionEncoding's projection to c_z (SI, AF3, Protenix)
    raw_relpos: bool = False
    # the sampler's last noise level c_T is 0 instead of sigma_data * s_min (Protenix)
    final_level_zero: bool = False


@dataclass(frozen=True, kw_only=True)
class ConfidenceConfig:
    """Algorithm 31 and the distogram head (SI 4.3, 4.4).

    Distance embedding bins follow AF3's released code (DistogramFeaturesConfig) and
    Protenix, not the SI's 3 3/8 .. 21 3/8 Å: 39 bins whose lower edges run 3.25 .. 50.75 Å
    (the last bin is open-ended; distances under 3.25 Å embed as all zeros).
    """

    n_block: int = 4
    n_bins_plddt: int = 50      # 0..1, 0.02 wide
    n_bins_pae: int = 64        # 0..32 Å, 0.5 Å bins, the last one open-ended
    n_bins_pde: int = 64        # 0..32 Å
    max_error_bin: float = 32.0
    distance_bins_min: float = 3.25    # lower edge of the first distance bin (Algorithm 31 line 3)
    distance_bins_max: float = 50.75   # lower edge of the last (open) distance bin
    n_distance_bins: int = 39
    max_atoms_per_token: int = 24      # per-atom pLDDT / resolved weights (AF3 dense atom layout)
    pairformer_dropout: float = 0.0    # Protenix trains the confidence Pairformer without dropout
    n_bins_distogram: int = 64  # 2..22 Å: 63 breaks 2.3125 .. 21.6875
    # Protenix switches: LayerNorm(clamp(s_trunk, +-512)) before the head's Pairformer; an
    # extra LinearNoBias of the raw distance beside its one-hot; PDE = W LN(z + z^T) instead
    # of W LN(z) symmetrised; a bias in the distogram projection.
    norm_s_trunk: bool = False
    raw_distance: bool = False
    pde_symmetric_input: bool = False
    distogram_bias: bool = False
    # Protenix: per-atom pLDDT / resolved weights are indexed by the atom's place in its CCD
    # component (atom_to_tokatom_idx), which counts a standard nucleotide's leaving OP3: every
    # atom of a DNA/RNA token sits this many slots after its position in the token
    nucleotide_slot_shift: int = 0
    distogram_min: float = 2.0
    distogram_max: float = 22.0


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """SI 4: loss weights of the initial training stage."""

    alpha_diffusion: float = 4.0
    alpha_distogram: float = 3e-2
    alpha_confidence: float = 1e-4
    alpha_pae: float = 0.0      # turned on in fine-tuning stage 3 (Table 6)
    alpha_bond: float = 0.0     # 1.0 when fine-tuning
    alpha_smooth_lddt: float = 1.0
    weight_dna: float = 5.0     # SI 4.2: nucleotide / ligand up-weighting in the MSE
    weight_rna: float = 5.0
    weight_ligand: float = 10.0
    diffusion_batch: int = 48   # augmented noised copies per trunk pass (SI 3.7.1)
    mini_rollout_steps: int = 20
    # SI 4.3: confidence losses only for structures resolved between 0.1 and 4 Å
    confidence_resolution: tuple[float, float] = (0.1, 4.0)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The whole network. Widths shared across modules live here once."""

    c_s: int = 384
    c_z: int = 128
    c_s_inputs: int = 449       # Algorithm 2: c_token 384 + restype 32 + profile 32 + deletion_mean 1
    n_cycle: int = 4
    r_max: int = 32             # Algorithm 3 relative position clip
    s_max: int = 2              # Algorithm 3 relative chain clip
    # Algorithm 1 line 3 projects s_init (c_s) instead of s_inputs into z_init (Protenix)
    z_init_from_s_init: bool = False
    atom: AtomAttentionConfig = field(default_factory=AtomAttentionConfig)
    pairformer: PairformerConfig = field(default_factory=PairformerConfig)
    msa: MsaModuleConfig = field(default_factory=MsaModuleConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # Protenix's constraint embedder: restraints (pocket / contact) as a z_init update
    # (model/constraint_embedder.py, docs/restraints.md); off except for imported constraint
    # checkpoints, which also give the width of its substructure transformer (0: none)
    constraint_embedder: bool = False
    constraint_substructure_hidden: int = 0
    # How jobs are featurized for this model (AF3 by default; imported weights carry their
    # reference's featurization: foldray.features.config, docs/parity.md)
    featurization: FeaturizationConfig = field(default_factory=FeaturizationConfig)

    @classmethod
    def full(cls) -> ModelConfig:
        return cls()

    @classmethod
    def tiny(cls) -> ModelConfig:
        """Every code path of full(), sized for a CPU forward pass in seconds.

        Sizes are deliberately unequal (c_s != c_z != heads) so transposed axes fail tests.
        """
        return cls(
            c_s=40, c_z=24, c_s_inputs=32 + 32 + 32 + 1, n_cycle=2,
            atom=AtomAttentionConfig(c_atom=32, c_atompair=8, n_block=1, n_head=2),
            pairformer=PairformerConfig(n_block=2, n_head=4, c_hidden_mul=16,
                                        c_hidden_tri_att=8, n_head_tri=2),
            msa=MsaModuleConfig(n_block=1, c_m=16, c_hidden_opm=8, n_head_pwa=2, c_hidden_pwa=4),
            template=TemplateConfig(n_block=1, c_t=16),
            diffusion=DiffusionConfig(c_token=48, n_block=2, n_head=4, c_fourier=32, n_step=20),
            confidence=ConfidenceConfig(n_block=1),
            loss=LossConfig(diffusion_batch=4, mini_rollout_steps=20),
        )

    @classmethod
    def full_openfold3(cls) -> ModelConfig:
        """OpenFold3's released architecture (openfold3 0.5 `model_config`), for its weights."""
        return with_openfold3_behaviour(cls.full())

    @classmethod
    def tiny_openfold3(cls) -> ModelConfig:
        """tiny() with OpenFold3's behaviour and 2 MSA blocks (so one has an MSA stack): the
        config of the equivalence fixtures (benchmarks/equivalence)."""
        tiny = cls.tiny()
        return with_openfold3_behaviour(
            dataclasses.replace(tiny, msa=dataclasses.replace(tiny.msa, n_block=2)))

    @classmethod
    def full_protenix(cls) -> ModelConfig:
        """Protenix's released architecture (protenix 2.0 `protenix_base_default_v1.0.0`:
        templates on, ESM and constraints off), for its weights."""
        full = cls.full()
        return with_protenix_behaviour(dataclasses.replace(
            full, n_cycle=10, template=dataclasses.replace(full.template, c_hidden_mul=128,
                                                           c_hidden_tri_att=32)))

    @classmethod
    def tiny_protenix(cls) -> ModelConfig:
        """CPU-small Protenix (benchmarks/equivalence fixtures): Protenix hard-codes its triangle
        (128, 4 x 32), outer-product (32) and MSA-averaging (8 x 8) widths and 16 heads in the
        confidence Pairformer, and its input embedder's 3 atom blocks of 4 heads, so those keep
        the released values; c_s is 48 (16 heads)."""
        tiny = cls.tiny()
        r = dataclasses.replace
        return with_protenix_behaviour(r(
            tiny, c_s=48, c_z=24,
            atom=r(tiny.atom, n_block=3, n_head=4),   # Protenix's input embedder: fixed 3 x 4
            pairformer=r(tiny.pairformer, n_head=16, c_hidden_mul=128, c_hidden_tri_att=32,
                         n_head_tri=4),
            msa=r(tiny.msa, n_block=2, c_m=16, c_hidden_opm=32, n_head_pwa=8, c_hidden_pwa=8),
            template=r(tiny.template, c_t=16, c_hidden_mul=128, c_hidden_tri_att=32),
            diffusion=r(tiny.diffusion, c_token=56, n_head=4, c_fourier=256)))

    @property
    def c_token_inputs(self) -> int:
        """Width of the atom encoder's token output inside the input embedder (Algorithm 2)."""
        return self.c_s_inputs - 32 - 32 - 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> ModelConfig:
        """From a saved config (checkpoint JSON, YAML): typed, unknown keys are located
        errors (foldray.config_loader). A config saved before the `featurization` section
        existed gets the featurization its family's module switches imply."""
        config = load_dataclass(cls, data, where=where)
        if not any(str(key).split(".")[0] == "featurization" for key in data):
            config = dataclasses.replace(config, featurization=featurization_of_family(config))
        if config.diffusion.final_level_zero:       # a Protenix checkpoint imported before the
            r = dataclasses.replace                 # empty-slot / slot-shift switches existed
            if not _saved(data, "template", "empty_slot_restype_first"):
                config = r(config, template=r(config.template, empty_slot_restype_first=GAP_RESTYPE,
                                              empty_slot_restype_pad=0))
            if not _saved(data, "confidence", "nucleotide_slot_shift"):
                config = r(config, confidence=r(config.confidence, nucleotide_slot_shift=1))
            config = r(config, featurization=_protenix_switches_since(data, config.featurization))
        return config

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """A named config (`preset_names()`); `_` and `-` are the same (`tiny_openfold3`)."""
        key = name.strip().lower().replace("_", "-")
        if key not in NAMED_CONFIGS:
            raise ConfigError(f"unknown model preset {name!r} (choose from {', '.join(NAMED_CONFIGS)})")
        return NAMED_CONFIGS[key]()


GAP_RESTYPE = 31   # foldray.residues.GAP (not imported: the model config stays dependency-free)


def _saved(data: Mapping[str, Any], section: str, key: str) -> bool:
    """Whether a saved config mapping sets `section.key` (nested or as a dotted key)."""
    nested = data.get(section)
    return f"{section}.{key}" in data or (isinstance(nested, Mapping) and key in nested)


# Protenix featurization switches added after the first Protenix imports (docs/parity.md D1-D3,
# D8): a checkpoint saved without them gets Protenix's values, not AF3's defaults.
LATER_PROTENIX_SWITCHES = ("msa_query_letters", "ligand_leaving_atoms", "selenomethionine")


def _protenix_switches_since(data: Mapping[str, Any], saved: FeaturizationConfig) -> FeaturizationConfig:
    """`saved` with the later Protenix switches filled where the saved config predates them; a
    config that predates all of them also predates `modified_residue_restype="ccd_type"`."""
    missing = [key for key in LATER_PROTENIX_SWITCHES if not _saved(data, "featurization", key)]
    if not missing:
        return saved
    protenix = FeaturizationConfig.protenix()
    fill = {key: getattr(protenix, key) for key in missing}
    if len(missing) == len(LATER_PROTENIX_SWITCHES):
        fill["modified_residue_restype"] = protenix.modified_residue_restype
    return dataclasses.replace(saved, **fill)


def with_openfold3_behaviour(config: ModelConfig) -> ModelConfig:
    """Switch on every flag that reproduces OpenFold3 (its modules deviate from the SI
    there), keeping the sizes; proven by benchmarks/equivalence on random weights."""
    r = dataclasses.replace
    return r(config,
             atom=r(config.atom, shifted_windows=True, separate_key_norm=True,
                    mask_ref_embedding=False),
             pairformer=r(config.pairformer, tri_att_end_bias_ik=True),
             template=r(config.template, padded_slots=4),
             diffusion=r(config.diffusion, raw_relpos=True),
             confidence=r(config.confidence, max_atoms_per_token=23),
             featurization=FeaturizationConfig.openfold3())


def with_protenix_behaviour(config: ModelConfig) -> ModelConfig:
    """Switch on every flag that reproduces Protenix (its modules deviate from the SI there),
    keeping the sizes; proven by benchmarks/equivalence on random weights."""
    r = dataclasses.replace
    return r(config, z_init_from_s_init=True,
             atom=r(config.atom, separate_key_norm=True, chained_key_norm=True),
             template=r(config.template, padded_slots=4, empty_slot_restype_first=GAP_RESTYPE,
                        empty_slot_restype_pad=0),
             diffusion=r(config.diffusion, final_level_zero=True),
             confidence=r(config.confidence, norm_s_trunk=True, raw_distance=True,
                          pde_symmetric_input=True, distogram_bias=True, nucleotide_slot_shift=1),
             featurization=FeaturizationConfig.protenix())


def featurization_of_family(config: ModelConfig) -> FeaturizationConfig:
    """The featurization a config's module switches imply, for a checkpoint saved without a
    featurization section: OpenFold3's raw relative positions or Protenix's zero final noise
    level mark an imported checkpoint of that family; anything else is AF3's."""
    if config.diffusion.raw_relpos:
        return FeaturizationConfig.openfold3()
    if config.diffusion.final_level_zero:
        return FeaturizationConfig.protenix()
    return FeaturizationConfig()


# The one registry of model presets (predict, serve, train, featurize, import-weights):
# `ModelConfig.preset(name)` also accepts `_` for `-`.
NAMED_CONFIGS: dict[str, Callable[[], ModelConfig]] = {
    "full": ModelConfig.full, "tiny": ModelConfig.tiny,
    "full-openfold3": ModelConfig.full_openfold3, "tiny-openfold3": ModelConfig.tiny_openfold3,
    "full-protenix": ModelConfig.full_protenix, "tiny-protenix": ModelConfig.tiny_protenix,
}


def preset_names() -> tuple[str, ...]:
    return tuple(NAMED_CONFIGS)


def is_preset(name: str) -> bool:
    return name.strip().lower().replace("_", "-") in NAMED_CONFIGS


def model_config_from(spec: str | ModelConfig, overrides: Sequence[str] = ()) -> ModelConfig:
    """`--model-config PRESET_OR_FILE`: a preset name, or a YAML/JSON file (local or URL) of a
    whole ModelConfig or of `{preset: NAME, <dotted overrides>}`; then `key=value` overrides."""
    if isinstance(spec, ModelConfig):
        data = to_plain(spec)
    elif is_preset(spec) or ("\n" not in spec and not spec.strip().endswith((".yaml", ".yml", ".json"))):
        data = to_plain(ModelConfig.preset(spec))   # unknown names: the preset list in the error
    else:
        data = read_mapping(spec, kind="model config")
        if "preset" in data:
            data = merge(to_plain(ModelConfig.preset(str(data.pop("preset")))), data)
    apply_overrides(data, overrides, where="model config overrides")
    return ModelConfig.from_dict(data)


Kernels = Literal["auto", "triton", "torch"]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How to run a model: never changes what it computes beyond numerics."""

    kernels: Kernels = "auto"
    chunk_size: int | None = None          # pair-stack chunking; None = chosen from free memory
    precision: Precision = "fp32"
    diffusion_chunk: int | None = None     # samples denoised at once; None = all
    checkpoint_activations: bool = False   # training memory saver
    # torch.compile every repeated block (Pairformer, MSA and Diffusion Transformer blocks):
    # fuses their elementwise ops; pays a one-off compile per input size (Predictor.load does it)
    compile: bool = False
