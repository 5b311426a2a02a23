"""One prediction over P local devices: `foldray predict --devices N`.

`predict_sharded` is Algorithm 1 on one rank (trunk on its rows of z, its share of the
diffusion samples, the confidence head's Pairformer on its rows) and returns the
Prediction on rank 0. `ShardedPredictor` is a `Predictor` whose forward pass runs it in
N spawned worker processes (`run_local`: gloo on CPUs, NCCL with one GPU per rank); the
rest (featurization, metrics, writing) stays in the calling process. Each job starts the
workers afresh and sends them the weights (shared memory): fine for big complexes, where
the model time dominates; many small jobs belong on one device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from foldray.model.alphafold3 import AlphaFold3, Prediction, TrunkOutput
from foldray.model.confidence import ConfidenceOutput
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.parallel.diffusion import sample_sharded
from foldray.parallel.heads import confidence_sharded, distogram_sharded, gather_rows_to_root
from foldray.parallel.local import run_local
from foldray.parallel.shard import PairShard, padded_size
from foldray.parallel.trunk import local_rows, run_trunk_sharded
from foldray.predictor import Predictor, PredictSettings

Features = dict[str, torch.Tensor]


@torch.no_grad()
def predict_sharded(model: AlphaFold3, features: Features, shard: PairShard, *, n_sample: int,
                    n_cycle: int | None = None, n_step: int | None = None,
                    generator: torch.Generator | None = None,
                    chunk_size: int | None = None) -> Prediction | None:
    """`AlphaFold3.predict` on this rank: the Prediction on rank 0 (its trunk's z gathered
    there), None on the others. Features padded to shard.n_token tokens."""
    trunk = run_trunk_sharded(model, features, shard, n_cycle=n_cycle, chunk_size=chunk_size)
    x = sample_sharded(model, features, trunk, shard, n_sample=n_sample, n_step=n_step, generator=generator,
                       chunk_size=chunk_size)
    confidence = confidence_sharded(model, features, trunk, x, shard, chunk_size=chunk_size)
    distogram = distogram_sharded(model, trunk, shard)
    z = gather_rows_to_root(trunk.z_rows, shard)
    if shard.rank != 0:
        return None
    assert confidence is not None and distogram is not None and z is not None
    return Prediction(x=x, confidence=confidence, distogram_logits=distogram,
                      trunk=TrunkOutput(s_inputs=trunk.s_inputs, s=trunk.s, z=z))


def _worker(rank: int, world: int, config: ModelConfig, state: dict[str, torch.Tensor],
            batch: Features, seed: int, n_sample: int, n_cycle: int | None, n_step: int | None,
            chunk_size: int | None, device_type: str, bf16: bool) -> dict[str, Any]:
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if device_type == "cuda" else "cpu")
    model = AlphaFold3(config)
    model.load_state_dict(state)
    model = model.to(device).eval()
    return rank_forward(model, rank, world, batch, seed, n_sample, n_cycle, n_step, chunk_size, bf16)


def rank_forward(model: AlphaFold3, rank: int, world: int, batch: Features, seed: int, n_sample: int,
                 n_cycle: int | None, n_step: int | None, chunk_size: int | None,
                 bf16: bool) -> dict[str, Any]:
    """One rank's share of one prediction with a model already on its device (workers that
    keep the model across jobs call this per job): rank 0's outputs on CPU, {} elsewhere."""
    device = next(model.parameters()).device
    shard = PairShard(rank=rank, world=world, n_token=batch["token_mask"].shape[-1])
    batch = {k: v.to(device) for k, v in local_rows(batch, shard).items()}   # pair features: own rows
    generator = torch.Generator(device=device).manual_seed(seed)
    # RuntimeConfig.chunk_size, or the rows per chunk one device would pick from free memory
    chunk_size = model.chunk_size(RuntimeConfig(chunk_size=chunk_size), shard.n_token, z_device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):   # as Predictor._forward
        prediction = predict_sharded(model, batch, shard, n_sample=n_sample, n_cycle=n_cycle,
                                     n_step=n_step, generator=generator, chunk_size=chunk_size)
    if prediction is None:
        return {}
    c = prediction.confidence
    out = {"x": prediction.x, "plddt": c.plddt_logits, "pae": c.pae_logits, "pde": c.pde_logits,
           "resolved": c.resolved_logits, "distogram": prediction.distogram_logits,
           "s_inputs": prediction.trunk.s_inputs, "s": prediction.trunk.s, "z": prediction.trunk.z}
    return {k: v.cpu() for k, v in out.items()}


