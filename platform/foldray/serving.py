"""The request side of the Serve app, without Ray or HTTP: parse, limit, render.

`foldray.actors.serve_routes` and `serve_deployments` wire these in; keeping them here lets them be
tested without a server and keeps the actors thin (STYLE.md, Ray layering). Untrusted
requests never read files: `...Path` fields are refused (`allow_paths=False`). Whatever
goes wrong with one request or job becomes a located line (`InputError`) or
"ExceptionClass: short message" (`error_summary`), never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from foldray.errors import InputError, error_line, error_summary
from foldray.features.pipeline import FeaturizedJob
from foldray.features.tokenize import DEFAULT_MAX_TOKENS
from foldray.inputs.af3_json import parse_af3_json, parse_job
from foldray.inputs.job import Job, LigandChain, PolymerChain, sanitize_name
from foldray.inputs.restraints import ResidueRef
from foldray.io.confidences import (
    SamplePrediction,
    sample_full,
    sample_summary,
    write_prediction,
)
from foldray.io.mmcif import structure_to_mmcif
from foldray.screening import (
    DEFAULT_POCKET_DISTANCE,
    LigandSpec,
    check_ligand,
    parse_pocket,
    screen_metrics,
)

log = logging.getLogger(__name__)

TOKEN_ENV = "FOLDRAY_SERVE_TOKEN"
TOKEN_FILE_ENV = "FOLDRAY_SERVE_TOKEN_FILE"


def resolve_token(token_file: str | None = None, *, insecure_no_auth: bool = False) -> str | None:
    """The bearer token (env var, else token file); None only with insecure_no_auth."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if not token and path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    if token:
        return token
    if insecure_no_auth:
        log.warning("foldray serve: authentication is OFF (--insecure-no-auth); local use only")
        return None
    raise ValueError(f"no serve token: set {TOKEN_ENV}, or {TOKEN_FILE_ENV} / token_file to a "
                     "file holding it (or pass --insecure-no-auth for local development)")


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
    max_key_chars: int = 256       # idempotency keys, ligand ids


# heavy atoms a SMILES names outside brackets (organic subset): each is at least one token
_SMILES_BRACKET = re.compile(r"\[[^\]]*\]")
_SMILES_ATOM = re.compile(r"Br|Cl|[BCNOPSFIbcnops]")


def check_body_size(body: bytes, limits: Limits) -> None:
    if len(body) > limits.max_body_bytes:
        raise RequestTooLarge(f"request body is {len(body)} bytes, above the limit of "
                              f"{limits.max_body_bytes} bytes")


def smiles_min_atoms(smiles: str) -> int:
    """A lower bound of the heavy atoms of a SMILES, without RDKit (bracket atoms are not
    counted: `[H]` is no heavy atom), so a 5,000-atom ligand is refused in microseconds."""
    return len(_SMILES_ATOM.findall(_SMILES_BRACKET.sub("", smiles)))


def min_tokens(job: Job) -> int:
    """Tokens the job has at least: one per polymer residue, per ligand heavy atom named
    in a SMILES, per CCD component, times the copies."""
    n = 0
    for e in job.entities:
        if isinstance(e, PolymerChain):
            n += len(e.sequence) * len(e.ids)
        elif isinstance(e, LigandChain):
            per_copy = smiles_min_atoms(e.smiles) if e.smiles else len(e.ccd_codes or ())
            n += per_copy * len(e.ids)
    return n


def check_token_budget(job: Job, limits: Limits, field_prefix: str = "") -> None:
    """Fast lower bound of the token count (`min_tokens`), so a 20,000-residue job or a
    5,000-atom SMILES is refused before any worker sees it; modified residues and ligand
    atoms are counted exactly by the featurizer, which applies the same limit."""
    n_tokens = min_tokens(job)
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
    pocket: tuple[ResidueRef, ...] = ()   # the screen-wide pocket (each ligand has its own copy)


