"""Checkpoints: safetensors with the config inside; pickles refused; object storage works."""

import dataclasses
import pickle

import pytest
import torch

from foldray.io.weights import WeightsError, load_weights, save_weights
from foldray.model.config import ModelConfig, PairformerConfig


def test_round_trip_keeps_tensors_and_config(tmp_path):
    config = dataclasses.replace(ModelConfig.tiny(), pairformer=PairformerConfig(n_block=3))
    state = {"a.weight": torch.randn(4, 5), "b.bias": torch.arange(3, dtype=torch.int64)}
    url = str(tmp_path / "model.safetensors")
    save_weights(url, state, config)
    loaded, loaded_config = load_weights(url)
    assert loaded_config == config
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_memory_url_round_trip():
    save_weights("memory://ckpt/model.safetensors", {"w": torch.ones(2)}, ModelConfig.tiny())
    loaded, config = load_weights("memory://ckpt/model.safetensors")
    assert torch.equal(loaded["w"], torch.ones(2)) and config == ModelConfig.tiny()


def test_pickles_and_foreign_files_are_refused(tmp_path):
    pt = tmp_path / "evil.pt"
    pt.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(str(pt))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(WeightsError, match="not a safetensors"):
        load_weights(str(junk))


def test_unknown_config_keys_fail_loudly():
    with pytest.raises(ValueError, match="mystery: unknown key"):
        ModelConfig.from_dict({"c_s": 8, "mystery": 1})
