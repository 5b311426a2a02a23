"""Algorithms 29-31, the distogram head (SI 4.4) and the SI 5.9 metrics (foldray.model.ranking).

Geometry is tested on real structures: 1ay7 (two protein chains), 1bna (two DNA chains),
102m (myoglobin with its heme ligand). Metrics use synthetic logits on real token layouts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foldray.model.confidence import (
    ConfidenceHead,
    DistogramHead,
    atom_index_in_token,
    compute_alignment_error,
    express_coordinates_in_frame,
    frame_coordinates,
    token_frames,
)
from foldray.model.config import ModelConfig
from foldray.model.ranking import (
    chain_iptm,
    chain_pair_iptm,
    chain_pair_pae_min,
    expected_error,
    expected_plddt,
    fraction_disordered,
    has_clash,
    predicted_tm_score,
    ranking_score,
    shrake_rupley_sasa,
    summary_confidences,
)
from tests.model_helpers import featurized_structure, random_rotation, structure_batch

# ---------------------------------------------------------------------------- frames


def test_polymer_frames_use_backbone_atoms():
    for name, atoms in (("1ay7", ("N", "CA", "C")), ("1bna", ("C1'", "C3'", "C4'"))):
        batch, _, _ = structure_batch(name, pad_tokens=3, pad_atoms=7)
        index, valid = token_frames(batch)
        n = featurized_structure(name).n_tokens
        assert valid[0, :n].all() and not valid[0, n:].any()
        names = featurized_structure(name).tokens.atom_name
        frame_names = {tuple(names[i] for i in row) for row in index[0, :n].tolist()}
        assert frame_names == {atoms}
        tokens = batch["atom_to_token"][0].long()[index[0, :n]]
        assert (tokens == torch.arange(n)[:, None]).all()          # atoms of the token itself


def test_ligand_frames_are_nearest_neighbours_in_the_reference_conformer():
    batch, _, _ = structure_batch("102m")
    index, valid = token_frames(batch)
    ligand = batch["is_ligand"][0].bool()
    ref = batch["ref_pos"][0].double()
    uid = batch["ref_space_uid"][0]
    assert ligand.sum() == 43                                        # heme heavy atoms
    n_valid = 0
    for t in ligand.nonzero().flatten().tolist():
        a, b, c = index[0, t].tolist()
        assert b == batch["token_centre_atom"][0, t]
        assert uid[a] == uid[b] == uid[c] and len({a, b, c}) == 3
        others = ((uid == uid[b]) & (torch.arange(len(uid)) != b)).nonzero().flatten()
        dist = (ref[others] - ref[b]).norm(dim=-1).sort().values
        assert torch.isclose((ref[a] - ref[b]).norm(), dist[0])
        assert torch.isclose((ref[c] - ref[b]).norm(), dist[1])
        v1, v2 = ref[a] - ref[b], ref[c] - ref[b]
        cos = (v1 @ v2) / (v1.norm() * v2.norm())
        assert bool(valid[0, t]) == bool(1 - cos.abs() >= 0.0937)   # 25 degree colinearity
        n_valid += int(valid[0, t])
    assert 30 < n_valid < 43


def test_atom_index_in_token_counts_from_zero_per_token():
    batch, _, _ = structure_batch("1bna", pad_atoms=4)
    n_token = batch["token_mask"].shape[-1]
    slot = atom_index_in_token(batch["atom_to_token"].long(), batch["atom_mask"], n_token)
    atom_to_token = batch["atom_to_token"][0].long()
    n = int(batch["atom_mask"].sum())
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = atom_to_token[1:n] != atom_to_token[:n - 1]
    assert (slot[0, :n][starts] == 0).all()
    assert (slot[0, 1:n][~starts[1:]] == slot[0, :n - 1][~starts[1:]] + 1).all()
    assert slot[0, :n].max() < 24 and (slot[0, n:] == 0).all()


# ---------------------------------------------------------------------------- Algorithms 29-30


def test_express_coordinates_in_frame_is_rigid_invariant_and_orthonormal():
    batch, x, mask = structure_batch("1ay7")
    index, _ = token_frames(batch)
    frames = frame_coordinates(x, index)                             # [1, N, 3, 3]
    local = express_coordinates_in_frame(x[:, :50], frames[:, :20])  # [1, 20, 50, 3]
    rot, shift = random_rotation(0), torch.tensor([5.0, -3.0, 12.0])
    moved = express_coordinates_in_frame(x[:, :50] @ rot.T + shift, frames[:, :20] @ rot.T + shift)
    assert torch.allclose(local, moved, atol=1e-3)
    # distances are preserved (orthonormal basis), b is the origin, a lies in the e1-e2 plane
    from_origin = (x[:, None, :50] - frames[:, :20, None, 1]).norm(dim=-1)
    assert torch.allclose(local.norm(dim=-1), from_origin, atol=1e-3)
    own = express_coordinates_in_frame(frames[0, :20, :2].reshape(40, 3), frames[0, :20])
    own = own.reshape(20, 20, 2, 3)[torch.arange(20), torch.arange(20)]
    assert own[:, 1].abs().max() < 1e-4 and own[:, 0, 2].abs().max() < 1e-4
    assert (own[:, 0, 0] > 0).all()                                  # e1 bisects a-b and c-b


def test_alignment_error_is_zero_for_rigid_motion_and_grows_with_noise():
    batch, x, _ = structure_batch("1ay7")
    index, valid = token_frames(batch)
    centre = batch["token_centre_atom"][0].long()
    moved = x @ random_rotation(1).T + torch.tensor([1.0, 2.0, 3.0])
    e = compute_alignment_error(moved[0, centre], x[0, centre], frame_coordinates(moved, index)[0],
                                frame_coordinates(x, index)[0])
    assert e.shape == (len(centre), len(centre)) and e.max() < 1e-2
    noisy = moved + 0.5 * torch.randn(moved.shape, generator=torch.Generator().manual_seed(2))
    e_noisy = compute_alignment_error(noisy[0, centre], x[0, centre], frame_coordinates(noisy, index)[0],
                                      frame_coordinates(x, index)[0])
    assert e_noisy.mean() > 1.0 and not torch.allclose(e_noisy, e_noisy.T, atol=1e-2)
    assert e_noisy.diagonal().mean() < 1.5          # a centre atom in its own frame: ~ the noise
    assert (e_noisy.mean(0) > e.mean(0)).all()


# ---------------------------------------------------------------------------- Algorithm 31 and 4.4


def _head_inputs(name: str, config: ModelConfig, pad_tokens: int = 0, pad_atoms: int = 0,
                 n_sample: int = 3, seed: int = 0):
    batch, x, mask = structure_batch(name, pad_tokens, pad_atoms)
    gen = torch.Generator().manual_seed(seed)
    n_token, n_atom = batch["token_mask"].shape[-1], x.shape[-2]
    s_inputs = torch.randn(1, n_token, config.c_s_inputs, generator=gen)
    s = torch.randn(1, n_token, config.c_s, generator=gen)
    z = torch.randn(1, n_token, n_token, config.c_z, generator=gen)
    x_pred = x[:, None] + torch.randn(1, n_sample, n_atom, 3, generator=gen)
    return batch, s_inputs, s, z, x_pred


def _randomised_head(config: ModelConfig) -> ConfidenceHead:
    torch.manual_seed(0)
    head = ConfidenceHead(config.c_s, config.c_z, config.c_s_inputs, config.confidence, config.pairformer)
    with torch.no_grad():                                            # zero-initialised outputs
        for p in (head.pae.weight, head.pde.weight, head.plddt_weight, head.resolved_weight):
            p.normal_(0.0, 0.3)
    return head


def _run(head, batch, s_inputs, s, z, x_pred, **kwargs):
    return head(s_inputs, s, z, x_pred, atom_to_token=batch["atom_to_token"],
                token_rep_atom=batch["token_rep_atom"], token_mask=batch["token_mask"],
                atom_mask=batch["atom_mask"], **kwargs)


def test_confidence_head_shapes_determinism_and_sample_chunking():
    config = ModelConfig.tiny()
    head = _randomised_head(config).eval()
    batch, s_inputs, s, z, x_pred = _head_inputs("1bna", config)
    n_token, n_atom = batch["token_mask"].shape[-1], x_pred.shape[-2]
    out = _run(head, batch, s_inputs, s, z, x_pred)
    cc = config.confidence
    assert out.plddt_logits.shape == (1, 3, n_atom, cc.n_bins_plddt)
    assert out.pae_logits.shape == (1, 3, n_token, n_token, cc.n_bins_pae)
    assert out.pde_logits.shape == (1, 3, n_token, n_token, cc.n_bins_pde)
    assert out.resolved_logits.shape == (1, 3, n_atom, 2)
    assert torch.allclose(out.pde_logits, out.pde_logits.transpose(-2, -3))
    assert not torch.allclose(out.pae_logits, out.pae_logits.transpose(-2, -3))
    assert not torch.allclose(out.pae_logits[:, 0], out.pae_logits[:, 1])   # samples differ
    again = _run(head, batch, s_inputs, s, z, x_pred)
    one_by_one = _run(head, batch, s_inputs, s, z, x_pred, sample_chunk=1)
    pair_chunked = _run(head, batch, s_inputs, s, z, x_pred, chunk_size=5)
    for a, b, c, d in zip(vars(out).values(), vars(again).values(), vars(one_by_one).values(),
                          vars(pair_chunked).values(), strict=True):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, atol=1e-5)
        assert torch.allclose(a, d, atol=1e-4)


def test_confidence_head_padding_changes_nothing():
    config = ModelConfig.tiny()
    head = _randomised_head(config).eval()
    batch, s_inputs, s, z, x_pred = _head_inputs("1bna", config)
    pb, ps_inputs, ps, pz, px = _head_inputs("1bna", config, pad_tokens=5, pad_atoms=19, seed=7)
    n, a = s.shape[-2], x_pred.shape[-2]
    ps_inputs[:, :n], ps[:, :n], pz[:, :n, :n], px[..., :a, :] = s_inputs, s, z, x_pred
    out, padded = _run(head, batch, s_inputs, s, z, x_pred), _run(head, pb, ps_inputs, ps, pz, px)
    assert torch.allclose(padded.plddt_logits[..., :a, :], out.plddt_logits, atol=1e-5)
    assert torch.allclose(padded.resolved_logits[..., :a, :], out.resolved_logits, atol=1e-5)
    assert torch.allclose(padded.pae_logits[..., :n, :n, :], out.pae_logits, atol=1e-5)
    assert torch.allclose(padded.pde_logits[..., :n, :n, :], out.pde_logits, atol=1e-5)


def test_confidence_head_trains_every_parameter_but_not_its_inputs():
    config = ModelConfig.tiny()
    head = _randomised_head(config).train()
    batch, s_inputs, s, z, x_pred = _head_inputs("1bna", config, n_sample=2)
    for t in (s_inputs, s, z, x_pred):
        t.requires_grad_(True)
    out = _run(head, batch, s_inputs, s, z, x_pred)
    loss = sum((v * torch.randn_like(v)).sum() for v in vars(out).values())
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(t.grad is None for t in (s_inputs, s, z, x_pred))   # SI 4.3.5 stop-gradient


def test_distogram_head_is_symmetric_and_starts_uniform():
    config = ModelConfig.tiny()
    head = DistogramHead(config.c_z, config.confidence)
    z = torch.randn(2, 9, 9, config.c_z)
    assert torch.equal(head(z), torch.zeros(2, 9, 9, 64))
    torch.nn.init.normal_(head.linear.weight)
    logits = head(z)
    assert torch.allclose(logits, logits.transpose(-2, -3))


# ---------------------------------------------------------------------------- metrics (SI 5.9)


def _pae_logits(n: int, bad_fraction: float, n_sample: int = 1) -> torch.Tensor:
    """Logits whose probability is (1 - f) on the 0-0.5 Å bin and f on the last bin."""
    probs = torch.full((n_sample, n, n, 64), 1e-9)
    probs[..., 0] += 1 - bad_fraction
    probs[..., -1] += bad_fraction
    return probs.log()


def _tokens(name: str, pad_tokens: int = 0):
    batch, _, _ = structure_batch(name, pad_tokens=pad_tokens)
    _, frame_mask = token_frames(batch)
    return {k: v[0] for k, v in batch.items()}, frame_mask[0]


def test_ptm_is_one_when_confident_and_drops_as_mass_moves_to_large_errors():
    tokens, frames = _tokens("1ay7")
    n = tokens["token_mask"].shape[0]
    scores = [predicted_tm_score(_pae_logits(n, f), tokens["token_mask"], frames).item()
              for f in (0.0, 0.1, 0.5, 1.0)]
    assert scores[0] > 0.995
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.05
    assert abs(scores[1] - (0.9 * scores[0] + 0.1 * scores[-1])) < 1e-4      # linear in p


def test_iptm_counts_only_inter_chain_pairs():
    tokens, frames = _tokens("1ay7")
    asym, mask = tokens["asym_id"], tokens["token_mask"]
    n = mask.shape[0]
    inter = asym[:, None] != asym[None, :]
    logits = torch.where(inter[None, :, :, None], _pae_logits(n, 0.0), _pae_logits(n, 1.0))
    iptm = predicted_tm_score(logits, mask, frames, asym, interface=True)
    ptm = predicted_tm_score(logits, mask, frames)
    assert iptm.item() > 0.995 and ptm.item() < 0.7
    changed = torch.where(inter[None, :, :, None], logits, torch.randn_like(logits))
    assert torch.allclose(predicted_tm_score(changed, mask, frames, asym, interface=True), iptm)
    single = torch.ones_like(asym)
    assert torch.isnan(predicted_tm_score(logits, mask, frames, single, interface=True)).all()


def test_chain_pair_matrices():
    tokens, frames = _tokens("1ay7")
    asym, mask = tokens["asym_id"], tokens["token_mask"]
    logits = torch.randn(2, mask.shape[0], mask.shape[0], 64, generator=torch.Generator().manual_seed(3))
    pair, chains = chain_pair_iptm(logits, mask, frames, asym)
    assert pair.shape == (2, 2, 2) and chains.tolist() == [1, 2]
    assert torch.allclose(pair, pair.transpose(-1, -2))
    for i, c in enumerate(chains):                                   # diagonal = chain pTM
        alone = predicted_tm_score(logits, mask & (asym == c), frames)
        assert torch.allclose(pair[:, i, i], alone, atol=1e-6)
    iptm = predicted_tm_score(logits, mask, frames, asym, interface=True)
    assert torch.allclose(pair[:, 0, 1], iptm, atol=1e-6)           # two chains: the full ipTM
    assert torch.allclose(chain_iptm(pair), pair[:, [0, 1], [1, 0]], atol=1e-6)
    pae = expected_error(logits, 32.0)
    no_frames_b = frames & (asym == 1)
    pae_min = chain_pair_pae_min(pae, mask, no_frames_b, asym)
    a, b = asym == 1, asym == 2
    assert torch.allclose(pae_min[:, 0, 1], pae[:, a][:, :, b].flatten(1).min(-1).values)
    assert torch.allclose(pae_min[:, 0, 0], pae[:, a][:, :, a].flatten(1).min(-1).values)
    assert torch.isnan(pae_min[:, 1]).all()                           # chain B has no frame


def test_metrics_ignore_padding():
    tokens, frames = _tokens("1ay7")
    padded, padded_frames = _tokens("1ay7", pad_tokens=6)
    n = tokens["token_mask"].shape[0]
    logits = torch.randn(2, n + 6, n + 6, 64, generator=torch.Generator().manual_seed(4))
    for interface in (False, True):
        full = predicted_tm_score(logits[:, :n, :n], tokens["token_mask"], frames, tokens["asym_id"],
                                  interface=interface)
        pad = predicted_tm_score(logits, padded["token_mask"], padded_frames, padded["asym_id"],
                                 interface=interface)
        assert torch.allclose(full, pad, atol=1e-6)
    a = chain_pair_iptm(logits[:, :n, :n], tokens["token_mask"], frames, tokens["asym_id"])[0]
    b = chain_pair_iptm(logits, padded["token_mask"], padded_frames, padded["asym_id"])[0]
    assert torch.allclose(a, b, atol=1e-6)


def test_expected_plddt_and_pae_ranges():
    logits = torch.randn(3, 40, 50)
    plddt = expected_plddt(logits)
    assert ((plddt > 0) & (plddt < 100)).all()
    sure = torch.full((1, 50), -30.0)
    sure[0, -1] = 30.0
    assert torch.allclose(expected_plddt(sure), torch.tensor([99.0]))
    assert torch.allclose(expected_error(_pae_logits(3, 0.0), 32.0), torch.full((1, 3, 3), 0.25))


def test_has_clash_on_a_real_complex():
    batch, x, mask = structure_batch("1ay7")
    tokens = {k: v[0] for k, v in batch.items()}
    atom_to_token = tokens["atom_to_token"].long()
    chain, residue = tokens["asym_id"][atom_to_token], tokens["residue_index"][atom_to_token]
    polymer = torch.ones_like(mask[0])
    assert not has_clash(x[0], mask[0], polymer, chain, residue)
    a, b = (chain == 1).nonzero().flatten(), (chain == 2).nonzero().flatten()
    stacked = x[0].clone()
    stacked[b] = x[0, a[: len(b)]] + 0.1                               # chain B on top of chain A
    assert has_clash(torch.stack([x[0], stacked]), mask[0], polymer, chain, residue).tolist() == [False, True]
    ligand_only = torch.zeros_like(polymer)
    assert not has_clash(stacked, mask[0], ligand_only, chain, residue)  # only polymers count


def test_sasa_matches_biotite_and_disorder_detects_exposed_structures():
    structure = pytest.importorskip("biotite.structure")
    batch, x, _ = structure_batch("1ay7")
    tokens = {k: v[0] for k, v in batch.items()}
    chain_a = (tokens["asym_id"][tokens["atom_to_token"].long()] == 1).nonzero().flatten()
    radii = torch.full((len(chain_a),), 1.8)
    ours = shrake_rupley_sasa(x[0, chain_a], radii, n_points=400)
    atoms = structure.AtomArray(len(chain_a))
    atoms.coord, atoms.element = x[0, chain_a].numpy(), np.array(["C"] * len(chain_a))
    reference = structure.sasa(atoms, probe_radius=1.4, point_number=1000, vdw_radii=radii.numpy())
    assert abs(ours.sum().item() - reference.sum()) / reference.sum() < 0.01
    assert np.abs(ours.numpy() - reference).mean() < 1.0
    folded = fraction_disordered(x[0], tokens)
    exploded = fraction_disordered(x[0] * 3.0, tokens)                 # every residue exposed
    assert folded < 0.2 and exploded == 1.0


def test_ranking_score_formula_and_summary():
    ptm, iptm = torch.tensor([0.5, 0.5]), torch.tensor([0.8, float("nan")])
    score = ranking_score(ptm, iptm, torch.tensor([0.1, 0.0]), torch.tensor([False, True]))
    assert torch.allclose(score, torch.tensor([0.8 * 0.8 + 0.2 * 0.5 + 0.05, 0.5 - 100.0]))
    batch, x, _ = structure_batch("1bna")
    tokens = {k: v[0] for k, v in batch.items()}
    _, frames = token_frames(batch)
    n, a = tokens["token_mask"].shape[0], x.shape[-2]
    out = summary_confidences(torch.randn(2, a, 50), _pae_logits(n, 0.0, 2), x[0].expand(2, a, 3),
                              tokens, frames[0])
    d0 = 1.24 * (max(n, 19) - 15) ** (1 / 3) - 1.8                    # 24 tokens: small d0
    perfect = torch.full((2,), 1 / (1 + (0.25 / d0) ** 2))
    assert torch.allclose(out["ptm"], perfect) and torch.allclose(out["iptm"], perfect)
    assert out["chain_pair_iptm"].shape == (2, 2, 2) and out["chain_ptm"].shape == (2, 2)
    assert not out["has_clash"].any() and (out["fraction_disordered"] == 0).all()  # DNA: no protein
    assert torch.allclose(out["ranking_score"], 0.8 * out["iptm"] + 0.2 * out["ptm"])
