"""Genetic-search settings (SI 2.2, Tables 1-2) as frozen dataclasses, read from YAML.

One `DatabaseConfig` per database: which tool (jackhmmer for protein, nhmmer for RNA, or
MMseqs2 for protein, the ColabFold route), its E-value thresholds, iteration count and the
per-database crop ("Max sequences"). `role` says where the hits go: ``unpaired`` databases
are stacked in config order into the main MSA, the ``paired`` (UniProt) result is kept
apart for cross-chain pairing (SI 2.2-2.3). An optional `templates` section turns on the
template search (SI 2.4) from each protein chain's MSA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from foldray.config_loader import ConfigError, apply_overrides, load_dataclass, read_mapping
from foldray.io import storage
from foldray.msa.mmseqs import MmseqsSettings

Tool = Literal["jackhmmer", "nhmmer", "mmseqs2"]
Role = Literal["unpaired", "paired"]
_TOOL_MOL_TYPE = {"jackhmmer": "protein", "nhmmer": "rna", "mmseqs2": "protein"}


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """One searched database; defaults are the SI's jackhmmer flags (-N 1 -E 1e-4 --incE 1e-4)."""

    name: str
    url: str  # FASTA, optionally .gz; local path or fsspec URL (s3://...)
    tool: Tool = "jackhmmer"
    role: Role = "unpaired"
    max_sequences: int | None = 10_000  # Table 1/2 "Max sequences"; None keeps every hit
    iterations: int = 1  # jackhmmer -N
    e_value: float = 1e-4  # -E (reporting)
    inc_e: float = 1e-4  # --incE (inclusion, used to build the next profile)
    f1: float = 5e-4  # --F1 (MSV filter)
    f2: float = 5e-5  # --F2 (Viterbi filter)
    f3: float = 5e-7  # --F3 (Forward filter)
    f3_short: float | None = None  # nhmmer: --F3 for queries < 50 nt (SI: 0.02)
    z: float | None = None  # -Z; None = the whole database (sequences; Mb for nhmmer)
    identity: str | None = None  # release tag for the cache key; None = URL + size + mtime
    # tool: mmseqs2 only (the HMMER fields above do not apply): ColabFold's settings
    mmseqs: MmseqsSettings = dataclasses.field(default_factory=MmseqsSettings)

    def __post_init__(self) -> None:
        for key in ("name", "url"):
            if not getattr(self, key):
                raise ConfigError(f"'{key}' is required", key=key)

    @property
    def mol_type(self) -> str:
        return _TOOL_MOL_TYPE[self.tool]

    def settings(self) -> dict[str, Any]:
        """Everything that changes the hits, except where the file lives (for cache keys)."""
        out = dataclasses.asdict(self)
        for key in ("url", "identity", "name"):
            out.pop(key)
        if self.tool != "mmseqs2":
            out.pop("mmseqs")          # HMMER cache keys stay what they were
        else:
            for key in ("threads", "binary", "split"):    # how it runs, not what it finds
                out["mmseqs"].pop(key)
        return out


@dataclass(frozen=True, kw_only=True)
class TemplateSearchConfig:
    """SI 2.4 template search: each protein chain's MSA as a profile against PDB sequences.

    `database`: a pdb_seqres-style FASTA; `mirror`: a folder/prefix of `<pdb_id>.cif[.gz]`
    (both local or any fsspec URL). `max_template_date` (YYYY-MM-DD): only templates
    released on or before it (per job: give templates yourself). AF3's filter values.
    """

    database: str
    mirror: str
    max_template_date: str | None = None
    max_hits: int = 4
    max_subsequence_ratio: float = 0.95
    min_align_ratio: float = 0.1
    min_hit_length: int = 10
    identity: str | None = None   # release tag of database + mirror for the cache key

    def __post_init__(self) -> None:
        import datetime as dt

        if self.max_template_date is not None:
            try:
                dt.date.fromisoformat(str(self.max_template_date))
            except ValueError:
                raise ConfigError(f"expected a date YYYY-MM-DD, got {self.max_template_date!r}",
                                  key="max_template_date") from None
        if not 1 <= self.max_hits <= 20:
            raise ConfigError(f"must be 1..20, got {self.max_hits}", key="max_hits")

    def settings(self):
        """The library's settings object (foldray.msa.template_search)."""
        import datetime as dt

        from foldray.msa.template_search import TemplateSearchSettings

        date = dt.date.fromisoformat(str(self.max_template_date)) if self.max_template_date else None
        return TemplateSearchSettings(
            database=os.path.expandvars(self.database), mirror=os.path.expandvars(self.mirror),
            max_template_date=date, max_hits=self.max_hits,
            max_subsequence_ratio=self.max_subsequence_ratio, min_align_ratio=self.min_align_ratio,
            min_hit_length=self.min_hit_length)


