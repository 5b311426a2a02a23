"""Self-contained HTML reports: one file that opens offline, anywhere.

A prediction page holds the summary confidences, the ranking table, the PAE / pLDDT /
chain-pair ipTM plots (PNG, inline base64) and an interactive 3D view of the top model
coloured by pLDDT (3Dmol.js, vendored and inlined: no network needed). A table page
(batch results, screens, a folder of predictions) is a sortable table with a score
histogram, the failures with their errors, and links to each job's own page.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from foldray.io.load_prediction import LoadedPrediction
from foldray.report.plots import (
    PLDDT_BANDS,
    figure_png,
    plot_chain_pair_iptm,
    plot_pae,
    plot_plddt,
)

THREEDMOL_VERSION = "2.5.5"
SUMMARY_KEYS = ("ranking_score", "ptm", "iptm", "fraction_disordered", "has_clash")
OK_STATUSES = ("ok", "skipped")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; cursor: pointer; } td.text { text-align: left; }
.plots img { max-width: 100%; margin: 6px 12px 6px 0; border: 1px solid #eee; }
#viewer { width: 640px; height: 480px; position: relative; border: 1px solid #ccc; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; font-size: 12px; }
.error { color: #a00; text-align: left; font-family: monospace; }
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent;
                     const n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
                        return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
"""


@cache
def viewer_script() -> str:
    """3Dmol.js, vendored from npm (package data), inlined into every page."""
    return (resources.files("foldray.report") / "vendor" / "3Dmol-min.js").read_text()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return '<td data-v="">-</td>'
        return f'<td data-v="{value}">{value:.3f}</td>'
    if isinstance(value, bool | np.bool_):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | np.integer):
        return f"<td>{value}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'


def _link(value: Any, url: str) -> str:
    return f'<td class="text"><a href="{html.escape(url)}">{html.escape(str(value))}</a></td>'


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True,
           links: Sequence[str | None] | None = None, link_at: int = -1) -> str:
    """An HTML table; `links[r]` (when set) turns row r's cell in column `link_at` into a link."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_link(v, links[r]) if k == link_at and links and links[r] else _cell(v)
                         for k, v in enumerate(row)) + "</tr>"
        for r, row in enumerate(rows))
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    inline = "".join(f"<script>{s}</script>" for s in scripts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}{inline}</body></html>")


def _viewer_js(model_cif: str) -> str:
    cif = json.dumps(model_cif).replace("</", "<\\/")
    bands = json.dumps([[low, colour] for low, _, colour, _ in PLDDT_BANDS])
    return f"""
