"""Stored features record their featurization, and predict-batch refuses features made with
another featurization than its model's: the featurize stage, called directly on real files
(no Ray pipeline; `ray_session` only because the stage asks Ray for its node id)."""

import json
import shutil

import numpy as np
import pytest

from foldray.actors.predict_rows import PENDING, FeaturizedSeeds
from foldray.actors.prepare_stage import FeaturizeStage, read_stage
from foldray.features.config import FeaturizationConfig
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.io import feature_store
from tests.data_paths import INPUTS

NAME = "1l2y"
OF3, PTX = FeaturizationConfig.openfold3(), FeaturizationConfig.protenix()


def featurize(tmp_path, folder: str, featurization: FeaturizationConfig | None):
    """`foldray featurize`'s stages on one input; the stored job's sidecar."""
    out = tmp_path / folder
    stage = FeaturizeStage(seeds=(0,), max_tokens=None, out_url=str(out), featurization=featurization)
    (row,) = read_stage({"source": str(INPUTS / f"{NAME}.json"), "text": None, "stored": False},
                        out_url=str(out), max_tokens=None, overwrite=False, stop_after="featurize")
    assert stage(row)["status"] == "ok"
    return out / NAME / feature_store.DONE_FILE


def load(sidecar, featurization: FeaturizationConfig | None) -> dict:
    """predict-batch's read and featurize stages on a stored job, for a model expecting
    `featurization`."""
    (row,) = read_stage({"source": str(sidecar), "text": None, "stored": True},
                        out_url=str(sidecar.parent.parent / "predictions"), max_tokens=None,
                        overwrite=False, stop_after="predict")
    assert row["status"] == PENDING, row["error"]
    return FeaturizeStage(seeds=(0,), max_tokens=None, featurization=featurization)(row)


def edited(sidecar, folder: str, edit) -> object:
    """A copy of a stored job whose sidecar `edit` changed."""
    copy = sidecar.parent.parent.parent / folder / NAME
    shutil.copytree(sidecar.parent, copy)
    summary = json.loads(sidecar.read_text())
    edit(summary)
    (copy / feature_store.DONE_FILE).write_text(json.dumps(summary))
    return copy / feature_store.DONE_FILE


