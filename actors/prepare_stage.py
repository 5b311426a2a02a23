"""CPU stages of the batch engine before the model: read + size, then featurize.

Thin: parsing, tokenizing and features live in the library; these stages loop rows, call
it, and turn any exception into that job's error row so one bad record never sinks the
batch. MSA parsing and conformer generation happen here, never on the inference actor.
"""

from __future__ import annotations

import json
import time
from typing import Any

from foldray.actors.predict_rows import (
    PENDING,
    FeaturizedSeeds,
    ScreenLigand,
    StoredFeatures,
    failed_row,
    result_row,
)
from foldray.chem.ccd import parse_user_ccd, warm_up
from foldray.chem.deadline import featurization_deadline
from foldray.errors import InputError
from foldray.features.config import DEFAULT_FEATURIZATION, FeaturizationConfig
from foldray.features.pipeline import FeaturizedJob, featurize_job, featurize_seeds
from foldray.inputs.af3_json import parse_af3_json_lenient
from foldray.inputs.af3_json_writer import job_to_af3_json
from foldray.inputs.job import Job
from foldray.inputs.manifest import ManifestEntry, read_entry_jobs
from foldray.inputs.size import check_token_budget, count_tokens
from foldray.io import feature_store, storage
from foldray.io.confidences import completion, conflict_message, input_sha256, job_dir


def _read_entry(row: dict[str, Any]) -> list[Job | InputError] | dict[str, Any]:
    """The jobs of one input, or the error row of an input that could not be read at all."""
    source = row["source"]
    try:
        return storage.retry_io(lambda: read_entry_jobs(ManifestEntry(source, row.get("text"))))
    except Exception as err:  # a parser bug on a malformed record: report it, keep the rest
        return failed_row(result_row(PENDING, source=source), err, "read")


def _featurized_done(out_url: str, job: Job, digest: str,
                     featurization: FeaturizationConfig | None) -> tuple[str, str]:
    """(state, detail) of `foldray featurize` outputs: missing, complete or conflict. Stored
    features of the same input made with another featurization than this run's are not
    finished work: the job is an error row (never silently kept, never silently replaced)."""
    summary = feature_store.done_summary(out_url, job.safe_name)
    if summary is None:
        return "missing", ""
    other = summary.get("input_sha256")
    if other not in (None, digest):
        return "conflict", str(other)
    expected = featurization or DEFAULT_FEATURIZATION
    try:
        stored: FeaturizationConfig | None = feature_store.stored_featurization(summary)
    except InputError:   # unrecorded (an older foldray) or unreadable: not this run's either
        stored = None
    if stored != expected:
        made = f"the {feature_store.featurization_name(stored)}" if stored else "an unrecorded"
        raise InputError(f"{feature_store.done_url(out_url, job.safe_name)} holds this job's features "
                         f"made with {made} featurization, this run makes the "
                         f"{feature_store.featurization_name(expected)} one; use that run's "
                         "--checkpoint / --model-config, --overwrite to replace them, or another --out",
                         source=job.source, job=job.name, field=feature_store.FEATURIZATION_KEY)
    return "complete", ""


def _size_and_check(item: Job, row: dict[str, Any], *, out_url: str, max_tokens: int | None,
                    overwrite: bool, stop_after: str,
                    featurization: FeaturizationConfig | None = None) -> dict[str, Any]:
    # Sized without building conformers (a large ligand's embedding is featurization's work,
    # under its time limit, and done once): exact counts come from the featurize stage.
    user_ccd = parse_user_ccd(item.user_ccd, source=item.source) if item.user_ccd else None
    check_token_budget(item, max_tokens, user_ccd)
    row.update(n_tokens=count_tokens(item, user_ccd))
    return _check_done(item, row, out_url=out_url, overwrite=overwrite, stop_after=stop_after,
                       featurization=featurization)


def _check_done(item: Job, row: dict[str, Any], *, out_url: str, overwrite: bool,
                stop_after: str, featurization: FeaturizationConfig | None = None) -> dict[str, Any]:
    """`row` as skipped when its outputs exist for the same input; a conflict is an error."""
    if overwrite:
        return row
    digest = row["input_sha256"]
    if stop_after == "featurize":
        state, other = storage.retry_io(lambda: _featurized_done(out_url, item, digest, featurization))
        if state == "complete":
            row.update(status="skipped", payload=None,
                       output=feature_store.features_url(out_url, item.safe_name))
    else:
        done = storage.retry_io(lambda: completion(out_url, item, digest))
        state, other = done.state, done.other_sha256
        if state == "complete":
            row.update(done.scores, status="skipped", output=job_dir(out_url, item), payload=None)
    if state == "conflict":
        raise InputError(conflict_message(out_url, item, other), source=item.source,
                         job=item.name, field="name")
    return row


