"""Genetic-search settings (SI 2.2, Tables 1-2) as frozen dataclasses, read from YAML.

One `DatabaseConfig` per database: which tool (jackhmmer for protein, nhmmer for RNA), its
E-value thresholds, iteration count and the per-database crop ("Max sequences"). `role`
says where the hits go: ``unpaired`` databases are stacked in config order into the main
MSA, the ``paired`` (UniProt) result is kept apart for cross-chain pairing (SI 2.2-2.3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from foldray.errors import InputError
from foldray.io import storage

Tool = Literal["jackhmmer", "nhmmer"]
Role = Literal["unpaired", "paired"]
_TOOL_MOL_TYPE = {"jackhmmer": "protein", "nhmmer": "rna"}


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

    @property
    def mol_type(self) -> str:
        return _TOOL_MOL_TYPE[self.tool]

    def settings(self) -> dict[str, Any]:
        """Everything that changes the hits, except where the file lives (for cache keys)."""
        out = dataclasses.asdict(self)
        for key in ("url", "identity", "name"):
            out.pop(key)
        return out


@dataclass(frozen=True, kw_only=True)
class MsaConfig:
    """The database set of one genetic search and where its results are cached."""

    databases: tuple[DatabaseConfig, ...] = ()
    shards: int = 1  # shards per database
    cache_url: str | None = None  # None = `<out>/msa_cache`

    def for_mol_type(self, mol_type: str) -> tuple[DatabaseConfig, ...]:
        return tuple(db for db in self.databases if db.mol_type == mol_type)

    def digest(self) -> str:
        """Short id of the settings (not the files), for logs and benchmark records."""
        text = json.dumps([db.settings() | {"name": db.name} for db in self.databases], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_from_dict(data: dict[str, Any], *, source: str = "") -> MsaConfig:
    """Validate a parsed YAML mapping; unknown keys and bad values raise `InputError`."""
    if not isinstance(data, dict):
        raise InputError("expected a mapping with a 'databases' list", source=source)
    known = {f.name for f in dataclasses.fields(MsaConfig)}
    for key in data:
        if key not in known:
            raise InputError(f"unknown key {key!r} (allowed: {', '.join(sorted(known))})",
                             source=source, field=key)
    raw_dbs = data.get("databases") or []
    if not isinstance(raw_dbs, list) or not raw_dbs:
        raise InputError("'databases' must be a non-empty list", source=source, field="databases")
    db_fields = {f.name for f in dataclasses.fields(DatabaseConfig)}
    databases = []
    for i, raw in enumerate(raw_dbs):
        where = f"databases[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"expected a mapping, got {raw!r}", source=source, field=where)
        unknown = sorted(set(raw) - db_fields)
        if unknown:
            raise InputError(f"unknown key(s) {unknown} (allowed: {', '.join(sorted(db_fields))})",
                             source=source, field=where)
        for key in ("name", "url"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise InputError(f"'{key}' is required", source=source, field=f"{where}.{key}")
        values = dict(raw, url=os.path.expandvars(raw["url"]))
        if values.get("tool", "jackhmmer") not in _TOOL_MOL_TYPE:
            raise InputError(f"tool must be jackhmmer or nhmmer, got {values['tool']!r}",
                             source=source, field=f"{where}.tool")
        if values.get("role", "unpaired") not in ("unpaired", "paired"):
            raise InputError(f"role must be unpaired or paired, got {values['role']!r}",
                             source=source, field=f"{where}.role")
        databases.append(DatabaseConfig(**values))
    names = [db.name for db in databases]
    if len(set(names)) != len(names):
        raise InputError(f"database names must be unique: {names}", source=source, field="databases")
    shards = data.get("shards", 1)
    if not isinstance(shards, int) or shards < 1:
        raise InputError(f"shards must be an integer >= 1, got {shards!r}", source=source, field="shards")
    return MsaConfig(databases=tuple(databases), shards=shards, cache_url=data.get("cache_url"))


def load_config(url: str) -> MsaConfig:
    """Read an msa.yaml (local path or URL); ``${VAR}`` in database URLs is expanded."""
    try:
        data = yaml.safe_load(storage.read_text(url))
    except FileNotFoundError:
        raise InputError("MSA config not found", source=url) from None
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {err}", source=url) from None
    return config_from_dict(data, source=url)


def with_overrides(config: MsaConfig, *, shards: int | None = None,
                   cache_url: str | None = None) -> MsaConfig:
    """Command-line overrides on top of the file (never mutate a config)."""
    changes: dict[str, Any] = {}
    if shards is not None:
        changes["shards"] = shards
    if cache_url is not None:
        changes["cache_url"] = cache_url
    return dataclasses.replace(config, **changes) if changes else config


__all__ = ["DatabaseConfig", "MsaConfig", "config_from_dict", "load_config", "with_overrides"]
