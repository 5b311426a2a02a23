"""`foldray predict --devices N`: the same structures and confidences as one device (two
gloo CPU processes here), and clear errors for what cannot run sharded."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from foldray.features.pipeline import featurize_seeds
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.cli import main
from foldray.model.config import ModelConfig
from foldray.parallel.predict import ShardedPredictor
from foldray.predictor import Predictor, PredictSettings
from tests.data_paths import INPUTS

JOB = INPUTS / "tiny_protein_ligand_smiles.json"     # 35 tokens: padded to 36 for 2 workers
FAST = ["--samples", "2", "--steps", "2", "--recycles", "1", "--quiet"]


@pytest.mark.parametrize("restraints", [False, True])
def test_sharded_predictor_equals_one_device(restraints):
    """Also for a model with Protenix's constraint embedder and a job with a pocket and a
    contact: the sharded trunk adds the restraints on each rank's rows of z."""
    data = json.loads(JOB.read_text())
    if restraints:
        data["restraints"] = [{"type": "pocket", "binder": "B", "residues": [["A", 2], ["A", 6]],
                               "maxDistance": 6.0},
                              {"type": "contact", "residues": [["A", 19], ["B", 1]], "maxDistance": 9.0}]
    (job,) = parse_af3_json(json.dumps(data), source=str(JOB))
    config = dataclasses.replace(ModelConfig.tiny(), constraint_embedder=restraints)
    predictor = Predictor.load(config=config)
    for p in predictor.model.parameters():          # random, non-zero heads: confidences vary
        torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(p.numel()))
    settings = PredictSettings(n_sample=2, n_cycle=1, n_step=2)
    featurized = featurize_seeds(job, (3,), featurization=predictor.config.featurization)
    _, expected = predictor.predict_featurized(featurized, settings)
    _, sharded = ShardedPredictor.from_predictor(predictor, 2).predict_featurized(featurized, settings)
    assert len(sharded) == len(expected) == 2
    for ours, ref in zip(sharded, expected, strict=True):
        for name in ("coords", "atom_plddt", "pae", "contact_probs"):
            a, b = getattr(ours, name), getattr(ref, name)
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)
        for name in ("ptm", "iptm", "ranking_score"):
            assert getattr(ours, name) == pytest.approx(getattr(ref, name), rel=1e-5, abs=1e-6), name
    assert np.std(expected[0].pae) > 0.1
    if restraints:     # the restraints reach the model (its embedder's weights are not zero)
        unrestrained = featurize_seeds(dataclasses.replace(job, restraints=()), (3,),
                                       featurization=predictor.config.featurization)
        _, plain = predictor.predict_featurized(unrestrained, settings)
        assert np.abs(plain[0].coords - expected[0].coords).max() > 1e-3


@pytest.mark.parametrize(("flags", "message"), [
    (["--devices", "2", "--samples", "3"], "--samples 3 is not a multiple of --devices 2"),
    (["--devices", "0"], "--devices must be >= 1"),
    (["--devices", "2", "--device", "cuda"], "needs 2 GPUs"),
    (["--devices", "2", "--share-trunk"], "does not combine with --share-trunk"),
])
def test_devices_errors_are_one_line(tmp_path, capsys, flags, message):
    if "cuda" in flags and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    code = main(["predict", str(JOB), "--out", str(tmp_path / "out"), *FAST, *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_devices_writes_the_af3_layout(tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(JOB), "--out", str(out), *FAST, "--devices", "2"]) == 0
    name = json.loads(JOB.read_text())["name"]
    assert (out / name / f"{name}_model.cif").exists()
