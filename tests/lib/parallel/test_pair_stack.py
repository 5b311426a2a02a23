"""The row-sharded Pairformer stack equals the single-device one: P = 2 and 4 gloo workers
on CPU, an input whose token count is not a multiple of P and has padded tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from foldray.model.config import PairformerConfig
from foldray.model.pairformer import PairformerStack
from foldray.parallel.local import run_local
from foldray.parallel.pair_stack import pairformer_stack
from foldray.parallel.shard import PairShard, padded_size

N_TOKEN, N_REAL, C_S, C_Z = 18, 15, 32, 16


def _config(bias_ik: bool) -> PairformerConfig:
    return dataclasses.replace(PairformerConfig(), n_block=2, c_hidden_mul=16, c_hidden_tri_att=8,
                               n_head_tri=2, n_head=4, tri_att_end_bias_ik=bias_ik)


def _model_and_inputs(bias_ik: bool):
    torch.manual_seed(0)
    stack = PairformerStack(C_S, C_Z, _config(bias_ik)).eval()
    for p in stack.parameters():          # the zero-initialised output layers would hide errors
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, N_TOKEN, C_S, generator=g)
    z = torch.randn(1, N_TOKEN, N_TOKEN, C_Z, generator=g)
    mask = torch.arange(N_TOKEN)[None] < N_REAL
    return stack, s, z, mask


def _sharded(rank: int, world: int, bias_ik: bool):
    stack, s, z, mask = _model_and_inputs(bias_ik)
    n = padded_size(N_TOKEN, world)
    pad = n - N_TOKEN
    s = torch.nn.functional.pad(s, (0, 0, 0, pad))
    z = torch.nn.functional.pad(z, (0, 0, 0, pad, 0, pad))
    mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    shard = PairShard(rank=rank, world=world, n_token=n)
    with torch.no_grad():
        s_out, z_rows = pairformer_stack(stack, s, z[:, shard.row_slice].clone(), mask, shard)
        z_out = shard.gather_rows(z_rows)
    return s_out[:, :N_TOKEN], z_out[:, :N_TOKEN, :N_TOKEN]


@pytest.mark.parametrize(("world", "bias_ik"), [(4, False), (2, True)])   # P=2 plain: the Ray test
def test_sharded_pairformer_equals_single_device(world, bias_ik):
    stack, s, z, mask = _model_and_inputs(bias_ik)
    with torch.no_grad():
        s_ref, z_ref = stack(s, z, mask)
    results = run_local(_sharded, world, bias_ik, threads_per_worker=1)
    real = mask[0]
    for s_out, z_out in results:                      # every rank ends with the same s and z
        torch.testing.assert_close(s_out[:, real], s_ref[:, real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z_out[:, real][:, :, real], z_ref[:, real][:, :, real],
                                   rtol=1e-5, atol=1e-5)
    assert (z_ref[:, real][:, :, real] - z[:, real][:, :, real]).abs().max() > 0.1   # the stack did work


def test_a_token_count_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="multiple of world"):
        PairShard(rank=0, world=4, n_token=18)


def test_sharded_pairformer_through_ray_workers_in_a_placement_group(ray_session):
    """The same equality with the workers placed by Ray (actors/context_parallel.py)."""
    import sys

    import ray

    from foldray.actors.context_parallel import run_sharded

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # tests/ is not on workers' path
    stack, s, z, mask = _model_and_inputs(False)
    with torch.no_grad():
        s_ref, z_ref = stack(s, z, mask)
    results = run_sharded(_sharded, 2, (False,), num_cpus=1)
    real = mask[0]
    for s_out, z_out in results:
        torch.testing.assert_close(s_out[:, real], s_ref[:, real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z_out[:, real][:, :, real], z_ref[:, real][:, :, real],
                                   rtol=1e-5, atol=1e-5)
    assert ray.util.placement_group_table() and all(                   # nothing left reserved
        g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())
