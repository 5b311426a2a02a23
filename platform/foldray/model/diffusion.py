"""The Diffusion Module and its sampler (SI 3.7, Algorithms 18-21; training inputs of SI 3.7.1).

Shapes: x [*, N_sample, N_atom, 3] coordinates (Å); t [*, N_sample] noise levels (Å);
s_inputs [*, N_token, c_s_inputs]; s_trunk [*, N_token, c_s]; z_trunk [*, N_token, N_token, c_z];
atom_mask [*, N_atom] and token_mask [*, N_token] bool (True = real).

The denoiser is deliberately *not* equivariant: no layer here or in the atom transformer
knows about rotations. Instead every structure it sees is randomly rotated and translated
(`centre_random_augmentation`) - at every sampling step and for every training copy.

Pieces:
  centre_random_augmentation  Algorithm 19
  DiffusionConditioning       Algorithm 21 (pair part `pair`, noise-level part `single`)
  DiffusionModule             Algorithm 20, with sample chunking; `denoiser` closes over the trunk
  noise_schedule              SI eq. (7), the inference noise levels c_0 > ... > c_T
  sample_diffusion            Algorithm 18
  sample_training_noise       SI 3.7.1: t = sigma_data * exp(p_mean + p_std * N(0, 1))
  diffusion_training_inputs   SI 3.7.1: augmented, independently noised copies of the truth
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from foldray.model.atom_attention import AtomAttentionDecoder, AtomAttentionEncoder
from foldray.model.config import DiffusionConfig, ModelConfig
from foldray.model.embedders import FourierEmbedding, RelativePositionEncoding
from foldray.model.primitives import LayerNorm, LinearNoBias, Transition
from foldray.model.transformer import DiffusionTransformer

# progress(stage, done, total): a hook for progress bars (foldray.progress); never required
Progress = Callable[[str, int, int], None]

Features = Mapping[str, Tensor]
DenoiseFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------
# Randomness: every draw goes through one generator so a fixed seed fixes the whole sample.

def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal draws shaped `shape`, on `like`'s device and dtype.

    Drawn on the generator's device (CPU generators work for CUDA tensors), in fp32, so a
    seed gives the same numbers whatever device or dtype the model runs in.
    """
    if hasattr(generator, "draw_normal"):   # one generator per batch element (foldray.predictor)
        return generator.draw_normal(shape, like)
    device = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype)


