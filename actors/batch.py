"""The batch engine: `foldray predict-batch` and `foldray featurize` are this one pipeline.

    read + size (parse, tokenize, token budget, skip finished jobs; CPU tasks, or the
                 driver itself for at most `driver_read_max_inputs` input files)
    -> sort by token count, largest first (similar sizes together; big jobs start early)
    -> MSA search (--msa search only: actors/msa_stage.py, materialized before the pools)
    -> featurize (CPU actors; stop_after="featurize": features.npz written here, done;
                  jobs stored by `foldray featurize` are loaded here, not featurized)
    -> predict (model actor pool, model loaded once per actor)
    -> write (CPU actors: AF3 layout per job, summary last as the completion marker)

For CPU inference (`BatchSettings.stages` "auto"; `fused_stages`) featurize, predict and
write run in one actor (actors/fused_stage.py; batched forward passes too, screens included):
one kind of process to start and no features or samples through the object store; with
GPUs, stage node types or sharding they stay separate pools.

One row schema (`foldray.io.results.RESULTS_SCHEMA`) and one status vocabulary (ok /
error / skipped) for both. An exception for one job, in any stage, is that job's error
row; the run always finishes and always writes `<out>/results.parquet`. Finished rows are
also written to `<out>/.results/` as they arrive, so they survive a killed driver.
Before any work the output is write-tested and every actor is checked to fit some node
(or node type an autoscaler can launch); actor pools that still cannot be placed within
`placement_timeout_s` stop the run with a message naming what they asked for.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from foldray.actors.predict_rows import PENDING, final_row, result_row
from foldray.errors import InputError, error_line, short_message
from foldray.limits import DEFAULT_FEATURIZE_TIME_LIMIT_S, DEFAULT_PLACEMENT_TIMEOUT_S
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.parallel.plan import ShardSettings

if TYPE_CHECKING:
    import ray.data

    from foldray.actors.screen_stage import ScreenSettings
    from foldray.io.results import ResultParts
    from foldray.predictor import PredictSettings

Stage = Literal["featurize", "predict"]
DEFAULT_DRIVER_READ_MAX_INPUTS = 8
# pending jobs sorted in the driver up to this many (their rows are small: jobs, or ligand
# records for screens); larger runs sort with Ray Data, never all in the driver
DRIVER_SORT_MAX_JOBS = 20_000
PART_INTERVAL_S = 2.0    # finished rows reach <out>/.results/ at least this often
# stage metrics of a job finished by an interrupted earlier run, kept for its `skipped` row
_CARRIED = ("featurize_seconds", "model_seconds", "write_seconds", "actor_id", "node_id",
            "featurize_node_id")
_SCREEN_CARRIED = ("ligand_plddt", "min_target_ligand_pae")   # not in a job folder's summary


@dataclass(frozen=True)
class Resources:
    """What each actor asks Ray for."""

    num_gpus_per_actor: float = 0.0     # model actor; 0: CPU inference
    num_cpus_per_actor: float = 1.0     # model actor
    num_cpus_per_worker: float = 1.0    # featurize / write actor


@dataclass(frozen=True)
class Pools:
    """Actor pool bounds (None: from the cluster's size) and model-actor restarts."""

    actors: tuple[int, int] | None = None
    cpu_workers: tuple[int, int] | None = None
    actor_restarts: int = 3


@dataclass(frozen=True)
class MsaSettings:
    """`--msa given` (the jobs' own MSAs) or `search` (foldray msa before featurization)."""

    mode: Literal["given", "search"] = "given"
    config: str = "configs/msa.yaml"
    cache: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class BatchSettings:
    """Everything one batch run needs; local paths must be absolute (workers run elsewhere)."""

    inputs: tuple[str, ...]
    out: str
    stop_after: Stage = "predict"
    checkpoint: str | None = None
    config: str | ModelConfig = "tiny"          # preset name or a ModelConfig (--model-config)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    predict: PredictSettings | None = None     # None: PredictSettings() (predict only)
    seeds: tuple[int, ...] | None = None       # featurize only: seeds[0] (default 0)
    max_tokens: int | None = None
    share_trunk: bool = False
    resources: Resources = field(default_factory=Resources)
    pools: Pools = field(default_factory=Pools)
    msa: MsaSettings = field(default_factory=MsaSettings)
    overwrite: bool = False
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S
    featurize_time_limit_s: float | None = DEFAULT_FEATURIZE_TIME_LIMIT_S   # per job; None: off
    # at most this many input files/manifest rows are read in the driver, not by Ray tasks
    driver_read_max_inputs: int = DEFAULT_DRIVER_READ_MAX_INPUTS
    address: str | None = None      # Ray address; None: RAY_ADDRESS or an embedded local Ray
    num_cpus: int | None = None     # CPUs of an embedded local Ray
    quiet: bool = False             # no progress bar/lines (errors and the summary still print)
    verbose: bool = False           # Ray's own logs and Ray Data's bars on the terminal (--verbose)
    # `foldray screen`: rows come from a target x a ligand library (`inputs` unused) and the
    # results table has the screen columns (foldray.io.results.SCREEN_SCHEMA)
    screen: ScreenSettings | None = None
    # jobs per model-actor call, run in shared forward passes by size (1: one job a call)
    model_batch_size: int = 1
    # one job over several devices above a token count (--devices-per-job, --shard-above)
    sharding: ShardSettings = field(default_factory=ShardSettings)
    # after reading: "separate" featurize / model / write actor pools, or "fused" (one actor
    # featurizes, predicts and writes each job); "auto": fused for CPU inference (fused_stages)
    stages: Literal["auto", "separate", "fused"] = "auto"


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]      # one per job, results columns, sorted by source and name
    table_url: str
    seconds: float
    problem: str | None = None      # why the run stopped early (pending jobs are error rows)
    # where the time went: seconds per phase of the run (`benchmarks/batch_overhead.py`)
    phases: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Seconds per phase, each phase from the end of the previous one."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last, 3)
        self._last = now