(function() {{
  const bands = {bands};
  const colour = atom => {{ for (const [low, c] of bands) {{ if (atom.b >= low) return c; }}
                           return bands[bands.length - 1][1]; }};
  const viewer = $3Dmol.createViewer(document.getElementById('viewer'), {{backgroundColor: 'white'}});
  viewer.addModel({cif}, 'cif');
  viewer.setStyle({{}}, {{cartoon: {{colorfunc: colour}}}});
  viewer.setStyle({{hetflag: true}}, {{stick: {{colorfunc: colour, radius: 0.2}}}});
  viewer.zoomTo(); viewer.render();
  window.foldrayViewer = viewer;
  // what was drawn, for checks in a headless browser
  const el = document.getElementById('viewer'), r = el.getBoundingClientRect();
  el.dataset.atoms = viewer.selectedAtoms({{}}).length;
  el.dataset.rect = [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(',');
}})();
"""


def prediction_figures(prediction: LoadedPrediction) -> dict[str, Figure]:
    """The report's plots by file stem: pae, plddt, chain_pair_iptm."""
    return {"pae": plot_pae(prediction), "plddt": plot_plddt(prediction),
            "chain_pair_iptm": plot_chain_pair_iptm(prediction)}


def prediction_report(prediction: LoadedPrediction,
                      pngs: dict[str, bytes] | None = None) -> str:
    """The HTML page of one prediction (top-ranked model), self-contained."""
    if pngs is None:
        pngs = {name: figure_png(fig) for name, fig in prediction_figures(prediction).items()}
    summary = prediction.summary
    chains = prediction.chain_ids
    summary_rows = [[key, summary.get(key)] for key in SUMMARY_KEYS]
    chain_rows = [[c, (summary.get("chain_ptm") or [None] * len(chains))[i],
                   (summary.get("chain_iptm") or [None] * len(chains))[i]]
                  for i, c in enumerate(chains)]
    ranking = [[r.seed, r.sample, r.ranking_score] for r in prediction.samples]
    legend = "".join(f'<span style="background:{c}">{html.escape(label)}</span>'
                     for _, _, c, label in PLDDT_BANDS)
    body = (
        f"<h1>{html.escape(prediction.name)}</h1>"
        f"<h2>Summary confidences (top-ranked sample)</h2>"
        f"{_table(['metric', 'value'], [[k, _fmt(v)] for k, v in summary_rows], sortable=False)}"
        f"<h2>Chains</h2>{_table(['chain', 'chain pTM', 'chain ipTM'], chain_rows)}"
        f"<h2>3D model coloured by pLDDT</h2><div class='legend'>{legend}</div><div id='viewer'></div>"
        f"<h2>Plots</h2><div class='plots'>"
        + "".join(_img(png, name) for name, png in pngs.items()) + "</div>"
        f"<h2>Ranking of all samples</h2>{_table(['seed', 'sample', 'ranking score'], ranking)}"
        f"<p>Folder: {html.escape(prediction.folder)} · 3Dmol.js {THREEDMOL_VERSION} (BSD-3-Clause)</p>")
    return _page(prediction.name, body, [viewer_script(), _viewer_js(prediction.model_cif),
                                         _SORT_SCRIPT])


def _fmt(value: Any) -> Any:
    return "-" if value is None else value


def histogram(values: Sequence[float], label: str) -> bytes:
    fig = Figure(figsize=(5.5, 3.2), dpi=100)
    ax = fig.add_subplot()
    finite = [v for v in values if v is not None and math.isfinite(v)]
    ax.hist(finite, bins=min(30, max(5, len(finite) // 3)), color="#3b7dd8", edgecolor="white")
    ax.set_xlabel(label)
    ax.set_ylabel("jobs")
    ax.set_title(f"{label}: {len(finite)} scored")
    fig.tight_layout()
    return figure_png(fig)


def table_report(title: str, rows: Sequence[dict[str, Any]], *, sort_by: str | None = None,
                 link_column: str | None = None, links: dict[int, str] | None = None) -> str:
    """A sortable results page: every row, a score histogram, the failures with errors.

    `links` maps a row index to the URL of that row's own report (shown in `link_column`).
    """
    if not rows:
        return _page(title, f"<h1>{html.escape(title)}</h1><p>No rows.</p>")
    columns = list(rows[0])
    score = sort_by if sort_by in columns else next(
        (c for c in ("ranking_score", "iptm", "ptm") if c in columns), None)
    order = list(range(len(rows)))
    if score:
        order.sort(key=lambda i: -_num(rows[i].get(score)))
    link_at = columns.index(link_column) if link_column in columns else -1
    table = _table(columns, [[rows[i].get(c) for c in columns] for i in order],
                   links=[(links or {}).get(i) for i in order], link_at=link_at)
    failures = [r for r in rows if str(r.get("status", "ok")) not in OK_STATUSES]
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get("status", "ok"))] = counts.get(str(r.get("status", "ok")), 0) + 1
    fail_html = "".join(
        f"<tr><td class='text'>{html.escape(str(r.get('name') or r.get('ligand_id') or ''))}</td>"
        f"<td class='error'>{html.escape(str(r.get('error', '')))}</td></tr>" for r in failures)
    page = (f"<h1>{html.escape(title)}</h1><p>{len(rows)} rows: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "</p>"
            + (f"<div class='plots'>{_img(histogram([_num(r.get(score)) for r in rows], score), score)}</div>"
               if score else "")
            + f"<h2>All rows (click a header to sort)</h2>{table}"
            + (f"<h2>Failures</h2><table><tbody>{fail_html}</tbody></table>" if failures else ""))
    return _page(title, page, [_SORT_SCRIPT])


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return number if math.isfinite(number) else -math.inf