def read_stage(row: dict[str, Any], *, out_url: str, max_tokens: int | None,
               overwrite: bool, stop_after: str = "predict",
               featurization: FeaturizationConfig | None = None) -> list[dict[str, Any]]:
    """One input (file or inline manifest JSON) -> one row per job, sized and checked.

    Counting tokens here (no conformers: milliseconds) gives each job its size (for
    grouping) and rejects jobs over the token budget before any featurization or model
    work. Complete jobs become `skipped` (with the scores of their outputs) unless
    `overwrite`; a folder holding another job with the same output name is an error, and so
    are features stored by `foldray featurize` with another `featurization` than this run's.
    """
    if row.get("stored"):
        return [_read_stored(row, out_url=out_url, max_tokens=max_tokens, overwrite=overwrite,
                             stop_after=stop_after)]
    items = _read_entry(row)
    if isinstance(items, dict):
        return [items]
    rows = []
    for item in items:
        if isinstance(item, InputError):
            rows.append(failed_row(result_row(PENDING, source=item.source or row["source"],
                                              name=item.job), item, "read"))
            continue
        base = result_row(PENDING, source=item.source, name=item.name, payload=item)
        try:
            base.update(safe_name=item.safe_name, input_sha256=input_sha256(item))
            rows.append(_size_and_check(item, base, out_url=out_url, max_tokens=max_tokens,
                                        overwrite=overwrite, stop_after=stop_after,
                                        featurization=featurization))
        except Exception as err:
            rows.append(failed_row(base, err, "read"))
    return rows


def _read_stored(row: dict[str, Any], *, out_url: str, max_tokens: int | None, overwrite: bool,
                 stop_after: str) -> dict[str, Any]:
    """The row of a job stored by `foldray featurize` (`row["source"]` is its sidecar): the
    job and its sizes from the sidecar; features and layout are loaded by the featurize
    stage. Its source and input digest are the original input's, so skipping finished jobs
    and name conflicts work as for that input."""
    sidecar = row["source"]
    base = result_row(PENDING, source=sidecar)
    try:
        summary = storage.retry_io(lambda: feature_store.read_sidecar(sidecar))
        if summary is None or "job" not in summary:
            raise InputError("not a features sidecar of this foldray version (no job in it); "
                             "run foldray featurize again", source=sidecar)
        if stop_after == "featurize":
            raise InputError("already featurized: stored features are inputs of predict-batch",
                             source=sidecar)
        folder = sidecar.rsplit("/", 1)[0]
        (job,) = parse_af3_json_lenient(json.dumps(summary["job"]), source=summary["source"])
        if isinstance(job, InputError):
            raise job
        base.update(source=job.source, name=job.name, safe_name=job.safe_name,
                    input_sha256=summary["input_sha256"], n_tokens=int(summary["n_tokens"]),
                    n_atoms=int(summary["n_atoms"]),
                    payload=StoredFeatures(
                        job=job, features_url=storage.join(folder, feature_store.FEATURES_FILE),
                        layout_url=storage.join(folder, feature_store.LAYOUT_FILE), sidecar_url=sidecar,
                        featurization_record={key: summary[key] for key in (feature_store.FEATURIZATION_KEY,)
                                              if key in summary}))
        if max_tokens is not None and base["n_tokens"] > max_tokens:
            raise InputError(f"{base['n_tokens']} tokens, over the budget of {max_tokens} "
                             "(--max-tokens)", source=job.source, job=job.name)
        return _check_done(job, base, out_url=out_url, overwrite=overwrite, stop_after=stop_after)
    except Exception as err:
        return failed_row(base, err, "read")


