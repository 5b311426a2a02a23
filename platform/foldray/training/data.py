"""Training examples: find structures, draw them with SI 2.5 weights, featurize with a crop.

Sources (foldray.training.config.DataSource) are folders / s3:// prefixes of mmCIF files or
Parquet manifests. A draw (SI 2.5): pick a source by its `weight` (Table 3), then an example
inside it by its item weight, then featurize with a training crop (SI 2.7) biased to the
example's preferred chains (SI 2.5.1). Item weights:
  - folders, and manifests with only `path`: uniform over files (no cluster metadata);
  - manifest column `weight`: that weight;
  - manifest columns `cluster_size` (+ `n_prot`, `n_nuc`, `n_ligand`, and `chain_ids` with
    one chain id for a chain item, two for an interface): SI 2.5.1 eq. 1,
    w = beta_r / N_clust * (3 n_prot + 3 n_nuc + n_ligand), beta_chain 0.5, beta_interface 1.
Manifest columns: path (required; relative to the manifest), name, chain_ids (list or
"A,B"), cluster_size, n_prot, n_nuc, n_ligand, weight. One row per chain/interface item:
a structure may appear on many rows.

Every draw is a pure function of (seed, rank, draw index): each train worker reads its own
stream (rank-seeded sampling with replacement, the sharding of a weighted sampler), and a
resumed run continues the stream at the right draw. `TrainingDraws` is a torch map-style
Dataset over draw indices, so a DataLoader with worker processes featurizes ahead of the
GPU (prefetch) and keeps the order. Ray is never imported.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from foldray.errors import InputError
from foldray.features.batch import collate
from foldray.features.pipeline import CropSettings, FeaturizedJob, featurize_job
from foldray.inputs.job import Job, PolymerChain
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.io import storage
from foldray.training.config import DataSource
from foldray.training.step import training_sample

log = logging.getLogger(__name__)

STRUCTURE_SUFFIXES = (".cif", ".mmcif", ".cif.gz", ".mmcif.gz")
BETA = {"chain": 0.5, "interface": 1.0}                        # SI 2.5.1
ALPHA = {"n_prot": 3.0, "n_nuc": 3.0, "n_ligand": 1.0}
MAX_ATTEMPTS = 8          # draws to try when an example cannot be featurized


@dataclass(frozen=True, kw_only=True)
class Example:
    """One drawable item: a structure file, optionally with the chains to crop around."""

    path: str
    name: str
    weight: float = 1.0
    preferred_chains: tuple[str, ...] = ()


def structure_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    for suffix in sorted(STRUCTURE_SUFFIXES, key=len, reverse=True):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]


def si_item_weight(*, n_chains: int, cluster_size: float, n_prot: int = 0, n_nuc: int = 0,
                   n_ligand: int = 0) -> float:
    """SI 2.5.1 eq. 1 for a chain (n_chains 1) or an interface (n_chains 2) item."""
    beta = BETA["chain"] if n_chains <= 1 else BETA["interface"]
    return beta / max(cluster_size, 1.0) * (ALPHA["n_prot"] * n_prot + ALPHA["n_nuc"] * n_nuc
                                            + ALPHA["n_ligand"] * n_ligand)


def _chain_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)


def _manifest_examples(url: str) -> list[Example]:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    examples = []
    for i, row in enumerate(rows):
        if not row.get("path"):
            raise InputError("manifest row has no path", source=url, field=f"row {i}")
        file = storage.resolve_relative(str(row["path"]), url)
        chains = _chain_list(row.get("chain_ids"))
        if row.get("weight") is not None:
            weight = float(row["weight"])
        elif row.get("cluster_size") is not None:
            weight = si_item_weight(n_chains=max(1, len(chains)), cluster_size=float(row["cluster_size"]),
                                    **{k: int(row.get(k) or 0) for k in ALPHA})
        else:
            weight = 1.0
        if weight < 0 or not np.isfinite(weight):
            raise InputError(f"bad weight {weight}", source=url, field=f"row {i}")
        examples.append(Example(path=file, name=str(row.get("name") or structure_name(file)),
                                weight=weight, preferred_chains=chains))
    return examples


def discover_examples(source: DataSource) -> list[Example]:
    """The examples of one source, sorted by path (a stable order across workers)."""
    if source.path.lower().endswith(".parquet"):
        examples = _manifest_examples(source.path)
    else:
        files = storage.list_files(source.path, STRUCTURE_SUFFIXES)
        examples = [Example(path=f, name=structure_name(f)) for f in files]
    if source.names:
        wanted = {n.lower() for n in source.names}
        examples = [e for e in examples if e.name.lower() in wanted]
    examples = [e for e in examples if e.weight > 0]
    if not examples:
        raise InputError("no training structures found" + (f" named {list(source.names)}"
                                                           if source.names else ""),
                         source=source.path)
    return sorted(examples, key=lambda e: (e.path, e.preferred_chains))


# ---------------------------------------------------------------------------- reading


def _msa_index(msa_dir: str) -> dict[str, str]:
    """a3m basename (lower case) -> URL, listed once per source."""
    return {os.path.basename(f).lower(): f for f in storage.list_files(msa_dir, (".a3m",))}


def attach_msas(job: Job, name: str, msa_files: dict[str, str]) -> Job:
    """Set each protein/RNA entity's MSAs from `<name>_<chain>.a3m` / `..._paired.a3m`
    (the first chain id of the entity that has a file). Entities without a file keep
    None (single-sequence features)."""
    entities = []
    for entity in job.entities:
        if isinstance(entity, PolymerChain) and entity.mol_type != "dna":
            for chain_id in entity.ids:
                stem = f"{name}_{chain_id}".lower()
                unpaired, paired = msa_files.get(f"{stem}.a3m"), msa_files.get(f"{stem}_paired.a3m")
                if unpaired or paired:
                    entity = replace(entity,
                                     unpaired_msa=storage.read_text(unpaired) if unpaired else "",
                                     paired_msa=storage.read_text(paired) if paired else None)
                    break
        entities.append(entity)
    return replace(job, entities=tuple(entities))


def read_structure(path: str, name: str) -> Job:
    data = storage.read_bytes(path)
    if path.lower().endswith(".gz"):
        data = gzip.decompress(data)
    return job_from_structure_file(data, source=path, name=name)


@dataclass(frozen=True, kw_only=True)
class SourceData:
    """A source's examples, ready to draw from (cumulative weights)."""

    source: DataSource
    examples: tuple[Example, ...]
    msa_files: dict[str, str]

    @classmethod
    def load(cls, source: DataSource) -> SourceData:
        msa = _msa_index(source.msa_dir) if source.msa_dir else {}
        return cls(source=source, examples=tuple(discover_examples(source)), msa_files=msa)

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        w = np.array([e.weight for e in self.examples], dtype=np.float64)
        return w / w.sum()


