"""The decoded CCD on local disk (foldray.chem.ccd_cache): later processes load what the
first one decoded, identical to decoding; a damaged, unwritable or disabled cache only
costs a decode, never an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from foldray.cache_dir import CACHE_ENV
from foldray.chem import ccd_cache


def _arrays() -> dict[str, np.ndarray]:
    return {"names": np.array([b"C1", b"N2"]), "ids": np.array(["ATP", "HEM"]),
            "coords": np.arange(6, dtype=np.float32).reshape(2, 3)}


def _counting(calls: list[int]):
    def decode() -> dict[str, np.ndarray]:
        calls.append(1)
        return _arrays()
    return decode


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_decoded_once_then_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[int] = []
    first = ccd_cache.load_or_decode("k1", _counting(calls))
    second = ccd_cache.load_or_decode("k1", _counting(calls))
    assert calls == [1] and _same(first, second)
    assert [p.name for p in tmp_path.iterdir()] == ["ccd-k1.npz"]     # no temporary file left
    ccd_cache.load_or_decode("k2", _counting(calls))                  # another CCD: decoded
    assert calls == [1, 1]


def test_damaged_cache_is_decoded_again_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / "ccd-k.npz").write_bytes(b"PK\x03\x04 truncated")
    calls: list[int] = []
    assert _same(ccd_cache.load_or_decode("k", _counting(calls)), _arrays()) and calls == [1]
    assert _same(ccd_cache.load_or_decode("k", _counting(calls)), _arrays()) and calls == [1]


@pytest.mark.parametrize("setting", ["off", "0", ""])
def test_cache_can_be_turned_off(tmp_path, monkeypatch, setting):
    monkeypatch.setenv(CACHE_ENV, setting)
    monkeypatch.chdir(tmp_path)
    calls: list[int] = []
    ccd_cache.load_or_decode("k", _counting(calls))
    ccd_cache.load_or_decode("k", _counting(calls))
    assert calls == [1, 1] and list(tmp_path.iterdir()) == []


def test_unwritable_folder_still_decodes(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    assert _same(ccd_cache.load_or_decode("k", _counting([])), _arrays())


def test_key_follows_the_source_file(tmp_path):
    source = tmp_path / "components.bcif"
    source.write_bytes(b"x")
    key = ccd_cache.cache_key(source, "1.0")
    assert key == ccd_cache.cache_key(source, "1.0") and key != ccd_cache.cache_key(source, "1.1")
    source.write_bytes(b"xy")
    assert ccd_cache.cache_key(source, "1.0") != key


def test_real_ccd_from_the_cache_equals_the_decoded_one(tmp_path):
    """In fresh processes (the CCD is decoded once per process): the first decodes and
    stores, the second loads; components built either way are identical."""
    script = ("import json, sys; from foldray.chem import ccd; "
              "c = [ccd.get_component(x) for x in ('ATP', 'HEM', 'MSE', 'NAG')]; "
              "print(json.dumps([[x.atom_names, x.elements.tolist(), x.charges.tolist(), "
              "x.bonds.tolist(), x.bond_orders.tolist(), x.leaving.tolist(), x.chem_type, x.parent, "
              "x.one_letter, x.ref_pos.round(4).tolist()] for x in c]))")
    env = {**os.environ, CACHE_ENV: str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True, timeout=300).stdout for _ in range(2)]
    stored = list(tmp_path.glob("ccd-*.npz"))
    assert len(stored) == 1 and runs[0] == runs[1] and len(json.loads(runs[0])) == 4