class FeaturizeStage:
    """CPU actor: features per seed for a pending job (same seeds `Predictor.predict_job` uses).

    Stopped after featurization (`foldray featurize`), it featurizes once with `seeds[0]`
    (default 0) and writes `<out>/<job>/features.npz`, its sidecar last.
    """

    def __init__(self, seeds: tuple[int, ...] | None, max_tokens: int | None,
                 share_trunk: bool = False, out_url: str | None = None,
                 time_limit_s: float | None = None,
                 featurization: FeaturizationConfig | None = None,
                 screen_target: Job | None = None) -> None:
        import ray

        from foldray.screening import TargetCache

        self.seeds, self.max_tokens, self.share_trunk = seeds, max_tokens, share_trunk
        self.screen_target = screen_target   # `foldray screen`: rows carry only ligands
        self.targets = TargetCache(max_entries=1)   # its MSAs parsed once per actor
        self.featurization = featurization   # the model's (ModelConfig.featurization); None: AF3
        self.time_limit_s = time_limit_s   # per job: a stalled conformer search is its error
        self.out_url = out_url        # set: featurize only, features written here
        self.node_id = ray.get_runtime_context().get_node_id()   # reported per row: placement
        warm_up()  # decode the CCD once per actor, not inside the first job

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] != PENDING:
            return row
        started = time.perf_counter()
        try:
            with featurization_deadline(self.time_limit_s):
                done = self._featurize(row) if self.out_url is None else self._save(row)
        except Exception as err:  # one job's failure is its error row, never the batch's
            return failed_row(row, err, "featurize")
        return done | {"featurize_node_id": self.node_id,
                       "featurize_seconds": time.perf_counter() - started}

    def _featurize(self, row: dict[str, Any]) -> dict[str, Any]:
        if isinstance(row["payload"], StoredFeatures):
            return self._load(row)
        if isinstance(row["payload"], ScreenLigand):
            return self._screen(row)
        job: Job = row["payload"]
        try:
            by_seed = featurize_seeds(job, self.seeds, max_tokens=self.max_tokens,
                                      share_trunk=self.share_trunk, featurization=self.featurization)
        except InputError as err:
            raise err.located(source=job.source, job=job.name) from None
        tokens = next(iter(by_seed.values())).tokens
        return dict(row) | {"payload": FeaturizedSeeds(by_seed), "n_tokens": tokens.n_tokens,
                            "n_atoms": tokens.n_atoms}

    def _screen(self, row: dict[str, Any]) -> dict[str, Any]:
        """A screen ligand: the complex featurized with the target's cached MSAs (equal to
        featurizing the complex's JSON, `foldray.screening.featurize_screen_job`)."""
        from foldray.screening import featurize_screen_job, ligand_job

        assert self.screen_target is not None, "screen rows need the featurize stage's target"
        job = ligand_job(self.screen_target, row["payload"].spec)
        prepared = self.targets.get(self.screen_target)
        seeds = self.seeds or job.seeds
        try:
            made = {seed: featurize_screen_job(job, prepared, seed=seed, max_tokens=self.max_tokens,
                                               featurization=self.featurization)
                    for seed in (seeds[:1] if self.share_trunk else seeds)}
        except InputError as err:
            raise err.located(source=job.source, job=job.name) from None
        by_seed = dict.fromkeys(seeds, made[seeds[0]]) if self.share_trunk else made
        tokens = made[seeds[0]].tokens
        return dict(row) | {"payload": FeaturizedSeeds(by_seed), "n_tokens": tokens.n_tokens,
                            "n_atoms": tokens.n_atoms}

    def _load(self, row: dict[str, Any]) -> dict[str, Any]:
        """Stored features: loaded, not made; every seed predicts from them (their reference
        conformers were rotated with `foldray featurize --seed`). Features made with another
        featurization than the model's are this job's error (`feature_store.check_featurization`;
        a sidecar that records none is refused too, see `stored_featurization`)."""
        stored: StoredFeatures = row["payload"]
        try:
            feature_store.check_featurization(stored.featurization_record, self.featurization)
        except InputError as err:
            raise err.located(source=stored.sidecar_url, job=stored.job.name) from None
        tokens = storage.retry_io(lambda: feature_store.load_layout(stored.layout_url))
        features = storage.retry_io(lambda: feature_store.load_features(stored.features_url))
        featurized = FeaturizedJob(job=stored.job, tokens=tokens, features=features)
        by_seed = dict.fromkeys(self.seeds or stored.job.seeds, featurized)  # one object: pickled once
        return dict(row) | {"payload": FeaturizedSeeds(by_seed), "n_tokens": tokens.n_tokens,
                            "n_atoms": tokens.n_atoms}

    def _save(self, row: dict[str, Any]) -> dict[str, Any]:
        assert self.out_url is not None
        job: Job = row["payload"]
        try:
            featurized = featurize_job(job, seed=(self.seeds or (0,))[0], max_tokens=self.max_tokens,
                                       with_targets=False, featurization=self.featurization)
        except InputError as err:
            raise err.located(source=job.source, job=job.name) from None
        summary = {"name": job.name, "source": job.source, "n_tokens": featurized.n_tokens,
                   "n_atoms": featurized.tokens.n_atoms, "input_sha256": row["input_sha256"],
                   "chains": [c.chain_id for c in featurized.tokens.chains],
                   "seed": (self.seeds or (0,))[0], "job": job_to_af3_json(job),
                   # checked by predict-batch against the model's (feature_store.check_featurization)
                   feature_store.FEATURIZATION_KEY: (self.featurization or DEFAULT_FEATURIZATION).to_dict()}
        out_url = self.out_url
        folder = storage.join(out_url, job.safe_name)
        storage.retry_io(lambda: storage.remove_folder(folder))   # nothing stale stays
        url = storage.retry_io(lambda: feature_store.save_features(
            out_url, job.safe_name, featurized.features, summary, featurized.tokens))
        return dict(row) | {"status": "ok", "output": url, "payload": None,
                            "n_tokens": featurized.n_tokens,
                            "n_atoms": featurized.tokens.n_atoms}
