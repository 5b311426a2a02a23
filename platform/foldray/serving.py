"""The request side of the Serve app, without Ray or HTTP: parse, limit, render.

`foldray.actors.serve` wires these into deployments; keeping them here lets them be
tested without a server and keeps the actors thin (STYLE.md, Ray layering). Untrusted
requests never read files: `...Path` fields are refused (`allow_paths=False`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from foldray.errors import InputError, error_line
from foldray.features.pipeline import FeaturizedJob
from foldray.features.tokenize import DEFAULT_MAX_TOKENS
from foldray.inputs.af3_json import parse_af3_json, parse_job
from foldray.inputs.job import Job, PolymerChain
from foldray.io.confidences import (
    SamplePrediction,
    sample_full,
    sample_summary,
    write_prediction,
)
from foldray.io.mmcif import structure_to_mmcif
from foldray.screening import LigandSpec, check_ligand, screen_metrics


class RequestTooLarge(Exception):
    """More bytes, jobs or ligands than the server accepts in one request (HTTP 413)."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for; beyond it the ingress answers 413 / 422 at once."""

    max_body_bytes: int = 16 << 20
    max_jobs: int = 256            # jobs in one POST /v1/predict
    max_ligands: int = 1024        # ligands in one POST /v1/screen
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_samples: int = 25


def check_body_size(body: bytes, limits: Limits) -> None:
    if len(body) > limits.max_body_bytes:
        raise RequestTooLarge(f"request body is {len(body)} bytes, above the limit of "
                              f"{limits.max_body_bytes} bytes")


def check_token_budget(job: Job, limits: Limits, field_prefix: str = "") -> None:
    """Fast lower bound of the token count (one token per polymer residue and copy), so a
    20,000-residue job is refused before any worker sees it; ligand atoms and modified
    residues are counted exactly by the featurizer, which applies the same limit."""
    n_tokens = sum(len(e.sequence) * len(e.ids) for e in job.entities if isinstance(e, PolymerChain))
    if n_tokens > limits.max_tokens:
        field = f"{field_prefix}.sequences" if field_prefix else "sequences"
        raise InputError(f"the job has at least {n_tokens} tokens, above the server's limit of "
                         f"{limits.max_tokens}", source=job.source, job=job.name, field=field)


def parse_predict_body(body: bytes, limits: Limits, source: str = "request") -> list[Job]:
    """AF3 JSON job or list -> jobs; the first problem raises (`InputError`, 422)."""
    check_body_size(body, limits)
    jobs = parse_af3_json(body, source=source, allow_paths=False)
    if len(jobs) > limits.max_jobs:
        raise RequestTooLarge(f"{len(jobs)} jobs in one request, above the limit of {limits.max_jobs}")
    for i, job in enumerate(jobs):
        check_token_budget(job, limits, f"[{i}]" if len(jobs) > 1 else "")
    return jobs


@dataclass(frozen=True, kw_only=True)
class ScreenRequest:
    """POST /v1/screen: a target job, ligands with their idempotency keys, sampling."""

    target: Job
    ligands: tuple[LigandSpec, ...]
    keys: tuple[str, ...]
    samples: int | None = None
    out: str | None = None


def parse_screen_body(body: bytes, limits: Limits, source: str = "request") -> ScreenRequest:
    """`{"target": <AF3 job>, "ligands": [{"id", "smiles"|"ccd", "key"?}], "samples"?, "out"?}`.

    Ligand chemistry is not checked here (one bad SMILES must not fail the others):
    see `ligand_error`.
    """
    check_body_size(body, limits)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"invalid JSON: {err}", source=source) from None
    if not isinstance(data, dict):
        raise InputError("expected a screen object {\"target\", \"ligands\"}", source=source)
    unknown = set(data) - {"target", "ligands", "samples", "out"}
    if unknown:
        raise InputError(f"unknown keys {sorted(unknown)}", source=source)
    target = parse_job(data.get("target"), source=source, allow_paths=False)
    check_token_budget(target, limits, "target")
    ligands = data.get("ligands")
    if not isinstance(ligands, list) or not ligands:
        raise InputError("expected a non-empty list", source=source, field="ligands")
    if len(ligands) > limits.max_ligands:
        raise RequestTooLarge(f"{len(ligands)} ligands in one request, above the limit of "
                              f"{limits.max_ligands}")
    specs, keys = [], []
    for i, item in enumerate(ligands):
        field = f"ligands[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise InputError("expected {\"id\": str, \"smiles\" or \"ccd\": str}", source=source,
                             field=field)
        extra = set(item) - {"id", "smiles", "ccd", "key"}
        if extra:
            raise InputError(f"unknown keys {sorted(extra)}", source=source, field=field)
        specs.append(LigandSpec(id=item["id"], smiles=item.get("smiles"), ccd=item.get("ccd")))
        keys.append(str(item.get("key") or ""))
    samples = data.get("samples")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or not 1 <= samples <= limits.max_samples):
        raise InputError(f"expected an integer 1-{limits.max_samples}, got {samples!r}",
                         source=source, field="samples")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise InputError(f"expected a URL string, got {out!r}", source=source, field="out")
    return ScreenRequest(target=target, ligands=tuple(specs), keys=tuple(keys), samples=samples,
                         out=out)


def ligand_error(ligand: LigandSpec, target: Job, source: str = "screen") -> str | None:
    """The `foldray validate` line of the screen job (`ligand_job`) of a ligand that cannot
    be featurized, else None: the field is the ligand's place in that job."""
    try:
        check_ligand(ligand, field=f"sequences[{len(target.entities)}].ligand")
    except InputError as err:
        return error_line(err.located(source=source))
    return None


def job_id(scope: str, key: str) -> str:
    """A job id from an idempotency key: the same key (from the same caller) gives the
    same id, so a retried POST returns the job it already created instead of a new one."""
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:32]


def best_sample(samples: Sequence[SamplePrediction]) -> SamplePrediction:
    ranked = [s for s in samples if s.score() == s.score()] or list(samples)   # NaN last
    return max(ranked, key=lambda s: s.score())


def render_result(featurized: FeaturizedJob, samples: Sequence[SamplePrediction], *,
                  out_url: str | None = None, detail: str = "full",
                  ligand_chain: int | None = None) -> dict[str, Any]:
    """What GET /v1/jobs/{id} returns when done, JSON-ready.

    detail "full": mmCIF text of the top sample, its summary and per-token confidences;
    "summary" (screens): the summary only. With `out_url` the AF3 output folder is
    written there and its URL returned instead of the mmCIF and per-token arrays.
    `ligand_chain` adds the screen metrics of that chain (`screening.screen_metrics`).
    """
    tokens, job = featurized.tokens, featurized.job
    best = best_sample(samples)
    result: dict[str, Any] = {
        "name": job.name, "n_tokens": tokens.n_tokens, "n_atoms": tokens.n_atoms,
        "summary_confidences": sample_summary(tokens, best),
        "ranking_scores": [{"seed": s.seed, "sample": s.sample_index, "ranking_score": s.score()}
                           for s in samples],
    }
    if ligand_chain is not None:
        result["metrics"] = screen_metrics(tokens, best, ligand_chain)
    if out_url:
        result["output"] = write_prediction(out_url, job, tokens, samples)
    elif detail == "full":
        result["mmcif"] = structure_to_mmcif(tokens, job, best.coords, best.atom_plddt,
                                             name=job.safe_name)
        result["confidences"] = sample_full(tokens, best)
    return result
