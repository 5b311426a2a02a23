"""Protenix weights import into foldray and reproduce the reference's module outputs.

The fixtures (tests/fixtures/equivalence/protenix_*, written by
`benchmarks/equivalence/run_equivalence.py --reference protenix` with the protenix 2.0.0
package) hold Protenix's random tiny-config weights under its own names, a real featurized
input (Trp-cage + ibuprofen), and Protenix's outputs per module; no reference package needed.
"""

import dataclasses
import functools
import json
import re

import numpy as np
import pytest
import torch

from foldray.features.batch import collate
from foldray.io.import_weights import convert, read_reference_checkpoint
from foldray.io.infer_config import infer_config
from foldray.io.weights import WeightsError, load_weights
from foldray.jobs import import_weights as import_job
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.model.diffusion import noise_schedule
from foldray.model.parity import errors, run_foldray
from foldray.predictor import named_config
from tests.data_paths import REPO

FIXTURES = REPO / "tests" / "fixtures" / "equivalence"
WEIGHTS = FIXTURES / "protenix_weights.safetensors"
GOAL = 1e-4            # relative (max |diff| / max |ref|), fp32
N_CYCLE = 2            # as the fixtures were made
# Protenix records no template module (template-free input: its embedder adds nothing) and
# no fixed-noise sampler run; every other module of the comparison is checked.
PROTENIX_MODULES = {"input_embedder", "msa_embedder", "msa_block", "pairformer_block", "trunk",
                    "diffusion_module", "confidence_head", "distogram_head"}


@functools.cache
def fixture() -> tuple[dict, dict, dict, dict]:
    ref = read_reference_checkpoint(str(WEIGHTS))
    load = lambda name: dict(np.load(FIXTURES / name))  # noqa: E731
    return (ref, load("protenix_features.npz"), load("protenix_inputs.npz"),
            load("protenix_outputs.npz"))


@functools.cache
def imported() -> dict[str, torch.Tensor]:
    return convert("protenix", fixture()[0], ModelConfig.tiny_protenix())


def module_errors(config: ModelConfig) -> dict[str, dict]:
    _, features, inputs, outputs = fixture()
    model = AlphaFold3(config)
    model.load_state_dict(imported())
    return errors(run_foldray(model, features, inputs, outputs, n_cycle=N_CYCLE), outputs)


def test_imported_weights_reproduce_every_protenix_module():
    report = module_errors(ModelConfig.tiny_protenix())
    assert set(report) == PROTENIX_MODULES
    worst = {name: module["rel"] for name, module in report.items()}
    assert all(rel < GOAL for rel in worst.values()), worst


