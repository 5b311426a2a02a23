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

import gemmi
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
from foldray.report.viewer import style_script

THREEDMOL_VERSION = "2.5.5"
SUMMARY_KEYS = ("ranking_score", "ptm", "iptm", "fraction_disordered", "has_clash")
OK_STATUSES = ("ok", "skipped")
# Shown first in a results table (when present); the other columns are one click away.
KEY_COLUMNS = ("name", "ligand_id", "status", "ranking_score", "iptm", "ptm", "mean_plddt",
               "fraction_disordered", "has_clash", "n_tokens")

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
#all-columns:not(:checked) ~ table .more { display: none; }
label[for=all-columns] { font-size: 13px; color: #444; }
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


def _luminance(hex_colour: str) -> float:
    """WCAG relative luminance of `#RRGGBB`."""
    channels = [int(hex_colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two `#RRGGBB` colours (1 to 21; 4.5 reads as body text)."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background`."""
    return "#000000" if contrast(background, "#000000") >= contrast(background, "#ffffff") \
        else "#ffffff"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _cell(value: Any, cls: str = "") -> str:
    """One table cell; `cls` adds a CSS class (e.g. `more`)."""
    classes, sort_value, text = [cls] if cls else [], None, ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        sort_value, text = "", "-"
    elif isinstance(value, float):
        sort_value, text = str(value), f"{value:.3f}"
    elif isinstance(value, bool | np.bool_):
        text = "yes" if value else "no"
    elif isinstance(value, int | np.integer):
        text = str(value)
    else:
        classes.append("text")
        text = html.escape(str(value))
    attrs = (f' class="{" ".join(classes)}"' if classes else "") + \
        (f' data-v="{sort_value}"' if sort_value is not None else "")
    return f"<td{attrs}>{text}</td>"


def _link(value: Any, url: str) -> str:
    return f'<td class="text"><a href="{html.escape(url)}">{html.escape(str(value))}</a></td>'


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True,
           links: Sequence[str | None] | None = None, link_at: int = -1,
           extra_from: int | None = None, table_id: str = "") -> str:
    """An HTML table; `links[r]` (when set) turns row r's cell in column `link_at` into a link.
    Columns from `extra_from` on get class `more` (hidden until "all columns" is ticked)."""
    def cls(k: int) -> str:
        return "more" if extra_from is not None and k >= extra_from else ""

    head = "".join(f'<th class="{cls(k)}">{html.escape(c)}</th>' if cls(k) else
                   f"<th>{html.escape(c)}</th>" for k, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(_link(v, links[r]) if k == link_at and links and links[r] else
                         _cell(v, cls(k)) for k, v in enumerate(row)) + "</tr>"
        for r, row in enumerate(rows))
    classes = " ".join(c for c in ("sortable" if sortable else "",) if c)
    attrs = (f' id="{table_id}"' if table_id else "") + (f' class="{classes}"' if classes else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    inline = "".join(f"<script>{s}</script>" for s in scripts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}{inline}</body></html>")


def _viewer_js(model_cif: str, structure: gemmi.Structure) -> str:
    cif = json.dumps(model_cif).replace("</", "<\\/")
    bands = json.dumps([[low, colour] for low, _, colour, _ in PLDDT_BANDS])
    return f"""
(function() {{
  const bands = {bands};
  const colour = atom => {{ for (const [low, c] of bands) {{ if (atom.b >= low) return c; }}
                           return bands[bands.length - 1][1]; }};
  const viewer = $3Dmol.createViewer(document.getElementById('viewer'), {{backgroundColor: 'white'}});
  viewer.addModel({cif}, 'cif');
  {style_script(structure)}
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
    legend = "".join(f'<span style="background:{c};color:{text_colour(c)}">{html.escape(label)}</span>'
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
    return _page(prediction.name, body, [viewer_script(), _viewer_js(prediction.model_cif,
                                                                          prediction.structure),
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


def key_columns_first(columns: list[str]) -> list[str]:
    """The columns a reader ranks jobs by first (KEY_COLUMNS order), then the rest as given."""
    return [c for c in KEY_COLUMNS if c in columns] + [c for c in columns if c not in KEY_COLUMNS]


def table_report(title: str, rows: Sequence[dict[str, Any]], *, sort_by: str | None = None,
                 link_column: str | None = None, links: dict[int, str] | None = None) -> str:
    """A sortable results page: every row, a score histogram, the failures with errors.

    `links` maps a row index to the URL of that row's own report (shown in `link_column`).
    """
    if not rows:
        return _page(title, f"<h1>{html.escape(title)}</h1><p>No rows.</p>")
    columns = key_columns_first(list(rows[0]))
    n_key = sum(c in KEY_COLUMNS for c in columns)
    score = sort_by if sort_by in columns else next(
        (c for c in ("ranking_score", "iptm", "ptm") if c in columns), None)
    order = list(range(len(rows)))
    if score:
        order.sort(key=lambda i: -_num(rows[i].get(score)))
    link_at = columns.index(link_column) if link_column in columns else -1
    table = _table(columns, [[rows[i].get(c) for c in columns] for i in order],
                   links=[(links or {}).get(i) for i in order], link_at=link_at,
                   extra_from=n_key if n_key < len(columns) else None, table_id="rows")
    if n_key < len(columns):
        table = (f"<input type='checkbox' id='all-columns'><label for='all-columns'> show all "
                 f"{len(columns)} columns ({len(columns) - n_key} more: "
                 f"{html.escape(', '.join(columns[n_key:]))})</label>{table}")
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
