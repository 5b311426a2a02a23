"""Protenix's constraint embedder in foldray: equal to the reference on its own weights and
inputs (fixture written by benchmarks/equivalence/reference_constraint.py in the protenix 2.0.0
venv), imported from constraint checkpoints, off by default, and a job with restraints is
predicted with it and refused by a model without it."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from foldray.errors import InputError
from foldray.features.batch import collate
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.io.import_protenix import map_constraints
from foldray.io.import_weights import _Mapper, convert
from foldray.io.infer_config import infer_config
from foldray.io.outputs import OutputOptions
from foldray.io.weights import WeightsError, save_weights
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.model.constraint_embedder import ConstraintEmbedder
from foldray.predictor import Predictor, PredictSettings
from tests.data_paths import INPUTS, REPO
from tests.import_shapes import load_fixture, random_state

FIXTURE = REPO / "tests" / "fixtures" / "equivalence" / "constraint.npz"
SHAPES = REPO / "tests" / "fixtures" / "import_shapes" / "protenix_base_constraint_v0.5.0.json"
POCKET = {"type": "pocket", "binder": "B", "residues": [["A", 5], ["A", 6], ["A", 9]], "maxDistance": 6}


def test_embedder_equals_protenix_on_its_weights():
    data = dict(np.load(FIXTURE))
    ref = {k.removeprefix("weight:"): torch.from_numpy(v).float() for k, v in data.items()
           if k.startswith("weight:")}
    c_z = int(data["c_z"])
    hidden = ref["constraint_embedder.substructure_z_embedder.transformer.layers.0.linear1.weight"].shape[1]
    config = dataclasses.replace(ModelConfig.tiny_protenix(), c_z=c_z, constraint_embedder=True,
                                 constraint_substructure_hidden=hidden)
    embedder = ConstraintEmbedder(c_z, hidden)
    expected = {f"constraint_embedder.{k}": v.shape for k, v in embedder.state_dict().items()}
    m = _Mapper(ref, expected)
    map_constraints(m, config)
    assert m.used == set(ref) and not m.missing_ref and set(m.out) == set(expected)
    embedder.load_state_dict({k.removeprefix("constraint_embedder."): v for k, v in m.out.items()})
    features = {f"constraint_{k}": torch.from_numpy(data[f"input:{k}"])
                for k in ("pocket", "contact", "contact_atom")}
    want = torch.from_numpy(data["output:z_constraint"])
    z0 = torch.zeros_like(want)
    with torch.no_grad():
        got = embedder(features, z0)
        none = embedder({}, z0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - none).abs().max() > 0.1       # the restraints, not the constant, carry it


def test_constraint_checkpoint_imports_and_esm_still_refused():
    data = load_fixture(SHAPES)
    ref = random_state(data, shared_buffer=True)
    with pytest.raises(WeightsError, match="ESM"):
        infer_config("protenix", ref)
    ref = {k: v for k, v in ref.items() if not k.startswith("input_embedder.linear_esm.")}
    config, _ = infer_config("protenix", ref)
    assert config.constraint_embedder and config.constraint_substructure_hidden == 128
    state = convert("protenix", ref, config)
    assert state["constraint_embedder.pocket.weight"].shape == (config.c_z, 1)
    only = {k: v for k, v in ref.items() if k.startswith("constraint_embedder.")}
    off = dataclasses.replace(config, constraint_embedder=False, constraint_substructure_hidden=0)
    with pytest.raises(WeightsError, match="constraint_embedder off"):    # never dropped silently
        map_constraints(_Mapper(only, {}), off)


def test_switch_is_off_by_default_and_old_configs_load():
    for config in (ModelConfig.tiny(), ModelConfig.full_protenix(), ModelConfig.full_openfold3()):
        assert not config.constraint_embedder
    saved = ModelConfig.tiny().to_dict()
    del saved["constraint_embedder"], saved["constraint_substructure_hidden"]
    assert ModelConfig.from_dict(saved) == ModelConfig.tiny()
    assert not any(k.startswith("constraint") for k in AlphaFold3(ModelConfig.tiny()).state_dict())


def _job(restraints):
    data = json.loads((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
    if restraints:
        data["restraints"] = restraints
    return parse_af3_json(json.dumps(data), source="pocket.json")[0]


def test_pocket_job_predicts_with_the_embedder_and_is_refused_without(tmp_path):
    config = dataclasses.replace(ModelConfig.tiny(), constraint_embedder=True)
    torch.manual_seed(0)
    model = AlphaFold3(config).eval()
    with torch.no_grad():
        for p in model.constraint_embedder.parameters():
            p.normal_()
    job, plain = _job([POCKET]), _job(None)
    with_r, without = featurize_job(job), featurize_job(plain)
    settings = PredictSettings(n_sample=1, n_cycle=1, n_step=2, outputs=OutputOptions(save_embeddings=True))
    # one forward pass for both (the job without restraints gets zero features): only the
    # pocket can make their trunk embeddings differ (a fresh model's heads are zero-initialised)
    pocket, free = Predictor(model).predict_batch([(with_r, 1), (without, 1)], settings)
    assert np.isfinite(pocket[0].coords).all()
    pair, pair_free = pocket[0].seed_arrays["pair_embeddings"], free[0].seed_arrays["pair_embeddings"]
    assert np.abs(pair - pair_free).max() > 1e-3

    with pytest.raises(InputError, match="random weights.*no constraint embedder") as err:
        Predictor.load(config="tiny").predict_job(job, settings)
    assert err.value.job == job.name and err.value.field == "restraints"
    path = tmp_path / "plain.safetensors"
    plain_model = AlphaFold3(ModelConfig.tiny())
    save_weights(str(path), plain_model.state_dict(), plain_model.config)
    with pytest.raises(InputError, match=f"checkpoint {path}") as err:
        Predictor.load(str(path)).predict_job(job, settings)
    with pytest.raises(ValueError, match="no constraint embedder"):      # any path past the predictor
        plain_model.run_trunk(collate([with_r.features]), n_cycle=1)