def uniform_random_rotation(shape: tuple[int, ...], generator: torch.Generator | None = None,
                            like: Tensor | None = None) -> Tensor:
    """Haar-uniform proper rotations [*shape, 3, 3] (det +1), from normalised Gaussian quaternions.

    A standard normal 4-vector divided by its norm is uniform on the unit 3-sphere, and the
    unit quaternion -> rotation map sends that to the uniform (Haar) measure on SO(3).
    """
    like = like if like is not None else torch.empty(0)
    work = torch.empty(0, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    q = _randn((*shape, 4), generator, work)                               # [*shape, 4]
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return rot.unflatten(-1, (3, 3)).to(like.dtype)


def masked_centre(x: Tensor, atom_mask: Tensor) -> Tensor:
    """Mean of the real atoms: x [*, N_sample, N_atom, 3], atom_mask [*, N_atom] -> [*, N_sample, 1, 3]."""
    m = atom_mask.unsqueeze(-2).unsqueeze(-1).to(x.dtype)                  # [*, 1, N_atom, 1]
    return (x * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp_min(1.0)


def centre_random_augmentation(x: Tensor, atom_mask: Tensor, s_trans: float = 1.0,
                               generator: torch.Generator | None = None) -> Tensor:
    """Algorithm 19 (SI 3.7): centre, rotate uniformly at random, translate by N(0, s_trans^2).

    x [*, N_sample, N_atom, 3]; atom_mask [*, N_atom]. Every sample gets its own rotation and
    translation. Returns [*, N_sample, N_atom, 3] with padding atoms set to 0.

    SI deviation: the centre is the mean over real atoms only and padding atoms are zeroed
    (as AlphaFold 3's released `random_augmentation` does), so padding never moves real atoms.
    The rotation comes from a Gaussian quaternion instead of the released code's Gram-Schmidt
    of two Gaussian vectors; both are exactly Haar-uniform on SO(3).
    """
    batch = x.shape[:-2]                                                    # (*, N_sample)
    rot = uniform_random_rotation(batch, generator, x)                      # [*, N_sample, 3, 3]
    trans = s_trans * _randn((*batch, 3), generator, x)                     # [*, N_sample, 3]
    x = x - masked_centre(x, atom_mask)                                     # line 1
    x = torch.einsum("...ij,...nj->...ni", rot, x) + trans.unsqueeze(-2)   # lines 2-4
    return x * atom_mask.unsqueeze(-2).unsqueeze(-1).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# The network.

class DiffusionConditioning(nn.Module):
    """Algorithm 21 (SI 3.7): trunk pair/single representations + noise level -> z, s.

    The pair part does not depend on the noise level: `pair` is computed once per trunk run
    and reused by every denoising step; `single` is the per-step, per-sample part.

    SI deviation: the LayerNorms have no bias (offset), as in AlphaFold 3's released diffusion
    head (`create_offset=False`), so its weights map one to one.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c_s, c_z, c_f = config.c_s, config.c_z, config.diffusion.c_fourier
        self.sigma_data = config.diffusion.sigma_data
        raw = config.diffusion.raw_relpos     # OpenFold3: the one-hot features, unprojected
        self.relative_position = RelativePositionEncoding(                      # line 1
            c_z, config.r_max, config.s_max, project=not raw)
        c_pair_in = c_z + (self.relative_position.n_features if raw else c_z)
        self.norm_z = LayerNorm(c_pair_in, bias=False)                      # line 2
        self.proj_z = LinearNoBias(c_pair_in, c_z)
        self.transition_z = nn.ModuleList(Transition(c_z, n=2) for _ in range(2))  # lines 3-5
        self.norm_s = LayerNorm(c_s + config.c_s_inputs, bias=False)      # line 7
        self.proj_s = LinearNoBias(c_s + config.c_s_inputs, c_s)
        self.fourier = FourierEmbedding(c_f)                                   # line 8
        self.norm_n = LayerNorm(c_f, bias=False)                            # line 9
        self.proj_n = LinearNoBias(c_f, c_s)
        self.transition_s = nn.ModuleList(Transition(c_s, n=2) for _ in range(2))  # lines 10-12

    def pair(self, features: Features, z_trunk: Tensor) -> Tensor:
        """Lines 1-5: [*, N_token, N_token, c_z] -> [*, N_token, N_token, c_z]."""
        p = self.relative_position(features).to(z_trunk.dtype)
        z = torch.cat([z_trunk, p], dim=-1)                                    # [*, N, N, 2 c_z]
        z = self.proj_z(self.norm_z(z))
        for transition in self.transition_z:
            z = z + transition(z)
        return z

    def single(self, t: Tensor, s_inputs: Tensor, s_trunk: Tensor) -> Tensor:
        """Lines 6-12: t [*, N_sample] -> s [*, N_sample, N_token, c_s]."""
        s = self.proj_s(self.norm_s(torch.cat([s_trunk, s_inputs], dim=-1)))  # [*, N_token, c_s]
        n = self.fourier(0.25 * torch.log(t / self.sigma_data))               # [*, N_sample, c_f]
        s = s.unsqueeze(-3) + self.proj_n(self.norm_n(n)).unsqueeze(-2)       # [*, N_sample, N_token, c_s]
        for transition in self.transition_s:
            s = s + transition(s)
        return s

    def forward(self, t: Tensor, features: Features, s_inputs: Tensor, s_trunk: Tensor,
                z_trunk: Tensor) -> tuple[Tensor, Tensor]:
        """Returns s [*, N_sample, N_token, c_s] and z [*, N_token, N_token, c_z]."""
        return self.single(t, s_inputs, s_trunk), self.pair(features, z_trunk)


class TrunkConditioning(NamedTuple):
    """The noise-independent inputs of every denoising step, computed once per trunk output."""

    z: Tensor         # [*, N_token, N_token, c_z] pair conditioning (Algorithm 21 lines 1-5)
    c_atom: Tensor    # [*, N_atom, c_atom] atom conditioning (Algorithm 5 lines 1-9)
    p_atom: Tensor    # [*, n_block, n_q, n_k, c_atompair] blocked atom pairs (Algorithm 5 lines 1-14)
    # Attention biases of every block (Algorithm 24 line 8), fixed for a trunk output:
    token_biases: list[Tensor] | None = None   # Diffusion Transformer, [*, H, N_token, N_token] each
    encoder_biases: list[Tensor] | None = None  # atom encoder's AtomTransformer, [*, B, H, q, k] each
    decoder_biases: list[Tensor] | None = None  # atom decoder's AtomTransformer


# Cache the Diffusion Transformer's per-block pair biases when they take at most this many bytes
# (or no more than z itself): 24 blocks x 16 heads is 3x the size of z (c_z = 128), which is
# ~100 MB at 256 tokens but ~38 GB at 5,000; above the budget each step recomputes them from z.
TOKEN_BIAS_CACHE_BYTES = 1 << 30


class DiffusionModule(nn.Module):
    """Algorithm 20 (SI 3.7): one EDM denoising step, x_noisy at noise level t -> x_denoised.

    Conditioning (Alg 21), positions scaled to unit variance, sequence-local atom attention
    up to tokens, a 24-block DiffusionTransformer over tokens, atom attention back down, and
    the EDM preconditioned output
        x_out = sigma^2 / (sigma^2 + t^2) x_noisy + sigma t / sqrt(sigma^2 + t^2) r_update.

    `diffusion_chunk` (RuntimeConfig.diffusion_chunk) runs the samples in groups of that many;
    the pair conditioning is shared by all samples and computed once.

    SI deviation (from the released AlphaFold 3 code, for weight compatibility):
    LayerNorms without bias; the line-4 projection LinearNoBias(LayerNorm(s)) starts at zero;
    noisy and output positions are multiplied by atom_mask so padding atoms read and write 0.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.diffusion
        self.sigma_data = d.sigma_data
        self.conditioning = DiffusionConditioning(config)                                # line 1
        self.encoder = AtomAttentionEncoder(config.atom, d.c_token, config.c_s, config.c_z)  # line 3
        self.norm_s = LayerNorm(config.c_s, bias=False)                               # line 4
        self.proj_s = LinearNoBias(config.c_s, d.c_token, zero_init=True)
        self.transformer = DiffusionTransformer(d.c_token, config.c_s, config.c_z,      # line 5
                                                n_block=d.n_block, n_head=d.n_head)
        self.norm_a = LayerNorm(d.c_token, bias=False)                                # line 6
        self.decoder = AtomAttentionDecoder(config.atom, d.c_token)                      # line 7

    def trunk_conditioning(self, features: Features, s_trunk: Tensor, z_trunk: Tensor) -> TrunkConditioning:
        """Everything that depends on the trunk but not on the noise: once per trunk output."""
        z = self.conditioning.pair(features, z_trunk)
        c_atom, p_atom = self.encoder.conditioning(features, s_trunk, z)
        atom_mask = features["atom_mask"]
        n_head = [block.n_head for block in self.transformer.attention]
        bias_bytes = sum(n_head) * z[..., 0].numel() * z.element_size()
        token_biases = (self.transformer.pair_biases(z)
                        if bias_bytes <= max(TOKEN_BIAS_CACHE_BYTES, z.numel() * z.element_size())
                        else None)
        return TrunkConditioning(z, c_atom, p_atom, token_biases,
                                 self.encoder.transformer.pair_biases(p_atom, atom_mask),
                                 self.decoder.transformer.pair_biases(p_atom, atom_mask))

    def forward(self, x_noisy: Tensor, t: Tensor | float, features: Features, s_inputs: Tensor,
                s_trunk: Tensor, z_trunk: Tensor | None = None, *,
                trunk_cond: TrunkConditioning | None = None, diffusion_chunk: int | None = None,
                checkpoint_chunks: bool = False) -> Tensor:
        """x_noisy [*, N_sample, N_atom, 3], t [*, N_sample] (or broadcastable) -> x_denoised.

        features must be collated (they carry atom_mask / token_mask). Give z_trunk, or
        `trunk_cond = self.trunk_conditioning(...)` computed beforehand (as `denoiser` does, so
        the sampler builds it once). `checkpoint_chunks` recomputes each chunk's activations in
        the backward pass (a training memory saver).
        """
        if trunk_cond is None:
            if z_trunk is None:
                raise ValueError("DiffusionModule: give z_trunk or trunk_cond")
            trunk_cond = self.trunk_conditioning(features, s_trunk, z_trunk)
        t = torch.as_tensor(t, dtype=x_noisy.dtype, device=x_noisy.device).expand(x_noisy.shape[:-2])
        n_sample = x_noisy.shape[-3]
        step = n_sample if diffusion_chunk is None else max(1, diffusion_chunk)
        out = []
        for start in range(0, n_sample, step):
            args = (x_noisy[..., start:start + step, :, :], t[..., start:start + step],
                    features, s_inputs, s_trunk, trunk_cond)
            if checkpoint_chunks and torch.is_grad_enabled():
                out.append(checkpoint(self._denoise, *args, use_reentrant=False))
            else:
                out.append(self._denoise(*args))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-3)

    def _denoise(self, x_noisy: Tensor, t: Tensor, features: Features, s_inputs: Tensor,
                 s_trunk: Tensor, trunk_cond: TrunkConditioning) -> Tensor:
        """Algorithm 20 on one chunk of samples."""
        m_atom = features["atom_mask"].unsqueeze(-2).unsqueeze(-1).to(x_noisy.dtype)  # [*, 1, N_atom, 1]
        token_mask = features["token_mask"].bool().unsqueeze(-2)               # [*, 1, N_token]
        x_noisy = x_noisy * m_atom
        t2 = (t * t).unsqueeze(-1).unsqueeze(-1)                                # [*, N_sample, 1, 1]
        sd2 = self.sigma_data ** 2

        s = self.conditioning.single(t, s_inputs, s_trunk)                      # line 1, [*, S, N_token, c_s]
        r_noisy = x_noisy / torch.sqrt(t2 + sd2)                                # line 2
        a, q_skip, c_skip, p_skip = self.encoder(                               # line 3
            features, r_noisy, conditioning=(trunk_cond.c_atom, trunk_cond.p_atom),
            pair_biases=trunk_cond.encoder_biases)                             # [*, S, N_tok, c_token]
        a = a + self.proj_s(self.norm_s(s))                                     # line 4
        token_biases = (None if trunk_cond.token_biases is None
                        else [b.unsqueeze(-4) for b in trunk_cond.token_biases])  # sample axis
        a = self.transformer(a, s, trunk_cond.z.unsqueeze(-4), mask=token_mask,  # line 5, beta = 0
                             biases=token_biases)
        a = self.norm_a(a)                                                      # line 6
        r_update = self.decoder(a, q_skip, c_skip, p_skip, features,           # line 7, [*, S, N_atom, 3]
                                pair_biases=trunk_cond.decoder_biases)
        c_skip_t = sd2 / (sd2 + t2)                                             # line 8: EDM c_skip, c_out
        c_out_t = self.sigma_data * torch.sqrt(t2) / torch.sqrt(sd2 + t2)
        return (c_skip_t * x_noisy + c_out_t * r_update) * m_atom

    def denoiser(self, features: Features, s_inputs: Tensor, s_trunk: Tensor, z_trunk: Tensor, *,
                 diffusion_chunk: int | None = None) -> DenoiseFn:
        """The `denoise_fn(x_noisy, t)` for `sample_diffusion`: the trunk outputs and the
        noise-independent conditioning are fixed once here, each call runs the rest of Alg 20."""
        trunk_cond = self.trunk_conditioning(features, s_trunk, z_trunk)

        def denoise_fn(x_noisy: Tensor, t: Tensor) -> Tensor:
            return self(x_noisy, t, features, s_inputs, s_trunk, trunk_cond=trunk_cond,
                        diffusion_chunk=diffusion_chunk)

        return denoise_fn


# ----------------------------------------------------------------------------------------------
# Noise levels and the sampler.

def noise_schedule(n_step: int, config: DiffusionConfig, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """SI 3.7.1 eq. (7): [n_step + 1] noise levels c_0 = sigma_data s_max > ... > c_T = sigma_data s_min.

    c(t) = sigma_data (s_max^(1/p) + t (s_min^(1/p) - s_max^(1/p)))^p, t = 0, 1/n_step, ..., 1.
    Computed in float64, then cast. Like the released code (unlike Protenix) the last level
    stays sigma_data s_min rather than 0.
    """
    if n_step < 1:
        raise ValueError(f"noise_schedule: n_step must be >= 1, got {n_step}")
    inv_p = 1.0 / config.rho
    t = torch.linspace(0.0, 1.0, n_step + 1, dtype=torch.float64)
    levels = config.s_max ** inv_p + t * (config.s_min ** inv_p - config.s_max ** inv_p)
    levels = config.sigma_data * levels ** config.rho
    if config.final_level_zero:   # Protenix: c_T = 0 (the last step lands on its denoised point)
        levels[-1] = 0.0
    return levels.to(device=device, dtype=dtype)


def sample_diffusion(denoise_fn: DenoiseFn, features: Features | None, n_sample: int,
                     config: DiffusionConfig, generator: torch.Generator | None = None,
                     atom_mask: Tensor | None = None, *, n_step: int | None = None,
                     dtype: torch.dtype = torch.float32,
                     progress: Progress | None = None) -> Tensor:
    """Algorithm 18 (SI 3.7): EDM-style stochastic sampling, all samples batched.

    denoise_fn(x_noisy [*, n_sample, N_atom, 3], t [*, n_sample]) -> x_denoised, e.g.
    `DiffusionModule.denoiser(...)`, so the trunk runs once. atom_mask [*, N_atom] defaults
    to features["atom_mask"]; padding atoms come back as 0. n_step defaults to config.n_step
    (the training mini-rollout passes a smaller one). Does not touch autograd: wrap the call
    in torch.no_grad() where no gradients are wanted. Returns x [*, n_sample, N_atom, 3].
    `progress("diffusion", step, n_step)` is called after every step (progress bars).

    SI deviation: line 9 reads delta = (x_noisy - x_denoised) / t_hat, as in the released
    AlphaFold 3 code and Protenix (which calls the SI's (x - x_denoised) / t_hat a typo): the
    Euler step of the probability-flow ODE starts from the point the denoiser saw. The extra-noise
    standard deviation is sqrt(max(t_hat^2 - c_prev^2, 0)) so rounding cannot give NaN.
    """
    if atom_mask is None:
        if features is None or "atom_mask" not in features:
            raise ValueError("sample_diffusion: give atom_mask or features with 'atom_mask'")
        atom_mask = features["atom_mask"]
    atom_mask = atom_mask.bool()
    like = torch.empty(0, dtype=dtype, device=atom_mask.device)
    m = atom_mask.unsqueeze(-2).unsqueeze(-1).to(dtype)                     # [*, 1, N_atom, 1]
    shape = (*atom_mask.shape[:-1], n_sample, atom_mask.shape[-1], 3)
    levels = noise_schedule(config.n_step if n_step is None else n_step, config).tolist()

    x = levels[0] * _randn(shape, generator, like) * m                      # line 1
    n_total = len(levels) - 1
    for step, (c_prev, c) in enumerate(zip(levels[:-1], levels[1:], strict=True), 1):  # line 2
        x = centre_random_augmentation(x, atom_mask, config.augment_translation, generator)  # line 3
        gamma = config.gamma_0 if c > config.gamma_min else 0.0             # line 4
        t_hat = c_prev * (gamma + 1.0)                                      # line 5
        sd = config.noise_scale * math.sqrt(max(t_hat * t_hat - c_prev * c_prev, 0.0))
        x_noisy = x + sd * _randn(shape, generator, like) * m               # lines 6-7
        t = torch.full(shape[:-2], t_hat, dtype=dtype, device=atom_mask.device)
        x_denoised = denoise_fn(x_noisy, t)                                 # line 8
        delta = (x_noisy - x_denoised) / t_hat                              # line 9 (see above)
        x = x_noisy + config.step_scale * (c - t_hat) * delta               # lines 10-11
        if progress is not None:
            progress("diffusion", step, n_total)
    return x * m


# ----------------------------------------------------------------------------------------------
# Training inputs (SI 3.7.1).

def sample_training_noise(shape: tuple[int, ...], config: DiffusionConfig,
                          generator: torch.Generator | None = None, *,
                          device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """SI 3.7.1: training noise levels t = sigma_data * exp(p_mean + p_std * N(0, 1)), shaped `shape`."""
    like = torch.empty(0, dtype=dtype, device=device)
    u = _randn(tuple(shape), generator, like)
    return config.sigma_data * torch.exp(config.train_p_mean + config.train_p_std * u)


class DiffusionTrainingInputs(NamedTuple):
    """What one diffusion training step needs: the targets, the network inputs, the noise levels."""

    x_gt_augmented: Tensor   # [*, n_copies, N_atom, 3] each copy rotated/translated (Alg 19)
    x_noisy: Tensor          # [*, n_copies, N_atom, 3] x_gt_augmented + t * N(0, I)
    t: Tensor                # [*, n_copies]


def diffusion_training_inputs(x_gt: Tensor, atom_mask: Tensor, n_copies: int, config: DiffusionConfig,
                              generator: torch.Generator | None = None) -> DiffusionTrainingInputs:
    """SI 3.7.1: n_copies (LossConfig.diffusion_batch, 48) independently augmented and noised
    copies of the ground truth, denoised in parallel after one trunk pass.

    x_gt [*, N_atom, 3]; atom_mask [*, N_atom] marks atoms with ground-truth coordinates (the
    centre is their mean; other atoms are zeroed before the noise, and the losses mask them).
    Feed x_noisy and t to DiffusionModule and compare its output with x_gt_augmented.
    """
    x = x_gt.unsqueeze(-3).expand(*x_gt.shape[:-2], n_copies, *x_gt.shape[-2:])
    x_aug = centre_random_augmentation(x, atom_mask, config.augment_translation, generator)
    t = sample_training_noise(x.shape[:-2], config, generator, device=x.device, dtype=x.dtype)
    noise = _randn(tuple(x.shape), generator, x)
    return DiffusionTrainingInputs(x_aug, x_aug + t[..., None, None] * noise, t)
