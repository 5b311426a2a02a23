"""Predictor: load a model once, then Job -> samples -> AlphaFold 3 output folder.

Used by `foldray predict`, the Ray Data prediction stage and Serve, so every entry point
predicts and writes the same way. Per seed, a job is featurized with that seed (reference
conformer rotations), the trunk runs once and the diffusion module draws all samples in
one batch; every sample is scored by the confidence head and ranked as AlphaFold 3 does.

`predict_batch` runs several featurized jobs in one forward pass (Serve's `@serve.batch`,
screens). Jobs are grouped by size (`group_by_size`) so padding stays small: a group is
padded to its own largest job, not to the global buckets, because on a 35-token screen
job the 128-token bucket multiplies pair work ~13x. Real tokens come first in every
padded job, so each job's outputs are sliced exactly as for a job alone. Every job draws
its diffusion noise from its own generator, seeded with its own seed and shaped as for
the job alone (`ItemGenerators`), so a job batched with others gives the samples it
gives alone (within fp32 rounding; tested), whoever its batch-mates are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from foldray.features.batch import collate
from foldray.features.constraints import require_constraint_embedder
from foldray.features.pipeline import FeaturizedJob, featurize_seeds
from foldray.features.tokenize import DEFAULT_MAX_TOKENS, TokenizedStructure
from foldray.inputs.job import Job
from foldray.io.confidences import SamplePrediction, write_prediction
from foldray.io.outputs import OutputOptions
from foldray.io.weights import load_weights
from foldray.model.alphafold3 import AlphaFold3, Prediction, TrunkOutput
from foldray.model.confidence import distogram_breaks, token_frames
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.model.diffusion import Progress
from foldray.model.ranking import expected_error, summary_confidences

log = logging.getLogger(__name__)

CONTACT_THRESHOLD = 8.0   # Å, AF3's contact_probs
TOKEN_STEP = 16   # jobs whose token counts round up to the same multiple share a forward pass
ATOM_STEP = 64


@dataclass(frozen=True, kw_only=True)
class PredictSettings:
    """How much sampling to do; None keeps the job's seeds / the model's defaults."""

    seeds: tuple[int, ...] | None = None
    n_sample: int = 5
    n_cycle: int | None = None
    n_step: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    # Seeds after the first reuse its features and trunk; only their diffusion noise differs.
    # Saves (seeds - 1) trunk runs at the cost of less diversity between seeds.
    share_trunk: bool = False
    # extra outputs (PDB, SDF, PDE, embeddings, distogram): what the writer writes and
    # which extra arrays the model's outputs are kept for
    outputs: OutputOptions = OutputOptions()


def named_config(name: str) -> ModelConfig:
    """A model preset by name (the one registry: ModelConfig.preset, model/config.py)."""
    return ModelConfig.preset(name)


def contact_probabilities(distogram_logits: torch.Tensor, config: ModelConfig,
                          threshold: float = CONTACT_THRESHOLD) -> torch.Tensor:
    """P(distance < 8 Å) from the distogram: the mass of bins whose upper edge is <= 8 Å
    (bin k ends at break k; the last bin is open)."""
    breaks = distogram_breaks(config.confidence, device=distogram_logits.device)
    inside = torch.cat([breaks <= threshold, breaks.new_zeros(1, dtype=torch.bool)])
    probs = torch.softmax(distogram_logits.float(), -1)
    return (probs * inside).sum(-1)


def size_group(featurized: FeaturizedJob) -> tuple[int, int, int]:
    """Key of jobs that batch well: token and atom counts rounded up, MSA rows exactly."""
    n_msa = int(featurized.features["msa"].shape[0])
    return (-(-featurized.tokens.n_tokens // TOKEN_STEP), -(-featurized.tokens.n_atoms // ATOM_STEP),
            n_msa)


def group_by_size(items: Sequence[FeaturizedJob], max_group: int) -> list[list[int]]:
    """Indices of `items` split into same-size groups of at most `max_group`, in order:
    each group is one forward pass of `Predictor.predict_batch`."""
    groups: dict[tuple[int, int, int], list[list[int]]] = {}
    for i, item in enumerate(items):
        chunks = groups.setdefault(size_group(item), [[]])
        if len(chunks[-1]) >= max_group:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


def extra_seed_arrays(prediction: Prediction, index: int, n_tok: int,
                      outputs: OutputOptions) -> dict[str, np.ndarray]:
    """Batch element `index`'s trunk embeddings and distogram probabilities, as asked."""
    arrays: dict[str, np.ndarray] = {}
    if outputs.save_embeddings:
        arrays["single_embeddings"] = prediction.trunk.s[index, :n_tok].detach().float().cpu().numpy()
        arrays["pair_embeddings"] = prediction.trunk.z[index, :n_tok, :n_tok].detach().float().cpu().numpy()
    if outputs.save_distogram:
        probs = torch.softmax(prediction.distogram_logits[index, :n_tok, :n_tok].float(), -1)
        arrays["distogram"] = probs.cpu().numpy().astype(np.float16)
    return arrays


