"""Algorithms 5-7: sequence-local atom attention on real featurized inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foldray.features.batch import collate
from foldray.model.atom_attention import (
    AtomAttentionDecoder,
    AtomAttentionEncoder,
    AtomTransformer,
    AtomWindows,
    atoms_to_tokens,
    tokens_to_atoms,
)
from foldray.model.config import ModelConfig
from tests.model_helpers import featurized_inputs, randomize

CONFIG = ModelConfig.tiny()
ATOM = CONFIG.atom
C_TOKEN = CONFIG.diffusion.c_token
SMALL, BIG = "tiny_protein_ligand_smiles.json", "2q2k.json"


@pytest.fixture(scope="module")
def featurized() -> dict[str, dict[str, np.ndarray]]:
    return featurized_inputs(SMALL, BIG, "102m.json")


def trunk_inputs(batch: dict[str, torch.Tensor], n_sample: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    n_batch, n_token = batch["token_mask"].shape
    n_atom = batch["atom_mask"].shape[1]
    r = 5.0 * torch.randn(n_batch, n_sample, n_atom, 3, generator=generator)
    s = torch.randn(n_batch, n_token, CONFIG.c_s, generator=generator)
    z = torch.randn(n_batch, n_token, n_token, CONFIG.c_z, generator=generator)
    return r, s, z


def diffusion_modules() -> tuple[AtomAttentionEncoder, AtomAttentionDecoder]:
    torch.manual_seed(0)
    encoder = randomize(AtomAttentionEncoder(ATOM, C_TOKEN, CONFIG.c_s, CONFIG.c_z), 1).eval()
    decoder = randomize(AtomAttentionDecoder(ATOM, C_TOKEN), 2).eval()
    return encoder, decoder


# ----------------------------------------------------------------------------- windows


def si_window_mask(n_atom: int, n_queries: int = 32, n_keys: int = 128) -> torch.Tensor:
    """Algorithm 7 line 1 as written: [N_atom, N_atom] True where beta_lm = 0."""
    idx = torch.arange(n_atom, dtype=torch.float64)
    centres = torch.arange(n_queries / 2 - 0.5, n_atom + n_queries, n_queries, dtype=torch.float64)
    in_q = (idx[:, None] - centres).abs() < n_queries / 2            # [N, n_c]
    in_k = (idx[:, None] - centres).abs() < n_keys / 2
    return (in_q.double() @ in_k.double().T) > 0


@pytest.mark.parametrize("n_atom", [1, 31, 32, 100, 300])
def test_windows_realise_exactly_the_si_mask_without_duplicate_keys(n_atom):
    windows = AtomWindows.build(n_atom)
    assert windows.n_block == math.ceil(n_atom / 32) and windows.n_pad % 32 == 0
    assert windows.key_index.shape == (windows.n_block, 128)
    assert windows.key_index.min() >= 0 and windows.key_index.max() < windows.n_pad
    realised = torch.zeros(windows.n_pad, n_atom, dtype=torch.bool)
    for b in range(windows.n_block):
        keys = windows.key_index[b][windows.key_valid[b]]
        assert len(torch.unique(keys)) == len(keys)                  # each real key once
        realised[32 * b:32 * b + 32, keys] = True
    assert torch.equal(realised[:n_atom], si_window_mask(n_atom))
    # the SI's first centre is 15.5: block 0 sees atoms 0..79, block 1 sees 0..111
    assert windows.key_index[0][windows.key_valid[0]].tolist() == list(range(min(80, n_atom)))


def test_windows_with_other_block_sizes():
    windows = AtomWindows.build(50, n_queries=8, n_keys=24)
    assert windows.n_block == 7
    realised = torch.zeros(windows.n_pad, 50, dtype=torch.bool)
    for b in range(windows.n_block):
        realised[8 * b:8 * b + 8, windows.key_index[b][windows.key_valid[b]]] = True
    assert torch.equal(realised[:50], si_window_mask(50, 8, 24))
    with pytest.raises(ValueError, match="even difference"):
        AtomWindows.build(50, n_queries=8, n_keys=23)


@pytest.mark.parametrize("n_atom", [70, 300])
def test_atom_transformer_equals_dense_attention_with_si_bias(n_atom):
    """Blocked attention == full N_atom x N_atom attention with the SI's beta (and padding mask)."""
    torch.manual_seed(0)
    module = randomize(AtomTransformer(ATOM.c_atom, ATOM.c_atompair, n_block=2, n_head=ATOM.n_head))
    q, c = torch.randn(2, n_atom, ATOM.c_atom), torch.randn(2, n_atom, ATOM.c_atom)
    p_full = torch.randn(2, n_atom, n_atom, ATOM.c_atompair)
    atom_mask = torch.ones(2, n_atom, dtype=torch.bool)
    atom_mask[1, n_atom - 20:] = False                               # sample 1 is padded
    windows = module.windows(n_atom)
    rows = windows.queries(torch.arange(n_atom), dim=-1).clamp(max=n_atom - 1)  # [B, q]
    cols = windows.key_index.clamp(max=n_atom - 1)                              # [B, k]
    p_blocked = p_full[:, rows[:, :, None], cols[:, None, :]]                   # [2, B, q, k, c]
    local = module(q, c, p_blocked, atom_mask)

    allowed = si_window_mask(n_atom)[None] & atom_mask[:, None, :]
    beta = torch.where(allowed, 0.0, -1e10)
    dense = module.transformer(q, c, p_full, beta=beta)
    assert torch.allclose(local[0], dense[0], atol=1e-5)
    real = atom_mask[1]
    assert torch.allclose(local[1, real], dense[1, real], atol=1e-5)