@pytest.fixture(scope="module")
def stored(ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("stored_featurization")
    return {"protenix": featurize(base, "ptx", PTX), "openfold3": featurize(base, "of3", OF3),
            "default": featurize(base, "af3", None)}


def test_sidecar_records_the_featurization_and_the_same_one_loads(stored):
    assert json.loads(stored["protenix"].read_text())["featurization"] == PTX.to_dict()
    assert json.loads(stored["default"].read_text())["featurization"] == FeaturizationConfig().to_dict()
    row = load(stored["protenix"], PTX)
    assert row["status"] == PENDING and isinstance(row["payload"], FeaturizedSeeds)
    (job,) = parse_af3_json((INPUTS / f"{NAME}.json").read_text())
    fresh = featurize_job(job, seed=0, with_targets=False, featurization=PTX).features
    loaded = row["payload"].by_seed[0].features
    assert sorted(loaded) == sorted(fresh)
    assert all(np.array_equal(loaded[k], fresh[k]) for k in fresh)
    # None (the AF3 default) on either side is the same as AF3's preset
    assert load(stored["default"], FeaturizationConfig.alphafold3())["status"] == PENDING


def test_other_featurization_is_that_jobs_error_row(stored):
    """One batch, a model expecting Protenix's featurization: the job stored with it loads,
    the job stored with OpenFold3's is an error row naming the field and the switches."""
    stage = FeaturizeStage(seeds=(0,), max_tokens=None, featurization=PTX)
    rows = [read_stage({"source": str(stored[k]), "text": None, "stored": True},
                       out_url=str(stored[k].parent.parent / "predictions"), max_tokens=None,
                       overwrite=False, stop_after="predict")[0] for k in ("openfold3", "protenix")]
    bad, good = (stage(row) for row in rows)
    assert good["status"] == PENDING and isinstance(good["payload"], FeaturizedSeeds)
    assert bad["status"] == "error" and bad["payload"] is None
    error = bad["error"]
    assert error.startswith(f"{stored['openfold3']}: {NAME}: featurization: ")
    assert "openfold3 featurization, the model expects protenix" in error
    assert "paired_msa 'precomputed' -> 'species'" in error
    assert "selenomethionine 'atomize' -> 'as_met'" in error
    assert "--overwrite" in error and "--checkpoint" in error
    # and the default (AF3) model refuses both
    assert "model expects alphafold3" in load(stored["protenix"], None)["error"]


def test_legacy_sidecar_without_featurization_is_refused(stored):
    legacy = edited(stored["default"], "legacy", lambda s: s.pop("featurization"))
    for model in (None, OF3):   # its featurization is unknown, whatever the model expects
        row = load(legacy, model)
        assert row["status"] == "error" and ": featurization: " in row["error"]
        assert "without a record of their featurization" in row["error"]


@pytest.mark.parametrize(("folder", "edit", "says"), [
    ("not_object", lambda s: s.update(featurization="alphafold3"), "not a JSON object"),
    ("unknown_key", lambda s: s["featurization"].update(secret_switch="S3CR3T"), "does not know"),
    ("missing_key", lambda s: s["featurization"].pop("paired_msa"), "does not set switch paired_msa"),
    ("wrong_type", lambda s: s["featurization"].update(keep_terminal_leaving_atoms="S3CR3T"),
     "switch keep_terminal_leaving_atoms is not true or false"),
    ("bad_choice", lambda s: s["featurization"].update(paired_msa="S3CR3T"),
     "switch paired_msa has a value this foldray does not know"),
])
def test_malformed_featurization_is_a_located_error(stored, folder, edit, says):
    row = load(edited(stored["default"], folder, edit), None)
    assert row["status"] == "error" and ": featurization: " in row["error"] and says in row["error"]
    assert "S3CR3T" not in row["error"] and "secret_switch" not in row["error"]   # not quoted


def test_featurize_checkpoint_gives_its_featurization(ray_session, tmp_path, capsys):
    """`foldray featurize --checkpoint` featurizes as predict-batch with that checkpoint will
    expect (read from the header: the file holds one placeholder tensor, the config is real)."""
    import torch

    from foldray.io.weights import save_weights
    from foldray.jobs.cli import main
    from foldray.model.config import ModelConfig

    checkpoint, out = tmp_path / "of3.safetensors", tmp_path / "features"
    save_weights(str(checkpoint), {"placeholder": torch.zeros(1)}, ModelConfig.tiny_openfold3())
    (tmp_path / "in").mkdir()
    shutil.copy(INPUTS / f"{NAME}.json", tmp_path / "in")
    assert main(["featurize", "--checkpoint", str(checkpoint), "--inputs", str(tmp_path / "in"),
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / NAME / feature_store.DONE_FILE).read_text())["featurization"] == OF3.to_dict()
    assert load(out / NAME / feature_store.DONE_FILE, OF3)["status"] == PENDING
    # a checkpoint that is not there: one error line before any work
    assert main(["featurize", "--checkpoint", str(tmp_path / "none.safetensors"), "--quiet"]) == 2
    assert "none.safetensors: checkpoint not found" in capsys.readouterr().err


def test_featurize_rerun_with_another_featurization_is_an_error_not_a_skip(stored):
    """`foldray featurize` into a folder holding this job's features: skipped when they were made
    with this run's featurization; an error row (field featurization, nothing replaced) when
    they were made with another one or an unrecorded one."""
    source = {"source": str(INPUTS / f"{NAME}.json"), "text": None, "stored": False}

    def reread(sidecar, featurization):
        (row,) = read_stage(source, out_url=str(sidecar.parent.parent), max_tokens=None,
                            overwrite=False, stop_after="featurize", featurization=featurization)
        return row

    assert reread(stored["openfold3"], OF3)["status"] == "skipped"
    assert reread(stored["default"], None)["status"] == "skipped"
    before = stored["openfold3"].read_bytes()
    row = reread(stored["openfold3"], PTX)
    assert row["status"] == "error" and ": featurization: " in row["error"]
    assert "made with the openfold3 featurization, this run makes the protenix one" in row["error"]
    assert stored["openfold3"].read_bytes() == before
    legacy = edited(stored["default"], "legacy_rerun", lambda s: s.pop(feature_store.FEATURIZATION_KEY))
    assert "made with an unrecorded featurization" in reread(legacy, None)["error"]
    # --overwrite: redone whatever is there
    (row,) = read_stage(source, out_url=str(stored["openfold3"].parent.parent), max_tokens=None,
                        overwrite=True, stop_after="featurize", featurization=PTX)
    assert row["status"] == PENDING