class BatchError(Exception):
    """The run could not start: storage, MSA databases or placement. One line for the user."""


# --------------------------------------------------------------------------- inputs


def collect_entries(locations: list[str]) -> tuple[list[dict[str, Any]], list[InputError]]:
    """Input units (files, manifest rows holding JSON, or jobs stored by `foldray featurize`:
    `stored`) and the locations that failed.

    Storage errors here (missing bucket, refused credentials) are raised, not collected.
    """
    from foldray.inputs.load import INPUT_SUFFIXES, find_inputs
    from foldray.inputs.manifest import ManifestEntry, is_manifest, read_manifest
    from foldray.io.feature_store import is_sidecar

    entries: list[dict[str, Any]] = []
    errors: list[InputError] = []

    def add_files(location: str) -> None:
        files = find_inputs(location)
        if not files:
            errors.append(InputError(f"no input files ({', '.join(INPUT_SUFFIXES)}) found",
                                     source=location))
        # `foldray featurize` output: each job's sidecar stands for its stored features
        entries.extend({"source": f, "text": None, "stored": is_sidecar(f)} for f in files)

    for location in locations:
        try:
            if not is_manifest(location):
                add_files(location)
                continue
            for entry in read_manifest(location):
                if isinstance(entry, InputError):
                    errors.append(entry)
                elif isinstance(entry, ManifestEntry) and entry.text is not None:
                    entries.append({"source": entry.source, "text": entry.text, "stored": False})
                else:
                    try:
                        add_files(entry.source)
                    except InputError as err:
                        errors.append(err)
        except InputError as err:
            errors.append(err)
    return entries, errors


def _error_rows(errors: list[InputError]) -> list[dict[str, Any]]:
    return [final_row(result_row("error", source=err.source, name=err.job,
                                 error=error_line(err))) for err in errors]


def _storage_problem(what: str, err: Exception) -> BatchError:
    return BatchError(f"{what}: {err.__class__.__name__}: {err} (check the bucket/path and the "
                      "AWS_* credentials and endpoint)")


# --------------------------------------------------------------------------- the run


