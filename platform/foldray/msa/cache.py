"""Content-addressed MSA cache on disk or object storage.

Key = sha256 of (chain sequence, molecule type, database identity, search settings): a chain
searched once against a database release is never searched again, across batches, screens
and serve requests. One a3m object per (chain, database), written atomically, so an
interrupted run resumes with the databases already done.
"""

from __future__ import annotations

import hashlib
import json

from foldray.io import storage
from foldray.msa.config import DatabaseConfig

KEY_VERSION = 1  # bump when the a3m output format changes


def cache_key(sequence: str, mol_type: str, db: DatabaseConfig, identity: str) -> str:
    """Hex sha256 naming one search result; the database URL only counts through `identity`."""
    record = {"v": KEY_VERSION, "sequence": sequence.upper(), "mol_type": mol_type,
              "database": identity, "settings": db.settings()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


class MsaCache:
    """a3m objects under ``<url>/<key[:2]>/<key>.a3m``; counts hits and misses."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.hits = 0
        self.misses = 0

    def _url(self, key: str) -> str:
        return storage.join(self.url, key[:2], f"{key}.a3m")

    def get(self, key: str) -> str | None:
        try:
            text = storage.read_text(self._url(key))
        except FileNotFoundError:
            self.misses += 1
            return None
        self.hits += 1
        return text

    def put(self, key: str, a3m: str) -> None:
        storage.write_text_atomic(self._url(key), a3m)
