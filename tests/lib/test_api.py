"""The notebook API on a real input: `foldray.predict` and `foldray.load_prediction`."""

from __future__ import annotations

import json

import gemmi
import pytest
from matplotlib.figure import Figure

import foldray
from tests.data_paths import INPUTS


def test_predict_a_job_dict_and_use_the_result(tmp_path):
    job = json.loads((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
    with pytest.warns(UserWarning, match="RANDOM"):
        pred = foldray.predict(job, samples=2, steps=3, recycles=1, out=tmp_path / "out")
    assert isinstance(pred, foldray.Prediction)
    assert pred.chain_ids == ["A", "B"] and len(pred.samples) == 2
    assert set(pred.summary) >= {"ptm", "iptm", "ranking_score", "chain_pair_iptm"}
    n_token = len(pred.confidences["token_chain_ids"])
    assert pred.pae.shape == (n_token, n_token)
    assert isinstance(pred.plot_pae(), Figure) and isinstance(pred.plot_plddt(), Figure)
    cif = pred.to_mmcif(tmp_path / "model.cif")
    st = gemmi.read_structure(cif)
    assert [c.name for c in st[0]] == ["A", "B"]
    page = pred.report(tmp_path / "report.html")
    assert "createViewer" in (tmp_path / "report.html").read_text() and page.endswith(".html")
    # the same folder reads back through load_prediction
    again = foldray.load_prediction(pred.folder)
    assert again.summary == pred.summary and again.model_cif == pred.model_cif


def test_predict_a_file_path_and_a_bad_job_raises_a_located_error(tmp_path):
    pred = foldray.predict(INPUTS / "1l2y.json", samples=1, steps=2, recycles=1)
    assert pred.name and len(pred.samples) == 1
    bad = json.loads((INPUTS / "1l2y.json").read_text())
    bad["sequences"][0]["protein"]["sequence"] = "MKX1"
    with pytest.raises(foldray.InputError, match=r"sequences\[0\]"):
        foldray.predict(bad)


def test_printing_results_gives_a_summary_and_data_json_records_every_seed(tmp_path):
    from foldray.predictor import Predictor, PredictSettings

    job = json.loads((INPUTS / "1l2y.json").read_text())
    assert job["modelSeeds"] == [1]
    pred = foldray.predict(job, seeds=(7, 8), samples=1, steps=2, recycles=1, out=tmp_path / "out")
    text = repr(pred)
    n_token = len(pred.confidences["token_chain_ids"])
    assert text.startswith(f"Prediction(name={pred.name!r}, tokens={n_token}, samples=2, ranking_score=")
    assert "plddt_mean=" in text and repr(pred.folder) in text
    assert len(text) < 400 and "ATOM" not in text and "[[" not in text
    data = json.loads(next((tmp_path / "out").glob("*/*_data.json")).read_text())
    assert data["modelSeeds"] == [7, 8]       # the seeds predicted, as AF3 records them
    # the Predictor-level results print short too
    tokens, samples = Predictor.load(config="tiny").predict_job(
        foldray.api._as_jobs(job)[0], PredictSettings(n_sample=1, n_step=2, n_cycle=1))
    assert repr(tokens) == (f"TokenizedStructure(chains=[A:protein], tokens={n_token}, "
                            f"atoms={tokens.n_atoms}, bonds={len(tokens.bonds)})")
    sample_text = repr(samples[0])
    assert sample_text.startswith("SamplePrediction(seed=1, sample=0, atoms=") and len(sample_text) < 300
