"""ModelConfig through the shared loader: saved configs of older releases, presets by name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from foldray.config_loader import ConfigError
from foldray.features.config import FeaturizationConfig
from foldray.model.config import (
    NAMED_CONFIGS,
    ModelConfig,
    MsaModuleConfig,
    RuntimeConfig,
    model_config_from,
)
from tests.data_paths import REPO

OLD = REPO / "tests" / "fixtures" / "model_configs"   # asdict() of ModelConfig at older commits


@pytest.mark.parametrize("name", list(NAMED_CONFIGS))
def test_presets_round_trip(name):
    config = ModelConfig.preset(name)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ModelConfig.preset(name.replace("-", "_")) == config        # tiny_openfold3 == tiny-openfold3


def test_configs_saved_by_older_releases_still_load():
    # 633fab0: before the reference switches and the featurization section
    tiny = ModelConfig.from_dict(json.loads((OLD / "tiny_633fab0.json").read_text()))
    assert tiny == ModelConfig.tiny() and tiny.confidence.max_atoms_per_token == 24
    assert ModelConfig.from_dict(json.loads((OLD / "full_633fab0.json").read_text())) == ModelConfig.full()
    # b0205f3: reference presets saved without featurization: it follows the family's switches
    protenix = ModelConfig.from_dict(json.loads((OLD / "tiny_protenix_b0205f3.json").read_text()))
    assert protenix.featurization == FeaturizationConfig.protenix()
    assert protenix.confidence == ModelConfig.tiny_protenix().confidence
    openfold3 = ModelConfig.from_dict(json.loads((OLD / "tiny_openfold3_b0205f3.json").read_text()))
    assert openfold3 == ModelConfig.tiny_openfold3()


@pytest.mark.parametrize(("data", "key"), [
    ({"pairformer": {"n_blok": 2}}, "pairformer.n_blok"),
    ({"c_zz": 3}, "c_zz"),
    ({"msa": {"c_m": "wide"}}, "msa.c_m"),
    ({"loss": {"confidence_resolution": [0.1]}}, "loss.confidence_resolution"),
    ({"featurization": {"paired_msa": "nope"}}, "featurization.paired_msa"),
])
def test_bad_saved_configs_name_the_key(data, key):
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict(data)
    assert caught.value.key == key


def test_model_config_from_preset_file_and_overrides(tmp_path):
    assert model_config_from("tiny") == ModelConfig.tiny()
    changed = model_config_from("tiny_protenix", ["pairformer.n_block=1", "n_cycle=3"])
    assert changed.pairformer.n_block == 1 and changed.n_cycle == 3
    assert changed.pairformer.n_head == ModelConfig.tiny_protenix().pairformer.n_head   # merged, not replaced
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\npairformer: {n_block: 1}\nmsa.c_m: 8\n")
    from_file = model_config_from(str(path))
    assert from_file == dataclasses.replace(
        ModelConfig.tiny(), pairformer=dataclasses.replace(ModelConfig.tiny().pairformer, n_block=1),
        msa=MsaModuleConfig(**{**dataclasses.asdict(ModelConfig.tiny().msa), "c_m": 8}))
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(ModelConfig.tiny_openfold3().to_dict()))
    assert model_config_from(str(whole)) == ModelConfig.tiny_openfold3()
    with pytest.raises(ConfigError, match="unknown model preset 'small'"):
        model_config_from("small")
    path.write_text("preset: tiny\npairformer: {n_blok: 1}\n")
    with pytest.raises(ConfigError) as caught:
        model_config_from(str(path))
    assert caught.value.key == "pairformer.n_blok"


def test_runtime_config_is_typed():
    from foldray.config_loader import load_dataclass

    assert load_dataclass(RuntimeConfig, {"precision": "bf16", "chunk_size": 64}) == RuntimeConfig(
        precision="bf16", chunk_size=64)
    with pytest.raises(ConfigError) as caught:
        load_dataclass(RuntimeConfig, {"kernels": "cuda"}, where="runtime")
    assert caught.value.key == "runtime.kernels"


def test_a_protenix_config_saved_before_the_empty_slot_and_slot_shift_switches_gets_them():
    """Protenix checkpoints imported before those switches existed must still predict what
    Protenix predicts (its 4 empty template slots, its shifted nucleotide pLDDT slots)."""
    current = ModelConfig.preset("tiny-protenix")
    saved = current.to_dict()
    del saved["template"]["empty_slot_restype_first"], saved["template"]["empty_slot_restype_pad"]
    del saved["confidence"]["nucleotide_slot_shift"]
    assert ModelConfig.from_dict(saved) == current
    plain = ModelConfig.preset("tiny").to_dict()          # other families keep their defaults
    del plain["confidence"]["nucleotide_slot_shift"]
    assert ModelConfig.from_dict(plain) == ModelConfig.preset("tiny")


def test_a_protenix_config_saved_before_the_later_featurization_switches_gets_protenix_values():
    """A Protenix checkpoint imported before the MSE / glycan O1 / query-letter switches (and
    ccd_type restypes) existed featurizes as Protenix does, not with AF3's defaults."""
    current = ModelConfig.preset("tiny-protenix")
    saved = current.to_dict()
    for key in ("msa_query_letters", "ligand_leaving_atoms", "selenomethionine"):
        del saved["featurization"][key]
    saved["featurization"]["modified_residue_restype"] = "parent"   # the value saved back then
    assert ModelConfig.from_dict(saved).featurization == current.featurization
    chosen = current.to_dict()                               # a saved choice is kept as saved
    chosen["featurization"]["selenomethionine"] = "atomize"
    assert ModelConfig.from_dict(chosen).featurization.selenomethionine == "atomize"
    plain = ModelConfig.preset("tiny").to_dict()             # AF3-family configs are untouched
    del plain["featurization"]["ligand_leaving_atoms"]
    assert ModelConfig.from_dict(plain) == ModelConfig.preset("tiny")