def test_atom_transformer_shares_conditioning_across_samples():
    torch.manual_seed(0)
    module = randomize(AtomTransformer(ATOM.c_atom, ATOM.c_atompair, n_block=1, n_head=ATOM.n_head))
    n_atom = 50
    windows = module.windows(n_atom)
    q = torch.randn(1, 3, n_atom, ATOM.c_atom)
    c = torch.randn(1, n_atom, ATOM.c_atom)
    p = torch.randn(1, windows.n_block, 32, 128, ATOM.c_atompair)
    mask = torch.ones(1, n_atom, dtype=torch.bool)
    batched = module(q, c, p, mask)
    for i in range(3):
        assert torch.allclose(batched[:, i], module(q[:, i], c, p, mask), atol=1e-5)
    with pytest.raises(ValueError, match="blocked shape"):
        module(q, c, p[:, :1], mask)


# ----------------------------------------------------------------------------- layout helpers


def test_atoms_to_tokens_is_a_masked_mean_and_tokens_to_atoms_broadcasts(featurized):
    batch = collate([featurized[SMALL], featurized[BIG]])
    atom_to_token, atom_mask = batch["atom_to_token"], batch["atom_mask"]
    n_token = batch["token_mask"].shape[1]
    x = torch.randn(*atom_mask.shape, 5)
    x[~atom_mask] = 1e3                                              # padding must not leak
    mean = atoms_to_tokens(x, atom_to_token, atom_mask, n_token)
    for b in range(2):
        tokens = atom_to_token[b][atom_mask[b]].long()
        for t in (0, int(tokens.max()) // 2, int(tokens.max())):
            expected = x[b][atom_mask[b]][tokens == t].mean(0)
            assert torch.allclose(mean[b, t], expected, atol=1e-5)
        assert torch.all(mean[b, ~batch["token_mask"][b]] == 0)
    y = torch.randn(2, 3, n_token, 4)                                # with a sample axis
    atoms = tokens_to_atoms(y, atom_to_token, atom_mask)
    assert atoms.shape == (2, 3, atom_mask.shape[1], 4)
    l = int(atom_mask[1].sum()) - 1
    assert torch.equal(atoms[1, :, l], y[1, :, atom_to_token[1, l]])
    assert torch.all(atoms[0, :, ~atom_mask[0]] == 0)


# ----------------------------------------------------------------------------- encoder / decoder


@pytest.mark.parametrize("name", [SMALL, BIG, "102m.json"])
def test_encoder_decoder_shapes_on_real_features(featurized, name):
    batch = collate([featurized[name]])
    n_token, n_atom = batch["token_mask"].shape[1], batch["atom_mask"].shape[1]
    n_block = math.ceil(n_atom / ATOM.n_queries)
    plain = AtomAttentionEncoder(ATOM, CONFIG.c_token_inputs)
    a, q, c, p = plain(batch)
    assert a.shape == (1, n_token, CONFIG.c_token_inputs)
    assert q.shape == c.shape == (1, n_atom, ATOM.c_atom)
    assert p.shape == (1, n_block, ATOM.n_queries, ATOM.n_keys, ATOM.c_atompair)

    encoder, decoder = diffusion_modules()
    r, s, z = trunk_inputs(batch, n_sample=3)
    a, q, c, p = encoder(batch, r, s, z)
    assert a.shape == (1, 3, n_token, C_TOKEN)
    assert q.shape == (1, 3, n_atom, ATOM.c_atom) and c.shape == (1, n_atom, ATOM.c_atom)
    assert p.shape == (1, n_block, ATOM.n_queries, ATOM.n_keys, ATOM.c_atompair)
    r_update = decoder(a, q, c, p, batch)
    assert r_update.shape == r.shape and torch.isfinite(r_update).all()


def test_unpadded_atom_count_not_a_multiple_of_32(featurized):
    batch = collate([featurized[SMALL]], atom_buckets=None, token_buckets=None)
    assert batch["atom_mask"].shape[1] % 32 != 0
    encoder, decoder = diffusion_modules()
    r, s, z = trunk_inputs(batch)
    a, q, c, p = encoder(batch, r, s, z)
    assert q.shape[-2] == batch["atom_mask"].shape[1]
    assert decoder(a, q, c, p, batch).shape == r.shape


def test_samples_are_independent_and_conditioning_can_be_cached(featurized):
    batch = collate([featurized[SMALL]])
    encoder, decoder = diffusion_modules()
    r, s, z = trunk_inputs(batch, n_sample=3)
    a, q, c, p = encoder(batch, r, s, z)
    r_update = decoder(a, q, c, p, batch)
    cached = encoder(batch, r, conditioning=encoder.conditioning(batch, s, z))
    assert torch.equal(cached[0], a) and torch.equal(cached[1], q)
    a1, q1, c1, p1 = encoder(batch, r[:, 1], s, z)
    assert torch.allclose(a1, a[:, 1], atol=1e-5) and torch.allclose(q1, q[:, 1], atol=1e-5)
    assert torch.allclose(decoder(a1, q1, c1, p1, batch), r_update[:, 1], atol=1e-5)


def test_padding_invariance_alone_vs_batched_with_bigger(featurized):
    """Sample SMALL collated alone (N_atom=169, not a multiple of 32) and padded into a batch with
    BIG (bucketed to 1536 atoms): real token, atom and pair outputs agree."""
    alone = collate([featurized[SMALL]], atom_buckets=None, token_buckets=None)
    batched = collate([featurized[SMALL], featurized[BIG]])
    n_token, n_atom = alone["token_mask"].shape[1], alone["atom_mask"].shape[1]
    encoder, decoder = diffusion_modules()
    r, s, z = trunk_inputs(batched)
    out_b = encoder(batched, r, s, z)
    upd_b = decoder(*out_b, batched)
    out_a = encoder(alone, r[:1, :, :n_atom], s[:1, :n_token], z[:1, :n_token, :n_token])
    upd_a = decoder(*out_a, alone)
    assert torch.allclose(out_a[0], out_b[0][:1, :, :n_token], atol=1e-5)       # a
    assert torch.allclose(out_a[1], out_b[1][:1, :, :n_atom], atol=1e-5)        # q_skip
    assert torch.allclose(out_a[2], out_b[2][:1, :n_atom], atol=1e-5)           # c_skip
    assert torch.allclose(upd_a, upd_b[:1, :, :n_atom], atol=1e-5)              # r_update
    windows = AtomWindows.build(n_atom)
    pairs = windows.pair_mask(alone["atom_mask"])                               # [1, B, q, k]
    p_a, p_b = out_a[3], out_b[3][:1, :windows.n_block]
    assert torch.allclose(p_a[pairs], p_b[pairs], atol=1e-5)

    plain = randomize(AtomAttentionEncoder(ATOM, CONFIG.c_token_inputs), 3)
    a_alone, a_batched = plain(alone)[0], plain(batched)[0]
    assert torch.allclose(a_alone, a_batched[:1, :n_token], atol=1e-5)


def test_padded_atoms_never_reach_real_outputs(featurized):
    """Garbage in every padded atom's features, coordinates and token index changes nothing real."""
    batch = collate([featurized[SMALL], featurized[BIG]])
    encoder, decoder = diffusion_modules()
    r, s, z = trunk_inputs(batch)
    pad = ~batch["atom_mask"]
    noisy = {k: v.clone() for k, v in batch.items()}
    generator = torch.Generator().manual_seed(5)
    for name in ("ref_pos", "ref_charge", "ref_mask", "ref_element", "ref_atom_name_chars"):
        noise = torch.randn(noisy[name].shape, generator=generator)
        noisy[name][pad] = 10 * noise[pad]
    noisy["ref_space_uid"][pad] = noisy["ref_space_uid"][0, 0]          # same uid as real atom 0
    noisy["atom_to_token"][pad] = 3                                     # a real token
    r_noisy = r.clone()
    r_noisy[pad[:, None].expand_as(r[..., 0])] = 1e3
    base = encoder(batch, r, s, z)
    perturbed = encoder(noisy, r_noisy, s, z)
    real = batch["atom_mask"][:, None, :, None]
    assert torch.allclose(base[0], perturbed[0], atol=1e-5)
    assert torch.allclose(base[1] * real, perturbed[1] * real, atol=1e-5)
    assert torch.allclose(decoder(*base, batch) * real, decoder(*perturbed, noisy) * real, atol=1e-5)


def test_zero_inits_give_a_zero_position_update_and_no_trunk_effect(featurized):
    batch = collate([featurized[SMALL]])
    encoder = AtomAttentionEncoder(ATOM, C_TOKEN, CONFIG.c_s, CONFIG.c_z)
    decoder = AtomAttentionDecoder(ATOM, C_TOKEN)
    r, s, z = trunk_inputs(batch)
    out = encoder(batch, r, s, z)
    assert torch.equal(out[0], encoder(batch, r, s + 1.0, 2 * z)[0])   # trunk terms start at 0
    assert torch.all(decoder(*out, batch) == 0)


def test_gradients_reach_every_parameter_and_trunk_input(featurized):
    batch = collate([featurized[SMALL]])
    encoder, decoder = diffusion_modules()
    encoder.train()
    decoder.train()
    r, s, z = trunk_inputs(batch)
    s.requires_grad_(True)
    z.requires_grad_(True)
    out = encoder(batch, r, s, z)
    loss = decoder(*out, batch).square().mean() + out[0].square().mean()
    loss.backward()
    for module in (encoder, decoder):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert s.grad.abs().sum() > 0 and z.grad.abs().sum() > 0

    plain = randomize(AtomAttentionEncoder(ATOM, CONFIG.c_token_inputs))
    plain(batch)[0].square().mean().backward()
    for name, p in plain.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trunk_arguments_are_checked(featurized):
    batch = collate([featurized[SMALL]])
    r, s, z = trunk_inputs(batch)
    with pytest.raises(ValueError, match="both c_s and c_z"):
        AtomAttentionEncoder(ATOM, C_TOKEN, c_s=CONFIG.c_s)
    with pytest.raises(ValueError, match="r_noisy"):
        AtomAttentionEncoder(ATOM, C_TOKEN, CONFIG.c_s, CONFIG.c_z)(batch, None, s, z)
    with pytest.raises(ValueError, match="needs s_trunk and z_trunk"):
        AtomAttentionEncoder(ATOM, C_TOKEN, CONFIG.c_s, CONFIG.c_z)(batch, r, s, None)
    with pytest.raises(ValueError, match="r_noisy"):
        AtomAttentionEncoder(ATOM, C_TOKEN)(batch, r)


def test_full_config_sizes_build():
    atom = ModelConfig.full().atom
    encoder = AtomAttentionEncoder(atom, 768, 384, 128)
    assert encoder.embed_ref.in_features == 389 and encoder.to_token.out_features == 768
    assert encoder.transformer.n_queries == 32 and encoder.transformer.n_keys == 128
