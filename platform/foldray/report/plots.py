"""The plots structural biologists read a prediction by: PAE, pLDDT, chain-pair ipTM.

Figures are built with matplotlib's object API (no pyplot, no display needed), so they
work in workers, notebooks and servers alike. Colours follow AlphaFold's conventions:
pLDDT bands > 90 very high (dark blue), 70-90 confident (light blue), 50-70 low
(yellow), < 50 very low (orange); PAE in greens, 0-31.75 Å.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from foldray.io.load_prediction import LoadedPrediction

PLDDT_BANDS: tuple[tuple[float, float, str, str], ...] = (
    (90.0, 100.0, "#0053D6", "very high (> 90)"),
    (70.0, 90.0, "#65CBF3", "confident (70-90)"),
    (50.0, 70.0, "#FFDB13", "low (50-70)"),
    (0.0, 50.0, "#FF7D45", "very low (< 50)"),
)
PAE_MAX = 31.75


def plddt_colour(value: float) -> str:
    for low, _, colour, _ in PLDDT_BANDS:
        if value >= low:
            return colour
    return PLDDT_BANDS[-1][2]


def _chain_spans(chain_of_item: list[str]) -> list[tuple[str, int, int]]:
    """(chain, start, end) runs in order, end exclusive."""
    spans: list[tuple[str, int, int]] = []
    for i, chain in enumerate(chain_of_item):
        if spans and spans[-1][0] == chain:
            spans[-1] = (chain, spans[-1][1], i + 1)
        else:
            spans.append((chain, i, i + 1))
    return spans


def plot_pae(prediction: LoadedPrediction, title: str | None = None) -> Figure:
    """PAE heatmap [token x token] with chain boundaries and chain labels."""
    pae = prediction.pae
    fig = Figure(figsize=(6.4, 5.4), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(pae, cmap="Greens_r", vmin=0.0, vmax=PAE_MAX, interpolation="nearest")
    spans = _chain_spans(prediction.token_chain_ids)
    for _, start, _ in spans[1:]:
        ax.axhline(start - 0.5, color="black", linewidth=0.8)
        ax.axvline(start - 0.5, color="black", linewidth=0.8)
    centres = [(start + end - 1) / 2 for _, start, end in spans]
    labels = [chain for chain, _, _ in spans]
    if len(spans) > 1:
        ax.set_xticks(centres, labels)
        ax.set_yticks(centres, labels)
    ax.set_xlabel("scored residue / token" + (" (by chain)" if len(spans) > 1 else ""))
    ax.set_ylabel("aligned residue / token" + (" (by chain)" if len(spans) > 1 else ""))
    ax.set_title(title or f"{prediction.name}: predicted aligned error")
    fig.colorbar(image, ax=ax, label="expected position error (Å)")
    fig.tight_layout()
    return fig


def plot_plddt(prediction: LoadedPrediction, title: str | None = None) -> Figure:
    """pLDDT per residue (mean over its atoms), coloured by band, chains separated."""
    rows = prediction.residue_plddts()
    values = np.array([r[3] for r in rows])
    fig = Figure(figsize=(8.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    x = np.arange(len(values))
    ax.bar(x, values, width=1.0, color=[plddt_colour(v) for v in values], linewidth=0)
    for low, high, colour, label in PLDDT_BANDS:
        ax.axhspan(low, high, color=colour, alpha=0.08, label=label)
    spans = _chain_spans([r[0] for r in rows])
    for chain, start, end in spans:
        if start:
            ax.axvline(start - 0.5, color="black", linewidth=0.8)
        ax.text((start + end - 1) / 2, 101, chain, ha="center", va="bottom", fontsize=9)
    ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
    ax.set_ylim(0, 108)
    ax.set_xlabel("residue (model order)")
    ax.set_ylabel("pLDDT")
    ax.set_title(title or f"{prediction.name}: pLDDT per residue", pad=14)
    ax.legend(loc="lower right", fontsize=7, ncols=2, framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_chain_pair_iptm(prediction: LoadedPrediction, title: str | None = None) -> Figure:
    """Chain-pair ipTM (diagonal: chain pTM), annotated; AF3's summary matrices."""
    matrix = np.array(prediction.summary.get("chain_pair_iptm") or [[np.nan]], dtype=np.float64)
    chains = prediction.chain_ids[:matrix.shape[0]]
    size = 2.2 + 0.5 * len(chains)
    fig = Figure(figsize=(size + 1.2, size), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            text = "-" if not np.isfinite(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(value) and value < 0.6 else "black")
    ax.set_xticks(range(len(chains)), chains)
    ax.set_yticks(range(len(chains)), chains)
    ptm, iptm = prediction.summary.get("ptm"), prediction.summary.get("iptm")
    ax.set_title(title or f"chain-pair ipTM (pTM {ptm}, ipTM {iptm})", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
