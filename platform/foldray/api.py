"""The notebook API: `foldray.predictor(...)` and `foldray.load_prediction(...)`.

    import foldray
    pred = foldray.predictor("job.json", checkpoint="weights.safetensors")
    pred.structure                  # gemmi.Structure of the top-ranked model
    pred.confidences["pae"]         # AF3's full confidences; pred.summary the summary
    pred.plot_pae(); pred.plot_plddt()
    pred.to_mmcif("model.cif"); pred.report("report.html")

A prediction is written in AlphaFold 3's layout (to `out`, or a temporary folder) and
read back, so what a notebook sees is exactly what the CLI and the batch jobs write.
Models stay loaded between calls (one per checkpoint / config / device).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from foldray.errors import InputError
from foldray.inputs.af3_json import parse_af3_json
from foldray.inputs.job import Job
from foldray.inputs.load import read_jobs
from foldray.io import storage
from foldray.io.load_prediction import LoadedPrediction
from foldray.io.load_prediction import load_prediction as _load


class Prediction(LoadedPrediction):
    """A loaded prediction with plotting and export helpers."""

    def plot_pae(self) -> Figure:
        from foldray.report.plots import plot_pae

        return plot_pae(self)

    def plot_plddt(self) -> Figure:
        from foldray.report.plots import plot_plddt

        return plot_plddt(self)

    def plot_chain_pair_iptm(self) -> Figure:
        from foldray.report.plots import plot_chain_pair_iptm

        return plot_chain_pair_iptm(self)

    def to_mmcif(self, path_or_url: str | Path) -> str:
        """Write the top-ranked model (pLDDT in B-factors); returns where it went."""
        url = str(path_or_url)
        storage.write_text_atomic(url, self.model_cif)
        return url

    def report(self, path_or_url: str | Path) -> str:
        """The self-contained HTML report (plots + 3D view) of this prediction."""
        from foldray.report.html import prediction_report

        url = str(path_or_url)
        storage.write_text_atomic(url, prediction_report(self))
        return url

    def _repr_html_(self) -> str:   # a one-line summary in notebooks
        s = self.summary
        return (f"<b>{self.name}</b>: ranking score {s.get('ranking_score')}, pTM {s.get('ptm')}, "
                f"ipTM {s.get('iptm')}, {len(self.chain_ids)} chains, {len(self.samples)} samples")


def load_prediction(url: str | Path, **storage_options: Any) -> Prediction:
    """An existing output folder (foldray's or AlphaFold 3's) as a Prediction."""
    loaded = _load(str(url), **storage_options)
    return Prediction(**{f: getattr(loaded, f) for f in
                         ("name", "folder", "summary", "confidences", "model_cif", "samples",
                          "storage_options")})


@functools.lru_cache(maxsize=2)
def _predictor(checkpoint: str | None, config: str, device: str, precision: str,
               chunk_size: int | None):
    from foldray.model.config import RuntimeConfig
    from foldray.predictor import Predictor

    runtime = RuntimeConfig(precision=precision, chunk_size=chunk_size)
    return Predictor.load(checkpoint, config=config, runtime=runtime, device=device)


def _as_jobs(job: Job | dict | str | Path) -> list[Job]:
    if isinstance(job, Job):
        return [job]
    if isinstance(job, dict):
        import json

        return list(parse_af3_json(json.dumps(job), source="<dict>"))
    jobs = []
    for item in read_jobs(str(job)):
        if isinstance(item, InputError):
            raise item
        jobs.append(item)
    if not jobs:
        raise InputError("no job in the input", source=str(job))
    return jobs


def predict(job: Job | dict | str | Path, *, checkpoint: str | None = None, config: str = "tiny",
            seeds: tuple[int, ...] | None = None, samples: int = 5, recycles: int | None = None,
            steps: int | None = None, device: str = "cpu", precision: str = "fp32",
            chunk_size: int | None = None, out: str | Path | None = None,
            share_trunk: bool = False) -> Prediction | list[Prediction]:
    """Predict a job given as a Job, an AF3 JSON dict, or a file / URL (AF3 JSON, JSONL,
    mmCIF/PDB). One job gives a Prediction, a file with several jobs a list.

    Without `checkpoint` the model has random weights (a warning says so): useful to try
    the pipeline, meaningless as a structure. `out` keeps the AF3-layout folder; by
    default it goes to a temporary folder that lives as long as the process.
    """
    import warnings

    from foldray.predictor import PredictSettings

    jobs = _as_jobs(job)            # bad input fails before any model is built
    predictor = _predictor(None if checkpoint is None else str(checkpoint), config, device,
                           precision, chunk_size)
    if predictor.random_weights:
        warnings.warn(f"no checkpoint: the {config!r} model has RANDOM weights; structures and "
                      "confidences are meaningless", stacklevel=2)
    out_url = str(out) if out is not None else tempfile.mkdtemp(prefix="foldray_")
    settings = PredictSettings(seeds=seeds, n_sample=samples, n_cycle=recycles, n_step=steps,
                               share_trunk=share_trunk)
    results = [load_prediction(predictor.predict_to(out_url, j, settings)) for j in jobs]
    return results[0] if len(results) == 1 else results