class ItemGenerators:
    """One random generator per batch element, for `foldray.model.diffusion._randn`.

    Element b draws exactly what it would draw in a forward pass of its own: from its own
    seed, and atom-shaped noise ([B, N_sample, N_atom, 3]) at its own atom count, zero
    beyond it (padding atoms are masked anyway). Rotations and translations ([B, N_sample,
    4 | 3]) do not depend on the size."""

    def __init__(self, seeds: Sequence[int], n_atoms: Sequence[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        self.n_atoms = list(n_atoms)
        self.device = device

    def draw_normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"ItemGenerators: {len(self.generators)} generators for a batch of {shape[0]}")
        atoms = len(shape) == 4 and shape[-1] == 3      # the sampler's x-shaped noise
        parts = []
        for generator, n_atom in zip(self.generators, self.n_atoms, strict=True):
            own = (1, shape[1], n_atom, 3) if atoms else (1, *shape[1:])
            draw = torch.randn(own, generator=generator, device=self.device, dtype=torch.float32)
            if atoms and n_atom < shape[2]:
                draw = torch.nn.functional.pad(draw, (0, 0, 0, shape[2] - n_atom))
            parts.append(draw)
        return torch.cat(parts).to(device=like.device, dtype=like.dtype)


class Predictor:
    """A model held in memory with its runtime settings; load once, predict many jobs."""

    def __init__(self, model: AlphaFold3, *, runtime: RuntimeConfig | None = None,
                 device: str | torch.device = "cpu", random_weights: bool = False) -> None:
        self.model = model.to(device).eval()
        self.runtime = runtime or RuntimeConfig()
        self.device = torch.device(device)
        self.random_weights = random_weights
        if self.runtime.compile:
            self.model.compile_blocks()
        # progress(stage, done, total) for recycles and diffusion steps (foldray.progress)
        self.progress: Progress | None = None
        self.weights = "random weights" if random_weights else "the given model"

    @classmethod
    def load(cls, checkpoint: str | None = None, *, config: str | ModelConfig = "tiny",
             runtime: RuntimeConfig | None = None, device: str = "cpu",
             init_seed: int = 0) -> Predictor:
        """From a foldray safetensors checkpoint (its config wins), or random weights."""
        if checkpoint is not None:
            state, model_config = load_weights(checkpoint)
            model = AlphaFold3(model_config)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{checkpoint}: weights do not fit the model "
                                 f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
            predictor = cls(model, runtime=runtime, device=device)
            predictor.weights = f"checkpoint {checkpoint}"     # named in restraint errors
            return predictor
        model_config = named_config(config) if isinstance(config, str) else config
        torch.manual_seed(init_seed)
        return cls(AlphaFold3(model_config), runtime=runtime, device=device, random_weights=True)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def _forward(self, features: Sequence[dict[str, np.ndarray]], seeds: int | Sequence[int],
                 settings: PredictSettings, trunk: TrunkOutput | None = None,
                 ) -> tuple[Prediction, dict[str, torch.Tensor]]:
        """One forward pass over jobs padded to the largest of them, each job's noise from
        its own seed; the batch it ran on."""
        batch = collate(list(features), token_buckets=None, atom_buckets=None)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        generator: torch.Generator | ItemGenerators
        if len(features) == 1:
            generator = torch.Generator(device=self.device).manual_seed(seeds[0])
        else:
            generator = ItemGenerators(seeds, [int(f["ref_pos"].shape[0]) for f in features],
                                       self.device)
        autocast = self.runtime.precision == "bf16" and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = self.model.predict(batch, n_sample=settings.n_sample,
                                            n_cycle=settings.n_cycle, n_step=settings.n_step,
                                            generator=generator, runtime=self.runtime,
                                            progress=self.progress, trunk=trunk)
        return prediction, batch

    def predict_job(self, job: Job, settings: PredictSettings = PredictSettings(),
                    ) -> tuple[TokenizedStructure, list[SamplePrediction]]:
        """All seeds x samples of one job, with AF3's confidence metrics per sample."""
        require_constraint_embedder(job, self.config, self.weights)      # before featurizing
        samples: list[SamplePrediction] = []
        tokens = None
        seeds = settings.seeds or job.seeds
        if settings.share_trunk:
            featurized = featurize_seeds(job, seeds, max_tokens=settings.max_tokens, share_trunk=True,
                                         featurization=self.config.featurization)
            return self.predict_featurized(featurized, settings)
        for seed in seeds:                         # one seed's features in memory at a time
            featurized = featurize_seeds(job, (seed,), max_tokens=settings.max_tokens,
                                         featurization=self.config.featurization)
            tokens, seed_samples = self.predict_featurized(featurized, settings)
            samples.extend(seed_samples)
        assert tokens is not None
        return tokens, samples

    def predict_featurized(self, featurized_by_seed: Mapping[int, FeaturizedJob],
                           settings: PredictSettings = PredictSettings(),
                           ) -> tuple[TokenizedStructure, list[SamplePrediction]]:
        """`predict_job` from features made elsewhere (`featurize_seeds`), so a
        batch pipeline can featurize on CPU workers and keep the accelerator on the model."""
        if not featurized_by_seed:
            raise ValueError("predict_featurized: no seeds to predict")
        require_constraint_embedder(next(iter(featurized_by_seed.values())).job, self.config, self.weights)
        samples: list[SamplePrediction] = []
        tokens, trunk = None, None
        first = next(iter(featurized_by_seed.values()))
        for seed, featurized in featurized_by_seed.items():
            if settings.share_trunk:
                featurized = first        # the trunk ran on these features
            tokens = featurized.tokens
            prediction, batch = self._forward([featurized.features], [seed], settings, trunk=trunk)
            if settings.share_trunk:
                trunk = prediction.trunk
            samples.extend(self._samples(prediction, batch, 0, seed, tokens, settings.outputs))
        assert tokens is not None
        return tokens, samples

    def predict_batch(self, items: Sequence[tuple[FeaturizedJob, int]],
                      settings: PredictSettings = PredictSettings(), max_group: int = 8,
                      ) -> list[list[SamplePrediction]]:
        """The samples of each (features, seed) pair, in order, from one forward pass per
        same-size group of at most `max_group` jobs (`group_by_size`; module docstring)."""
        results: list[list[SamplePrediction]] = [[] for _ in items]
        for featurized, _ in items:
            require_constraint_embedder(featurized.job, self.config, self.weights)
        for group in group_by_size([featurized for featurized, _ in items], max_group):
            members = [items[i] for i in group]
            prediction, batch = self._forward([f.features for f, _ in members],
                                              [seed for _, seed in members], settings)
            for position, (index, (featurized, seed)) in enumerate(zip(group, members, strict=True)):
                results[index] = self._samples(prediction, batch, position, seed, featurized.tokens,
                                               settings.outputs)
        return results

    def _samples(self, prediction: Prediction, batch: dict[str, torch.Tensor], index: int, seed: int,
                 tokens: TokenizedStructure, outputs: OutputOptions | None = None,
                 ) -> list[SamplePrediction]:
        """Batch element `index`'s samples cut to its own size, with AF3's metrics: the one
        place per-sample confidences are computed."""
        single = {k: v[index] for k, v in batch.items()}
        _, frame_mask = token_frames(single)
        metrics = summary_confidences(prediction.confidence.plddt_logits[index],
                                      prediction.confidence.pae_logits[index], prediction.x[index],
                                      single, frame_mask, self.config.confidence)
        contacts = contact_probabilities(prediction.distogram_logits[index], self.config)
        n_tok, n_atom = tokens.n_tokens, tokens.n_atoms

        def as_np(x: torch.Tensor) -> np.ndarray:
            return x.detach().float().cpu().numpy()

        outputs = outputs or OutputOptions()
        pde = expected_error(prediction.confidence.pde_logits[index, :, :n_tok, :n_tok],
                             self.config.confidence.max_error_bin) if outputs.save_pde else None
        seed_arrays = extra_seed_arrays(prediction, index, n_tok, outputs) or None
        out = []
        for i in range(prediction.x.shape[1]):
            out.append(SamplePrediction(
                seed=seed, sample_index=i, coords=as_np(prediction.x[index, i, :n_atom]),
                atom_plddt=as_np(metrics["atom_plddts"][i, :n_atom]),
                pae=as_np(metrics["pae"][i, :n_tok, :n_tok]),
                contact_probs=as_np(contacts[:n_tok, :n_tok]),
                ptm=float(metrics["ptm"][i]), iptm=float(metrics["iptm"][i]),
                chain_pair_iptm=as_np(metrics["chain_pair_iptm"][i]),
                chain_pair_pae_min=as_np(metrics["chain_pair_pae_min"][i]),
                fraction_disordered=float(metrics["fraction_disordered"][i]),
                has_clash=bool(metrics["has_clash"][i]),
                ranking_score=float(metrics["ranking_score"][i]),
                token_frame_mask=as_np(frame_mask[:n_tok]).astype(bool),
                pde=None if pde is None else as_np(pde[i]), seed_arrays=seed_arrays))
        return out

    def predict_to(self, out_url: str, job: Job,
                   settings: PredictSettings = PredictSettings()) -> str:
        """Predict and write the AF3 output folder; returns its URL."""
        tokens, samples = self.predict_job(job, settings)
        return write_prediction(out_url, job, tokens, samples, outputs=settings.outputs)
