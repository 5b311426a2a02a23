"""Read a prediction folder back: foldray's output or AlphaFold 3's own (same layout).

`load_prediction(url)` finds `<name>_summary_confidences.json` at the folder's top level
(the file AF3 and foldray write last), then the top-ranked model, its full confidences,
the ranking table and the per-sample folders. Works on local paths and any fsspec URL.
Arrays stay numpy; the structure is parsed with gemmi on first use.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import gemmi
import numpy as np

from foldray.io import storage

SUMMARY_SUFFIX = "_summary_confidences.json"
_SAMPLE_DIR = re.compile(r"^seed-(\d+)_sample-(\d+)$")


@dataclass(frozen=True)
class RankedSample:
    seed: int
    sample: int
    ranking_score: float
    folder: str           # URL of seed-<s>_sample-<i>/ ("" when the folder is absent)


@dataclass(eq=False)
class LoadedPrediction:
    """One job's outputs: top-ranked model + confidences, and every sample's ranking."""

    name: str
    folder: str
    summary: dict[str, Any] = field(repr=False)
    confidences: dict[str, Any] = field(repr=False)
    model_cif: str = field(repr=False)
    samples: list[RankedSample] = field(default_factory=list, repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        """A short summary: printing a prediction in a notebook must not dump matrices or mmCIF."""
        score = self.summary.get("ranking_score")
        plddt = self.confidences.get("atom_plddts")
        n_tokens = len(self.confidences.get("token_chain_ids", ()))
        return (f"{type(self).__name__}(name={self.name!r}, tokens={n_tokens}, "
                f"samples={len(self.samples)}, ranking_score={_fmt(score)}, "
                f"plddt_mean={_fmt(float(np.mean(plddt)) if plddt else None)}, folder={self.folder!r})")

    @cached_property
    def structure(self) -> gemmi.Structure:
        doc = gemmi.cif.read_string(self.model_cif)
        st = gemmi.make_structure_from_block(doc.sole_block())
        st.setup_entities()
        return st

    @property
    def pae(self) -> np.ndarray:
        """[N_token, N_token] expected aligned error, Å."""
        return np.asarray(self.confidences["pae"], np.float64)

    @property
    def atom_plddts(self) -> np.ndarray:
        return np.asarray(self.confidences["atom_plddts"], np.float64)

    @property
    def token_chain_ids(self) -> list[str]:
        return list(self.confidences["token_chain_ids"])

    @property
    def chain_ids(self) -> list[str]:
        """Chains in token order (as the summary's chain-pair matrices index them)."""
        seen: dict[str, None] = {}
        for chain_id in self.token_chain_ids:
            seen.setdefault(chain_id, None)
        return list(seen)

    def residue_plddts(self) -> list[tuple[str, str, str, float]]:
        """(chain, residue number, residue name, mean atom pLDDT) in model order, from the
        B-factors AF3 and foldray write into the mmCIF."""
        rows = []
        for chain in self.structure[0]:
            for residue in chain:
                values = [atom.b_iso for atom in residue]
                if values:
                    rows.append((chain.name, str(residue.seqid.num), residue.name,
                                 float(np.mean(values))))
        return rows

    def sample(self, seed: int, sample: int) -> LoadedPrediction:
        """Another sample of the same job, loaded from its own folder."""
        for ranked in self.samples:
            if (ranked.seed, ranked.sample) == (seed, sample) and ranked.folder:
                prefix = storage.join(ranked.folder, f"{self.name}_seed-{seed}_sample-{sample}")
                return _load_files(self.name, ranked.folder, prefix, self.samples,
                                   self.storage_options)
        raise KeyError(f"{self.folder}: no sample seed={seed} sample={sample}")


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else repr(value)


def _read_json(url: str, options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(storage.read_text(url, **options))


def _load_files(name: str, folder: str, prefix: str, samples: list[RankedSample],
                options: dict[str, Any]) -> LoadedPrediction:
    return LoadedPrediction(
        name=name, folder=folder,
        summary=_read_json(prefix + SUMMARY_SUFFIX, options),
        confidences=_read_json(prefix + "_confidences.json", options),
        model_cif=_model_cif(prefix, options), samples=samples, storage_options=options)


def _model_cif(prefix: str, options: dict[str, Any]) -> str:
    """The model as mmCIF text: `_model.cif`, else (`--output-format pdb`) `_model.pdb`."""
    cif = prefix + "_model.cif"
    if storage.exists(cif, **options) or not storage.exists(prefix + "_model.pdb", **options):
        return storage.read_text(cif, **options)
    st = gemmi.read_pdb_string(storage.read_text(prefix + "_model.pdb", **options))
    st.setup_entities()
    return st.make_mmcif_document().as_string()


def _ranking(folder: str, name: str, options: dict[str, Any]) -> list[RankedSample]:
    fs, path = storage.filesystem(folder, **options)
    dirs = {}
    for entry in fs.ls(path, detail=False):
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        match = _SAMPLE_DIR.match(base)
        if match:
            dirs[(int(match[1]), int(match[2]))] = storage.join(folder, base)
    url = storage.join(folder, f"{name}_ranking_scores.csv")
    rows = []
    if storage.exists(url, **options):
        for row in csv.DictReader(io.StringIO(storage.read_text(url, **options))):
            key = (int(row["seed"]), int(row["sample"]))
            rows.append(RankedSample(seed=key[0], sample=key[1],
                                     ranking_score=float(row["ranking_score"]),
                                     folder=dirs.get(key, "")))
    return sorted(rows, key=lambda r: -r.ranking_score if np.isfinite(r.ranking_score) else np.inf)


def load_prediction(url: str, **storage_options: Any) -> LoadedPrediction:
    """The prediction in folder `url` (one job's output folder, AF3 or foldray)."""
    fs, path = storage.filesystem(url, **storage_options)
    if not fs.isdir(path):
        raise FileNotFoundError(f"{url}: no such prediction folder")
    names = [entry.rstrip("/").rsplit("/", 1)[-1][:-len(SUMMARY_SUFFIX)]
             for entry in fs.ls(path, detail=False) if entry.endswith(SUMMARY_SUFFIX)]
    if len(names) != 1:
        raise FileNotFoundError(
            f"{url}: expected one <name>{SUMMARY_SUFFIX} (the file written last, when a job is "
            f"complete), found {len(names)}: is this a finished job's output folder?")
    name = names[0]
    return _load_files(name, url, storage.join(url, name), _ranking(url, name, storage_options),
                       storage_options)
