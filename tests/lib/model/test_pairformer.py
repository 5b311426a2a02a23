"""Algorithm 17: PairformerBlock / PairformerStack, and the shared row/column dropout."""

import dataclasses

import pytest
import torch

from foldray.model.config import ModelConfig
from foldray.model.pairformer import PairformerStack, dropout_columnwise, dropout_rowwise

CONFIG = ModelConfig.tiny()
C_S, C_Z = CONFIG.c_s, CONFIG.c_z   # 40, 24
N = 13


def make(c_s=C_S, n_block=None, seed=0):
    torch.manual_seed(seed)
    stack = PairformerStack(c_s, C_Z, CONFIG.pairformer, n_block=n_block)
    for p in stack.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return stack.eval()


def inputs(*batch, n=N):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(*batch, n, C_S, generator=g)
    z = torch.randn(*batch, n, n, C_Z, generator=g)
    return s, z


def test_shapes_with_and_without_single():
    s, z = inputs(2)
    mask = torch.ones(2, N, dtype=torch.bool)
    s_out, z_out = make()(s, z, mask)
    assert s_out.shape == s.shape and z_out.shape == z.shape
    s_none, z_pair = make(c_s=None)(None, z, mask)
    assert s_none is None and z_pair.shape == z.shape
    assert len(make(n_block=3).blocks) == 3
    assert len(make().blocks) == CONFIG.pairformer.n_block


def test_padding_invariance():
    stack, n_real = make(), 9
    s, z = inputs(1)
    mask = (torch.arange(N) < n_real)[None]
    with torch.no_grad():
        s_pad, z_pad = stack(s, z, mask)
        s_alone, z_alone = stack(s[:, :n_real], z[:, :n_real, :n_real].contiguous(),
                                 torch.ones(1, n_real, dtype=torch.bool))
    assert torch.isfinite(s_pad).all() and torch.isfinite(z_pad).all()
    assert torch.allclose(s_pad[:, :n_real], s_alone, atol=1e-5)
    assert torch.allclose(z_pad[:, :n_real, :n_real], z_alone, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_chunked_equals_unchunked(chunk_size):
    stack = make()
    s, z = inputs(2)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, 10:] = False
    with torch.no_grad():
        s_full, z_full = stack(s, z, mask)
        s_chunk, z_chunk = stack(s, z, mask, chunk_size=chunk_size)
    assert torch.allclose(s_full, s_chunk, atol=1e-5)
    assert torch.allclose(z_full, z_chunk, atol=1e-5)


def test_dropout_only_in_training_and_reproducible_with_seed():
    stack = make()
    s, z = inputs(1)
    mask = torch.ones(1, N, dtype=torch.bool)
    with torch.no_grad():
        eval_a, eval_b = stack(s, z, mask), stack(s, z, mask)
        assert torch.equal(eval_a[1], eval_b[1]) and torch.equal(eval_a[0], eval_b[0])
        stack.train()
        torch.manual_seed(5)
        train_a = stack(s, z, mask)
        torch.manual_seed(5)
        train_b = stack(s, z, mask)
        train_c = stack(s, z, mask)
    assert torch.equal(train_a[1], train_b[1])
    assert not torch.allclose(train_a[1], eval_a[1], atol=1e-3)
    assert not torch.allclose(train_b[1], train_c[1], atol=1e-3)
    no_dropout = dataclasses.replace(CONFIG.pairformer, dropout=0.0)
    torch.manual_seed(0)
    quiet = PairformerStack(C_S, C_Z, no_dropout)
    quiet.load_state_dict(stack.state_dict())
    with torch.no_grad():
        assert torch.equal(quiet.train()(s, z, mask)[1], quiet.eval()(s, z, mask)[1])


def test_row_and_column_dropout_share_their_mask_along_one_axis():
    x = torch.ones(3, 17, 19, 5)
    torch.manual_seed(0)
    rows = dropout_rowwise(x, 0.5, training=True)
    cols = dropout_columnwise(x, 0.5, training=True)
    assert torch.equal(rows, rows[:, :1].expand_as(rows))      # same for every row i
    assert torch.equal(cols, cols[:, :, :1].expand_as(cols))   # same for every column j
    assert set(rows.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(dropout_rowwise(x, 0.5, training=False), x)


def test_checkpointing_gives_the_same_outputs_and_gradients():
    stack = make().train()
    s, z = inputs(1)
    mask = torch.ones(1, N, dtype=torch.bool)
    grads = []
    for flag in (False, True):
        stack.zero_grad()
        torch.manual_seed(3)   # same dropout masks; checkpoint replays the RNG state
        s_out, z_out = stack(s, z, mask, checkpoint_activations=flag)
        (s_out.square().sum() + z_out.square().sum()).backward()
        grads.append([p.grad.clone() for p in stack.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        assert torch.allclose(plain, checkpointed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c_s", [C_S, None])
def test_gradients_reach_every_parameter(c_s):
    stack = make(c_s=c_s)
    s, z = inputs(2)
    mask = torch.ones(2, N, dtype=torch.bool)
    s_out, z_out = stack(s if c_s else None, z, mask)
    loss = z_out.square().sum() + (s_out.square().sum() if c_s else 0.0)
    loss.backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
