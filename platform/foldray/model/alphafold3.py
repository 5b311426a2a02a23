"""The whole network (SI 3, Algorithm 1): trunk with recycling, diffusion sampling, heads.

Shapes: features are collated (`foldray.features.batch.collate`), leading batch dim B;
s [B, N_token, c_s], z [B, N_token, N_token, c_z], x [B, N_sample, N_atom, 3].
The trunk runs once per seed; the diffusion module then denoises all samples in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from foldray import kernels
from foldray.features.constraints import CONSTRAINT_FEATURES
from foldray.model.confidence import (
    ConfidenceHead,
    ConfidenceOutput,
    DistogramHead,
    atom_name_is,
    atoms_per_token,
)
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.model.constraint_embedder import ConstraintEmbedder
from foldray.model.diffusion import DiffusionModule, Progress, sample_diffusion
from foldray.model.embedders import InputFeatureEmbedder, RelativePositionEncoding
from foldray.model.msa import MsaModule
from foldray.model.pairformer import PairformerStack, auto_chunk_size
from foldray.model.primitives import LayerNorm, LinearNoBias
from foldray.model.templates import TemplateEmbedder

Features = dict[str, Tensor]


@dataclass(frozen=True)
class TrunkOutput:
    """What the diffusion module and the heads condition on."""

    s_inputs: Tensor   # [B, N_token, c_s_inputs]
    s: Tensor          # [B, N_token, c_s]
    z: Tensor          # [B, N_token, N_token, c_z]


@dataclass(frozen=True)
class Prediction:
    """One trunk pass and its samples."""

    x: Tensor                      # [B, N_sample, N_atom, 3]
    confidence: ConfidenceOutput   # logits per sample
    distogram_logits: Tensor       # [B, N_token, N_token, n_bins]
    trunk: TrunkOutput


def nucleotide_tokens(features: Features) -> Tensor:
    """[B, N_token] bool: standard (multi-atom) DNA/RNA tokens that lost their leaving OP3
    (every nucleotide but a chain's 5' one): ConfidenceConfig.nucleotide_slot_shift."""
    nucleic = features["is_dna"].bool() | features["is_rna"].bool()
    n_token = features["token_mask"].shape[-1]
    atom_mask, atom_to_token = features["atom_mask"].bool(), features["atom_to_token"].long()
    op3 = atom_name_is(features["ref_atom_name_chars"], "OP3") & atom_mask
    has_op3 = torch.zeros_like(nucleic).scatter_reduce(-1, atom_to_token, op3, reduce="amax")
    return nucleic & ~has_op3 & (atoms_per_token(atom_to_token, atom_mask, n_token) > 1)


class AlphaFold3(nn.Module):
    """Algorithm 1: input embedding, n_cycle recycles of templates + MSA + Pairformer,
    diffusion sampling, confidence and distogram heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c_s, c_z, c_in = config.c_s, config.c_z, config.c_s_inputs
        self.input_embedder = InputFeatureEmbedder(config)                     # line 1
        self.s_init = LinearNoBias(c_in, c_s)                                  # line 2
        c_zin = c_s if config.z_init_from_s_init else c_in                   # Protenix: from s_init
        self.z_init_i = LinearNoBias(c_zin, c_z)                               # line 3
        self.z_init_j = LinearNoBias(c_zin, c_z)
        self.relative_position = RelativePositionEncoding.from_config(config)  # line 4
        self.token_bonds = LinearNoBias(1, c_z)                                # line 5
        self.constraint_embedder = (ConstraintEmbedder(c_z, config.constraint_substructure_hidden)
                                    if config.constraint_embedder else None)   # Protenix restraints
        self.z_recycle_norm = LayerNorm(c_z)                                # line 8
        self.z_recycle = LinearNoBias(c_z, c_z)
        self.template_embedder = TemplateEmbedder(                             # line 9
            c_z, config.template, config.pairformer.tri_att_end_bias_ik)
        self.msa_module = MsaModule(c_z, c_in, config.msa, config.pairformer)  # line 10
        self.s_recycle_norm = LayerNorm(c_s)                                # line 11
        self.s_recycle = LinearNoBias(c_s, c_s)
        self.pairformer = PairformerStack(c_s, c_z, config.pairformer)         # line 12
        self.diffusion_module = DiffusionModule(config)                        # line 15
        self.confidence_head = ConfidenceHead(c_s, c_z, c_in, config.confidence,
                                              config.pairformer)               # line 16
        self.distogram_head = DistogramHead(c_z, config.confidence)            # line 17

    @kernels.applies_runtime         # RuntimeConfig.kernels picks Triton or torch ops
    def run_trunk(self, features: Features, *, n_cycle: int | None = None,
                  runtime: RuntimeConfig | None = None,
                  msa_rows: int | None = None,
                  generator: torch.Generator | None = None,
                  progress: Progress | None = None) -> TrunkOutput:
        """Lines 1-14. Only the last cycle carries gradients (earlier cycles are recycled
        inputs, as in AF2/AF3 training); `msa_rows` subsamples MSA rows per cycle (training)."""
        runtime = runtime or RuntimeConfig()
        n_cycle = self.config.n_cycle if n_cycle is None else n_cycle
        if n_cycle < 1:
            raise ValueError(f"n_cycle must be >= 1, got {n_cycle}")
        token_mask = features["token_mask"]
        chunk = self.chunk_size(runtime, token_mask.shape[-1], n_batch=token_mask.shape[:-1].numel(),
                                z_device=token_mask.device)
        ckpt = runtime.checkpoint_activations
        s_inputs = self.input_embedder(features)                               # [B, N, c_in]
        s_init = self.s_init(s_inputs)
        z_in = s_init if self.config.z_init_from_s_init else s_inputs
        z_init = self.z_init_i(z_in)[..., :, None, :] + self.z_init_j(z_in)[..., None, :, :]
        z_init = z_init + self.relative_position(features)
        z_init = z_init + self.token_bonds(features["token_bonds"][..., None].to(z_init.dtype))
        if self.constraint_embedder is not None:        # where Protenix adds its z_constraint
            z_init = self.constraint_embedder(features, z_init)
        elif any(bool(features[k].any()) for k in CONSTRAINT_FEATURES if k in features):
            raise ValueError("the features carry restraints but this model has no constraint embedder "
                             "(ModelConfig.constraint_embedder); they would be ignored")
        s_hat, z_hat = torch.zeros_like(s_init), torch.zeros_like(z_init)      # line 6
        grad = torch.is_grad_enabled()
        for cycle in range(n_cycle):
            with torch.set_grad_enabled(grad and cycle == n_cycle - 1):
                z = z_init + self.z_recycle(self.z_recycle_norm(z_hat))        # line 8
                z = z + self.template_embedder(features, z, token_mask, chunk_size=chunk,
                                               checkpoint_activations=ckpt)
                z = self.msa_module(features, z, s_inputs, token_mask, chunk_size=chunk,
                                    n_sample=msa_rows, generator=generator,
                                    checkpoint_activations=ckpt)               # line 10
                s = s_init + self.s_recycle(self.s_recycle_norm(s_hat))        # line 11
                s, z = self.pairformer(s, z, token_mask, chunk_size=chunk,
                                       checkpoint_activations=ckpt)            # line 12
            s_hat, z_hat = s, z                                                # line 13
            if progress is not None:
                progress("recycle", cycle + 1, n_cycle)
        return TrunkOutput(s_inputs=s_inputs, s=s, z=z)

    @kernels.applies_runtime         # RuntimeConfig.kernels picks Triton or torch ops
    def sample(self, features: Features, trunk: TrunkOutput, *, n_sample: int,
               n_step: int | None = None, generator: torch.Generator | None = None,
               runtime: RuntimeConfig | None = None, progress: Progress | None = None) -> Tensor:
        """Line 15: x [B, n_sample, N_atom, 3] (call under torch.no_grad() for inference)."""
        runtime = runtime or RuntimeConfig()
        denoise = self.diffusion_module.denoiser(features, trunk.s_inputs, trunk.s, trunk.z,
                                                 diffusion_chunk=runtime.diffusion_chunk)
        return sample_diffusion(denoise, features, n_sample, self.config.diffusion, generator,
                                n_step=n_step, progress=progress)

    @kernels.applies_runtime         # RuntimeConfig.kernels picks Triton or torch ops
    def confidence(self, features: Features, trunk: TrunkOutput, x: Tensor,
                   runtime: RuntimeConfig | None = None) -> ConfidenceOutput:
        """Line 16, `diffusion_chunk` samples at a time; by default one at a time in inference
        (each sample runs its own pair stack: scoring them together multiplies the transient
        memory by N_sample for no speed gain on a pair-sized workload) and all at once with
        autograd (training's mini-rollout)."""
        runtime = runtime or RuntimeConfig()
        sample_chunk = runtime.diffusion_chunk
        if sample_chunk is None and not torch.is_grad_enabled():
            sample_chunk = 1
        n_scored = x.shape[-3] if sample_chunk is None else min(x.shape[-3], sample_chunk)
        return self.confidence_head(
            trunk.s_inputs, trunk.s, trunk.z, x, atom_to_token=features["atom_to_token"],
            token_rep_atom=features["token_rep_atom"], token_mask=features["token_mask"],
            atom_mask=features["atom_mask"],
            chunk_size=self.chunk_size(runtime, features["token_mask"].shape[-1],
                                       n_batch=x.shape[:-3].numel() * n_scored, z_device=x.device),
            sample_chunk=sample_chunk, token_nucleotide=nucleotide_tokens(features))

    def compile_blocks(self, **options: Any) -> int:
        """torch.compile each repeated block in place (RuntimeConfig.compile); returns how many.

        Blocks, not the whole model: the model's Python control flow (recycling, the sampler,
        chunking) stays eager, and blocks of one class share compiled code, so 48 Pairformer
        blocks compile once per input shape. Parameters and state_dict keys do not change.
        """
        from foldray.model.msa import MsaBlock
        from foldray.model.pairformer import PairformerBlock
        from foldray.model.transformer import AttentionPairBias, ConditionedTransitionBlock

        kernels.hide_attention_from_compiler()
        kinds = (PairformerBlock, MsaBlock, AttentionPairBias, ConditionedTransitionBlock)
        blocks = [m for m in self.modules() if isinstance(m, kinds)]
        for block in blocks:
            block.compile(**options)
        return len(blocks)

    def chunk_size(self, runtime: RuntimeConfig, n_token: int, *, n_batch: int = 1,
                   z_device: torch.device | None = None) -> int | None:
        """RuntimeConfig.chunk_size, or when that is None one chosen from the memory available
        (`auto_chunk_size`: None = no chunking when the unchunked pair stack fits)."""
        if runtime.chunk_size is not None:
            return runtime.chunk_size
        return auto_chunk_size(n_token, self.config.c_z, self.config.pairformer.n_head_tri,
                               n_batch=n_batch, device=z_device)

    @torch.no_grad()
    @kernels.applies_runtime
    def predict(self, features: Features, *, n_sample: int = 5, n_cycle: int | None = None,
                n_step: int | None = None, generator: torch.Generator | None = None,
                runtime: RuntimeConfig | None = None, progress: Progress | None = None,
                trunk: TrunkOutput | None = None) -> Prediction:
        """Algorithm 1 end to end for inference; `progress(stage, done, total)` is told
        every recycle and diffusion step (progress bars). A given `trunk` (from an earlier
        call on the same features) skips the trunk: only sampling and confidence run."""
        if trunk is None:
            trunk = self.run_trunk(features, n_cycle=n_cycle, runtime=runtime, progress=progress)
        x = self.sample(features, trunk, n_sample=n_sample, n_step=n_step, generator=generator,
                        runtime=runtime, progress=progress)
        confidence = self.confidence(features, trunk, x, runtime)
        return Prediction(x=x, confidence=confidence,
                          distogram_logits=self.distogram_head(trunk.z), trunk=trunk)
