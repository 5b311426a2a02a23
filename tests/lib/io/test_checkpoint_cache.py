"""Remote checkpoints are downloaded once per machine into FOLDRAY_CACHE_DIR (real S3)."""

import os
import stat
import threading

import pytest
import torch

from foldray.io import checkpoint_cache
from foldray.io.weights import WeightsError, load_weights, save_weights
from foldray.model.config import ModelConfig


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FOLDRAY_CACHE_DIR", str(folder))
    return folder / "checkpoints"


@pytest.fixture
def downloads(monkeypatch):
    """Counts real downloads (the product's own download function, called through)."""
    calls = []
    real = checkpoint_cache._download

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_cache, "_download", counting)
    return calls


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(16, 8, generator=gen), "b.bias": torch.arange(5) + seed}


def _equal(loaded: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> bool:
    return loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def _entries(folder):
    return sorted(folder.glob("*.safetensors")) if folder.exists() else []


def test_first_load_fills_cache_second_reuses_it(s3_env, s3_bucket, cache_dir, downloads):
    url = f"s3://{s3_bucket}/model.safetensors"
    state = _state(1)
    save_weights(url, state, ModelConfig.tiny())
    loaded, config = load_weights(url)
    assert _equal(loaded, state) and config == ModelConfig.tiny()
    [entry] = _entries(cache_dir)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert not list(cache_dir.glob("*.tmp"))
    inode = entry.stat().st_ino
    again, _ = load_weights(url)
    assert _equal(again, state)
    assert len(downloads) == 1 and entry.stat().st_ino == inode


def test_replaced_object_is_fetched_again(s3_env, s3_bucket, cache_dir, downloads):
    url = f"s3://{s3_bucket}/model.safetensors"
    save_weights(url, _state(1), ModelConfig.tiny())
    load_weights(url)
    new = _state(2)
    save_weights(url, new, ModelConfig.tiny())
    loaded, _ = load_weights(url)
    assert _equal(loaded, new)
    assert len(downloads) == 2 and len(_entries(cache_dir)) == 2


def test_cache_off_reads_directly_and_writes_nothing(s3_env, s3_bucket, tmp_path, monkeypatch, downloads):
    monkeypatch.setenv("FOLDRAY_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    url = f"s3://{s3_bucket}/model.safetensors"
    state = _state(3)
    save_weights(url, state, ModelConfig.tiny())
    assert _equal(load_weights(url)[0], state)
    assert downloads == [] and list(tmp_path.iterdir()) == []


def test_local_files_are_never_copied(tmp_path, cache_dir, downloads):
    path = tmp_path / "model.safetensors"
    state = _state(4)
    save_weights(str(path), state, ModelConfig.tiny())
    assert _equal(load_weights(str(path))[0], state)
    assert _equal(load_weights(f"file://{path}")[0], state)
    save_weights("memory://ckpt-cache/model.safetensors", state, ModelConfig.tiny())
    assert _equal(load_weights("memory://ckpt-cache/model.safetensors")[0], state)
    assert downloads == [] and not cache_dir.exists()


def test_damaged_cached_copy_is_replaced(s3_env, s3_bucket, cache_dir, downloads):
    url = f"s3://{s3_bucket}/model.safetensors"
    state = _state(5)
    save_weights(url, state, ModelConfig.tiny())
    load_weights(url)
    [entry] = _entries(cache_dir)
    entry.write_bytes(b"\xff" * entry.stat().st_size)     # same size: only parsing can tell
    assert _equal(load_weights(url)[0], state)
    assert not entry.exists()                             # dropped, so the next load downloads
    assert _equal(load_weights(url)[0], state)
    assert entry.exists() and len(downloads) == 2
    entry.write_bytes(entry.read_bytes()[:100])           # truncated: the size check catches it
    assert _equal(load_weights(url)[0], state) and len(downloads) == 3


def test_damaged_remote_still_names_the_url(s3_env, s3_bucket, cache_dir, s3_server):
    url = f"s3://{s3_bucket}/junk.safetensors"
    s3_server.filesystem().pipe(f"{s3_bucket}/junk.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(WeightsError, match=f"{url}: not a safetensors"):
        load_weights(url)
    assert _entries(cache_dir) == []


def test_unwritable_cache_folder_falls_back(s3_env, s3_bucket, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FOLDRAY_CACHE_DIR", str(blocker / "cache"))   # cannot be created, even as root
    url = f"s3://{s3_bucket}/model.safetensors"
    state = _state(6)
    save_weights(url, state, ModelConfig.tiny())
    assert _equal(load_weights(url)[0], state)
    warnings = [r for r in caplog.records if r.name == checkpoint_cache.__name__]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_eviction_keeps_the_most_recent_entries(s3_env, s3_bucket, cache_dir, monkeypatch):
    monkeypatch.setenv("FOLDRAY_CHECKPOINT_CACHE_ENTRIES", "2")
    urls = [f"s3://{s3_bucket}/m{i}.safetensors" for i in range(3)]
    for i, url in enumerate(urls):
        save_weights(url, _state(10 + i), ModelConfig.tiny())
    first = checkpoint_cache.local_copy(urls[0])
    second = checkpoint_cache.local_copy(urls[1])
    os.utime(first, (1, 1)); os.utime(second, (2, 2))    # noqa: E702  (m0 used least recently)
    checkpoint_cache.local_copy(urls[0])                  # m0 used again: now m1 is the oldest
    third = checkpoint_cache.local_copy(urls[2])
    assert set(_entries(cache_dir)) == {first, third}
    assert not second.with_suffix(".lock").exists()


def test_concurrent_loaders_download_once(s3_env, s3_bucket, cache_dir, downloads):
    url = f"s3://{s3_bucket}/model.safetensors"
    state = _state(7)
    save_weights(url, state, ModelConfig.tiny())
    results, errors = [], []
    start = threading.Barrier(4)

    def load():
        try:
            start.wait()
            results.append(load_weights(url)[0])
        except Exception as err:   # surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 4 and all(_equal(r, state) for r in results)
    assert len(downloads) == 1 and len(_entries(cache_dir)) == 1
