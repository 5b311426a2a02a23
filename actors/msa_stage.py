"""Ray side of the genetic search: shard workers on CPU nodes and the fan-out over them.

Each `ShardWorker` actor loads its shards of every database once (round-robin: worker w
holds shards w, w + W, ...) and keeps them for all queries. `RayShards` is the library's
`ShardSearch`: it maps one profile over every shard of a database as actor calls and returns
the per-shard hits, which `foldray.msa.search` merges. A worker that dies is restarted by Ray
(it reloads its shards) and the call is retried. Shard workers hold only HMMER databases:
`tool: mmseqs2` databases are searched by `RayMmseqs`, one Ray CPU task per (chain,
database) with the database's `mmseqs.threads` CPUs, all of a job's searches at once.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import threading
from collections import OrderedDict
from typing import Any

import ray
from pyhmmer import plan7

from foldray.actors.env_guard import check_runtime_env
from foldray.actors.placement import stage_resources
from foldray.msa.config import DatabaseConfig, MsaConfig
from foldray.msa.databases import load_shards
from foldray.msa.search import search_shard

MAX_RESTARTS = 3  # worker process deaths survived per actor
MAX_TASK_RETRIES = 3  # shard searches retried on a restarted worker


class ShardWorker:
    """Holds shards ``{(database, index): Shard}`` in memory; searches one per call."""

    def __init__(self, databases: tuple[DatabaseConfig, ...], indices: tuple[int, ...],
                 n_shard: int) -> None:
        self.shards = {(db.name, i): shard for db in databases
                       for i, shard in load_shards(db, indices, n_shard).items()}

    def sizes(self) -> dict[tuple[str, int], tuple[int, int]]:
        return {key: (len(shard.sequences), shard.n_residues) for key, shard in self.shards.items()}

    def search(self, db: DatabaseConfig, index: int, hmm_bytes: bytes, z: float,
               short_query: bool) -> bytes:
        """Pickled TopHits (stdlib pickle: cloudpickle cannot pickle pyhmmer's alphabets)."""
        with plan7.HMMFile(io.BytesIO(hmm_bytes)) as handle:
            hmm = handle.read()
        return pickle.dumps(search_shard(self.shards[(db.name, index)], db, hmm, z, short_query))

    def pid(self) -> int:
        """The worker's process id (tests check that a killed worker came back)."""
        return os.getpid()


class RayMmseqs:
    """`MmseqsRunner` as Ray CPU tasks: every requested (chain, database) search at once, each
    a task holding its database's `mmseqs.threads` CPUs (capped at the cluster's, so a task
    can always be placed) and running MMseqs2 with that many threads and MMseqs2's own exact
    split (`shards`) -- so the a3m is the one an in-process search gives. A task whose worker
    dies is retried."""

    def __init__(self, *, runtime_env: dict | None = None) -> None:
        self.runtime_env = runtime_env
        self.calls = 0  # searches submitted

    def run(self, requests: Any, shards: int) -> list[str]:
        from foldray.msa.fill import mmseqs_search

        if not requests:
            return []
        cpus = ray.cluster_resources().get("CPU", 1.0)
        task = ray.remote(mmseqs_search)
        refs = []
        for sequence, db in requests:
            threads = max(1, min(db.mmseqs.threads, int(cpus)))
            options: dict[str, Any] = {"num_cpus": threads, "max_retries": MAX_TASK_RETRIES}
            if place := stage_resources("featurize"):
                options["resources"] = place
            if self.runtime_env:
                check_runtime_env(self.runtime_env, "mmseqs tasks")   # no secrets in task options
                options["runtime_env"] = self.runtime_env
            db = dataclasses.replace(db, mmseqs=dataclasses.replace(db.mmseqs, threads=threads))
            refs.append(task.options(**options).remote(sequence, db, shards))
        self.calls += len(refs)
        return ray.get(refs)


class RayShards:
    """`ShardSearch` over ``n_worker`` Ray actors holding ``config.shards`` shards per HMMER
    database (none when every database is `tool: mmseqs2`)."""

    def __init__(self, config: MsaConfig, n_worker: int, *, num_cpus: float = 1.0,
                 runtime_env: dict | None = None) -> None:
        databases = tuple(db for db in config.databases if db.tool != "mmseqs2")
        # Never more workers than shards, nor than the cluster's CPUs can hold at once
        # (an actor that cannot be placed would wait forever).
        cpus = ray.cluster_resources().get("CPU", 1.0)
        n_worker = max(1, min(n_worker, config.shards, int(cpus // num_cpus) if num_cpus else n_worker))
        self.n_shard = config.shards
        place = stage_resources("featurize")
        options = {"num_cpus": num_cpus, "max_restarts": MAX_RESTARTS,
                   "max_task_retries": MAX_TASK_RETRIES}
        if place:
            options["resources"] = place
        if runtime_env:
            check_runtime_env(runtime_env, "msa shard workers")   # no secrets in actor options
            options["runtime_env"] = runtime_env
        actor = ray.remote(ShardWorker).options(**options)
        self.owner: dict[int, ray.actor.ActorHandle] = {}  # shard index -> worker
        self.workers = []
        for w in range(n_worker if databases else 0):
            indices = tuple(range(w, self.n_shard, n_worker))
            worker = actor.remote(databases, indices, self.n_shard)
            self.workers.append(worker)
            self.owner.update({i: worker for i in indices})
        sizes: dict[tuple[str, int], tuple[int, int]] = {}
        for part in ray.get([worker.sizes.remote() for worker in self.workers]):
            sizes.update(part)
        self._sizes = sizes
        self.calls = 0  # shard searches submitted

    def database_size(self, db: DatabaseConfig) -> tuple[int, int]:
        parts = [self._sizes[(db.name, i)] for i in range(self.n_shard)]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def search(self, db: DatabaseConfig, hmm: plan7.HMM, z: float, short_query: bool,
               ) -> list[plan7.TopHits]:
        buffer = io.BytesIO()
        hmm.write(buffer, binary=True)  # HMMs travel as HMMER files (no pickling of alphabets)
        hmm_ref = ray.put(buffer.getvalue())
        refs = [self.owner[i].search.remote(db, i, hmm_ref, z, short_query) for i in range(self.n_shard)]
        self.calls += len(refs)
        return [pickle.loads(data) for data in ray.get(refs)]

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers.clear()


class JobMsaFiller:
    """Genetic search for long-lived services (the Serve featurizer): fills the MSAs of jobs
    whose chains have none, through the content-addressed cache, and remembers filled jobs
    by content so a screen's target is searched (or read from the cache) once, not once per
    ligand. Shard workers start on the first search, so requests that bring their own MSAs
    never load a database."""

    def __init__(self, config_url: str, *, cache_url: str | None = None, workers: int = 1,
                 num_cpus: float = 1.0, max_remembered: int = 64) -> None:
        from foldray.msa.config import load_config
        from foldray.msa.databases import check_databases

        self.config = load_config(config_url)
        check_databases(self.config)                 # a missing database fails at deploy time
        self.cache_url = cache_url or self.config.cache_url
        if self.cache_url is None:
            raise ValueError(f"{config_url}: msa search in a service needs a cache URL "
                             "(msa_cache or cache_url in the config), e.g. s3://bucket/msa_cache")
        self.workers, self.num_cpus = workers, num_cpus
        self._searcher = None
        self._filled: OrderedDict[str, Any] = OrderedDict()
        self.max_remembered = max_remembered
        # Serve runs sync methods on a thread pool: the ligands of a screen arrive together,
        # and only the first may search their target; the others wait for its result.
        self._lock = threading.Lock()

    @property
    def counts(self) -> dict[str, int]:
        counts = self._searcher.counts if self._searcher is not None else None
        return {"msa_searched": counts.searched if counts else 0,
                "msa_cached": counts.cached if counts else 0}

    def _chain_searcher(self):
        if self._searcher is None:
            from foldray.msa.cache import MsaCache
            from foldray.msa.fill import ChainSearcher

            shards = RayShards(self.config, self.workers, num_cpus=self.num_cpus)
            self._searcher = ChainSearcher(self.config, shards, MsaCache(self.cache_url),
                                           mmseqs=RayMmseqs())
        return self._searcher

    def fill(self, job: Any) -> Any:
        """`job` with every protein/RNA chain's MSA filled (unchanged when none is missing)."""
        import warnings

        from foldray.msa.fill import NoHitsWarning, chains_to_search, fill_jobs
        from foldray.screening import target_key

        if not (chains := chains_to_search([job])):
            return job
        # content (and the job's template cutoff) only: jobs differing in name share an entry
        key = f"{target_key(job)}|{job.max_template_date}"
        with self._lock:
            if key not in self._filled:
                searcher = self._chain_searcher()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NoHitsWarning)   # single-sequence MSA is valid
                    searcher.prefetch(chains)            # the job's MMseqs2 searches at once
                    (filled,) = fill_jobs([job], searcher)
                self._filled[key] = filled.entities
                while len(self._filled) > self.max_remembered:
                    self._filled.popitem(last=False)
            self._filled.move_to_end(key)
            return dataclasses.replace(job, entities=self._filled[key])


class MsaSearchStage:
    """Batch-engine stage (`predict-batch --msa search`, `foldray msa`): one actor per run
    that fans each pending job's chain searches out over its `RayShards` workers and
    returns the row with the job's MSAs filled. A chain is searched once per run (shared
    chains of other jobs, and reruns, come from the memo and the cache); a job whose
    search fails is its own error row. Every row leaves with the `msa_*` columns, so the
    driver can total what the stage did without pulling the jobs back."""

    def __init__(self, config: MsaConfig, cache_url: str | None, workers: int | None,
                 num_cpus_per_worker: float = 1.0, runtime_env: dict | None = None,
                 max_remembered: int = 1024) -> None:
        from foldray.msa.cache import MsaCache
        from foldray.msa.fill import ChainSearcher

        self.shards = RayShards(config, workers or config.shards, num_cpus=num_cpus_per_worker,
                                runtime_env=runtime_env)
        self.mmseqs = RayMmseqs(runtime_env=runtime_env)
        self.searcher = ChainSearcher(config, self.shards, MsaCache(cache_url) if cache_url else None,
                                      mmseqs=self.mmseqs)
        self._found: OrderedDict[tuple[str, str, str | None], Any] = OrderedDict()
        self.max_remembered = max_remembered

    def _chain(self, sequence: str, mol_type: str, max_template_date: str | None = None) -> Any:
        key = (sequence.upper(), mol_type, max_template_date)
        if key not in self._found:
            self._found[key] = self.searcher.chain(*key)
            while len(self._found) > self.max_remembered:
                self._found.popitem(last=False)
        self._found.move_to_end(key)
        return self._found[key]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import warnings

        from foldray.actors.predict_rows import PENDING, failed_row
        from foldray.msa.fill import NoHitsWarning, chains_to_search, fill_job

        counts = {"msa_chains": 0, "msa_searched": 0, "msa_cached": 0, "msa_warnings": ""}
        job = row.get("payload")
        if row["status"] != PENDING or job is None or not hasattr(job, "entities") \
                or not (chains := chains_to_search([job])):
            return dict(row) | counts
        before = dataclasses.replace(self.searcher.counts)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NoHitsWarning)
                # this job's MMseqs2 searches (chains x databases) as Ray tasks at once
                self.searcher.prefetch([(seq, mol_type) for seq, mol_type in chains
                                        if (seq, mol_type, job.max_template_date) not in self._found])
                filled = fill_job(job, self._chain)
        except Exception as err:   # one job's failed search is its error row
            return failed_row(row, err, "msa") | counts
        after = self.searcher.counts
        return dict(row) | {
            "payload": filled, "msa_chains": len(chains),
            "msa_searched": after.searched - before.searched,
            "msa_cached": after.cached - before.cached,
            "msa_warnings": "\n".join(str(w.message) for w in caught)}


def search_dataset(rows: Any, config: MsaConfig, *, cache_url: str | None, workers: int | None,
                   num_cpus_per_worker: float = 1.0, remote: dict[str, Any] | None = None) -> Any:
    """`rows` (a ray.data.Dataset of engine rows) through `MsaSearchStage`, materialized.

    Materialized so the shard workers, which hold the databases in memory and reserve
    CPUs, are gone (with their stage actor) before the featurize and model pools start:
    on a small cluster the pools would otherwise wait for CPUs the search holds."""
    from ray.data import ActorPoolStrategy

    remote = remote or {}
    return rows.map(MsaSearchStage, fn_constructor_kwargs={
        "config": config, "cache_url": cache_url, "workers": workers,
        "num_cpus_per_worker": num_cpus_per_worker, "runtime_env": remote.get("runtime_env")},
        compute=ActorPoolStrategy(size=1), num_cpus=0, **remote).materialize()


def search_totals(searched: Any) -> tuple[dict[str, int], list[str]]:
    """(chains / searched / cached totals, warning lines) of a `search_dataset` result."""
    columns = ["msa_chains", "msa_searched", "msa_cached"]
    totals = {key: 0 for key in columns}
    warnings: list[str] = []
    for batch in searched.select_columns([*columns, "msa_warnings"]).iter_batches(
            batch_format="pyarrow", batch_size=4096):
        for key in columns:
            totals[key] += int(batch[key].to_numpy().sum())
        warnings.extend(line for text in batch["msa_warnings"].to_pylist() if text
                        for line in text.split("\n"))
    return totals, warnings


def _write_searched(row: dict[str, Any], *, out_url: str) -> dict[str, Any]:
    """`foldray msa`'s last stage: `<out>/<job>_data.json`, the input of `foldray predict`."""
    from foldray.actors.predict_rows import PENDING, failed_row
    from foldray.inputs.af3_json_writer import job_to_af3_json_text
    from foldray.io import storage

    if row["status"] == PENDING:
        job = row["payload"]
        url = storage.join(out_url, f"{job.safe_name}_data.json")
        try:
            storage.retry_io(lambda: storage.write_text_atomic(url, job_to_af3_json_text(job)))
        except Exception as err:
            row = failed_row(row, err, "write")
        else:
            row = dict(row) | {"status": "ok", "output": url}
    return {key: value for key, value in row.items() if key != "payload"}


def search_and_write(jobs: list[Any], config: MsaConfig, *, out_url: str, cache_url: str | None,
                     workers: int | None, num_cpus_per_worker: float = 1.0,
                     remote: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, int],
                                                                    list[str]]:
    """`foldray msa` on Ray: the jobs through the MSA stage and a write stage in the cluster;
    returns the rows (name, status, output, error; no MSAs), totals and warning lines."""
    import ray

    from foldray.actors.predict_rows import PENDING, result_row

    rows = [result_row(PENDING, source=job.source, name=job.name, payload=job) for job in jobs]
    dataset = ray.data.from_items(rows).repartition(target_num_rows_per_block=1)
    searched = search_dataset(dataset, config, cache_url=cache_url, workers=workers,
                              num_cpus_per_worker=num_cpus_per_worker, remote=remote)
    totals, warnings = search_totals(searched)
    written = searched.map(_write_searched, fn_kwargs={"out_url": out_url}, **(remote or {}))
    done = written.select_columns(["name", "source", "status", "output", "error"]).take_all()
    return done, totals, warnings