def check_devices(devices: int, device: str, n_sample: int) -> None:
    """The clear errors of `--devices N` (ValueError: the CLI prints its message)."""
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    if n_sample % devices:
        raise ValueError(f"--samples {n_sample} is not a multiple of --devices {devices}: each device "
                         "denoises the same number of samples")
    if torch.device(device).type == "cuda":
        available = torch.cuda.device_count()
        if available < devices:
            raise ValueError(f"--devices {devices} needs {devices} GPUs, this machine has {available}")
    elif torch.device(device).type != "cpu":
        raise ValueError(f"--devices runs on cpu or cuda, not {device!r}")


class ShardedPredictor(Predictor):
    """A Predictor whose forward pass spreads one complex over `devices` local devices."""

    def __init__(self, model: AlphaFold3, *, devices: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.devices = devices

    @classmethod
    def from_predictor(cls, predictor: Predictor, devices: int) -> ShardedPredictor:
        return cls(predictor.model, devices=devices, runtime=predictor.runtime, device=predictor.device,
                   random_weights=predictor.random_weights)

    def _forward(self, features: Sequence[dict[str, np.ndarray]], seeds: int | Sequence[int],
                 settings: PredictSettings, trunk: TrunkOutput | None = None,
                 ) -> tuple[Prediction, dict[str, torch.Tensor]]:
        from foldray.features.batch import collate

        if trunk is not None or len(features) != 1:
            raise ValueError("--devices runs one job and one trunk per seed (no --share-trunk, no batching)")
        seed = seeds if isinstance(seeds, int) else int(seeds[0])   # Predictor passes [seed]
        check_devices(self.devices, str(self.device), settings.n_sample)
        batch = collate(list(features), token_buckets=None, atom_buckets=None)
        padded = collate(list(features), token_buckets=(padded_size(batch["token_mask"].shape[-1],
                                                                     self.devices),),
                         atom_buckets=None)
        root = self._run_ranks(padded, seed, settings)
        n = batch["token_mask"].shape[-1]
        cut = {k: v.to(self.device) for k, v in root.items()}
        confidence = ConfidenceOutput(plddt_logits=cut["plddt"], pae_logits=cut["pae"][..., :n, :n, :],
                                      pde_logits=cut["pde"][..., :n, :n, :],
                                      resolved_logits=cut["resolved"])
        prediction = Prediction(x=cut["x"], confidence=confidence,
                                distogram_logits=cut["distogram"][..., :n, :n, :],
                                trunk=TrunkOutput(s_inputs=cut["s_inputs"][..., :n, :],
                                                  s=cut["s"][..., :n, :], z=cut["z"][..., :n, :n, :]))
        return prediction, {k: v.to(self.device) for k, v in batch.items()}

    def _run_ranks(self, padded: Features, seed: int, settings: PredictSettings) -> dict[str, torch.Tensor]:
        """Rank 0's outputs for the padded batch: here `devices` spawned local processes
        (foldray.actors.sharded_predict_stage runs the same on Ray workers kept across jobs)."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        cuda = self.device.type == "cuda"
        bf16 = self.runtime.precision == "bf16" and cuda
        return run_local(_worker, self.devices, self.model.config, state, padded, seed, settings.n_sample,
                         settings.n_cycle, settings.n_step, self.runtime.chunk_size, self.device.type, bf16,
                         backend="nccl" if cuda else "gloo",
                         threads_per_worker=max(1, (os.cpu_count() or 1) // self.devices))[0]
