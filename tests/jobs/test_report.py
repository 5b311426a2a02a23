"""`foldray report` and `load_prediction` on real tiny-config predictions: plots decode
with the right sizes and are not blank, the HTML page is self-contained, folders of
predictions and result tables get a ranked page linking each job's report."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from foldray.io.load_prediction import load_prediction
from foldray.jobs.cli import main
from tests.data_paths import INPUTS

FAST = ["--samples", "2", "--steps", "4", "--recycles", "1", "--quiet"]


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """Two real predictions: a protein + SMILES ligand complex and a protein-DNA complex."""
    out = tmp_path_factory.mktemp("predictions")
    for name in ("tiny_protein_ligand_smiles.json", "tiny_protein_dna.json"):
        assert main(["predict", str(INPUTS / name), "--out", str(out), *FAST]) == 0
    return out


def _job_folder(root, stem):
    (folder,) = [p for p in root.iterdir() if p.is_dir() and stem in p.name]
    return folder


def _png(data: bytes) -> np.ndarray:
    return imread(io.BytesIO(data), format="png")


def test_load_prediction_reads_the_top_model_and_every_sample(predictions):
    folder = _job_folder(predictions, "dna")
    pred = load_prediction(str(folder))
    n_token = len(pred.confidences["token_chain_ids"])
    assert pred.pae.shape == (n_token, n_token)
    assert pred.chain_ids == ["A", "B", "C"]
    assert {(s.seed, s.sample) for s in pred.samples} == {(1, 0), (1, 1)}
    scores = [s.ranking_score for s in pred.samples]
    assert scores == sorted(scores, reverse=True)
    assert pred.summary["ranking_score"] == pytest.approx(scores[0], abs=0.01)
    assert len(pred.structure[0]) == 3
    other = pred.sample(1, 1)
    assert other.pae.shape == pred.pae.shape
    with pytest.raises(FileNotFoundError, match="summary_confidences"):
        load_prediction(str(folder / "seed-1_sample-0" / ".."  / ".."))


def test_load_prediction_reads_an_af3_layout_folder(predictions, tmp_path):
    """AF3's folder layout (the same file names) with AF3's own top-level files only."""
    source = _job_folder(predictions, "ligand")
    af3 = tmp_path / "af3_job"
    af3.mkdir()
    stem = source.name
    for suffix in ("_model.cif", "_confidences.json", "_summary_confidences.json",
                   "_ranking_scores.csv", "_data.json"):
        shutil.copy(source / f"{stem}{suffix}", af3 / f"{stem}{suffix}")
    pred = load_prediction(str(af3))
    assert pred.name == stem and pred.samples and not any(s.folder for s in pred.samples)
    assert pred.residue_plddts()


def test_report_writes_non_blank_plots_and_a_self_contained_page(predictions):
    folder = _job_folder(predictions, "dna")
    assert main(["report", str(folder)]) == 0
    report = folder / "report"
    for name, (height, width) in {"pae": (540, 640), "plddt": (360, 800)}.items():
        image = _png((report / f"{name}.png").read_bytes())
        assert image.shape[:2] == (height, width), name
        assert image[..., :3].std() > 0.05, name            # not a blank canvas
    assert _png((report / "chain_pair_iptm.png").read_bytes())[..., :3].std() > 0.05
    page = (report / "report.html").read_text()
    # offline: no external scripts, styles or images; 3Dmol and the model inline
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert "$3Dmol" in page and "createViewer" in page
    assert "_atom_site" in page                              # the mmCIF travels with the page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and all(_png(base64.b64decode(i)).size for i in images)
    summary = json.loads(next(folder.glob("*_summary_confidences.json")).read_text())
    assert f"{summary['ranking_score']}" in page


def test_report_on_a_folder_and_on_a_results_table_links_every_job(predictions, tmp_path):
    assert main(["report", str(predictions)]) == 0
    index = (predictions / "report" / "index.html").read_text()
    for folder in (p for p in predictions.iterdir() if p.is_dir() and p.name != "report"):
        link = f"../{folder.name}/report/report.html"
        assert f'href="{link}"' in index
        assert (predictions / "report" / link).resolve().exists()
    # a screen-style table with a failure: every row listed, the error shown
    rows = [{"ligand_id": f"L{i}", "smiles": "CCO", "status": "ok", "error": "",
             "ranking_score": 0.1 * i, "iptm": 0.05 * i, "output": ""} for i in range(5)]
    rows.append({"ligand_id": "BAD", "smiles": "C1CC", "status": "error",
                 "error": "SMILES parse error: unclosed ring", "ranking_score": None,
                 "iptm": None, "output": ""})
    table = tmp_path / "screen.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    assert main(["report", str(table)]) == 0
    page = (tmp_path / "screen_report.html").read_text()
    for row in rows:
        assert f">{row['ligand_id']}<" in page
    assert "unclosed ring" in page and "6 rows" in page


def test_html_given_as_a_bare_file_name_lands_in_the_working_directory(predictions, tmp_path,
                                                                         monkeypatch):
    folder = _job_folder(predictions, "dna")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(folder), "--html", "job.html"]) == 0
    assert (tmp_path / "job.html").stat().st_size > 0 and (tmp_path / "pae.png").exists()
    assert main(["report", str(predictions), "--html", "batch.html", "--no-per-job"]) == 0
    assert "href=" in (tmp_path / "batch.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs "
    "it where it can")


def browser(page, tmp_path, *extra: str, width: int = 1200) -> subprocess.CompletedProcess:
    """Headless Chromium on a local page, offline (no host resolves), software WebGL."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--window-size={width},1600", "--force-device-scale-factor=1",
             "--virtual-time-budget=8000", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([*flags, *extra, page.as_uri()], capture_output=True, text=True,
                          timeout=120, check=True)