def pocket_parts(ligand: LigandSpec) -> tuple[str, ...]:
    """What a ligand's pocket adds to its request hash (nothing without one: hashes of
    requests without pockets are unchanged)."""
    if not ligand.pocket:
        return ()
    return (",".join(f"{r.chain_id}:{r.residue}" for r in ligand.pocket), repr(ligand.pocket_distance))


def _pocket_distance(value: Any, default: float, target: Job, source: str, field: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"expected a distance in Å (a number), got {type(value).__name__}",
                         source=source, field=field)
    try:                                  # no residues: only the CLI's range check
        parse_pocket((), target, distance=float(value), distance_field=field)
    except InputError as err:
        raise err.located(source=source) from None
    return float(value)


def _pocket(value: Any, target: Job, distance: float, source: str, field: str) -> tuple:
    """A request's pocket (`"A:12,45"` or a list of such strings, as `foldray screen --pocket`)
    -> the target's residues, checked by the CLI's parser (`screening.parse_pocket`)."""
    specs = [value] if isinstance(value, str) else value
    if not isinstance(specs, list) or not all(isinstance(v, str) for v in specs):
        raise InputError("expected \"CHAIN:RES[,RES...]\" or a list of such strings",
                         source=source, field=field)
    try:
        return parse_pocket(specs, target, distance=distance, field=field,
                            distance_field=f"{field}_distance")
    except InputError as err:
        raise err.located(source=source) from None


def parse_screen_body(body: bytes, limits: Limits, source: str = "request") -> ScreenRequest:
    """`{"target": <AF3 job>, "ligands": [{"id", "smiles"|"ccd", "key"?, "pocket"?,
    "pocket_distance"?}], "samples"?, "out"?, "pocket"?, "pocket_distance"?}`.

    `pocket`: target residues every ligand binds near (`foldray screen --pocket`'s syntax); a
    ligand's own `pocket` replaces it (`[]`: none for that ligand). Ligand chemistry is not
    checked here (one bad SMILES must not fail the others): see `ligand_error`.
    """
    check_body_size(body, limits)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"invalid JSON: {err}", source=source) from None
    if not isinstance(data, dict):
        raise InputError("expected a screen object {\"target\", \"ligands\"}", source=source)
    unknown = set(data) - {"target", "ligands", "samples", "out", "pocket", "pocket_distance"}
    if unknown:
        raise InputError(f"unknown keys {sorted(unknown)}", source=source)
    target = parse_job(data.get("target"), source=source, allow_paths=False)
    check_token_budget(target, limits, "target")
    distance = _pocket_distance(data.get("pocket_distance"), DEFAULT_POCKET_DISTANCE, target, source,
                                "pocket_distance")
    pocket = _pocket(data["pocket"], target, distance, source, "pocket") if data.get("pocket") else ()
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
        extra = set(item) - {"id", "smiles", "ccd", "key", "pocket", "pocket_distance"}
        if extra:
            raise InputError(f"unknown keys {sorted(extra)}", source=source, field=field)
        for name in ("smiles", "ccd", "key"):
            if item.get(name) is not None and not isinstance(item[name], str):
                raise InputError(f"expected a string, got {type(item[name]).__name__}", source=source,
                                 field=f"{field}.{name}")
        for name in ("id", "key"):
            if len(item.get(name) or "") > limits.max_key_chars:
                raise InputError(f"longer than {limits.max_key_chars} characters", source=source,
                                 field=f"{field}.{name}")
        own = _pocket_distance(item.get("pocket_distance"), distance, target, source,
                               f"{field}.pocket_distance")
        residues = pocket                 # the screen's, unless the ligand names its own
        if "pocket" in item:
            residues = (_pocket(item["pocket"], target, own, source, f"{field}.pocket")
                        if item["pocket"] else ())
        if item.get("pocket_distance") is not None and not residues:
            raise InputError("a pocket distance without a pocket (give pocket here or in the request)",
                             source=source, field=f"{field}.pocket_distance")
        specs.append(LigandSpec(id=item["id"], smiles=item.get("smiles"), ccd=item.get("ccd"),
                                pocket=residues, pocket_distance=own))
        keys.append(item.get("key") or "")
    samples = data.get("samples")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or not 1 <= samples <= limits.max_samples):
        raise InputError(f"expected an integer 1-{limits.max_samples}, got {samples!r}",
                         source=source, field="samples")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise InputError(f"expected a URL string, got {type(out).__name__}", source=source,
                         field="out")
    return ScreenRequest(target=target, ligands=tuple(specs), keys=tuple(keys), samples=samples,
                         out=out, pocket=pocket)


