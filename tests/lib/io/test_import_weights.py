"""OpenFold3 weights import into foldray and reproduce the reference's module outputs.

The fixtures (tests/fixtures/equivalence, written by benchmarks/equivalence/run_equivalence.py
with the openfold3 package) hold OpenFold3's random tiny-config weights under its own names,
a real featurized input, and OpenFold3's outputs per module; no reference package is needed.
"""

import dataclasses
import functools
import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from foldray.io.import_weights import convert, import_checkpoint, read_reference_checkpoint
from foldray.io.infer_config import infer_config
from foldray.io.weights import WeightsError, load_weights
from foldray.jobs import import_weights as import_job
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.model.parity import MODULES, errors, run_foldray
from foldray.predictor import named_config
from tests.data_paths import REPO

FIXTURES = REPO / "tests" / "fixtures" / "equivalence"
WEIGHTS = FIXTURES / "openfold3_weights.safetensors"
GOAL = 1e-4            # relative (max |diff| / max |ref|), fp32
N_CYCLE = 2            # as the fixtures were made


@functools.cache
def fixture() -> tuple[dict, dict, dict, dict]:
    ref = read_reference_checkpoint(str(WEIGHTS))
    load = lambda name: dict(np.load(FIXTURES / name))  # noqa: E731
    return ref, load("features.npz"), load("openfold3_inputs.npz"), load("openfold3_outputs.npz")


def module_errors(config: ModelConfig, full_model: bool = True) -> dict[str, dict]:
    ref, features, inputs, outputs = fixture()
    model = AlphaFold3(config)
    model.load_state_dict(convert("openfold3", ref, ModelConfig.tiny_openfold3()))
    ours = run_foldray(model, features, inputs, outputs, n_cycle=N_CYCLE, full_model=full_model)
    return errors(ours, outputs)


def test_imported_weights_reproduce_every_openfold3_module():
    report = module_errors(ModelConfig.tiny_openfold3())
    assert set(report) == set(MODULES)
    worst = {name: module["rel"] for name, module in report.items()}
    assert all(rel < GOAL for rel in worst.values()), worst


@pytest.mark.parametrize("flag, module", [
    ("pairformer.tri_att_end_bias_ik", "pairformer_block"),
    ("atom.shifted_windows", "input_embedder"),
    ("template.padded_slots", "template_embedder"),
])
def test_each_openfold3_flag_is_needed(flag, module):
    """Switching one OpenFold3 behaviour back to foldray's default breaks that module: the
    equivalence above is not a coincidence of small weights."""
    config = ModelConfig.tiny_openfold3()
    section, field = flag.split(".")
    default = getattr(type(getattr(config, section))(), field)
    config = dataclasses.replace(config, **{section: dataclasses.replace(
        getattr(config, section), **{field: default})})
    assert module_errors(config, full_model=False)[module]["rel"] > 1e-2


def test_missing_tensor_is_named():
    ref = dict(fixture()[0])
    del ref["pairformer_stack.blocks.1.pair_stack.tri_mul_in.linear_a_g.weight"]
    with pytest.raises(WeightsError, match=r"missing in the openfold3 checkpoint: "
                       r"pairformer_stack\.blocks\.1\.pair_stack\.tri_mul_in\.linear_a_g\.weight"):
        convert("openfold3", ref, ModelConfig.tiny_openfold3())


def test_extra_tensors_are_named():
    ref = dict(fixture()[0])
    ref["pairformer_stack.blocks.9.attn_pair_bias.linear_z.weight"] = torch.zeros(4, 24)
    ref["sample_diffusion.diffusion_module.layer_norm_a.weight"] = torch.zeros(48)  # twin differs
    with pytest.raises(WeightsError) as err:
        convert("openfold3", ref, ModelConfig.tiny_openfold3())
    message = str(err.value)
    assert "unexpected in the openfold3 checkpoint" in message
    assert "pairformer_stack.blocks.9.attn_pair_bias.linear_z.weight" in message
    assert "sample_diffusion.diffusion_module.layer_norm_a.weight" in message


def test_wrong_config_reports_shapes():
    with pytest.raises(WeightsError, match=r"\d+ misshaped tensors .* c_s 384, c_z 128") as err:
        convert("openfold3", fixture()[0], ModelConfig.full_openfold3())
    assert len(str(err.value)) < 3000       # counts and ten names, not every tensor


def test_config_is_read_from_the_checkpoint(tmp_path, capsys):
    """Without --config the sizes come from the tensors: the fixture's are tiny-openfold3's
    (recycling and sampler settings, which shapes cannot show, are the family's)."""
    config, _ = infer_config("openfold3", fixture()[0])
    tiny = ModelConfig.tiny_openfold3()
    assert config == dataclasses.replace(tiny, n_cycle=4, loss=ModelConfig.full().loss,
                                         diffusion=dataclasses.replace(tiny.diffusion, n_step=200))
    out = tmp_path / "of3.safetensors"
    assert import_job.run(import_job.build_parser().parse_args(
        ["--from", "openfold3", str(WEIGHTS), "--out", str(out)])) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "inferred (custom)"
    assert load_weights(str(out))[1] == config


def test_cli_writes_a_checkpoint_with_its_config(tmp_path, capsys):
    out = tmp_path / "of3.safetensors"
    args = import_job.build_parser().parse_args(
        ["--from", "openfold3", str(WEIGHTS), "--out", str(out), "--config", "tiny-openfold3"])
    assert import_job.run(args) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "tiny-openfold3"
    state, config = load_weights(str(out))
    assert config == ModelConfig.tiny_openfold3() == named_config("tiny-openfold3")
    assert set(state) == set(AlphaFold3(config).state_dict())


def test_cli_reports_unimportable_checkpoints(tmp_path, capsys):
    ref = dict(fixture()[0])
    del ref["distogram.linear.weight" if "distogram.linear.weight" in ref
            else "aux_heads.distogram.linear.weight"]
    bad = tmp_path / "bad.safetensors"
    save_file(ref, str(bad))
    args = import_job.build_parser().parse_args(
        ["--from", "openfold3", str(bad), "--out", str(tmp_path / "x.safetensors"),
         "--config", "tiny-openfold3"])
    assert import_job.run(args) == 2
    assert "aux_heads.distogram.linear.weight" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(WeightsError, match="missing in the protenix checkpoint"):
        import_checkpoint("protenix", str(WEIGHTS), str(tmp_path / "p.safetensors"))


def test_torch_zip_checkpoints_load_and_pickles_are_refused(tmp_path):
    ref = fixture()[0]
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in list(ref.items())[:3]},
                "epoch": 3}, wrapped)
    assert zipfile.is_zipfile(wrapped)
    assert set(read_reference_checkpoint(str(wrapped))) == set(list(ref)[:3])
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="pickle"):
        read_reference_checkpoint(str(legacy))
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "hook": zipfile.ZipInfo("x")}, evil)   # a non-tensor class
    with pytest.raises(WeightsError, match="weights_only"):
        read_reference_checkpoint(str(evil))