def drawn_model(page, tmp_path) -> tuple[int, float, np.ndarray]:
    """(atoms loaded, fraction of the viewer canvas's pixels not background, screenshot)."""
    dom = browser(page, tmp_path, "--dump-dom").stdout
    atoms = int(re.search(r'data-atoms="(\d+)"', dom)[1])
    x, y, w, h = map(int, re.search(r'data-rect="([\d,]+)"', dom)[1].split(","))
    shot = tmp_path / "shot.png"
    browser(page, tmp_path, f"--screenshot={shot}")
    image = imread(shot)[..., :3]
    viewer = image[y + 2:y + h - 2, x + 2:x + w - 2]
    return atoms, float((np.abs(viewer - 1.0).sum(-1) > 0.15).mean()), image[y + h + 40:]


@needs_chromium
def test_the_page_renders_offline_in_headless_chromium(predictions, tmp_path):
    folder = _job_folder(predictions, "dna")
    page = tmp_path / "report.html"
    assert main(["report", str(folder), "--html", str(page)]) == 0
    atoms, drawn, below = drawn_model(page, tmp_path)
    st = load_prediction(str(folder)).structure
    assert atoms == st[0].count_atom_sites()                 # the whole model is in the viewer
    assert 0.01 < drawn < 0.9                                 # and drawn (4 steps: atoms scattered)
    assert (np.abs(below - 1.0).sum(-1) > 0.15).mean() > 0.01   # the plots follow the viewer


@needs_chromium
def test_the_quick_starts_report_draws_its_model(tmp_path, capsys):
    """The README's quick start exactly (random weights: no continuous backbone, so every atom
    is drawn as a ball; cartoon and stick styles alone drew an empty white box)."""
    assert main(["example"]) == 0
    (tmp_path / "job.json").write_text(capsys.readouterr().out)
    out = tmp_path / "predictions"
    assert main(["predict", str(tmp_path / "job.json"), "--out", str(out), "--samples", "2",
                 "--quiet"]) == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert main(["report", str(folder)]) == 0
    atoms, drawn, _ = drawn_model(folder / "report" / "report.html", tmp_path)
    assert atoms == load_prediction(str(folder)).structure[0].count_atom_sites() == 169
    assert drawn > 0.01