@dataclass(frozen=True, kw_only=True)
class MsaConfig:
    """The database set of one genetic search and where its results are cached."""

    databases: tuple[DatabaseConfig, ...] = ()
    shards: int = 1  # shards per database (mmseqs2: MMseqs2's own exact --split)
    cache_url: str | None = None  # None = `<out>/msa_cache`
    templates: TemplateSearchConfig | None = None   # None: no template search

    def for_mol_type(self, mol_type: str) -> tuple[DatabaseConfig, ...]:
        return tuple(db for db in self.databases if db.mol_type == mol_type)

    def digest(self) -> str:
        """Short id of the settings (not the files), for logs and benchmark records."""
        text = json.dumps([db.settings() | {"name": db.name} for db in self.databases], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_from_dict(data: Mapping[str, Any] | None, *, source: str = "") -> MsaConfig:
    """Validate a parsed YAML mapping (the shared typed loader, foldray.config_loader):
    unknown keys and bad values raise `ConfigError` (an `InputError`) naming the key;
    ``${VAR}`` in database URLs is expanded."""
    try:
        if not isinstance(data, Mapping):
            raise ConfigError("expected a mapping with a 'databases' list")
        config = load_dataclass(MsaConfig, data)
        if not config.databases:
            raise ConfigError("must be a non-empty list", key="databases")
        names = [db.name for db in config.databases]
        if len(set(names)) != len(names):
            raise ConfigError(f"database names must be unique: {names}", key="databases")
        if config.shards < 1:
            raise ConfigError(f"must be an integer >= 1, got {config.shards!r}", key="shards")
    except ConfigError as err:
        raise err.located(source=source) from None
    databases = tuple(dataclasses.replace(db, url=os.path.expandvars(db.url)) for db in config.databases)
    return dataclasses.replace(config, databases=databases)


def load_config(url: str, overrides: Sequence[str] = ()) -> MsaConfig:
    """Read an msa.yaml (local path or URL) with `key=value` overrides (`shards=8`)."""
    try:
        text = url if url.endswith((".yaml", ".yml", ".json")) else _read(url)
        data = read_mapping(text, kind="MSA config")
        apply_overrides(data, overrides)
    except ConfigError as err:
        raise err.located(source=url) from None
    return config_from_dict(data, source=url)


def _read(url: str) -> str:
    try:
        return storage.read_text(url) + "\n"   # text, whatever the file is called
    except FileNotFoundError:
        raise ConfigError("MSA config not found", source=url) from None


def with_overrides(config: MsaConfig, *, shards: int | None = None,
                   cache_url: str | None = None) -> MsaConfig:
    """Command-line overrides on top of the file (never mutate a config)."""
    changes: dict[str, Any] = {}
    if shards is not None:
        changes["shards"] = shards
    if cache_url is not None:
        changes["cache_url"] = cache_url
    return dataclasses.replace(config, **changes) if changes else config


__all__ = ["DatabaseConfig", "MsaConfig", "TemplateSearchConfig", "config_from_dict", "load_config",
           "with_overrides"]
