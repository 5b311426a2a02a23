"""RuntimeConfig.compile: torch.compile of the repeated blocks changes speed, not results."""

import copy

import torch

from foldray.jobs.predict import build_parser, runtime_from_args
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.predictor import Predictor
from tests.model_helpers import randomize, structure_batch


def test_compiled_blocks_give_the_eager_trunk_and_denoising_step():
    torch.manual_seed(0)
    eager = randomize(AlphaFold3(ModelConfig.tiny()).eval(), seed=3)
    compiled = copy.deepcopy(eager)
    n_compiled = compiled.compile_blocks()
    config = ModelConfig.tiny()
    assert n_compiled >= config.pairformer.n_block + config.msa.n_block      # every repeated block
    assert compiled.state_dict().keys() == eager.state_dict().keys()        # checkpoints still load
    batch, x_true, _ = structure_batch("1l2y")
    with torch.no_grad():
        want = eager.run_trunk(batch, n_cycle=1)
        got = compiled.run_trunk(batch, n_cycle=1)
        assert torch.allclose(got.z, want.z, rtol=1e-4, atol=1e-4 * want.z.abs().max())
        assert torch.allclose(got.s, want.s, rtol=1e-4, atol=1e-4 * want.s.abs().max())
        x = (x_true + torch.randn_like(x_true))[:, None]                       # [1, 1, N_atom, 3]
        step = [m.diffusion_module(x, 10.0, batch, want.s_inputs, want.s, want.z)
                for m in (eager, compiled)]
    assert torch.allclose(step[1], step[0], atol=1e-4 * step[0].abs().max())


def test_cli_runtime_options_reach_the_predictor():
    args = build_parser().parse_args(["in.json", "--out", "o", "--diffusion-chunk", "2", "--kernels",
                                      "torch", "--chunk-size", "16", "--compile"])
    runtime = runtime_from_args(args)
    assert (runtime.diffusion_chunk, runtime.kernels, runtime.chunk_size, runtime.compile) == (
        2, "torch", 16, True)
    predictor = Predictor.load(None, config="tiny", runtime=runtime)
    assert predictor.model.pairformer.blocks[0]._compiled_call_impl is not None   # compiled on load