def parse_screen_request(body: bytes, limits: Limits) -> tuple[ScreenRequest, list[str | None]]:
    """The screen and each ligand's problem (`ligand_error`: RDKit, size) or None."""
    screen = parse_screen_body(body, limits)
    return screen, [ligand_error(ligand, screen.target, limits=limits) for ligand in screen.ligands]


def ligand_error(ligand: LigandSpec, target: Job, source: str = "screen",
                 limits: Limits | None = None) -> str | None:
    """The `foldray validate` line of the screen job (`ligand_job`) of a ligand that cannot
    be featurized, else None: the field is the ligand's place in that job. Any exception
    is that ligand's error (class and message), never the request's."""
    field = f"sequences[{len(target.entities)}].ligand"
    try:
        if limits is not None and ligand.smiles:
            n_tokens = min_tokens(target) + smiles_min_atoms(ligand.smiles)
            if n_tokens > limits.max_tokens:
                raise InputError(f"the job has at least {n_tokens} tokens, above the server's limit "
                                 f"of {limits.max_tokens}", job=ligand.id, field=f"{field}.smiles")
        check_ligand(ligand, field=field)
    except InputError as err:
        return error_line(err.located(source=source))
    except Exception as err:   # noqa: BLE001  (one ligand never fails the others)
        return error_line(InputError(error_summary(err), source=source, job=ligand.id, field=field))
    return None


def output_names(ligands: Sequence[LigandSpec]) -> list[str]:
    """Output names of a screen's ligands, unique after `sanitize_name` (which lower-cases:
    `Lig` and `lig` would share a folder): a repeat gets `_2`, `_3`, ... so no result is
    written over another's."""
    taken: set[str] = set()
    names = []
    for ligand in ligands:
        base = name = sanitize_name(ligand.id)
        n = 1
        while name in taken:
            n += 1
            name = f"{base[:120]}_{n}"
        taken.add(name)
        names.append(name)
    return names


def job_id(scope: str, key: str, caller: str = "") -> str:
    """A job id from an idempotency key: the same key from the same caller (a hash of
    their token) gives the same id, so a retried POST returns the job it already created
    instead of a new one; another caller's key never names this caller's job."""
    return hashlib.sha256(f"{scope}\0{caller}\0{key}".encode()).hexdigest()[:32]


def request_hash(*parts: str | bytes) -> str:
    """Hash of what a request asked for, stored with its job: the same idempotency key
    with a different request is refused (see `foldray.job_store.KeyReused`)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def request_error_line(err: BaseException) -> str:
    """The 422 line for anything raised while reading one request: an InputError's
    located line, else "request: -: -: Class: message" (the traceback is logged)."""
    if not isinstance(err, InputError):
        log.warning("request refused: %s", error_summary(err), exc_info=True)
        err = InputError(error_summary(err), source="request")
    return error_line(err)


def job_error_line(err: BaseException, job: Job | None) -> str:
    """A job's error as the `foldray validate` line: an InputError located in the job,
    anything else as `error_summary`."""
    located = err if isinstance(err, InputError) else InputError(error_summary(err))
    return error_line(located.located(source=job.source if job else "", job=job.name if job else ""))


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
