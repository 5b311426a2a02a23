"""Prediction outputs in AlphaFold 3's layout: confidence JSONs, mmCIFs, ranking (SI 5.9).

Shapes: atoms [N_atom], tokens [N_token], chains [N_chain] (in `tokens.chains` order).
Arrays may be padded past N_atom / N_token (as the model returns them); the padding is
sliced away here.

Files, as AF3 (>= 3.0.2, docs/output.md) names them, under `<out>/<name>/` where `<name>` is
`job.safe_name`:

    seed-<s>_sample-<i>/<name>_seed-<s>_sample-<i>_model.cif
    seed-<s>_sample-<i>/<name>_seed-<s>_sample-<i>_confidences.json
    seed-<s>_sample-<i>/<name>_seed-<s>_sample-<i>_summary_confidences.json
    <name>_data.json                  the job as AF3 input JSON (version 4)
    <name>_model.cif                  top-ranked sample
    <name>_confidences.json           top-ranked sample
    <name>_ranking_scores.csv         seed,sample,ranking_score for every sample
    <name>_summary_confidences.json   top-ranked sample; written last: marks the job done

JSON content follows AF3's `confidence_types` and its C++ serializer: summary values are
rounded to 2 decimals (NaN -> null, keys sorted, indent 1); in the full file PAE has 1
decimal (clamped to [0, 99.9]), pLDDT 2 (clamped to [0, 99.99]), contact probabilities 2
(clamped to [0, 1]).
SI deviation: none in content. `chain_ids` in the summary lists one id per chain, as
AF3's docs say (AF3's code currently writes one per token). AF3's TERMS_OF_USE.md and
licence comments are AlphaFold-specific and not written.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from foldray.features.tokenize import TokenizedStructure
from foldray.inputs.af3_json_writer import job_to_af3_json_text
from foldray.inputs.job import Job
from foldray.io import storage
from foldray.io.mmcif import DEFAULT_MODEL_VERSION, structure_to_mmcif
from foldray.io.outputs import OutputOptions, ligand_sdf, mmcif_to_pdb, seed_files
from foldray.io.stored_scores import stored_scores


@dataclass(frozen=True, kw_only=True, eq=False)
class SamplePrediction:
    """One diffusion sample of one seed, with its confidences (numpy, possibly padded).

    `iptm` is NaN for a single-chain structure (AF3). `ranking_score` None means "use
    AF3's formula" (foldray.model.ranking); `token_frame_mask` marks tokens with a valid frame
    (None = all), used to compute `chain_pair_pae_min` (AF3's `pae_single_mask`) when the
    model did not give it. The metrics are those `foldray.model.ranking.summary_confidences`
    returns, for one sample, as numpy.
    """

    seed: int
    sample_index: int
    coords: np.ndarray            # [N_atom, 3] Å
    atom_plddt: np.ndarray        # [N_atom] 0-100
    pae: np.ndarray               # [N_token, N_token] Å, row = aligned frame
    contact_probs: np.ndarray     # [N_token, N_token] 0-1
    ptm: float
    iptm: float
    chain_pair_iptm: np.ndarray   # [N_chain, N_chain], diagonal = per-chain pTM
    fraction_disordered: float = 0.0
    has_clash: bool = False
    ranking_score: float | None = None
    token_frame_mask: np.ndarray | None = None   # [N_token] bool
    chain_pair_pae_min: np.ndarray | None = None  # [N_chain, N_chain]; None: from pae
    pde: np.ndarray | None = None                 # [N_token, N_token] Å, when asked (outputs.py)
    # per-seed arrays (foldray.io.outputs.SEED_ARRAYS), one dict shared by the seed's samples
    seed_arrays: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        """A short summary, not the arrays (these objects are printed in notebooks)."""
        plddt = float(np.mean(self.atom_plddt)) if self.atom_plddt.size else float("nan")
        return (f"SamplePrediction(seed={self.seed}, sample={self.sample_index}, "
                f"atoms={self.coords.shape[0]}, tokens={self.pae.shape[0]}, "
                f"ranking_score={self.score():.3g}, ptm={self.ptm:.3g}, iptm={self.iptm:.3g}, "
                f"plddt_mean={plddt:.3g})")

    def score(self) -> float:
        """The ranking score used to pick the top sample (NaN ranks last)."""
        if self.ranking_score is not None:
            return float(self.ranking_score)
        from foldray.model.ranking import ranking_score_np  # lazy: CPU writers need no torch import

        return ranking_score_np(ptm=self.ptm, iptm=self.iptm,
                                fraction_disordered=self.fraction_disordered,
                                has_clash=self.has_clash)


# --------------------------------------------------------------------------- tokens


def token_chain_index(tokens: TokenizedStructure) -> np.ndarray:
    """[N_token] int64 index into `tokens.chains`."""
    index = np.zeros(tokens.n_tokens, np.int64)
    for i, chain in enumerate(tokens.chains):
        index[chain.token_start:chain.token_end] = i
    return index


# --------------------------------------------------------------------------- JSON builders


def _round2(value: Any) -> Any:
    """AF3 summary rounding: 2 decimals, NaN -> None, arrays -> nested lists."""
    if isinstance(value, np.ndarray):
        return [_round2(v) for v in value]
    value = float(value)
    return None if math.isnan(value) else round(value, 2)


def summary_confidences(*, ptm: float, iptm: float, chain_pair_iptm: np.ndarray,
                        chain_pair_pae_min: np.ndarray, chain_ids: Sequence[str],
                        fraction_disordered: float = 0.0, has_clash: bool = False,
                        ranking_score: float | None = None) -> dict[str, Any]:
    """AF3's `<name>_summary_confidences.json` content (keys sorted, JSON-ready).

    chain_ptm is the diagonal of chain_pair_iptm and chain_iptm its cross-chain mean,
    as AF3 derives them (foldray.model.ranking computes both; here they are only
    rounded). `ranking_score` None: AF3's formula.
    """
    pair_iptm = np.asarray(chain_pair_iptm, np.float64)
    n_chain = len(chain_ids)
    if pair_iptm.shape != (n_chain, n_chain) or np.shape(chain_pair_pae_min) != pair_iptm.shape:
        raise ValueError(f"chain-pair arrays must be [{n_chain}, {n_chain}], got "
                         f"{pair_iptm.shape} and {np.shape(chain_pair_pae_min)}")
    if ranking_score is None:
        from foldray.model.ranking import ranking_score_np

        ranking_score = ranking_score_np(
            ptm=ptm, iptm=iptm, fraction_disordered=fraction_disordered, has_clash=has_clash)
    summary = {
        "chain_ids": [str(c) for c in chain_ids],
        "chain_iptm": _round2(_model_ranking().chain_iptm_np(pair_iptm)),
        "chain_pair_iptm": _round2(pair_iptm),
        "chain_pair_pae_min": _round2(np.asarray(chain_pair_pae_min, np.float64)),
        "chain_ptm": _round2(pair_iptm.diagonal()),
        "fraction_disordered": _round2(fraction_disordered),
        "has_clash": _round2(float(has_clash)),   # AF3 writes 0.0 / 1.0
        "iptm": _round2(iptm),
        "ptm": _round2(ptm),
        "ranking_score": _round2(ranking_score),
    }
    return dict(sorted(summary.items()))


def summary_confidences_json(summary: dict[str, Any]) -> str:
    """AF3's formatting: sorted keys, indent 1."""
    return json.dumps(summary, sort_keys=True, indent=1, separators=(",", ": "),
                      allow_nan=False)


# Fixed-point formats of AF3's C++ serializer: (decimals, lowest, highest).
_PAE_FORMAT = (1, 0.0, 99.9)
_PLDDT_FORMAT = (2, 0.0, 99.99)
_PROB_FORMAT = (2, 0.0, 1.0)


@functools.cache
def _format_table(decimals: int, highest: float) -> tuple[list[str], list[float | None]]:
    """Text and value of every fixed-point step; the last entry is NaN (null)."""
    scale = 10 ** decimals
    steps = [i / scale for i in range(round(highest * scale) + 1)]
    return [repr(s) for s in steps] + ["null"], [*steps, None]


def _quantize(values: np.ndarray, fmt: tuple[int, float, float]) -> np.ndarray:
    """Indices into `_format_table` (round half up after clamping, as AF3's serializer)."""
    decimals, lowest, highest = fmt
    values = np.asarray(values, np.float32)
    scale = np.float32(10 ** decimals)
    steps = np.floor(np.clip(values, lowest, highest) * scale + np.float32(0.5))
    index = np.nan_to_num(steps, nan=-1).astype(np.int64)
    index[np.isnan(values)] = round(highest * 10 ** decimals) + 1
    return index


def _check_full(pae: np.ndarray, contact_probs: np.ndarray, atom_plddts: np.ndarray,
                token_chain_ids: Sequence[str], token_res_ids: Sequence[int],
                atom_chain_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_token, n_atom = len(token_chain_ids), len(atom_chain_ids)
    if len(token_res_ids) != n_token:
        raise ValueError(f"token_res_ids has {len(token_res_ids)} entries, expected {n_token}")
    pae, contact_probs = np.asarray(pae), np.asarray(contact_probs)
    atom_plddts = np.asarray(atom_plddts)
    for label, array in (("pae", pae), ("contact_probs", contact_probs)):
        if array.ndim != 2 or min(array.shape) < n_token:
            raise ValueError(f"{label} must be [N_token={n_token}, N_token] (or padded), "
                             f"got {array.shape}")
    if atom_plddts.ndim != 1 or atom_plddts.shape[0] < n_atom:
        raise ValueError(f"atom_plddts must be [N_atom={n_atom}] (or padded), "
                         f"got {atom_plddts.shape}")
    return (pae[:n_token, :n_token], contact_probs[:n_token, :n_token], atom_plddts[:n_atom])


def full_confidences(*, pae: np.ndarray, contact_probs: np.ndarray, atom_plddts: np.ndarray,
                     token_chain_ids: Sequence[str], token_res_ids: Sequence[int],
                     atom_chain_ids: Sequence[str]) -> dict[str, Any]:
    """AF3's `<name>_confidences.json` content as a dict (keys sorted, values as written).

    For large jobs prefer `full_confidences_json`, which formats without building lists.
    """
    pae, contact_probs, atom_plddts = _check_full(pae, contact_probs, atom_plddts,
                                                  token_chain_ids, token_res_ids, atom_chain_ids)

    def values(array: np.ndarray, fmt: tuple[int, float, float]) -> list:
        table = _format_table(fmt[0], fmt[2])[1]
        index = _quantize(array, fmt)
        if index.ndim == 1:
            return [table[i] for i in index.tolist()]
        return [[table[i] for i in row] for row in index.tolist()]

    return {
        "atom_chain_ids": [str(c) for c in atom_chain_ids],
        "atom_plddts": values(atom_plddts, _PLDDT_FORMAT),
        "contact_probs": values(contact_probs, _PROB_FORMAT),
        "pae": values(pae, _PAE_FORMAT),
        "token_chain_ids": [str(c) for c in token_chain_ids],
        "token_res_ids": [int(r) for r in token_res_ids],
    }


def full_confidences_json(*, pae: np.ndarray, contact_probs: np.ndarray,
                          atom_plddts: np.ndarray, token_chain_ids: Sequence[str],
                          token_res_ids: Sequence[int], atom_chain_ids: Sequence[str],
                          pde: np.ndarray | None = None) -> str:
    """`full_confidences` as JSON text, formatted like AF3's C++ serializer (fast path);
    `pde` (when given) is written like `pae`."""
    pae, contact_probs, atom_plddts = _check_full(pae, contact_probs, atom_plddts,
                                                  token_chain_ids, token_res_ids, atom_chain_ids)

    def text(array: np.ndarray, fmt: tuple[int, float, float]) -> str:
        table = _format_table(fmt[0], fmt[2])[0]
        index = _quantize(array, fmt)
        if index.ndim == 1:
            return "[" + ",".join([table[i] for i in index.tolist()]) + "]"
        rows = ("[" + ",".join([table[i] for i in row]) + "]" for row in index.tolist())
        return "[" + ",".join(rows) + "]"

    parts = [
        ("atom_chain_ids", json.dumps([str(c) for c in atom_chain_ids], separators=(",", ":"))),
        ("atom_plddts", text(atom_plddts, _PLDDT_FORMAT)),
        ("contact_probs", text(contact_probs, _PROB_FORMAT)),
        ("pae", text(pae, _PAE_FORMAT)),
        *([("pde", text(np.asarray(pde)[:len(token_chain_ids), :len(token_chain_ids)],
                        _PAE_FORMAT))] if pde is not None else []),
        ("token_chain_ids", json.dumps([str(c) for c in token_chain_ids], separators=(",", ":"))),
        ("token_res_ids", json.dumps([int(r) for r in token_res_ids], separators=(",", ":"))),
    ]
    return "{\n" + ",\n".join(f'  "{key}": {value}' for key, value in parts) + "\n}"


# --------------------------------------------------------------------------- per sample


def sample_summary(tokens: TokenizedStructure, sample: SamplePrediction) -> dict[str, Any]:
    """`summary_confidences` of one sample, chain-level arrays in `tokens.chains` order."""
    n_chain = len(tokens.chains)
    pair_iptm = np.asarray(sample.chain_pair_iptm, np.float64)
    if pair_iptm.shape != (n_chain, n_chain):
        raise ValueError(f"chain_pair_iptm must be [N_chain={n_chain}, N_chain], "
                         f"got {pair_iptm.shape}")
    pae_min = sample.chain_pair_pae_min
    if pae_min is None:
        pae_min = _model_ranking().chain_pair_pae_min_np(sample.pae, token_chain_index(tokens), n_chain,
                                        sample.token_frame_mask)
    return summary_confidences(
        ptm=sample.ptm, iptm=sample.iptm, chain_pair_iptm=pair_iptm, chain_pair_pae_min=pae_min,
        chain_ids=[c.chain_id for c in tokens.chains],
        fraction_disordered=sample.fraction_disordered, has_clash=sample.has_clash,
        ranking_score=sample.score())


def _full_arrays(tokens: TokenizedStructure, sample: SamplePrediction) -> dict[str, Any]:
    chain_ids = np.array([c.chain_id for c in tokens.chains])
    return {"pae": sample.pae, "contact_probs": sample.contact_probs,
            "atom_plddts": sample.atom_plddt,
            "token_chain_ids": chain_ids[token_chain_index(tokens)].tolist(),
            "token_res_ids": tokens.residue_index.tolist(),
            "atom_chain_ids": chain_ids[tokens.atom_chain].tolist()}


def sample_full(tokens: TokenizedStructure, sample: SamplePrediction) -> dict[str, Any]:
    """`full_confidences` of one sample."""
    return full_confidences(**_full_arrays(tokens, sample))


# --------------------------------------------------------------------------- files


def job_dir(out_url: str, job: Job) -> str:
    """`<out>/<job.safe_name>`: the folder holding one job's outputs."""
    return storage.join(out_url, job.safe_name)


def sample_dir_name(seed: int, sample_index: int) -> str:
    return f"seed-{seed}_sample-{sample_index}"


def summary_url(out_url: str, job: Job) -> str:
    """The job's top-level summary file, written last: it exists iff the job is complete."""
    return storage.join(job_dir(out_url, job), f"{job.safe_name}_summary_confidences.json")


def is_complete(out_url: str, job: Job, **storage_options: Any) -> bool:
    return storage.exists(summary_url(out_url, job), **storage_options)


# --------------------------------------------------------------------------- job identity

MARKER_FILE = "foldray_job.json"   # input_sha256 + top-sample scores, written before the summary
SCORE_KEYS = ("ranking_score", "ptm", "iptm", "mean_plddt")


def input_sha256(job: Job) -> str:
    """The identity of a job's resolved input: SHA-256 of its AF3 JSON (the `_data.json`
    text, without its source file), so the same job read from another file matches and a
    different job with the same output name does not."""
    return hashlib.sha256(job_to_af3_json_text(job).encode("utf-8")).hexdigest()


def marker_url(out_url: str, job: Job) -> str:
    return storage.join(job_dir(out_url, job), MARKER_FILE)


@dataclass(frozen=True)
class Completion:
    """What a job folder holds for one job: `missing` (nothing complete: predict it),
    `complete` (its scores read back from the outputs) or `conflict` (another job's)."""

    state: str
    scores: dict[str, float | None]
    other_sha256: str = ""


def _read_json(url: str, storage_options: dict[str, Any]) -> dict[str, Any] | None:
    try:
        value = json.loads(storage.read_text(url, **storage_options))
    except (OSError, ValueError):   # absent, or half-written by a killed writer
        return None
    return value if isinstance(value, dict) else None


def _score(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def completion(out_url: str, job: Job, digest: str, **storage_options: Any) -> Completion:
    """Whether `<out>/<job>` holds this job's complete outputs, nothing, or another job's.

    The marker names the input the folder was written for; a folder written before markers
    existed counts as this job's when its summary exists (its scores then come from it).
    """
    marker = _read_json(marker_url(out_url, job), storage_options)
    if marker is not None and marker.get("input_sha256") not in (None, digest):
        return Completion("conflict", {}, str(marker["input_sha256"]))
    if not is_complete(out_url, job, **storage_options):
        return Completion("missing", {})
    return Completion("complete", stored_scores(job_dir(out_url, job), job.safe_name, marker,
                                                **storage_options))


def conflict_message(out_url: str, job: Job, other_sha256: str) -> str:
    return (f"output folder {job_dir(out_url, job)} holds another job with the output name "
            f"{job.safe_name!r} (input sha256 {other_sha256[:12]}, this job "
            f"{input_sha256(job)[:12]}): rename the job, use another --out, or --overwrite")


def _marker(job: Job, tokens: TokenizedStructure, best: SamplePrediction,
            digest: str | None) -> str:
    scores = {"ranking_score": best.score(), "ptm": best.ptm, "iptm": best.iptm,
              "mean_plddt": float(np.mean(np.asarray(best.atom_plddt)[:tokens.n_atoms]))}
    return json.dumps({"name": job.name, "input_sha256": digest or input_sha256(job),
                       **{k: _score(v) for k, v in scores.items()}}, indent=1)


def _sample_files(tokens: TokenizedStructure, job: Job, sample: SamplePrediction,
                  model_version: str, outputs: OutputOptions) -> dict[str, str]:
    """File suffix -> text of one sample: model (.cif and/or .pdb), confidences, ligand SDF,
    and `summary_confidences.json` last (written last: the job's completion marker)."""
    cif = structure_to_mmcif(tokens, job, sample.coords, sample.atom_plddt, name=job.safe_name,
                             model_version=model_version)
    files = {"_model.cif": cif} if outputs.writes_mmcif else {}
    if outputs.writes_pdb:
        files["_model.pdb"] = mmcif_to_pdb(cif)
    files["_confidences.json"] = full_confidences_json(
        **_full_arrays(tokens, sample), pde=sample.pde if outputs.save_pde else None)
    if outputs.ligand_sdf and any(c.mol_type == "ligand" for c in tokens.chains):
        files["_ligands.sdf"] = ligand_sdf(tokens, job, sample.coords, sample.atom_plddt)
    files["_summary_confidences.json"] = summary_confidences_json(sample_summary(tokens, sample))
    return files


def _write_triplet(folder: str, prefix: str, texts: dict[str, str],
                   storage_options: dict[str, Any]) -> None:
    for suffix, text in texts.items():     # summary last
        storage.write_text_atomic(storage.join(folder, f"{prefix}{suffix}"), text,
                                  **storage_options)


def write_prediction(out_url: str, job: Job, tokens: TokenizedStructure,
                     samples: Sequence[SamplePrediction], *,
                     model_version: str = DEFAULT_MODEL_VERSION,
                     input_digest: str | None = None, outputs: OutputOptions | None = None,
                     **storage_options: Any) -> str:
    """Write every sample and the top-ranked one in AF3's layout; returns the job folder.

    Every file is written atomically; the top-level summary goes last, so `is_complete`
    is True only for a job whose outputs are all there. Rewriting a job replaces its files.
    Just before the summary, `foldray_job.json` records the input's identity
    (`input_digest`, default `input_sha256(job)`) and the top sample's scores. `outputs`
    adds PDB / SDF / PDE / embeddings / distogram files (foldray.io.outputs).
    """
    outputs = outputs or OutputOptions()
    if not samples:
        raise ValueError(f"job {job.name!r}: no samples to write")
    keys = [(s.seed, s.sample_index) for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"job {job.name!r}: repeated (seed, sample) in {keys}")
    name = job.safe_name
    folder = job_dir(out_url, job)
    done = summary_url(out_url, job)
    if storage.exists(done, **storage_options):   # a rerun: not complete until rewritten
        fs, path = storage.filesystem(done, **storage_options)
        fs.rm(path)
    best: tuple[float, dict[str, str], SamplePrediction] | None = None
    rows = []
    seeds_written: set[int] = set()
    for sample in samples:
        if sample.seed_arrays and sample.seed not in seeds_written:
            seeds_written.add(sample.seed)
            for path, data in seed_files(name, sample.seed, sample.seed_arrays, outputs):
                storage.write_bytes_atomic(storage.join(folder, path), data, **storage_options)
        texts = _sample_files(tokens, job, sample, model_version, outputs)
        sub = sample_dir_name(sample.seed, sample.sample_index)
        _write_triplet(storage.join(folder, sub), f"{name}_{sub}", texts, storage_options)
        score = sample.score()
        rows.append((sample.seed, sample.sample_index, score))
        rank = -math.inf if math.isnan(score) else score
        if best is None or rank > best[0]:     # ties: the first sample, as AF3
            best = (rank, texts, sample)
    assert best is not None
    # the seeds actually predicted (a `--seeds` override included), as AF3 records its modelSeeds
    predicted = replace(job, seeds=tuple(dict.fromkeys(s.seed for s in samples)))
    storage.write_text_atomic(storage.join(folder, f"{name}_data.json"),
                              job_to_af3_json_text(predicted), **storage_options)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["seed", "sample", "ranking_score"])
    writer.writerows(rows)
    storage.write_text_atomic(storage.join(folder, f"{name}_ranking_scores.csv"),
                              buffer.getvalue(), **storage_options)
    storage.write_text_atomic(storage.join(folder, MARKER_FILE),
                              _marker(job, tokens, best[2], input_digest), **storage_options)
    _write_triplet(folder, name, best[1], storage_options)   # summary last: job complete
    return folder


def _model_ranking():
    """foldray.model.ranking, imported on first use: it imports torch, which the CPU stages
    that only read, featurize and write (and import this module) should not pay for at
    start-up. The metrics stay computed in one place, the model's."""
    from foldray.model import ranking

    return ranking
