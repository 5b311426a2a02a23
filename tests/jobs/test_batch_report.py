"""A batch run, rerun, and its report on a real Ray: skipped jobs keep the scores of their
outputs (also a folder without foldray_job.json), error rows have no made-up token count, the
output flags reach the writer, and the batch page puts the columns people rank by first
(drawn in headless Chromium)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from foldray.jobs.cli import main
from tests.jobs.test_batch_engine import FAST, trp_cage
from tests.jobs.test_report import browser, drawn_model, needs_chromium

KEY_HEADERS = ["name", "status", "ranking_score", "iptm", "ptm", "mean_plddt"]


def _rows(out) -> dict[str, dict]:
    return {r["name"] or r["source"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


@pytest.fixture(scope="module")
def batch(ray_session, tmp_path_factory):
    """Two good jobs and a bad one, run twice: (output folder, first rows, second rows)."""
    root = tmp_path_factory.mktemp("batch")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    jobs = [trp_cage("good_a"), trp_cage("good_b", "GRPPPSNLYIQW"), trp_cage("bad", "NLYIQ1WLK")]
    (inputs / "jobs.jsonl").write_text("\n".join(json.dumps(j) for j in jobs))
    args = ["predict-batch", "--inputs", str(inputs), "--out", str(out), *FAST,
            "--output-format", "both", "--save-pde", "--save-distogram"]
    assert main(args) == 2
    first = _rows(out)
    (out / "good_b" / "foldray_job.json").unlink()     # as a folder from before markers
    assert main(args) == 2
    return out, first, _rows(out)


def test_a_rerun_keeps_the_scores_of_skipped_jobs(batch):
    _, first, second = batch
    assert {n: r["status"] for n, r in second.items()} == {
        "good_a": "skipped", "good_b": "skipped", "bad": "error"}
    for name in ("good_a", "good_b"):
        for key in ("ranking_score", "ptm", "mean_plddt"):
            assert second[name][key] is not None, (name, key)
            assert second[name][key] == pytest.approx(first[name][key], abs=0.01), (name, key)
    assert second["bad"]["n_tokens"] is None and second["bad"]["n_atoms"] is None
    assert second["good_a"]["n_tokens"] == 20


def test_predict_batch_writes_the_extra_outputs_it_is_asked_for(batch):
    out, _, _ = batch
    folder = out / "good_a"
    assert (folder / "good_a_model.pdb").exists() and (folder / "good_a_model.cif").exists()
    assert "pde" in json.loads((folder / "good_a_confidences.json").read_text())
    assert (folder / "seed-1_distogram" / "good_a_seed-1_distogram.npz").exists()
    assert not (folder / "seed-1_embeddings").exists()


def test_the_batch_page_shows_the_key_columns_first(batch, tmp_path):
    out, _, _ = batch
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    table = page[page.index('<table id="rows"'):]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table.split("</thead>")[0])
    assert headers[:len(KEY_HEADERS)] == KEY_HEADERS
    assert "show all" in page and 'class="more"' in table
    assert ">None<" not in page and ">-1<" not in page


@needs_chromium
def test_the_batch_page_and_a_job_page_render(batch, tmp_path):
    out, _, _ = batch
    assert main(["report", str(out)]) == 0
    # where the ranking column lands on a laptop-sized window, measured by the browser
    probe = ("<script>addEventListener('load', () => { const th = [...document.querySelectorAll("
             "'#rows th')].find(t => t.textContent === 'ranking_score'); "
             "document.body.dataset.right = Math.round(th.getBoundingClientRect().right); "
             "document.body.dataset.width = document.documentElement.scrollWidth; });</script>")
    index = out / "report" / "index.html"
    measured = tmp_path / "index.html"
    measured.write_text(index.read_text().replace("</body>", probe + "</body>"))
    dom = browser(measured, tmp_path, "--dump-dom", width=1000).stdout
    right = int(dom.split('data-right="', 1)[1].split('"', 1)[0])
    width = int(dom.split('data-width="', 1)[1].split('"', 1)[0])
    assert right < 700 and width <= 1000          # no sideways scrolling to find the score
    atoms, drawn, _ = drawn_model(out / "good_a" / "report" / "report.html", tmp_path)
    assert atoms > 100 and drawn > 0.01
