"""Serve app settings (foldray.serve_config): typed, unknown keys named, runtime nested."""

import pytest
import yaml

from foldray.config_loader import ConfigError
from foldray.model.config import RuntimeConfig
from foldray.serve_config import ServeConfig, load_serve_config
from tests.data_paths import REPO


def test_defaults_and_the_shipped_serve_config_load():
    config = load_serve_config({})
    assert config == ServeConfig() and config.runtime == RuntimeConfig()
    args = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    shipped = load_serve_config(args)
    assert shipped.model_config == "full" and shipped.num_gpus == 1.0
    assert isinstance(shipped.num_gpus, float) and shipped.output_allowlist == ()
    assert shipped.autoscaling == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4}


@pytest.mark.parametrize(("args", "named"), [
    ({"num_gpu": 1}, "num_gpu"),                              # a typo of num_gpus
    ({"runtime.precison": "bf16"}, "precison"),
    ({"runtime": {"chunk": 4}}, "chunk"),
])
def test_unknown_keys_are_refused_naming_them(args, named):
    with pytest.raises(ConfigError, match=f"serve settings: .*{named}: unknown key") as err:
        load_serve_config(args)
    assert err.value.key.endswith(named)


@pytest.mark.parametrize(("args", "named"), [
    ({"n_sample": "five"}, "n_sample"),
    ({"insecure_no_auth": "yes please"}, "insecure_no_auth"),
    ({"runtime.precision": "fp16"}, "runtime.precision"),
    ({"runtime": "bf16"}, "runtime"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"model_config": "huge"}, "model_config"),
    ({"out": "memory://x"}, "out"),
    ({"output_allowlist": ["ftp://host/x"]}, "output_allowlist"),
])
def test_bad_values_are_refused_naming_the_setting(args, named):
    with pytest.raises(ValueError, match=named):
        load_serve_config(args)


def test_removed_setting_says_what_replaced_it():
    with pytest.raises(ValueError, match="allow_local_out: replaced by output_allowlist"):
        load_serve_config({"allow_local_out": True})


def test_runtime_settings_nest_by_dotted_key_or_mapping():
    dotted = load_serve_config({"runtime.precision": "bf16", "runtime.chunk_size": 64,
                                "runtime.kernels": "torch", "runtime.compile": True})
    nested = load_serve_config({"runtime": {"precision": "bf16", "chunk_size": 64, "kernels": "torch",
                                            "compile": True}})
    assert dotted.runtime == nested.runtime == RuntimeConfig(precision="bf16", chunk_size=64,
                                                             kernels="torch", compile=True)


def test_outputs_are_normalised_and_the_servers_own_out_is_allowed():
    assert load_serve_config({"output_allowlist": None}).output_allowlist == ()
    config = load_serve_config({"out": "s3://bucket/preds/", "output_allowlist": ["s3://bucket/in/"]})
    assert config.out == "s3://bucket/preds"
    assert config.output_allowlist == ("s3://bucket/in/", "s3://bucket/preds")