def run_batch(settings: BatchSettings) -> BatchResult:
    """Run the batch; raises BatchError when it cannot start (nothing was done then)."""
    from foldray.io import storage
    from foldray.io.results import clear_parts, write_results_table
    from foldray.jobs.ray_setup import connect_ray

    started = time.perf_counter()
    clock = _Clock()
    try:   # before Ray or the model: a wrong bucket or key fails in seconds
        storage.check_writable(settings.out)
    except OSError as err:
        raise _storage_problem(f"output {settings.out}", err) from None
    try:
        if settings.screen is None:
            entries, bad_locations = collect_entries(list(settings.inputs))
        else:   # the library's files, listed (not read) here: a wrong prefix fails now
            entries, bad_locations = [{"library": _library_files(settings.screen)}], []
    except InputError as err:
        raise BatchError(error_line(err)) from None
    except Exception as err:  # s3fs/botocore errors when listing inputs
        raise _storage_problem(f"inputs {list(settings.inputs)}", err) from None
    if settings.stop_after == "predict" and settings.msa.mode == "search":
        _check_msa_config(settings.msa)
    clock.lap("checks")
    with connect_ray(settings.address, quiet=settings.quiet, num_cpus=settings.num_cpus,
                     ray_logs=settings.verbose):
        clock.lap("ray_start")
        _check_placement(settings)
        rows, problem = _run_pipeline(settings, entries, clock) if entries else ([], None)
    clock.lap("ray_shutdown")
    rows = sorted(rows + _error_rows(bad_locations), key=lambda r: (r["source"], r["name"]))
    try:
        table_url = write_results_table(settings.out, rows, _schema(settings))
    except Exception as err:   # storage gone at the very end: the part files keep the rows
        raise BatchError(f"cannot write {settings.out}/results.parquet: {short_message(err)} "
                         f"(finished rows are in {settings.out}/.results/)") from None
    with contextlib.suppress(OSError):
        clear_parts(settings.out)
    clock.lap("results_table")
    return BatchResult(rows, table_url, time.perf_counter() - started, problem, clock.phases)


def _library_files(screen: ScreenSettings) -> dict[str, list[str]]:
    from foldray.screen_library import list_library

    return list_library(screen.library)


def _schema(settings: BatchSettings) -> Any:
    from foldray.io.results import RESULTS_SCHEMA, SCREEN_SCHEMA

    return RESULTS_SCHEMA if settings.screen is None else SCREEN_SCHEMA


def _check_msa_config(msa: MsaSettings) -> None:
    from foldray.msa.config import load_config
    from foldray.msa.databases import check_databases

    try:
        check_databases(load_config(msa.config))
    except InputError as err:   # a missing database: fail now, not after featurization
        raise BatchError(str(err)) from None


def _actor_requests(settings: BatchSettings) -> dict[str, dict[str, float]]:
    """Per actor kind, the resources one actor asks for (Ray's names)."""
    from foldray.actors.placement import stage_resources

    res = settings.resources
    requests = {"featurize/write actors": {"CPU": res.num_cpus_per_worker,
                                           **stage_resources("featurize", res.num_cpus_per_worker)}}
    if settings.stop_after == "predict":
        requests["model actors"] = {"CPU": res.num_cpus_per_actor, "GPU": res.num_gpus_per_actor,
                                    **stage_resources("model", res.num_gpus_per_actor or 1.0)}
    return requests


def _check_placement(settings: BatchSettings) -> None:
    from foldray.actors.placement import placement_problem

    for what, request in _actor_requests(settings).items():
        if (problem := placement_problem(what, request)) is not None:
            raise BatchError(problem + " (change --num-gpus-per-actor / --num-cpus-per-actor / "
                             "--num-cpus-per-worker, or add such nodes)")


