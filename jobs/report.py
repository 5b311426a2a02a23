"""`foldray report OUT`: plots and an offline HTML page for predictions and result tables.

OUT may be
- one job's output folder (`foldray predict`, `predict-batch`, or AlphaFold 3's own):
  writes `OUT/report/{pae,plddt,chain_pair_iptm}.png` and `OUT/report/report.html`;
- a batch output folder with `results.parquet`, or a folder of job folders: a sortable
  table of every job (score histogram, failures with errors) in `OUT/report/index.html`,
  linking to each finished job's own report (written too, unless --no-per-job);
- a results table file (.parquet / .csv, e.g. a screen's): `<table stem>_report.html`.
Local paths or any fsspec URL (s3://...). `--html PATH` puts the page elsewhere.
"""

from __future__ import annotations

import argparse
import io
import posixpath
import sys
from typing import Any

from foldray.io import storage

# pyarrow, gemmi and matplotlib are imported where used, so `foldray report --help` is fast
REPORT_DIR = "report"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="foldray report", description=__doc__)
    parser.add_argument("out", help="prediction folder, batch output folder, or results table")
    parser.add_argument("--html", default=None, help="where to write the HTML page")
    parser.add_argument("--no-per-job", action="store_true",
                        help="tables: do not (re)write each job's own report")
    parser.add_argument("--sort-by", default=None, help="tables: column to rank by")
    return parser


def _has_summary(url: str) -> bool:
    from foldray.io.load_prediction import SUMMARY_SUFFIX

    fs, path = storage.filesystem(url)
    return fs.isdir(path) and any(e.endswith(SUMMARY_SUFFIX) for e in fs.ls(path, detail=False))


def _parent(url: str) -> str:
    """The folder of a file path or URL; "." for a bare file name (`--html page.html`)."""
    head, sep, _ = url.rpartition("/")
    if not sep:
        return "."
    return head or "/"


def write_prediction_report(folder: str, html_url: str | None = None) -> str:
    """PNGs + page for one job folder; returns the page URL."""
    from foldray.io.load_prediction import load_prediction
    from foldray.report.html import prediction_figures, prediction_report
    from foldray.report.plots import figure_png

    prediction = load_prediction(folder)
    pngs = {name: figure_png(fig) for name, fig in prediction_figures(prediction).items()}
    target = html_url or storage.join(folder, REPORT_DIR, "report.html")
    base = _parent(target)
    for name, png in pngs.items():
        storage.write_bytes_atomic(storage.join(base, f"{name}.png"), png)
    storage.write_text_atomic(target, prediction_report(prediction, pngs))
    return target


def _read_table(url: str) -> list[dict[str, Any]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = storage.read_bytes(url)
    if url.endswith(".csv"):
        return pacsv.read_csv(io.BytesIO(data)).to_pylist()
    return pq.read_table(io.BytesIO(data)).to_pylist()


def _folder_rows(root: str) -> list[dict[str, Any]]:
    """A table of the job folders under `root` (e.g. a `foldray predict --out` folder)."""
    from foldray.io.load_prediction import load_prediction

    fs, path = storage.filesystem(root)
    rows = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        folder = storage.join(root, name)
        if not _has_summary(folder):
            continue
        summary = load_prediction(folder).summary
        rows.append({"name": name, "status": "ok", "ranking_score": summary.get("ranking_score"),
                     "ptm": summary.get("ptm"), "iptm": summary.get("iptm"),
                     "fraction_disordered": summary.get("fraction_disordered"),
                     "has_clash": summary.get("has_clash"), "output": folder})
    return rows


def _relative(target: str, start_dir: str) -> str:
    """A link that works once the whole output tree is on disk (local or synced down)."""
    return posixpath.relpath(target.split("://", 1)[-1], start_dir.split("://", 1)[-1])


def write_table_report(rows: list[dict[str, Any]], title: str, html_url: str, *,
                       per_job: bool, sort_by: str | None) -> str:
    from foldray.report.html import table_report

    links: dict[int, str] = {}
    page_dir = _parent(html_url)
    for i, row in enumerate(rows):
        folder = str(row.get("output") or "")
        if not folder or str(row.get("status", "ok")) not in ("ok", "skipped"):
            continue
        job_page = storage.join(folder, REPORT_DIR, "report.html")
        try:
            if per_job and _has_summary(folder):
                write_prediction_report(folder)
            if storage.exists(job_page):
                links[i] = _relative(job_page, page_dir)
        except (OSError, ValueError, KeyError) as err:
            print(f"warning: no report for {folder}: {err}", file=sys.stderr)
    column = "name" if rows and "name" in rows[0] else ("ligand_id" if rows and "ligand_id" in rows[0]
                                                        else None)
    storage.write_text_atomic(html_url, table_report(title, rows, sort_by=sort_by,
                                                     link_column=column, links=links))
    return html_url


def run(args: argparse.Namespace) -> int:
    from foldray.io.load_prediction import SUMMARY_SUFFIX
    from foldray.io.results import RESULTS_FILE

    out = args.out.rstrip("/")
    if out.endswith((".parquet", ".csv")):
        html_url = args.html or out.rsplit(".", 1)[0] + "_report.html"
        page = write_table_report(_read_table(out), posixpath.basename(out), html_url,
                                  per_job=not args.no_per_job, sort_by=args.sort_by)
    elif not storage.exists(out):
        print(f"error: {out}: no such folder or file", file=sys.stderr)
        return 2
    elif _has_summary(out):
        page = write_prediction_report(out, args.html)
    else:
        table = storage.join(out, RESULTS_FILE)
        rows = _read_table(table) if storage.exists(table) else _folder_rows(out)
        if not rows:
            print(f"error: {out}: neither a prediction folder (no *{SUMMARY_SUFFIX}), nor a batch "
                  f"output ({RESULTS_FILE}), nor a folder of predictions", file=sys.stderr)
            return 2
        html_url = args.html or storage.join(out, REPORT_DIR, "index.html")
        page = write_table_report(rows, posixpath.basename(out), html_url,
                                  per_job=not args.no_per_job, sort_by=args.sort_by)
    print(f"report: {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