# ---------------------------------------------------------------------------- draws


@dataclass(frozen=True, kw_only=True)
class Draw:
    source_index: int
    example_index: int
    crop_seed: int


def draw(sources: Sequence[SourceData], *, seed: int, rank: int, index: int, attempt: int = 0) -> Draw:
    """The example of draw `index` of worker `rank` (SI 2.5 steps 1-2) and its crop seed."""
    rng = np.random.default_rng([seed, rank, index, attempt])
    w = np.array([s.source.weight for s in sources], dtype=np.float64)
    s = int(rng.choice(len(sources), p=w / w.sum()))
    e = int(rng.choice(len(sources[s].examples), p=sources[s].probabilities))
    return Draw(source_index=s, example_index=e, crop_seed=int(rng.integers(0, 2 ** 31 - 1)))


class TrainingDraws(torch.utils.data.Dataset):
    """Map-style dataset over draw indices: item i is draw i of this rank, featurized.

    Featurization happens in DataLoader worker processes; parsed structures are cached per
    process (`cache_size` jobs). A structure that fails to featurize (InputError) is logged
    and replaced by a re-draw, so one bad file never stops a run.
    """

    def __init__(self, sources: Sequence[SourceData], *, crop_size: int, seed: int, rank: int,
                 max_msa_rows: int, cache_size: int = 32) -> None:
        if not sources:
            raise ValueError("TrainingDraws: no data sources")
        self.sources = list(sources)
        self.crop_size, self.seed, self.rank = crop_size, seed, rank
        self.max_msa_rows, self.cache_size = max_msa_rows, cache_size
        self._job = functools.lru_cache(maxsize=cache_size)(self._read_job)

    def __getstate__(self) -> dict[str, Any]:       # the lru_cache wrapper is per process
        state = dict(self.__dict__)
        state.pop("_job", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._job = functools.lru_cache(maxsize=self.cache_size)(self._read_job)

    def __len__(self) -> int:
        return 2 ** 62     # draws never run out; the sampler decides where to start and stop

    def _read_job(self, source_index: int, example_index: int) -> Job:
        source = self.sources[source_index]
        example = source.examples[example_index]
        job = read_structure(example.path, example.name)
        return attach_msas(job, example.name, source.msa_files) if source.msa_files else job

    def featurize(self, d: Draw) -> FeaturizedJob:
        source = self.sources[d.source_index]
        example = source.examples[d.example_index]
        crop = CropSettings(size=self.crop_size, dataset=source.source.crop_dataset,
                            preferred_chains=example.preferred_chains)
        return featurize_job(self._job(d.source_index, d.example_index), seed=d.crop_seed,
                             crop=crop, max_msa_rows=self.max_msa_rows)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        for attempt in range(MAX_ATTEMPTS):
            d = draw(self.sources, seed=self.seed, rank=self.rank, index=index, attempt=attempt)
            try:
                return training_sample(self.featurize(d))
            except InputError as err:
                log.warning("skipping a training example that cannot be featurized: %s", err)
        raise RuntimeError(f"{MAX_ATTEMPTS} draws in a row failed to featurize (draw {index})")


class DrawIndices(torch.utils.data.Sampler[int]):
    """start, start + 1, ...: the draws a worker consumes from `start` on (resume point)."""

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def collate_samples(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Pad to the batch maximum (a crop already bounds the size)."""
    return collate(samples, token_buckets=None, atom_buckets=None)


def _loader_worker_init(_: int) -> None:
    torch.set_num_threads(1)   # featurization is numpy; many loader processes share the CPUs


def make_loader(dataset: TrainingDraws, *, batch_size: int, start_draw: int, num_workers: int,
                prefetch_factor: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of `batch_size` draws from `start_draw` on, featurized `num_workers` processes
    ahead (each keeping `prefetch_factor` batches ready)."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": False,
                 "worker_init_fn": _loader_worker_init, "multiprocessing_context": "spawn"}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=DrawIndices(start_draw),
                                       collate_fn=collate_samples, num_workers=num_workers,
                                       pin_memory=pin_memory, **extra)


def validation_samples(sources: Sequence[SourceData], *, max_structures: int, max_tokens: int,
                       max_msa_rows: int) -> list[dict[str, np.ndarray]]:
    """Held-out structures, featurized once (cropped to max_tokens if larger, fixed seed)."""
    out: list[dict[str, np.ndarray]] = []
    for source in sources:
        for example in source.examples:
            if len(out) >= max_structures:
                return out
            job = read_structure(example.path, example.name)
            if source.msa_files:
                job = attach_msas(job, example.name, source.msa_files)
            try:
                featurized = featurize_job(job, seed=0, crop=CropSettings(size=max_tokens,
                                                                          dataset=source.source.crop_dataset),
                                           max_msa_rows=max_msa_rows)
            except InputError as err:
                log.warning("skipping a validation structure: %s", err)
                continue
            out.append(training_sample(featurized))
    return out