def _pool_sizes(settings: BatchSettings) -> tuple[tuple[int, int], tuple[int, int]]:
    """(inference, CPU stage) actor pool bounds, defaulting to what the cluster has."""
    import ray

    resources = ray.cluster_resources()
    gpus = settings.resources.num_gpus_per_actor
    inference = settings.pools.actors
    if inference is None and gpus > 0:
        inference = 1, max(1, int(resources.get("GPU", 0.0) // gpus))
    cpu = settings.pools.cpu_workers or (1, max(1, int(resources.get("CPU", 1.0) // 2)))
    return inference or (1, 1), cpu


def _probe_placement(settings: BatchSettings) -> str | None:
    """Why the actor pools cannot start (None: they can), found before any pool exists.

    A placement group of one actor of each kind either becomes ready (the cluster, or its
    autoscaler within `placement_timeout_s`, has room) or the run stops with a message and
    every pending job as an error row. The probe is removed either way, so nothing waits
    in the cluster afterwards; pools themselves then start as resources free up (on 2 CPUs
    the featurize, model and write pools share them in turn)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [{key: amount for key, amount in request.items() if amount > 0}
               for request in _actor_requests(settings).values()]
    probe = placement_group(bundles, strategy="SPREAD")
    try:
        ready = probe.wait(timeout_seconds=settings.placement_timeout_s)
    finally:
        remove_placement_group(probe)
    return None if ready else _placement_message(settings)


def _mark_duplicates(rows: list[dict[str, Any]]) -> frozenset[str]:
    """Output names used by more than one job: those jobs are errors, not overwrites.

    Names are lower-cased by sanitize_name, so `Lig` and `lig` collide here, as they would
    on a case-insensitive filesystem."""
    names = collections.Counter(r["safe_name"] for r in rows if r["status"] != "error")
    return frozenset(name for name, count in names.items() if count > 1 and name)


def _read(settings: BatchSettings, entries: list[dict[str, Any]],
          remote: dict[str, Any]) -> ray.data.Dataset:
    import ray

    from foldray.actors.prepare_stage import read_stage

    if settings.screen is not None:
        from foldray.actors.screen_stage import screen_dataset

        return screen_dataset(settings.screen, entries[0]["library"], out_url=settings.out,
                              max_tokens=settings.max_tokens, overwrite=settings.overwrite,
                              remote=remote)
    return (ray.data.from_items(entries)
            .flat_map(read_stage, fn_kwargs=_read_kwargs(settings), **remote)
            .materialize())


def _read_here(settings: BatchSettings, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The read stage in this process (a handful of input files: one task each would only
    add Ray worker start-up, and a sort over few blocks a shuffle)."""
    from foldray.actors.prepare_stage import read_stage

    return [row for entry in entries for row in read_stage(entry, **_read_kwargs(settings))]


def _read_kwargs(settings: BatchSettings) -> dict[str, Any]:
    """`read_stage`'s settings; `foldray featurize` also checks stored jobs' featurization."""
    from foldray.features.model_featurization import model_featurization

    return {"out_url": settings.out, "max_tokens": settings.max_tokens,
            "overwrite": settings.overwrite, "stop_after": settings.stop_after,
            "featurization": (model_featurization(settings.checkpoint, settings.config)
                              if settings.stop_after == "featurize" else None)}


def _run_pipeline(settings: BatchSettings, entries: list[dict[str, Any]], clock: _Clock,
                  ) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of every job read from `entries`, and why the run stopped early (or None)."""
    import ray
    from ray.data.expressions import col

    from foldray.io.results import RESULT_COLUMNS, SCREEN_COLUMNS, ResultParts, read_parts, read_results
    from foldray.jobs.ray_setup import worker_remote_args

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = settings.verbose and not settings.quiet   # else RunProgress
    earlier = read_parts(settings.out)
    if settings.screen is not None:   # a finished screen: its ligand metrics, for skipped rows
        earlier = read_results(settings.out) + earlier
    previous = {r["safe_name"]: r for r in earlier if r["status"] in ("ok", "skipped")}
    parts = ResultParts(settings.out, _schema(settings))
    columns = [*RESULT_COLUMNS, *(SCREEN_COLUMNS if settings.screen else ()), "input_sha256"]
    try:
        remote = worker_remote_args()
        local = settings.screen is None and len(entries) <= settings.driver_read_max_inputs
        if local:   # a few files: read here, no Ray tasks (worker start-up, sort shuffle)
            read_rows = _read_here(settings, entries)
            light = [{key: row.get(key) for key in columns} for row in read_rows]
        else:
            read = _read(settings, entries, remote)
            clock.lap("read")
            light = read.select_columns(columns).take_all()
        clock.lap("read_to_driver")
        duplicates = _mark_duplicates(light)
        finished: list[dict[str, Any]] = []
        pending: dict[str, dict[str, Any]] = {}
        for row in light:
            if row["safe_name"] in duplicates and row["status"] != "error":
                row.update(status="error", output="", error=f"{row['source']}: {row['name']}: "
                           f"name: another job in this batch has the output name "
                           f"{row['safe_name']!r}")
            if row["status"] == PENDING:
                pending[row["safe_name"]] = row
            else:
                finished.append(final_row(row))
        _carry_previous(finished, previous)
        parts.write(finished)
        if not pending:
            return finished, None
        # Largest first: similar sizes run back to back and the longest jobs do not straggle
        # at the end. Materialized before the actor pools start, so sort tasks never wait for
        # CPUs the pools hold. Small blocks spread jobs evenly over the actors (_block_rows).
        per_block = _block_rows(settings, len(pending), max(row["n_tokens"] or 1 for row in pending.values()))
        if local:
            todo_rows = [row for row in read_rows
                         if row["status"] == PENDING and row["safe_name"] not in duplicates]
        else:
            keep = col("status") == PENDING
            if duplicates:
                keep = keep & col("safe_name").not_in(sorted(duplicates))
            kept = read.filter(expr=keep)
            # a Ray Data sort is a shuffle (~4 s for a 30-ligand screen): up to a bound, here
            todo_rows = kept.take_all() if len(pending) <= DRIVER_SORT_MAX_JOBS else None
        if todo_rows is None:
            todo = (kept.sort("n_tokens", descending=True)
                    .repartition(target_num_rows_per_block=per_block).materialize())
        else:
            todo_rows.sort(key=lambda row: row["n_tokens"], reverse=True)
            todo = ray.data.from_items(todo_rows, override_num_blocks=-(-len(todo_rows) // per_block))
        clock.lap("sort")
        problem = _probe_placement(settings)
        clock.lap("placement_probe")
        done, problem = ({}, problem) if problem else _stream(settings, todo, remote, parts, clock,
                                                              len(pending))
    finally:
        context.enable_progress_bars = saved
    lost = [final_row(row | {"status": "error", "error": f"{row['source']}: {row['name']}: -: "
                             f"not run: {problem}"})
            for name, row in pending.items() if name not in done]
    parts.write(lost)
    return finished + list(done.values()) + lost, problem


BLOCK_TOKENS = 512   # fused actors: jobs share a block up to this many tokens


def _block_rows(settings: BatchSettings, n_jobs: int, max_tokens: int) -> int:
    """Jobs per block of the stream. Separate stage pools: one, so every job moves to the
    next free actor on its own. Fused actors (CPU inference, featurize to write in one
    actor): small jobs share a block, up to 8 and BLOCK_TOKENS tokens, keeping 4 blocks per
    actor so the actors finish together. A block is one task, so 200 jobs of ~40 tokens
    cost 25-50 scheduling round trips instead of 200, while a block of real-size jobs (slow
    on CPU) stays one job, so progress and the results parts still move job by job."""
    if not fused_stages(settings, separate_nodes=_separate_nodes(settings)):
        return 1
    _, high = _pool_sizes(settings)[0]
    return max(1, min(8, n_jobs // (4 * high), BLOCK_TOKENS // max(1, max_tokens)))


def _separate_nodes(settings: BatchSettings) -> bool:
    """Whether stage node types set CPU stages and model actors apart (cluster.yaml)."""
    from foldray.actors.placement import stage_resources

    res = settings.resources
    return bool(stage_resources("featurize", res.num_cpus_per_worker)
                or stage_resources("model", res.num_gpus_per_actor or 1.0))


def _carry_previous(rows: list[dict[str, Any]], previous: dict[str, dict[str, Any]]) -> None:
    """Skipped jobs finished by an interrupted run keep that run's stage times and nodes."""
    for row in rows:
        before = previous.get(row["safe_name"])
        if row["status"] == "skipped" and before and before["name"] == row["name"]:
            row.update({key: before.get(key) for key in _CARRIED})
            if "ligand_id" in row:
                row.update({key: before.get(key) for key in _SCREEN_CARRIED})
                row["seconds"] = before.get("seconds")


def _stream(settings: BatchSettings, todo: ray.data.Dataset, remote: dict[str, Any],
            parts: ResultParts, clock: _Clock, total: int,
            ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Run the stages after reading; rows by output name as they finish, and the problem
    that stopped the run early (None when every job went through)."""
    from foldray.actors.predict_rows import logger
    from foldray.progress import RunProgress

    progress = RunProgress(total, desc="ligands" if settings.screen else "jobs", quiet=settings.quiet)

    done: dict[str, dict[str, Any]] = {}
    buffer: list[dict[str, Any]] = []
    flushed = time.monotonic()
    try:
        writing = 0.0
        for row in _stages(settings, todo, remote).iter_rows():
            if not done:
                clock.lap("pools_start_to_first_row")
            row = final_row(row)
            done[row["safe_name"]] = row
            progress.update(row["status"])
            buffer.append(row)
            if (now := time.monotonic()) - flushed >= PART_INTERVAL_S:
                parts.write(buffer)
                buffer, flushed = [], time.monotonic()
                writing += flushed - now
        clock.phases["part_writes_in_stream"] = round(writing, 3)
    except Exception as err:   # a dead pool, an actor that cannot be placed: keep what is done
        logger.error("batch run stopped", exc_info=err)
        return done, _run_problem(settings, err)
    finally:
        progress.close()
        parts.write(buffer)
        if settings.sharding.enabled:   # a placement group outlives the actor that made it
            from foldray.actors.sharded_predict_stage import remove_run_groups

            remove_run_groups(settings)
        clock.lap("stream_rest")
    return done, None


def _run_problem(settings: BatchSettings, err: Exception) -> str:
    import ray

    text = str(err)
    if isinstance(err, ray.exceptions.GetTimeoutError) or "Timed out while starting actors" in text:
        return _placement_message(settings)
    return f"the run stopped: {short_message(err)}"


def _placement_message(settings: BatchSettings) -> str:
    import ray

    asked = "; ".join(f"{what}: " + ", ".join(f"{k} {v:g}" for k, v in req.items() if v)
                      for what, req in _actor_requests(settings).items())
    return (f"the actor pools could not be placed within {settings.placement_timeout_s:g} s "
            f"(--placement-timeout; each actor asks for {asked}; the cluster has "
            + ", ".join(f"{k} {v:g}" for k, v in sorted(ray.cluster_resources().items())
                        if not k.startswith(("node:", "memory", "object_store")))
            + ")")


def _stages(settings: BatchSettings, todo: ray.data.Dataset,
            remote: dict[str, Any]) -> ray.data.Dataset:
    """MSA search, featurize, and (unless stopped after featurization) predict and write."""
    import warnings

    from ray.data import ActorPoolStrategy
    from ray.util.annotations import RayDeprecationWarning

    from foldray.actors.placement import stage_resources
    from foldray.actors.predict_stage import PredictBatchStage, PredictStage
    from foldray.actors.prepare_stage import FeaturizeStage
    from foldray.actors.write_stage import WriteStage
    from foldray.features.model_featurization import model_featurization

    res = settings.resources
    (low, high), (cpu_low, cpu_high) = _pool_sizes(settings)
    if settings.stop_after == "predict" and settings.msa.mode == "search":
        todo = _search(settings, todo, remote)
    # CPU stages are actor pools too: a worker decodes the CCD once, and Ray's idle-worker
    # reaping does not restart (and re-import) task workers between jobs.
    # On a cluster with stage resources (cluster.yaml), CPU stages go to featurization
    # nodes and model actors to GPU nodes; without them, anywhere with room.
    cpu_place = stage_resources("featurize", res.num_cpus_per_worker)
    model_place = stage_resources("model", res.num_gpus_per_actor or 1.0)
    cpu_stage = {"compute": ActorPoolStrategy(min_size=cpu_low, max_size=cpu_high),
                 "num_cpus": res.num_cpus_per_worker, **remote,
                 **({"resources": cpu_place} if cpu_place else {})}
    featurize_only = settings.stop_after == "featurize"
    featurize_kwargs = {
        "seeds": settings.seeds, "max_tokens": settings.max_tokens,
        "share_trunk": settings.share_trunk,
        "out_url": settings.out if featurize_only else None,
        "time_limit_s": settings.featurize_time_limit_s,
        # featurize as the model's checkpoint asks (imported weights: their reference's)
        "featurization": model_featurization(settings.checkpoint, settings.config),
        "screen_target": settings.screen.target if settings.screen else None}
    featurized = todo.map(FeaturizeStage, fn_constructor_kwargs=featurize_kwargs, **cpu_stage)
    if featurize_only:
        return featurized
    model_kwargs = {"checkpoint": settings.checkpoint, "config": settings.config,
                    "runtime": settings.runtime,
                    "device": "cuda" if res.num_gpus_per_actor > 0 else "cpu",
                    "settings": settings.predict or _default_predict(),
                    "batch_size": settings.model_batch_size}
    write_kwargs = {"out_url": settings.out, "outputs": (settings.predict or _default_predict()).outputs}
    model_actor = {"compute": ActorPoolStrategy(min_size=low, max_size=high),
                   "num_gpus": res.num_gpus_per_actor, "num_cpus": res.num_cpus_per_actor,
                   "max_restarts": settings.pools.actor_restarts, "max_task_retries": -1, **remote,
                   **({"resources": model_place} if model_place else {})}
    batched = settings.model_batch_size > 1    # jobs of similar size share forward passes
    by_batch = {"batch_size": settings.model_batch_size, "batch_format": "numpy"} if batched else {}
    if fused_stages(settings, separate_nodes=bool(cpu_place or model_place)):
        from foldray.actors.fused_stage import FusedBatchStage, FusedStage

        with warnings.catch_warnings():   # max_restarts: see below
            warnings.simplefilter("ignore", RayDeprecationWarning)
            return (todo.map_batches if batched else todo.map)(
                FusedBatchStage if batched else FusedStage, fn_constructor_kwargs={
                    "featurize": featurize_kwargs, "predict": model_kwargs, "write": write_kwargs},
                **by_batch, **model_actor)
    if settings.sharding.enabled:   # jobs above --shard-above: N kept workers (sharded_predict_stage)
        from foldray.actors.sharded_predict_stage import restore_stage, sharded_stage

        featurized = sharded_stage(featurized, settings, remote)
    with warnings.catch_warnings():
        # Ray 2.60 flags every extra remote arg as deprecated but has no named parameter for
        # restarts; its default (-1) would retry an actor that dies on every record forever.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        predicted = (featurized.map_batches if batched else featurized.map)(
            PredictBatchStage if batched else PredictStage, fn_constructor_kwargs=model_kwargs,
            **by_batch, **model_actor)
    if settings.sharding.enabled:
        predicted = restore_stage(predicted, settings, remote)
    return predicted.map(WriteStage, fn_constructor_kwargs=write_kwargs, **cpu_stage)


def fused_stages(settings: BatchSettings, *, separate_nodes: bool) -> bool:
    """Whether featurize, predict and write run in one actor per job (`FusedStage`, or
    `FusedBatchStage` for batched forward passes: screens, `--model-batch-size`).

    `auto`: when the model runs on CPUs and no node types are set apart for stages. Then a
    separate featurize/write pool only adds processes to start (each importing the stack
    and decoding the CCD), two object-store hops per job and CPU contention with the model,
    and parallelism comes from more model actors. With GPUs the CPU stages stay separate, so
    a GPU never waits for featurization or writes; sharded jobs keep them too."""
    if settings.stages != "auto":
        return settings.stages == "fused"
    return (settings.resources.num_gpus_per_actor == 0 and not separate_nodes
            and not settings.sharding.enabled)


def _default_predict() -> PredictSettings:
    from foldray.predictor import PredictSettings

    return PredictSettings()


def _search(settings: BatchSettings, todo: ray.data.Dataset,
            remote: dict[str, Any]) -> ray.data.Dataset:
    """`--msa search`: the engine's MSA stage (`foldray.actors.msa_stage`) on the pending
    jobs; a job whose search fails is its error row. The rows stay in the cluster."""
    import sys

    from foldray.actors.msa_stage import search_dataset, search_totals
    from foldray.io import storage
    from foldray.msa.config import load_config

    config = load_config(settings.msa.config)
    cache_url = settings.msa.cache or config.cache_url or storage.join(settings.out, "msa_cache")
    searched = search_dataset(todo, config, cache_url=cache_url, workers=settings.msa.workers,
                              remote=remote)
    if not settings.quiet:
        totals, warnings = search_totals(searched)
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"msa: {totals['msa_chains']} chains: {totals['msa_searched']} database searches "
              f"run, {totals['msa_cached']} from the cache ({cache_url})", file=sys.stderr)
    return searched
