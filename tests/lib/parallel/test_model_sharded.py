"""The whole model on a row-sharded pair representation equals one device: trunk (s, z),
diffusion samples with the same injected noise, confidences (logits, pLDDT, PAE, pTM, ipTM)
and the distogram, for P = 2 and 4 gloo workers on CPU.

Input: a real job with an MSA and a ligand, small enough for this CI machine: myoglobin
(102m) cut to its first 20 residues with its real MSA cut to the same columns, and its heme
(43 atom tokens): 63 tokens, padded with masked tokens to 64 for the workers while the
single-device reference runs unpadded. The 102m structure itself is a template of those
residues; P = 2 averages over real templates (AF3), P = 4 pads template slots (Protenix's
empty-slot restypes), so both template paths run sharded.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from foldray.features.batch import collate
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.confidence import token_frames
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.model.ranking import expected_error, expected_plddt, predicted_tm_score
from foldray.parallel.diffusion import denoise_sharded, sample_sharded, trunk_conditioning
from foldray.parallel.heads import confidence_sharded, distogram_sharded
from foldray.parallel.local import run_local
from foldray.parallel.shard import PairShard
from foldray.parallel.trunk import ShardedTrunk, local_rows, pad_tokens, run_trunk_sharded
from tests.data_paths import INPUTS, MSAS, STRUCTURES

N_RESIDUE, N_MSA_ROWS, N_SAMPLE, N_STEP, N_CYCLE, SEED = 20, 12, 4, 3, 2, 7
WORST: dict[str, float] = {}   # largest relative error seen per output (printed with -s)


def _cut_a3m(text: str, n_columns: int, n_records: int) -> str:
    """The first n_columns match columns of an a3m (insertions, lowercase, kept in place)."""
    out = []
    for header, sequence in re.findall(r"^>(.*)\n([^>]*)", text, flags=re.M)[:n_records]:
        sequence, kept, columns = sequence.replace("\n", ""), [], 0
        for ch in sequence:
            if columns == n_columns and not ch.islower():
                break
            kept.append(ch)
            columns += not ch.islower()
        out.append(f">{header}\n{''.join(kept)}\n")
    return "".join(out)


def _job():
    data = json.loads((INPUTS / "102m.json").read_text())
    protein = data["sequences"][0]["protein"]
    protein["sequence"] = protein["sequence"][:N_RESIDUE]
    protein["unpairedMsa"] = _cut_a3m((MSAS / "102m_A.a3m").read_text(), N_RESIDUE, N_MSA_ROWS)
    protein["pairedMsa"] = ""
    residues = list(range(N_RESIDUE))
    protein["templates"] = [{"mmcif": (STRUCTURES / "102m.cif").read_text(), "queryIndices": residues,
                             "templateIndices": residues}]
    del protein["unpairedMsaPath"], protein["pairedMsaPath"]
    (job,) = parse_af3_json(json.dumps(data), source="102m-cut")
    return job


def _config(padded_templates: bool) -> ModelConfig:
    tiny = ModelConfig.tiny()
    template = tiny.template
    if padded_templates:
        template = dataclasses.replace(template, padded_slots=2, empty_slot_restype_first=31,
                                       empty_slot_restype_pad=0)
    return dataclasses.replace(tiny, msa=dataclasses.replace(tiny.msa, n_block=2),   # one with an MSA stack
                               template=template)


def _model(state: dict, padded_templates: bool) -> AlphaFold3:
    model = AlphaFold3(_config(padded_templates)).eval()
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def features():
    features = featurize_job(_job(), with_targets=False).features
    assert features["template_restype"].shape[0] == 1
    return features


def _random_model(padded_templates: bool) -> AlphaFold3:
    torch.manual_seed(0)
    model = AlphaFold3(_config(padded_templates)).eval()
    for p in model.parameters():          # zero-initialised output layers would hide errors
        torch.nn.init.normal_(p, std=0.2)
    return model


def _reference(features, padded_templates: bool):
    batch = collate([features], token_buckets=None, atom_buckets=None)
    assert batch["token_mask"].shape[-1] == 63 and batch["msa"].shape[-2] > 5
    assert batch["is_ligand"].sum() == 43 and batch["template_mask"].all()
    model = _random_model(padded_templates)
    state = model.state_dict()
    with torch.no_grad():
        trunk = model.run_trunk(batch, n_cycle=N_CYCLE, runtime=RuntimeConfig(chunk_size=16))
        x = model.sample(batch, trunk, n_sample=N_SAMPLE, n_step=N_STEP,
                         generator=torch.Generator().manual_seed(SEED))
        confidence = model.confidence(batch, trunk, x)
        distogram = model.distogram_head(trunk.z)
    return state, batch, trunk, x, confidence, distogram


def _sharded(rank: int, world: int, features: dict, state: dict, padded_templates: bool):
    torch.set_num_threads(1)
    batch = collate([pad_tokens(features, world)], token_buckets=None, atom_buckets=None)
    model = _model(state, padded_templates)
    shard = PairShard(rank=rank, world=world, n_token=batch["token_mask"].shape[-1])
    if padded_templates:              # one case with the pair features cut to the rank's rows
        batch = local_rows(batch, shard)
        assert batch["template_distogram"].shape[-3] == shard.rows
    trunk = run_trunk_sharded(model, batch, shard, n_cycle=N_CYCLE, chunk_size=8)
    z = shard.gather_rows(trunk.z_rows)
    x = sample_sharded(model, batch, trunk, shard, n_sample=N_SAMPLE, n_step=N_STEP,
                       generator=torch.Generator().manual_seed(SEED))
    confidence = confidence_sharded(model, batch, trunk, x, shard, chunk_size=8)
    distogram = distogram_sharded(model, trunk, shard)
    out = {"s": trunk.s, "z": z, "x": x, "n_token": batch["token_mask"].shape[-1]}
    if confidence is not None:
        out |= {"plddt": confidence.plddt_logits, "pae": confidence.pae_logits,
                "pde": confidence.pde_logits, "resolved": confidence.resolved_logits,
                "distogram": distogram}
    else:
        assert distogram is None
    return out


def _close(actual, expected, what):
    scale = expected.abs().max().clamp_min(1e-6)
    err = ((actual - expected).abs().max() / scale).item()
    assert err < 1e-5, f"{what}: max error {err:.2e} of the largest value"
    WORST[what] = max(WORST.get(what, 0.0), err)


@pytest.mark.parametrize(("world", "padded_templates"), [(2, False), (4, True)])
def test_sharded_model_equals_single_device(features, world, padded_templates):
    WORST.clear()
    state, batch, trunk, x, confidence, distogram = _reference(features, padded_templates)
    results = run_local(_sharded, world, features, state, padded_templates, threads_per_worker=1)
    n = trunk.s.shape[-2]
    assert results[0]["n_token"] == 64
    for out in results:                                   # every rank: same s, z and samples
        _close(out["s"][:, :n], trunk.s, "s")
        _close(out["z"][:, :n, :n], trunk.z, "z")
        _close(out["x"], x, "x")
    root = results[0]
    assert all("pae" not in out for out in results[1:])  # PAE / PDE only on rank 0
    _close(root["plddt"], confidence.plddt_logits, "plddt logits")
    _close(root["resolved"], confidence.resolved_logits, "resolved logits")
    _close(root["pae"][:, :, :n, :n], confidence.pae_logits, "pae logits")
    _close(root["pde"][:, :, :n, :n], confidence.pde_logits, "pde logits")
    _close(root["distogram"][:, :n, :n], distogram, "distogram logits")
    # the metrics users read
    _, frame_mask = token_frames(batch)
    mask, asym = batch["token_mask"], batch["asym_id"]
    pae = root["pae"][:, :, :n, :n]
    _close(expected_plddt(root["plddt"]), expected_plddt(confidence.plddt_logits), "pLDDT")
    _close(expected_error(pae, 32.0), expected_error(confidence.pae_logits, 32.0), "PAE")
    for interface in (False, True):
        ours = predicted_tm_score(pae, mask, frame_mask, asym, interface=interface)
        ref = predicted_tm_score(confidence.pae_logits, mask, frame_mask, asym, interface=interface)
        _close(ours, ref, "ipTM" if interface else "pTM")
    assert (trunk.z.std() > 0.1) and (x.std() > 0.1)      # the model did work
    assert confidence.pae_logits.std() > 0.1              # (non-zero heads)
    print(f"P={world}:", ", ".join(f"{k} {v:.1e}" for k, v in WORST.items()))


def test_sharded_model_through_ray_workers_in_a_placement_group(features, ray_session):
    """The trunk, samples and confidences equal at P = 2 with Ray placing the workers."""
    import sys

    import ray

    from foldray.actors.context_parallel import run_sharded

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # tests/ is not on workers' path
    state, _, trunk, x, confidence, _ = _reference(features, False)
    results = run_sharded(_sharded, 2, (features, state, False), num_cpus=1)
    n = trunk.s.shape[-2]
    for out in results:
        _close(out["s"][:, :n], trunk.s, "s")
        _close(out["z"][:, :n, :n], trunk.z, "z")
        _close(out["x"], x, "x")
    _close(results[0]["pae"][:, :, :n, :n], confidence.pae_logits, "pae logits")
    _close(results[0]["plddt"], confidence.plddt_logits, "plddt logits")


def _denoise_sharded(rank: int, world: int, features: dict, state: dict, s: torch.Tensor, z: torch.Tensor,
                     x_noisy: torch.Tensor, t: torch.Tensor):
    """One denoising step of all samples from this rank's rows of the trunk's z: with the
    cached bias rows (all samples at once) and with per-block biases from z's rows, one
    sample at a time (the path of inputs above the cache budget)."""
    torch.set_num_threads(1)
    batch = collate([pad_tokens(features, world)], token_buckets=None, atom_buckets=None)
    model = _model(state, False)
    module = model.diffusion_module
    shard = PairShard(rank=rank, world=world, n_token=batch["token_mask"].shape[-1])
    pad = shard.n_token - s.shape[-2]                         # masked tokens, zero trunk output
    s = torch.nn.functional.pad(s, (0, 0, 0, pad))
    z_rows = torch.nn.functional.pad(z, (0, 0, 0, pad, 0, pad))[:, shard.row_slice]
    with torch.no_grad():
        trunk = ShardedTrunk(model.input_embedder(batch), s, z_rows)
        cond = trunk_conditioning(module, batch, trunk.s, trunk.z_rows, shard, chunk_size=8)
        cached = denoise_sharded(module, x_noisy, t, batch, trunk.s_inputs, trunk.s, cond, shard)
        uncached = denoise_sharded(module, x_noisy, t, batch, trunk.s_inputs, trunk.s,
                                   cond._replace(token_bias_rows=None), shard, diffusion_chunk=1)
    return {"cached": cached, "uncached": uncached, "pair_rows": cond.z_rows.shape[-3],
            "bias_shapes": [tuple(b.shape[-3:]) for b in cond.token_bias_rows]}


def test_sharded_diffusion_holds_pair_rows_and_equals_single_device(features):
    """The diffusion module's pair conditioning and attention biases exist only as this rank's
    rows (no N x N tensor per worker), and a denoising step (samples at different noise
    levels) equals one device's, with and without the per-trunk bias cache."""
    batch = collate([features], token_buckets=None, atom_buckets=None)
    model = _random_model(False)
    state = model.state_dict()
    g = torch.Generator().manual_seed(11)
    n, c = batch["token_mask"].shape[-1], model.config
    s = torch.randn(1, n, c.c_s, generator=g)
    z = torch.randn(1, n, n, c.c_z, generator=g)
    x_noisy = torch.randn(1, N_SAMPLE, batch["atom_mask"].shape[-1], 3, generator=g) * 10.0
    t = torch.tensor([[0.5, 2.0, 8.0, 30.0]])
    with torch.no_grad():
        expected = model.diffusion_module(x_noisy, t, batch, model.input_embedder(batch), s, z)
    results = run_local(_denoise_sharded, 2, features, state, s, z, x_noisy, t, threads_per_worker=1)
    heads = [block.n_head for block in model.diffusion_module.transformer.attention]
    for out in results:
        assert out["pair_rows"] == 32                         # 64 padded tokens / 2 workers
        assert out["bias_shapes"] == [(h, 32, 64) for h in heads]
        _close(out["cached"], expected, "denoised, cached biases")
        _close(out["uncached"], expected, "denoised, per-step biases, one sample at a time")
    assert expected.std() > 0.1