@pytest.mark.parametrize("flag, module", [
    ("atom.chained_key_norm", "input_embedder"),
    ("confidence.norm_s_trunk", "confidence_head"),
    ("confidence.raw_distance", "confidence_head"),
    ("confidence.pde_symmetric_input", "confidence_head"),
])
def test_each_protenix_flag_is_needed(flag, module):
    """Switching one Protenix behaviour back to foldray's default breaks that module: the
    equivalence above is not a coincidence of small weights. Flags that change parameter
    shapes (z_init_from_s_init) or add one that a default model lacks (the distogram bias)
    are caught by the importer's shape and missing/extra checks instead."""
    config = ModelConfig.tiny_protenix()
    section, field = flag.split(".")
    default = getattr(type(getattr(config, section))(), field)
    config = dataclasses.replace(config, **{section: dataclasses.replace(
        getattr(config, section), **{field: default})})
    model = AlphaFold3(config).eval()
    own = model.state_dict()       # turning a flag off may drop a parameter (norm_s_trunk, ...)
    missing = model.load_state_dict({k: v for k, v in imported().items() if k in own})
    assert not missing.missing_keys
    _, features, _, outputs = fixture()
    f = collate([features], token_buckets=None, atom_buckets=None)
    ref = {k: torch.as_tensor(v) for k, v in outputs.items()}
    with torch.no_grad():
        if module == "input_embedder":
            ours = {"input_embedder.s_inputs": model.input_embedder(f)}
        else:
            conf = model.confidence_head(
                ref["trunk.s_inputs"], ref["trunk.s"], ref["trunk.z"], ref["heads.x_pred"],
                atom_to_token=f["atom_to_token"], token_rep_atom=f["token_rep_atom"],
                token_mask=f["token_mask"], atom_mask=f["atom_mask"])
            ours = {"heads.plddt_logits": conf.plddt_logits, "heads.pae_logits": conf.pae_logits,
                    "heads.pde_logits": conf.pde_logits,
                    "heads.experimentally_resolved_logits": conf.resolved_logits}
    worst = max(float((ours[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ours)
    assert worst > 1e-2, worst


def test_sampler_noise_levels_match_protenix():
    """Algorithm 18's schedule as Protenix computes it (its last level is 0)."""
    levels = noise_schedule(8, ModelConfig.tiny_protenix().diffusion)
    expected = torch.as_tensor(fixture()[3]["sampler.noise_schedule"])
    assert levels[-1] == 0 and torch.allclose(levels, expected, rtol=1e-5, atol=0)
    assert noise_schedule(8, ModelConfig.tiny().diffusion)[-1] > 0      # foldray's default


@pytest.mark.parametrize("name", [
    "msa_module.blocks.0.msa_stack.msa_pair_weighted_averaging.linear_no_bias_mg.weight",
    "diffusion_module.atom_attention_encoder.linear_no_bias_f.weight",   # one part of a fused weight
])
def test_missing_tensor_is_named(name):
    ref = dict(fixture()[0])
    del ref[name]
    with pytest.raises(WeightsError, match=r"missing in the protenix checkpoint: " + re.escape(name)):
        convert("protenix", ref, ModelConfig.tiny_protenix())


def test_extra_tensors_are_named():
    ref = dict(fixture()[0])
    ref["confidence_head.linear_no_bias_extra.weight"] = torch.zeros(97, 24)
    ref["pairformer_stack.blocks.7.tri_att_start.linear.weight"] = torch.zeros(4, 24)
    with pytest.raises(WeightsError) as err:
        convert("protenix", ref, ModelConfig.tiny_protenix())
    message = str(err.value)
    assert "0 missing, 2 unexpected, 0 misshaped" in message
    assert "unexpected in the protenix checkpoint" in message
    assert "confidence_head.linear_no_bias_extra.weight" in message
    assert "pairformer_stack.blocks.7.tri_att_start.linear.weight" in message


def test_esm_checkpoints_are_refused_by_name():
    """foldray computes no ESM embeddings: an ESM variant is refused in one sentence, not as a
    list of unmapped tensors."""
    ref = dict(fixture()[0])
    ref["input_embedder.linear_esm.weight"] = torch.zeros(97, 2560)
    with pytest.raises(WeightsError, match=r"ESM embedding input .* 1 tensors under 'input_embedder"):
        convert("protenix", ref, ModelConfig.tiny_protenix())


def test_config_is_read_from_the_checkpoint():
    """Without a named config the sizes come from the tensors: the fixture's are tiny-protenix's
    (the recycling and sampler settings, which shapes cannot show, are the family's)."""
    config, _ = infer_config("protenix", fixture()[0])
    tiny = ModelConfig.tiny_protenix()
    assert config == dataclasses.replace(tiny, n_cycle=10, loss=ModelConfig.full().loss,
                                         diffusion=dataclasses.replace(tiny.diffusion, n_step=200))


def test_wrong_distance_bins_are_refused():
    ref = dict(fixture()[0])
    ref["confidence_head.lower_bins"] = ref["confidence_head.lower_bins"] + 0.5
    with pytest.raises(WeightsError, match="lower_bins"):
        convert("protenix", ref, ModelConfig.tiny_protenix())


def test_wrong_config_reports_shapes():
    with pytest.raises(WeightsError, match=r"\d+ misshaped tensors .* c_s 384, c_z 128"):
        convert("protenix", fixture()[0], ModelConfig.full_protenix())


def test_cli_writes_a_protenix_checkpoint(tmp_path, capsys):
    out = tmp_path / "px.safetensors"
    args = import_job.build_parser().parse_args(
        ["--from", "protenix", str(WEIGHTS), "--out", str(out), "--config", "tiny-protenix"])
    assert import_job.run(args) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "tiny-protenix"
    state, config = load_weights(str(out))
    assert config == ModelConfig.tiny_protenix() == named_config("tiny-protenix")
    assert set(state) == set(AlphaFold3(config).state_dict())
    assert all(torch.equal(state[k], v) for k, v in imported().items())
