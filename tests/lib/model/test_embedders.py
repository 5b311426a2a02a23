"""Algorithms 2-4 and 22: input embedder, relative position encoding, Fourier embedding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from foldray.features.batch import collate
from foldray.model.config import ModelConfig
from foldray.model.embedders import (
    FourierEmbedding,
    InputFeatureEmbedder,
    RelativePositionEncoding,
    one_hot,
)
from tests.model_helpers import featurized_inputs, randomize

CONFIG = ModelConfig.tiny()
SMALL, BIG = "tiny_protein_ligand_smiles.json", "2q2k.json"


@pytest.fixture(scope="module")
def featurized() -> dict[str, dict[str, np.ndarray]]:
    return featurized_inputs(SMALL, BIG, "102m.json")


# ----------------------------------------------------------------------------- Algorithm 2


@pytest.mark.parametrize("name", [SMALL, BIG, "102m.json"])
def test_input_feature_embedder_shapes_and_token_features(featurized, name):
    batch = collate([featurized[name]])
    torch.manual_seed(0)
    s = InputFeatureEmbedder(CONFIG)(batch)
    n_token = batch["token_mask"].shape[1]
    assert s.shape == (1, n_token, CONFIG.c_s_inputs) and torch.isfinite(s).all()
    c = CONFIG.c_token_inputs
    assert torch.equal(s[..., c:c + 32], batch["restype"])
    assert torch.equal(s[..., c + 32:c + 64], batch["profile"])
    assert torch.equal(s[..., -1], batch["deletion_mean"])
    real = batch["token_mask"][0]
    assert s[0, real, :c].abs().sum(-1).gt(0).all()                  # every real token has atoms
    assert torch.all(s[0, ~real] == 0)


def test_input_feature_embedder_padding_invariance(featurized):
    alone = collate([featurized[SMALL]], atom_buckets=None, token_buckets=None)
    batched = collate([featurized[SMALL], featurized[BIG]])
    module = randomize(InputFeatureEmbedder(CONFIG))
    n_token = alone["token_mask"].shape[1]
    s_alone, s_batched = module(alone), module(batched)
    assert torch.allclose(s_alone, s_batched[:1, :n_token], atol=1e-5)
    big = collate([featurized[BIG]])
    n_big = int(big["token_mask"].sum())
    assert torch.allclose(module(big)[0, :n_big], s_batched[1, :n_big], atol=1e-5)


def test_input_feature_embedder_gradients_reach_every_parameter(featurized):
    module = randomize(InputFeatureEmbedder(CONFIG))
    module(collate([featurized[SMALL]])).square().mean().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- Algorithms 3-4


def test_one_hot_picks_the_nearest_bin():
    bins = torch.tensor([0.0, 1.0, 2.5, 4.0])
    x = torch.tensor([-3.0, 0.4, 0.6, 2.0, 3.3, 9.0])
    assert one_hot(x, bins).argmax(-1).tolist() == [0, 0, 1, 2, 3, 3]
    assert one_hot(x, bins).sum(-1).eq(1).all()
    ints = torch.tensor([[0, 5], [3, 65]])
    assert torch.equal(one_hot(ints, torch.arange(66.0)), nn.functional.one_hot(ints, 66).float())


def two_chain_features() -> dict[str, torch.Tensor]:
    """Chains A and B are copies of entity 0 (sym_id 0, 1); C is a 2-token ligand (entity 1);
    D is a third copy of entity 0 with sym_id 4 (beyond s_max)."""
    #           A        B         C     D
    asym = [0, 0, 0, 1, 1, 1, 2, 2, 3]
    entity = [0, 0, 0, 0, 0, 0, 1, 1, 0]
    sym = [0, 0, 0, 1, 1, 1, 0, 0, 4]
    residue = [1, 2, 3, 1, 2, 40, 1, 1, 1]
    token = list(range(9))
    features = dict(asym_id=asym, entity_id=entity, sym_id=sym, residue_index=residue,
                    token_index=token)
    return {k: torch.tensor(v, dtype=torch.int32)[None] for k, v in features.items()}


# (i, j): (d_residue, d_token, same_entity, d_chain) with r_max = 32, s_max = 2, computed by hand
EXPECTED = {
    (0, 0): (32, 32, 1, 2),
    (0, 1): (31, 65, 1, 2),     # same chain, different residues: token bucket is "far"
    (0, 3): (65, 65, 1, 1),     # other copy of the same entity: sym 0 - 1 + 2
    (3, 0): (65, 65, 1, 3),
    (3, 5): (0, 65, 1, 2),      # 1 - 40 + 32 = -7 -> clipped to 0
    (5, 3): (64, 65, 1, 2),     # 40 - 1 + 32 = 71 -> clipped to 64
    (6, 7): (32, 31, 1, 2),     # ligand atoms of one residue: token offset 6 - 7 + 32
    (7, 6): (32, 33, 1, 2),
    (0, 6): (65, 65, 0, 5),     # different entities: chain bucket 2 s_max + 1
    (6, 0): (65, 65, 0, 5),
    (0, 8): (65, 65, 1, 0),     # sym 0 - 4 + 2 = -2 -> clipped to 0
    (8, 0): (65, 65, 1, 4),     # 4 - 0 + 2 = 6 -> clipped to 4
}


def test_relative_position_encoding_hand_computed():
    module = RelativePositionEncoding(c_z=CONFIG.c_z, r_max=32, s_max=2)
    encoded = module.encode(two_chain_features())[0]                 # [9, 9, 139]
    assert encoded.shape == (9, 9, 66 + 66 + 1 + 6)
    assert torch.all(encoded.sum(-1) == 3 + (encoded[..., 132] == 1).float())  # 3 one-hots + flag
    for (i, j), (d_res, d_tok, same_entity, d_chain) in EXPECTED.items():
        e = encoded[i, j]
        assert int(e[:66].argmax()) == d_res, (i, j)
        assert int(e[66:132].argmax()) == d_tok, (i, j)
        assert int(e[132]) == same_entity, (i, j)
        assert int(e[133:].argmax()) == d_chain, (i, j)
    out = module(two_chain_features())
    assert out.shape == (1, 9, 9, CONFIG.c_z)
    assert torch.allclose(out[0], encoded @ module.linear.weight.T)


def test_relative_position_encoding_real_input_padding_invariance_and_gradient(featurized):
    module = RelativePositionEncoding.from_config(CONFIG)
    alone = collate([featurized[BIG]], token_buckets=None)
    batched = collate([featurized[SMALL], featurized[BIG], featurized["102m.json"]])
    n = alone["token_mask"].shape[1]
    out_alone, out_batched = module(alone), module(batched)
    assert out_batched.shape == (3, 256, 256, CONFIG.c_z)
    assert torch.allclose(out_alone[0], out_batched[1, :n, :n], atol=1e-6)
    # 2q2k has several chains: some pairs are inter-chain, with the "far" residue bucket
    d_res = module.encode(alone)[0, ..., :66].argmax(-1)
    assert (d_res == 65).any() and (d_res == 32).any()
    out_alone.square().mean().backward()
    assert module.linear.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Algorithm 22


def test_fourier_embedding_is_fixed_saved_and_not_trained():
    torch.manual_seed(123)
    first = FourierEmbedding(CONFIG.diffusion.c_fourier)
    torch.manual_seed(456)
    second = FourierEmbedding(CONFIG.diffusion.c_fourier)
    assert torch.equal(first.w, second.w) and torch.equal(first.b, second.b)
    assert not torch.equal(first.w, FourierEmbedding(CONFIG.diffusion.c_fourier, seed=1).w)
    assert list(first.parameters()) == []
    assert set(first.state_dict()) == {"w", "b"}
    t = torch.tensor([[-1.5, 0.0, 0.25], [2.0, 3.0, -0.1]])
    out = first(t)
    assert out.shape == (2, 3, CONFIG.diffusion.c_fourier)
    expected = torch.cos(2 * math.pi * (t[..., None] * first.w + first.b))
    assert torch.allclose(out, expected)
    assert torch.equal(out, second(t))
    other = FourierEmbedding(CONFIG.diffusion.c_fourier, seed=7)
    other.load_state_dict(first.state_dict())
    assert torch.equal(other(t), out)
